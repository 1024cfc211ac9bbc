"""FLOPs and parameter counts of a model, before and after pruning: pure functions.

FLOPs count the multiply-adds of convolutions and Dense layers twice (2 * MACs), as NNCF
does; other layers are not counted. Parameters are every weight of the model's own layers
(wrapper and fake-quantizer variables are not counted).
"""

from __future__ import annotations

import math

__all__ = ["conv_flops", "depthwise_flops", "dense_flops", "layer_cost", "model_costs", "total_cost"]


def conv_flops(positions: int, kernel_area: int, in_channels: int, out_channels: int, groups: int = 1) -> int:
    """FLOPs of a convolution with `positions` output positions.

    Example:
        >>> conv_flops(positions=100, kernel_area=9, in_channels=3, out_channels=8)
        43200
    """
    return 2 * positions * kernel_area * in_channels * out_channels // groups


def depthwise_flops(positions: int, kernel_area: int, channels: int, multiplier: int = 1) -> int:
    """FLOPs of a depthwise convolution."""
    return 2 * positions * kernel_area * channels * multiplier


def dense_flops(positions: int, in_features: int, units: int) -> int:
    """FLOPs of a Dense layer applied at `positions` positions (1 for a 2D input)."""
    return 2 * positions * in_features * units


def layer_cost(use, in_width, out_width):
    """`(flops, params)` of one `LayerUse` with `in_width` input and `out_width` output channels.

    Args:
        use: a `keras_compress.pruning.groups.LayerUse`.
        in_width: size of the input's last axis (after pruning).
        out_width: size of the output's last axis (filters after pruning; conv only).
    """
    base = use.base
    bias = 1 if getattr(base, "use_bias", False) else 0
    if use.kind == "conv":
        area = math.prod(base.kernel_size)
        params = area * in_width * out_width + bias * out_width
        return conv_flops(use.positions, area, in_width, out_width), params
    if use.kind == "depthwise":
        area = math.prod(base.kernel_size)
        return depthwise_flops(use.positions, area, in_width), area * in_width + bias * in_width
    if use.kind == "dense":
        return dense_flops(use.positions, in_width, base.units), in_width * base.units + bias * base.units
    if use.kind == "conv_transpose":
        area = math.prod(base.kernel_size)
        params = area * in_width * base.filters + bias * base.filters
        return conv_flops(use.positions, area, in_width, base.filters), params
    if use.kind == "batchnorm":
        return 0, len(base.weights) * in_width
    return 0, sum(math.prod(w.shape) for w in base.weights)


def model_costs(analysis, kept=None):
    """`{layer name: (flops, params)}` for every layer with weights.

    Args:
        analysis: a `ChannelAnalysis`.
        kept: `{group index: kept channels}`; groups not listed are whole (default: none pruned).
    """
    kept = kept or {}
    costs = {}
    for use in analysis.uses:
        in_width = analysis.width(use.inputs, kept) if use.inputs is not None else 0
        out_width = analysis.width(use.outputs, kept) if use.outputs is not None else 0
        flops, params = layer_cost(use, in_width, out_width)
        old = costs.get(use.name, (0, 0))
        costs[use.name] = (old[0] + flops, max(old[1], params))
    return costs


def total_cost(costs):
    """`(flops, params)` summed over `model_costs`."""
    return sum(c[0] for c in costs.values()), sum(c[1] for c in costs.values())
