"""Surgery: a new, smaller model with the pruned filters physically removed.

The channels to remove are read from the model itself: a channel of a pruning group can go
when every layer that reads it (the next convolutions and Dense layers) has an all-zero kernel
row for it, which is what `FilterPruningWrapper`'s input mask leaves after `strip()`. Its
filters in the group's convolutions, its BatchNormalization and depthwise channels are then
dead code, so the smaller model computes exactly what the masked one did.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_compress.graph import as_functional, iter_layers
from keras_compress.pruning.groups import analyze_channels
from keras_compress.pruning.wrapper import FilterPruningWrapper, kernel_axes
from keras_compress.wrapper import WeightsWrapper

__all__ = ["remove_pruned_filters", "removable_channels", "slicing_plan"]


def removable_channels(analysis):
    """`{group index: keep mask}` for the prunable groups with channels that nothing reads.

    Args:
        analysis: the `ChannelAnalysis` of a model whose pruning masks are folded into the
            weights (no `FilterPruningWrapper` left).
    """
    masks = {}
    for group in analysis.prunable_groups:
        consumers = analysis.consumer_uses(group)
        if not consumers:
            continue
        dead = np.ones(group.channels, bool)
        for use in consumers:
            kernel = keras.ops.convert_to_numpy(use.base.kernel)
            axis = kernel_axes(use.kind)[1] % kernel.ndim
            zero = np.all(kernel == 0, axis=tuple(a for a in range(kernel.ndim) if a != axis))
            zero = zero.reshape(use.inputs.spatial, use.inputs.channels).all(axis=0)
            offset = 0
            for space, channels in use.inputs.parts:
                if analysis.space_group[space] == group.index:
                    dead &= zero[offset : offset + channels]
                offset += channels
        if dead.all():
            dead[0] = False  # keep one channel: a tensor with no channels cannot run
        if dead.any():
            masks[group.index] = ~dead
    return masks


def slicing_plan(analysis, masks):
    """How each layer's weights are sliced: `{id(layer): (filters, {rank: {axis: indices}})}`.

    `filters` is the new number of filters of a convolution (None otherwise); a weight of rank
    `rank` keeps `indices` along `axis` (negative). Layers with nothing to slice are left out.
    """

    def indices(layout):
        if layout is None:
            return None
        keep = analysis.channel_mask(layout, masks)
        return None if keep.all() else np.flatnonzero(keep)

    plan = {}
    for use in analysis.uses:
        rank = len(use.base.kernel.shape) if hasattr(use.base, "kernel") else None
        inputs = indices(use.inputs)
        if use.kind == "conv":
            outputs = indices(use.outputs)
            axes = {rank: {-2: inputs, -1: outputs}, 1: {-1: outputs}}
            filters = None if outputs is None else len(outputs)
        elif use.kind in ("dense", "conv_transpose"):
            axes, filters = {rank: {kernel_axes(use.kind)[1]: inputs}}, None
        elif use.kind == "depthwise":
            axes, filters = {rank: {-2: inputs}, 1: {-1: inputs}}, None
        elif use.kind == "batchnorm":
            axes, filters = {1: {-1: inputs}}, None
        else:
            continue
        axes = {r: {a: i for a, i in ax.items() if i is not None} for r, ax in axes.items()}
        if any(axes.values()):
            plan[id(use.layer)] = (filters, axes)
    return plan


def remove_pruned_filters(model):
    """Returns a new model without the pruned filters, or `model` itself when none are pruned.

    Works from the model alone: the masks of `FilterPruningWrapper`s (folded into the weights
    first, on a copy) or the zero kernel rows they left after `strip()`. Pruned convolutions get
    fewer filters; their BatchNormalization, depthwise convolutions and the input channels of
    the next Conv/Dense layers (through Flatten and global pooling) shrink with them. Weight
    quantizers (`QuantizeWrapper`) keep their place, with per-channel ranges sliced. The model
    passed in is not changed.

    Args:
        model: a Sequential or Functional model (compressed, stripped, or loaded from a file).

    Returns:
        A `keras.Model` whose outputs equal the masked model's (up to float rounding).

    Example:
        ```python
        small = remove_pruned_filters(ctrl.strip())
        small.count_params()
        ```
    """
    model = as_functional(model)
    if any(isinstance(layer, FilterPruningWrapper) for layer in iter_layers(model)):
        model = _fold_pruning_masks(model)
    analysis = analyze_channels(model)
    plan = slicing_plan(analysis, removable_channels(analysis))
    if not plan:
        return model
    pairs = []

    def clone_function(layer):
        if id(layer) in plan:
            filters, axes = plan[id(layer)]
            new = layer.__class__.from_config(_config_with_filters(layer.get_config(), filters, axes))
            pairs.append((layer, new))
            return new
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops operation (`x + y`): stateless, shared
        if not layer.weights:
            return layer.__class__.from_config(layer.get_config())
        return layer

    smaller = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for old, new in pairs:
        _assign_sliced(old, new, plan[id(old)][1])
    return smaller


def _fold_pruning_masks(model):
    """A copy of `model` with every `FilterPruningWrapper` folded into its layer's weights."""
    copy = keras.models.clone_model(model, recursive=True)
    copy.set_weights(model.get_weights())

    def drop(layer):
        if isinstance(layer, FilterPruningWrapper):
            return drop(layer.strip())
        if isinstance(layer, WeightsWrapper):
            inner = drop(layer.layer)
            return layer if inner is layer.layer else layer.rewrap(inner)
        return layer

    return keras.models.clone_model(copy, clone_function=drop, recursive=True)


def _config_with_filters(config, filters, axes):
    """A layer config (wrappers descended) without build state, with `filters` set if given and the
    constant per-channel ranges of a stripped quantizer (`frozen_ranges`) sliced like the weights."""
    config = dict(config)
    config.pop("build_config", None)
    if config.get("frozen_ranges"):
        config["frozen_ranges"] = {
            weight: {key: _sliced(value, axes) for key, value in ranges.items()}
            for weight, ranges in config["frozen_ranges"].items()
        }
    if "layer" in config:
        inner = dict(config["layer"])
        inner.pop("build_config", None)
        inner["config"] = _config_with_filters(inner["config"], filters, axes)
        config["layer"] = inner
    elif filters is not None:
        config["filters"] = filters
    return config


def _sliced(value, axes):
    """A per-channel range (nested lists, 1 on the axes it does not vary along) sliced like a weight."""
    value = np.asarray(value, "float32")
    for axis, index in axes.get(value.ndim, {}).items():
        if value.shape[axis] != 1:
            value = np.take(value, index, axis=axis)
    return value.tolist()


def _assign_sliced(old, new, axes):
    """Copies `old`'s weights into the smaller `new` layer, slicing the pruned axes."""
    for source, target in zip(old.weights, new.weights):
        value = keras.ops.convert_to_numpy(source)
        for axis in range(value.ndim):
            if value.shape[axis] != target.shape[axis]:
                index = axes.get(value.ndim, {}).get(axis - value.ndim)
                if index is None or len(index) != target.shape[axis]:
                    raise ValueError(
                        f"Cannot slice weight {source.path!r} of shape {value.shape} to "
                        f"{tuple(target.shape)}: no pruned channels for axis {axis}."
                    )
                value = np.take(value, index, axis=axis)
        target.assign(value)
