"""Pruning groups: which channels of a model must be pruned together, read from its graph.

Every tensor's last axis is described by a `Layout`: the channel *spaces* it is made of. A
convolution creates a new space (its filters); channel-wise layers (BatchNormalization,
activations, pooling, padding, dropout, depthwise convolutions, fake quantizers) pass their
input's layout on; `Add` and the other element-wise merges join the spaces of their inputs
(pruned together, with the same indices); `Concatenate` lines the spaces of its inputs up (each
part is pruned on its own); `Flatten` repeats the layout once per spatial position. The next
convolution or Dense layer *consumes* the layout: its input channels are sliced with it.

A group (the spaces joined by merges) can be pruned when it is made only of the filters of
selected convolutions and every use of it can be sliced. Anything else (a Reshape, a model
output, a custom layer, a first convolution joined by an Add) leaves it alone, with the reason.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from keras_compress.compressible import compressible_spec
from keras_compress.graph import as_functional, node_role, node_weights, trace_graph
from keras_compress.pruning.wrapper import kernel_axes
from keras_compress.wrapper import unwrap

__all__ = ["Layout", "PruningGroup", "LayerUse", "ChannelAnalysis", "analyze_channels"]

#: Node roles that act on each channel on its own: the output has the input's channel layout.
CHANNELWISE_ROLES = ("identity", "spatial", "average_pool", "channelwise", "activation")
#: Compressible-layer kinds whose input channels can be sliced.
CONSUMER_KINDS = ("conv", "dense", "conv_transpose")


@dataclasses.dataclass(frozen=True)
class Layout:
    """The channel spaces along a tensor's last axis.

    Attributes:
        parts: `(space id, channels)` pairs in order (one pair, or several after Concatenate).
        spatial: how many times the parts repeat along the axis (positions folded in by Flatten).
    """

    parts: tuple
    spatial: int = 1

    @property
    def channels(self):
        return sum(c for _, c in self.parts)

    @property
    def size(self):
        return self.spatial * self.channels


@dataclasses.dataclass
class PruningGroup:
    """Channels pruned together: the filters of `sources`, joined by element-wise merges.

    Attributes:
        index: position in `ChannelAnalysis.groups`.
        channels: number of channels (filters of each source).
        sources: names of the convolutions whose filters these are (same indices in each).
        reason: why the group cannot be pruned, or None when it can.
    """

    index: int
    channels: int
    sources: list
    reason: str | None = None

    @property
    def prunable(self):
        return self.reason is None


@dataclasses.dataclass
class LayerUse:
    """One call of a layer with weights, and the channel layouts it reads and writes.

    Attributes:
        name: the layer's path ("outer/inner" inside nested models).
        layer: the layer in the model (a wrapper, when wrapped).
        kind: "conv", "depthwise", "dense", "conv_transpose", "batchnorm" or "other".
        inputs: layout of the input (None for "other").
        outputs: layout of the output (None for "other").
        positions: output positions (input positions for "conv_transpose"): FLOPs per channel pair.
    """

    name: str
    layer: object
    kind: str
    inputs: Layout | None
    outputs: Layout | None
    positions: int = 1

    @property
    def base(self):
        return unwrap(self.layer)


class ChannelAnalysis:
    """The pruning groups of a model and how each layer's channels map onto them.

    Attributes:
        groups: every `PruningGroup` (prunable or not).
        uses: a `LayerUse` for every call of a layer with weights, in call order.
        skipped: `{convolution name: reason}` for the convolutions whose filters stay.
    """

    def __init__(self, groups, uses, space_group, skipped):
        self.groups = groups
        self.uses = uses
        self.space_group = space_group
        self.skipped = skipped

    @property
    def prunable_groups(self):
        return [g for g in self.groups if g.prunable]

    def group_of(self, space):
        return self.groups[self.space_group[space]]

    def channel_mask(self, layout, masks):
        """Boolean keep-mask over a layout's full size from `{group index: keep mask}`.

        Parts of groups missing from `masks` are kept whole.
        """
        parts = []
        for space, channels in layout.parts:
            mask = masks.get(self.space_group[space])
            parts.append(np.ones(channels, bool) if mask is None else np.asarray(mask, bool))
        return np.tile(np.concatenate(parts) if parts else np.zeros(0, bool), layout.spatial)

    def width(self, layout, kept):
        """Size of a layout with `{group index: kept channels}` applied."""
        return layout.spatial * sum(kept.get(self.space_group[s], c) for s, c in layout.parts)

    def source_uses(self, group):
        """The `LayerUse`s of a group's source convolutions."""
        return [u for u in self.uses if u.kind == "conv" and u.name in group.sources]

    def consumer_uses(self, group):
        """The `LayerUse`s whose input channels include the group's."""
        return [
            u
            for u in self.uses
            if u.kind in CONSUMER_KINDS and any(self.space_group[s] == group.index for s, _ in u.inputs.parts)
        ]


