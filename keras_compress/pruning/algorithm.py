"""Filter pruning (config `"algorithm": "filter_pruning"`): masks during fine-tuning, surgery at export."""

from __future__ import annotations

import logging

import keras
import numpy as np

from keras_compress.algorithm import CompressionAlgorithm
from keras_compress.compressible import compressible_spec, unsupported_reason
from keras_compress.graph import is_graph_model
from keras_compress.pruning.flops import model_costs, total_cost
from keras_compress.pruning.groups import analyze_channels
from keras_compress.pruning.importance import FILTER_IMPORTANCE_FUNCTIONS, l2_normalized
from keras_compress.pruning.masks import (
    PRUNING_QUOTA,
    find_global_count,
    find_uniform_level,
    global_order,
    masks_from_order,
    uniform_masks,
)
from keras_compress.pruning.surgery import remove_pruned_filters
from keras_compress.pruning.wrapper import MASKED_KINDS, FilterPruningWrapper
from keras_compress.schedules import pruning_schedule
from keras_compress.selection import in_scope
from keras_compress.wrapper import WeightsWrapper

__all__ = ["FilterPruningAlgorithm"]

logger = logging.getLogger("keras_compress")


class FilterPruningAlgorithm(CompressionAlgorithm):
    """NNCF-style filter pruning whose pruned filters are really removed at export.

    Every Conv/Dense layer gets a `FilterPruningWrapper`. The schedule raises the pruning level
    once per epoch; each change recomputes the filter importance of every prunable group (summed
    over the group's convolutions) and sets the masks: the group's filters in its convolutions
    and the matching input channels of the layers that read them. `strip` removes them.

    Args:
        config: the `FilterPruningConfig` section.
        target_device: the config's `target_device` (unused).
    """

    name = "filter_pruning"
    needs_graph = True
    layer_types = (FilterPruningWrapper,)
    adaptive = True
    progress_figures = ("pruning_level", "filter_level", "pruned_filters", "flops_ratio")
    compresses = "convolution filters (Conv1D/2D/3D, their channels in the layers that read them)"

    def __init__(self, config, target_device="ANY", config_path=("compression",)):
        super().__init__(config, target_device, config_path)
        params = config.params
        self.flops_mode = params.pruning_flops_target is not None
        target = params.pruning_flops_target if self.flops_mode else params.pruning_target
        scheduled = params.model_copy(update={"pruning_target": target})
        self.schedule = pruning_schedule(scheduled, config.pruning_init)
        self.importance = FILTER_IMPORTANCE_FUNCTIONS[params.filter_importance]
        self.level = None  # the level the masks were last set for (a FLOPs share in FLOPs mode)
        self.filter_level = None  # the uniform filter level found in FLOPs mode
        self.epoch = None
        self.scheduled = True  # False once `set_level` overrides the schedule
        self._cache = (None, None)
        self.in_containers = {}  # id(layer) -> the container whose call() uses it (not pruned)
        self.container_skipped = {}  # layer path -> reason

    # ----------------------------------------------------------------- transform hooks
    def plan(self, graph, path):
        """Notes the layers a composite layer calls in its `call()` (a graph recorded from a forward
        pass, not a graph model's): their filters are not pruned (see `wrap`)."""
        owner = graph.owner
        inside = owner is not None and (not is_graph_model(owner) or id(owner) in self.in_containers)
        if inside:  # a container's graph, or a graph model a container calls
            name = self.in_containers.get(id(owner), owner.name)
            for node in graph.calls:
                if isinstance(node.layer, keras.layers.Layer):
                    self.in_containers[id(node.layer)] = name
        return None

    def wrap(self, original, layer, path):
        """Wraps Conv/Dense layers (the fresh copy `layer` of `original`) in a `FilterPruningWrapper`."""
        spec = compressible_spec(original)
        if spec is None or unsupported_reason(original) is not None:
            return layer
        if id(original) in self.in_containers:
            self.container_skipped[f"{path}{original.name}"] = (
                f"inside composite layer {self.in_containers[id(original)]!r}: the operations of its call() that "
                "join channels (residual adds, reshapes) are not visible, so no filter group can be formed"
                if spec.kind in MASKED_KINDS
                else f"{spec.kind} layers are not pruned (only convolution filters are)"
            )
            return layer
        if spec.kind not in MASKED_KINDS:
            return layer
        return FilterPruningWrapper(layer)

    # ----------------------------------------------------------------- groups
    def source_reason(self, layer, name, first):
        """Why a convolution's filters are not pruned under this config, or None."""
        cfg, params = self.config, self.config.params
        if not in_scope([layer.name, name], cfg.target_scopes, cfg.ignored_scopes):
            return "excluded by scopes"
        if first and not params.prune_first_conv:
            return "first convolution (prune_first_conv is false)"
        if any(s > 1 for s in layer.strides) and not params.prune_downsample_convs:
            return "downsampling convolution (prune_downsample_convs is false)"
        return None

    def analysis(self, model):
        """The `ChannelAnalysis` of `model` under this config (cached for the last model)."""
        if self._cache[0] is not model:
            analysis = analyze_channels(model, self.source_reason, _consumer_reason)
            self._cache = (model, analysis)
        return self._cache[1]

    # ----------------------------------------------------------------- masks
    def set_pruning_level(self, model, level):
        """Recomputes importances and sets the masks of `model` for `level`.

        `level` is the share of filters pruned in each group, or with `pruning_flops_target`
        the share of FLOPs to remove. With `all_weights`, filters are ranked across groups.
        """
        analysis = self.analysis(model)
        groups = analysis.prunable_groups
        if level > 0 and groups:
            masks = self._select(analysis, groups, level)
        else:
            masks, self.filter_level = [np.ones(g.channels, bool) for g in groups], 0.0
        self._assign(analysis, {g.index: m for g, m in zip(groups, masks)})
        self.level = float(level)

    def _select(self, analysis, groups, level):
        """Keep-masks of `groups` for `level` under this config."""
        importances = [self._group_importance(analysis, g) for g in groups]
        sizes = [g.channels for g in groups]

        def removed(masks):
            return self._removed(analysis, groups, masks)

        if self.config.params.all_weights:
            order = global_order(importances, PRUNING_QUOTA)
            if not self.flops_mode:
                return masks_from_order(sizes, order, min(int(level * sum(sizes)), len(order)))
            count, reached = find_global_count(
                lambda k: removed(masks_from_order(sizes, order, k)), level, len(order)
            )
            self._warn_unreached(reached, level)
            return masks_from_order(sizes, order, count)
        if not self.flops_mode:
            return uniform_masks(importances, level)
        self.filter_level, reached = find_uniform_level(lambda p: removed(uniform_masks(importances, p)), level)
        self._warn_unreached(reached, level)
        return uniform_masks(importances, self.filter_level)

    def _group_importance(self, analysis, group):
        total = np.zeros(group.channels)
        for use in analysis.source_uses(group):
            kernel = keras.ops.convert_to_numpy(use.base.kernel)
            if self.config.params.all_weights:
                kernel = l2_normalized(kernel)
            total += self.importance(kernel, axis=-1)
        return total

    def _removed(self, analysis, groups, masks):
        full = total_cost(model_costs(analysis))[0]
        kept = {g.index: int(m.sum()) for g, m in zip(groups, masks)}
        return 1.0 - total_cost(model_costs(analysis, kept))[0] / full if full else 0.0

    def _warn_unreached(self, reached, level):
        if not reached:
            logger.warning(
                "filter_pruning cannot remove %.0f%% of the FLOPs: the prunable groups hold too "
                "few of them. Pruning as far as possible.",
                100 * level,
            )

    def _assign(self, analysis, masks):
        for group in analysis.prunable_groups:
            mask = masks[group.index].astype("float32")
            for use in analysis.source_uses(group):
                _pruning_wrapper(use.layer).filter_mask.assign(mask)
        for use in analysis.uses:
            wrapper = _pruning_wrapper(use.layer)
            if wrapper is None or use.inputs is None or use.inputs.size != wrapper.input_mask.shape[0]:
                continue  # (a size mismatch blocks the layout's groups in the analysis)
            wrapper.input_mask.assign(analysis.channel_mask(use.inputs, masks).astype("float32"))

    def current_masks(self, model):
        """`{group index: keep mask}` read from the filter masks of the group's convolutions."""
        analysis = self.analysis(model)
        masks = {}
        for group in analysis.prunable_groups:
            uses = analysis.source_uses(group)
            wrapper = _pruning_wrapper(uses[0].layer) if uses else None
            if wrapper is not None:
                masks[group.index] = keras.ops.convert_to_numpy(wrapper.filter_mask) > 0.5
        return masks

    # ----------------------------------------------------------------- schedule hooks
    def on_compress(self, model):
        """Sets the masks for epoch 0 right after `kc.compress` (before range init)."""
        self.on_epoch_begin(model, 0)

    def restore(self, model, epoch):
        """The masks are the model's; the level they were set for is the schedule's at `epoch`."""
        self.epoch = int(epoch)
        self.level = float(self.schedule(epoch))

    def on_train_begin(self, model):
        self.analysis(model)

    def on_epoch_begin(self, model, epoch):
        """Moves the schedule to `epoch`; new masks whenever the level changes."""
        self.epoch = int(epoch)
        if not self.scheduled:
            return
        level = float(self.schedule(epoch))
        if self.level is None or abs(level - self.level) > 1e-9:
            self.set_pruning_level(model, level)

    def set_level(self, model, level):
        """Overrides the schedule (accuracy-aware training): masks for `level` now."""
        self.scheduled = False
        self.set_pruning_level(model, level)

    def target_level(self):
        """The pruning target (a FLOPs share with `pruning_flops_target`)."""
        return float(self.schedule.target)

    # ----------------------------------------------------------------- statistics and export
    def statistics(self, model):
        """Figures and a per-layer table of filters, parameters and FLOPs (full vs current)."""
        analysis = self.analysis(model)
        masks = self.current_masks(model)
        kept = {index: int(mask.sum()) for index, mask in masks.items()}
        full, now = model_costs(analysis), model_costs(analysis, kept)
        (full_flops, full_params), (flops, params) = total_cost(full), total_cost(now)
        rows, total, pruned = [], 0, 0
        for use in analysis.uses:
            if use.kind == "conv":
                group = analysis.group_of(use.outputs.parts[0][0])
                k = kept.get(group.index, group.channels)
                if group.prunable:
                    total, pruned = total + group.channels, pruned + group.channels - k
                (f0, p0), (f1, p1) = full[use.name], now[use.name]
                rows.append([use.name, k, group.channels, p0, p1, f0, f1])
        figures = {
            "pruning_level": float(self.level or 0.0),
            "pruned_filters": pruned,
            "filter_pruning_rate": pruned / total if total else 0.0,
            "flops_ratio": flops / full_flops if full_flops else 1.0,
            "params_ratio": params / full_params if full_params else 1.0,
            "flops": flops,
            "full_flops": full_flops,
            "params": params,
            "full_params": full_params,
        }
        if self.flops_mode:
            figures["filter_level"] = float(self.filter_level or 0.0)
        header = ["layer", "filters kept", "filters", "params full", "params now", "FLOPs full", "FLOPs now"]
        skipped = {**self.container_skipped, **analysis.skipped}
        for use in analysis.uses:
            spec = compressible_spec(use.base)
            if use.kind == "other" and spec is not None:
                # Attention, embeddings, separable convolutions: their own weights are not pruned, and
                # the channels they read stay (see the groups' reasons).
                groups = getattr(use.base, "groups", 1)
                reason = (
                    f"grouped convolution (groups={groups}) is not pruned"
                    if groups != 1
                    else f"{spec.kind} layers are not pruned (only convolution filters are)"
                )
                skipped.setdefault(use.name, reason)
        return {"figures": figures, "filters": (header, rows), "skipped": skipped}

    @classmethod
    def export_model(cls, model):
        """Removes the pruned filters from a stripped model (see `remove_pruned_filters`)."""
        return remove_pruned_filters(model)


def _pruning_wrapper(layer):
    while isinstance(layer, WeightsWrapper):
        if isinstance(layer, FilterPruningWrapper):
            return layer
        layer = layer.layer
    return None


def _consumer_reason(layer):
    if _pruning_wrapper(layer) is None:
        return f"{layer.name!r} reads the channels but has no FilterPruningWrapper"
    return None
