"""FilterPruningWrapper: masks whole filters and input channels of a Conv/Dense layer."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_compress.wrapper import WeightsWrapper, unwrap

__all__ = ["FilterPruningWrapper", "MASKED_KINDS", "kernel_axes"]

#: Compressible-layer kind -> (filter axis, input-channel axis) of its kernel.
_KERNEL_AXES = {"conv": (-1, -2), "dense": (-1, -2), "conv_transpose": (-2, -1)}
#: Kinds of layers that get a `FilterPruningWrapper`.
MASKED_KINDS = tuple(_KERNEL_AXES)


def kernel_axes(kind):
    """`(filter axis, input-channel axis)` of the kernel of a layer kind ("conv", "dense", ...)."""
    return _KERNEL_AXES[kind]


def _axis_shape(rank, axis):
    shape = [1] * rank
    shape[axis] = -1
    return shape


def _broadcast(mask, rank, axis):
    return ops.reshape(mask, _axis_shape(rank, axis))


@keras.saving.register_keras_serializable(package="keras_compress")
class FilterPruningWrapper(WeightsWrapper):
    """Multiplies a layer's kernel by a filter mask and an input-channel mask.

    The masks live in non-trainable variables (1 keeps, 0 prunes), so they are saved with the
    model; the pruning algorithm sets them. A filter mask also zeroes the filter's bias. A
    layer that reads pruned channels gets them masked out of its input (zero kernel rows): its
    output then does not depend on them at all, which is what lets `remove_pruned_filters`
    delete them exactly.

    Args:
        layer: a Conv1D/2D/3D, Conv*Transpose or Dense layer (or a `WeightsWrapper` around one).
        **kwargs: base layer arguments.

    Example:
        >>> wrapped = FilterPruningWrapper(keras.layers.Dense(4))
        >>> y = wrapped(keras.ops.ones((2, 3)))
        >>> _ = wrapped.filter_mask.assign([1.0, 0.0, 1.0, 0.0])
        >>> float(keras.ops.convert_to_numpy(wrapped(keras.ops.ones((2, 3))))[0, 1])
        0.0
    """

    scheduled = True

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        if self.spec.kind not in MASKED_KINDS:
            raise ValueError(
                f"`layer` must be one of the kinds {MASKED_KINDS}. "
                f"Received: layer={unwrap(layer).__class__.__name__} (kind {self.spec.kind!r})"
            )
        self.filter_axis, self.input_axis = kernel_axes(self.spec.kind)

    def build_wrapper(self, input_shape):
        shape = unwrap(self).kernel.shape
        ones = keras.initializers.Ones()
        self.filter_mask = self.add_weight(
            name="filter_mask", shape=(shape[self.filter_axis],), initializer=ones, trainable=False
        )
        self.input_mask = self.add_weight(
            name="input_mask", shape=(shape[self.input_axis],), initializer=ones, trainable=False
        )

    def transform_weights(self, weights, training=None):
        weights = dict(weights)
        kernel = weights["kernel"]
        rank = len(kernel.shape)
        kernel = kernel * _broadcast(ops.cast(self.filter_mask, kernel.dtype), rank, self.filter_axis)
        weights["kernel"] = kernel * _broadcast(ops.cast(self.input_mask, kernel.dtype), rank, self.input_axis)
        bias = weights.get("bias", getattr(unwrap(self), "bias", None))
        if bias is not None:
            weights["bias"] = bias * ops.cast(self.filter_mask, bias.dtype)
        return weights

    def surviving_entries(self):
        """The kernel entries of kept filters and kept input channels, the bias of kept filters."""
        base = unwrap(self)
        rank = len(base.kernel.shape)
        filters = ops.convert_to_numpy(self.filter_mask) > 0.5
        inputs = ops.convert_to_numpy(self.input_mask) > 0.5
        kernel = np.reshape(filters, _axis_shape(rank, self.filter_axis)) & np.reshape(
            inputs, _axis_shape(rank, self.input_axis)
        )
        kept = {"kernel": np.broadcast_to(kernel, tuple(base.kernel.shape))}
        if getattr(base, "bias", None) is not None:
            kept["bias"] = filters
        return kept

    def strip(self):
        """Folds the masks into the weights and returns the wrapped layer."""
        inner = self.layer.strip() if isinstance(self.layer, WeightsWrapper) else self.layer
        base = unwrap(inner)
        names = ["kernel"] + (["bias"] if getattr(base, "bias", None) is not None else [])
        masked = self.transform_weights({name: getattr(base, name) for name in names})
        for name in names:
            getattr(base, name).assign(masked[name])
        return inner