@dataclasses.dataclass
class _Space:
    channels: int
    source: str | None  # the conv whose filters these are, when prunable
    origin: str  # "conv", "input" (derived from a model input only) or "other"
    note: str | None = None  # why a non-source space is not prunable


class _Builder:
    """Union-find over channel spaces, filled by walking the layer calls."""

    def __init__(self, source_reason, consumer_reason):
        self.source_reason = source_reason or (lambda layer, path, first: None)
        self.consumer_reason = consumer_reason or (lambda layer: None)
        self.spaces = []
        self.parent = []
        self.blocked = {}  # space id -> reason (resolved to roots at the end)
        self.uses = []
        self.skipped = {}

    def new(self, channels, origin, source=None, note=None):
        self.spaces.append(_Space(int(channels or 0), source, origin, note))
        self.parent.append(len(self.parent))
        return Layout(((len(self.spaces) - 1, int(channels or 0)),))

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)

    def block(self, layouts, reason):
        for layout in layouts:
            for space, _ in layout.parts:
                self.blocked.setdefault(space, reason)

    def origin(self, layouts):
        """"input" when every channel of `layouts` comes from model inputs only, else "other"."""
        spaces = [s for layout in layouts for s, _ in layout.parts]
        return "input" if spaces and all(self.spaces[s].origin == "input" for s in spaces) else "other"

    def fixed(self, layouts, shapes, note):
        """New non-prunable spaces for outputs of a layer nothing can be pruned through."""
        origin = self.origin(layouts)
        return [self.new(_channels(shape), origin, note=note) for shape in shapes]

    # ------------------------------------------------------------------ graph walk
    def walk(self, model, path, input_origin="input"):
        graph = trace_graph(model)
        layouts = {}
        for ref, tensor in zip(graph.inputs, keras.tree.flatten(model.inputs)):
            layouts[ref] = self.new(_channels(tensor.shape), input_origin, note="model input")
        counts = {}
        for call in graph.calls:
            counts[id(call.layer)] = counts.get(id(call.layer), 0) + 1
        for call in graph.calls:
            ins = [layouts[r] for r in call.inputs]
            outs = self.visit(call, ins, path, counts[id(call.layer)] > 1)
            for j, layout in enumerate(outs):
                layouts[(call.index, j)] = layout
        for ref in graph.outputs:
            self.block([layouts[ref]], "model output")

    def visit(self, call, ins, path, shared):
        layer = call.layer
        base = unwrap(layer)
        name = f"{path}{layer.name}"
        shapes = _output_shapes(layer, call.num_outputs)
        cls = type(base).__name__
        role = node_role(base, len(call.inputs), call.scalar_constants)
        channels_first = getattr(base, "data_format", "channels_last") == "channels_first"
        if role == "model":
            self.block(ins, f"input of nested model {name!r}")
            self.walk(as_functional(base), f"{name}/", input_origin=self.origin(ins))
            return self.fixed(ins, shapes, f"output of nested model {name!r}")
        if role in CHANNELWISE_ROLES and not channels_first:  # a shared fake quantizer included
            return [ins[0]]
        weights = node_weights(base)
        if shared and weights:
            self.block(ins, f"input of shared layer {name!r}")
            self.other(name, layer)
            return self.fixed(ins, shapes, f"output of shared layer {name!r}")
        spec = compressible_spec(base)
        kind = spec.kind if spec is not None else None
        if kind in CONSUMER_KINDS and not channels_first and getattr(base, "groups", 1) == 1:
            return self.consumer(layer, base, name, kind, ins[0], shapes)
        if kind == "depthwise" and not channels_first and base.depth_multiplier == 1 and ins[0].spatial == 1:
            self.uses.append(LayerUse(name, layer, "depthwise", ins[0], ins[0], _positions(shapes[0])))
            return [ins[0]]
        if role == "batchnorm" and _is_last_axis(base.axis, shapes[0]):
            self.uses.append(LayerUse(name, layer, "batchnorm", ins[0], ins[0]))
            return [ins[0]]
        if isinstance(base, keras.layers.Flatten) and not channels_first:
            return [self.flatten(layer, ins[0], name)]
        if role == "merge":
            return [self.merge(ins, shapes, name, cls)]
        if role == "concat":
            if _is_last_axis(getattr(base, "axis", None), shapes[0]) and all(layout.spatial == 1 for layout in ins):
                return [Layout(tuple(p for layout in ins for p in layout.parts))]
            return [self.merge(ins, shapes, name, cls)]
        if weights:
            self.other(name, layer)
        self.block(ins, f"feeds {cls} {name!r}")
        return self.fixed(ins, shapes, f"output of {cls} {name!r}")

    def other(self, name, layer):
        if all(u.layer is not layer for u in self.uses):
            self.uses.append(LayerUse(name, layer, "other", None, None))

    def consumer(self, layer, base, name, kind, layout, shapes):
        """A Conv/Dense layer reads `layout`; a convolution also creates its filters' space."""
        reason = self.consumer_reason(layer)
        rows = base.kernel.shape[kernel_axes(kind)[1]]
        if reason is None and rows != layout.size:
            reason = f"{name!r} has {rows} input channels where {layout.size} were expected"
        if reason is not None:
            self.block([layout], reason)
        positions = _positions(shapes[0])
        if kind == "conv_transpose":
            positions = _positions(_input_shape(layer))
        if kind != "conv":
            self.uses.append(LayerUse(name, layer, kind, layout, None, positions))
            return self.fixed([layout], shapes, f"output of {type(base).__name__} {name!r}")
        reason = self.source_reason(base, name, self.origin([layout]) == "input")
        if reason is None:
            out = self.new(base.filters, "conv", source=name)
        else:
            self.skipped[name] = reason
            out = self.new(base.filters, "conv", note=f"{name!r} is not pruned ({reason})")
        self.uses.append(LayerUse(name, layer, "conv", layout, out, positions))
        return [out]

    def flatten(self, layer, layout, name):
        spatial = _input_shape(layer)[1:-1]
        if any(d is None for d in spatial):
            self.block([layout], f"feeds Flatten {name!r} with an unknown spatial size")
            return self.new(None, "other", note=f"output of Flatten {name!r}")
        return Layout(layout.parts, layout.spatial * math.prod(spatial))

    def merge(self, ins, shapes, name, cls):
        first = ins[0]
        same = all(
            layout.spatial == first.spatial and [c for _, c in layout.parts] == [c for _, c in first.parts]
            for layout in ins
        )
        if not same:
            self.block(ins, f"joined by {cls} {name!r} with different channel layouts")
            return self.fixed(ins, shapes, f"output of {cls} {name!r}")[0]
        for layout in ins[1:]:
            for (a, _), (b, _) in zip(layout.parts, first.parts):
                self.union(a, b)
        return first

    # ------------------------------------------------------------------ result
    def result(self):
        roots = {}
        for s in range(len(self.spaces)):
            roots.setdefault(self.find(s), []).append(s)
        groups, space_group = [], {}
        for members in roots.values():
            spaces = [self.spaces[s] for s in members]
            sources = [sp.source for sp in spaces if sp.source is not None]
            reason = next((self.blocked[s] for s in members if s in self.blocked), None)
            if reason is None:
                reason = next((sp.note for sp in spaces if sp.source is None), None)
            if reason is None and not sources:
                reason = "no prunable convolution"
            group = PruningGroup(len(groups), spaces[0].channels, sources, reason)
            for s in members:
                space_group[s] = group.index
            groups.append(group)
        skipped = dict(self.skipped)
        for group in groups:
            if not group.prunable:
                for source in group.sources:
                    skipped[source] = group.reason
        return ChannelAnalysis(groups, self.uses, space_group, skipped)


