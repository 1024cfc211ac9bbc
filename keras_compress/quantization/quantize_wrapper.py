"""QuantizeWrapper: fake-quantizes the weights of a Conv/Dense-like layer."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_compress.quantization.quantizers import Quantizer, QuantizerSpec
from keras_compress.wrapper import WeightsWrapper, unwrap

__all__ = ["QuantizeWrapper"]


@keras.saving.register_keras_serializable(package="keras_compress")
class QuantizeWrapper(WeightsWrapper):
    """Wraps a layer and fake-quantizes its kernel(s) with learned, variable-held ranges.

    The range lives in variables (not computed from the kernel in the graph), so the exported
    graph is `FakeQuantize(Constant)` and OpenVINO stores the weights as int8.

    Args:
        layer: the layer to wrap (Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose,
            Dense, EinsumDense), or a `WeightsWrapper` around one.
        weight_quantizers: dict from weight attribute ("kernel", "depthwise_kernel", ...) to a
            `QuantizerSpec` or its config dict.
        **kwargs: base layer arguments.

    Example:
        >>> dense = keras.layers.Dense(4)
        >>> spec = QuantizerSpec(bits=8, signed=True, per_channel=True, axis=-1, narrow_range=True)
        >>> wrapped = QuantizeWrapper(dense, {"kernel": spec})
        >>> tuple(wrapped(keras.ops.ones((2, 3))).shape)
        (2, 4)
    """

    def __init__(self, layer, weight_quantizers, **kwargs):
        super().__init__(layer, **kwargs)
        self.quantizers = {
            attr: Quantizer(spec if isinstance(spec, QuantizerSpec) else QuantizerSpec(**spec))
            for attr, spec in weight_quantizers.items()
        }
        unknown = set(self.quantizers) - set(self.spec.weights)
        if unknown:
            raise ValueError(
                f"`weight_quantizers` keys must be weights of {unwrap(layer).__class__.__name__} "
                f"{list(self.spec.weights)}. Received: {sorted(unknown)}"
            )

    def build_wrapper(self, input_shape):
        base = unwrap(self)
        for attr, quantizer in self.quantizers.items():
            quantizer.build(self, name=attr, weight_shape=getattr(base, attr).shape)
        # Keras builds a layer that has no build() (a user's block holding this wrapper) by tracing
        # its call in a graph; the ranges are set from the weights' values outside of it.
        with tf.init_scope():
            self.initialize_ranges_from_weights()

    def initialize_ranges_from_weights(self):
        """Sets each weight quantizer's range to the min/max of the current weights."""
        base = unwrap(self)
        for attr, quantizer in self.quantizers.items():
            w = ops.convert_to_numpy(getattr(base, attr))
            if quantizer.spec.per_channel:
                axis = quantizer.spec.axis % w.ndim
                reduce = tuple(i for i in range(w.ndim) if i != axis)
                quantizer.set_range(w.min(axis=reduce), w.max(axis=reduce))
            else:
                quantizer.set_range(w.min(), w.max())

    def transform_weights(self, weights, training=None):
        weights = dict(weights)
        for attr, quantizer in self.quantizers.items():
            weights[attr] = quantizer(weights[attr])
        return weights

    def apply_overflow_fix(self):
        """Bakes half-range quantized weights into the kernel and widens the quantizer.

        The exported model then holds the same weight values on a full-width grid (NNCF's
        `overflow_fix`): int8 weights that use 7 bits, safe on CPUs without VNNI.
        """
        base = unwrap(self)
        for attr, quantizer in self.quantizers.items():
            if quantizer.spec.half_range:
                var = getattr(base, attr)
                var.assign(quantizer(var))
                quantizer.apply_overflow_fix()

    def strip(self):
        """Applies the overflow fix; the wrapper stays (its fake-quant ops are the INT8 recipe)."""
        stripped = super().strip()
        stripped.apply_overflow_fix()
        return stripped

    def get_config(self):
        config = {
            "weight_quantizers": {a: q.spec.to_config() for a, q in self.quantizers.items()}
        }
        return {**super().get_config(), **config}