def analyze_channels(model, source_reason=None, consumer_reason=None):
    """Finds the pruning groups of a Sequential or Functional model (nested models included).

    Args:
        model: a `keras.Model`; layers may be wrapped (`FilterPruningWrapper`,
            `QuantizeWrapper`) and fake quantizers may sit between them.
        source_reason: optional `(conv_layer, name, is_first) -> str | None`: why a convolution's
            filters must not be pruned (`is_first`: no other convolution between it and a
            model input), or None to make it prunable. Default: every convolution is.
        consumer_reason: optional `(layer) -> str | None`: why a Conv/Dense layer's input
            channels cannot be sliced (for example it carries no input mask).

    Returns:
        A `ChannelAnalysis`.

    Example:
        >>> x = keras.Input((8, 8, 3))
        >>> y = keras.layers.Conv2D(16, 3, name="a")(x)
        >>> y = keras.layers.Conv2D(4, 1, name="b")(keras.layers.ReLU()(y))
        >>> analysis = analyze_channels(keras.Model(x, keras.layers.Flatten()(y)))
        >>> [(g.sources, g.prunable) for g in analysis.groups if g.sources]
        [(['a'], True), (['b'], False)]
    """
    builder = _Builder(source_reason, consumer_reason)
    builder.walk(as_functional(model), "")
    return builder.result()


# ---------------------------------------------------------------------------------- helpers
def _channels(shape):
    return shape[-1] if shape else None


def _output_shapes(layer, num_outputs):
    try:
        outputs = keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):
        return [None] * num_outputs
    shapes = [tuple(t.shape) for t in outputs]
    return shapes + [None] * (num_outputs - len(shapes))


def _input_shape(layer):
    return tuple(keras.tree.flatten(layer.input)[0].shape)


def _positions(shape):
    if shape is None:
        return 1
    return math.prod(d or 1 for d in shape[1:-1])


def _is_last_axis(axis, shape):
    if axis is None:
        return False
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return shape is not None and len(axes) == 1 and axes[0] % len(shape) == len(shape) - 1
