"""Magnitude, RB and movement sparsity algorithms: which layers, schedules, statistics."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_compress.algorithm import CompressionAlgorithm
from keras_compress.graph import iter_layers
from keras_compress.schedules import AdaptiveSchedule, sparsity_schedule
from keras_compress.selection import LayerSelection, in_scope, matches_scope
from keras_compress.sparsity.functions import magnitude_masks, sparsity_level
from keras_compress.sparsity.wrappers import (
    MagnitudeSparsityWrapper,
    MovementSparsityWrapper,
    RBSparsityWrapper,
)
from keras_compress.wrapper import exported_entries, unwrap

__all__ = ["MagnitudeSparsityAlgorithm", "RBSparsityAlgorithm", "MovementSparsityAlgorithm"]


class _SparsityAlgorithm(CompressionAlgorithm):
    """Shared parts: layer selection by type and scopes, schedule bookkeeping, statistics."""

    name = ""
    wrapper_class = None
    adaptive = True
    progress_figures = ("target_level", "sparsity_level")
    compresses = "weights of Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose, Dense, EinsumDense, Embedding"
    kinds = (
        "conv", "depthwise", "separable", "conv_transpose", "dense", "einsum_dense", "embedding",
        "reversible_embedding", "custom",
    )  # fmt: skip

    def __init__(self, config, target_device="ANY", config_path=("compression",)):
        super().__init__(config, target_device, config_path)
        self.selection = LayerSelection(
            self.kinds,
            lambda names: in_scope(names, config.target_scopes, config.ignored_scopes),
            f"{{kind}} layers are not sparsified by {self.name}",
        )
        self.level = 0.0
        self.epoch = 0.0
        self.steps_per_epoch = getattr(config.params, "steps_per_epoch", None)

    # ----------------------------------------------------------------- selection
    @property
    def skipped(self):
        """`{layer path: reason}` of the layers left dense."""
        return self.selection.skipped

    def wrap(self, original, layer, path):
        if not self.selection.selects(original, path):
            return layer
        return self.make_wrapper(original, layer, path)

    def make_wrapper(self, original, layer, path):
        return self.wrapper_class(layer)

    def wrappers(self, model):
        return [layer for layer in iter_layers(model) if isinstance(layer, self.wrapper_class)]

    # ----------------------------------------------------------------- schedule
    def set_steps_per_epoch(self, steps):
        if self.steps_per_epoch is None and steps:
            self.steps_per_epoch = int(steps)

    #: False once accuracy-aware training took over the level (`set_level`).
    scheduled = True

    def on_epoch_begin(self, model, epoch):
        self.epoch = float(epoch)
        if self.scheduled:
            self.update(model)

    def on_train_batch_begin(self, model, step):
        if self.scheduled and self.per_step and self.steps_per_epoch:
            self.epoch = step / self.steps_per_epoch
            self.update(model)

    per_step = False

    def update(self, model):
        """Applies the schedule at `self.epoch`."""

    # ----------------------------------------------------------------- statistics
    def statistics(self, model):
        """Sparsity of the weights that survive export (pruned filters, removed at export, are not
        counted: their zeros are not in the exported model)."""
        rows, effective = [], []
        layers = list(iter_layers(model))
        for wrapper in self.wrappers(model):
            weights = wrapper.effective_weights(training=False)
            kept = exported_entries(layers, wrapper)
            arrays = [_kept(ops.convert_to_numpy(weights[a]), kept.get(a)) for a in wrapper.weight_names]
            effective += arrays
            rows.append([wrapper.name, sum(a.size for a in arrays), sparsity_level(arrays)])
        figures = {
            "target_level": float(self.level),
            "sparsity_level": sparsity_level(effective),
            "sparsified_layers": len(rows),
        }
        return {
            "figures": figures,
            "layers": (["layer", "weights", "sparsity"], rows),
            "skipped": dict(self.skipped),
        }


def _kept(array, kept):
    """The entries of `array` that survive export (all of them when `kept` is None)."""
    return array if kept is None else array[kept]


class _ScheduledSparsity(_SparsityAlgorithm):
    """Magnitude and RB sparsity: a level schedule from `params`, frozen at `sparsity_freeze_epoch`.

    Subclasses define `apply_level(model, level)`: what reaching a level means for them.
    """

    def __init__(self, config, target_device="ANY", config_path=("compression",)):
        super().__init__(config, target_device, config_path)
        self.schedule = sparsity_schedule(config.params, config.sparsity_init)
        self.per_step = config.params.update_per_optimizer_step
        self.level = self.schedule(0)

    def update(self, model):
        if self.epoch >= self.config.params.sparsity_freeze_epoch:
            return
        if isinstance(self.schedule, AdaptiveSchedule):
            self.schedule.observe(int(self.epoch), self.statistics(model)["figures"]["sparsity_level"])
        self.level = self.schedule(self.epoch)
        self.apply_level(model, self.level)

    def set_level(self, model, level):
        """Overrides the schedule (accuracy-aware training): `level` from now on."""
        self.scheduled = False
        self.level = level
        self.apply_level(model, level)

    def target_level(self):
        """The schedule's final sparsity level."""
        return float(self.schedule.target)

    def restore(self, model, epoch):
        """Continues from the level the model's masks (or loss targets) were last set for."""
        self.epoch = float(epoch)
        applied = self.applied_level(model)
        if applied is not None and applied >= 0:
            self.level = applied
            if isinstance(self.schedule, AdaptiveSchedule):
                self.schedule.level = applied
                self.schedule.last_epoch = int(epoch)



class MagnitudeSparsityAlgorithm(_ScheduledSparsity):
    """Magnitude sparsity: zero the smallest weights; the level follows the schedule.

    Masks are recomputed from the weights whenever the scheduled level changes (per epoch, or
    per optimizer step with `update_per_optimizer_step`), globally (one threshold over all
    sparsified weights) or locally (each layer at the level), until `sparsity_freeze_epoch`.
    """

    name = "magnitude_sparsity"
    wrapper_class = MagnitudeSparsityWrapper
    layer_types = (MagnitudeSparsityWrapper,)

    def on_compress(self, model):
        self.compute_masks(model, self.level)

    def applied_level(self, model):
        wrappers = self.wrappers(model)
        return float(ops.convert_to_numpy(wrappers[0].mask_level)) if wrappers else None

    def apply_level(self, model, level):
        """Recomputes the masks unless they are already those of `level` (e.g. after a resume)."""
        applied = self.applied_level(model)
        if applied is None or abs(level - applied) > 1e-6:
            self.compute_masks(model, level)

    def compute_masks(self, model, level):
        """Sets every mask so that `level` of the sparsified weights that survive export are zero.

        Entries that export removes (pruned filters) are left out of the ranking, so the level is
        that of the exported weights.
        """
        wrappers = self.wrappers(model)
        layers = list(iter_layers(model))
        pairs, weights, kept = [], [], []
        for wrapper in wrappers:
            survive = exported_entries(layers, wrapper)
            for attr in wrapper.weight_names:
                w = ops.convert_to_numpy(getattr(unwrap(wrapper), attr))
                keep = survive.get(attr, np.ones(w.shape, bool))
                pairs.append((wrapper, attr))
                weights.append(w[keep])
                kept.append(keep)
        if not pairs:
            return
        masks = magnitude_masks(
            weights,
            level,
            self.config.params.weight_importance,
            self.config.params.sparsity_level_setting_mode,
        )
        for (wrapper, attr), mask, keep in zip(pairs, masks, kept):
            full = np.ones(keep.shape, "float32")
            full[keep] = mask
            wrapper.masks[attr].assign(full)
        for wrapper in wrappers:
            wrapper.mask_level.assign(level)


class RBSparsityAlgorithm(_ScheduledSparsity):
    """RB sparsity: learned stochastic masks plus a loss that pulls density to `1 - target`.

    The schedule sets the loss target of every `RBSparsityWrapper` each epoch (or step); the
    masks themselves are learned by `model.fit`.
    """

    name = "rb_sparsity"
    wrapper_class = RBSparsityWrapper
    layer_types = (RBSparsityWrapper,)

    def on_compress(self, model):
        wrappers = self.wrappers(model)
        sizes = [sum(int(np.prod(getattr(unwrap(w), a).shape)) for a in w.weight_names) for w in wrappers]
        total = float(sum(sizes)) or 1.0
        for wrapper, size in zip(wrappers, sizes):
            wrapper.share.assign(size / total)
        self.apply_level(model, self.level)

    def applied_level(self, model):
        wrappers = self.wrappers(model)
        return float(ops.convert_to_numpy(wrappers[0].target)) if wrappers else None

    def apply_level(self, model, level):
        """Sets the sparsity-loss target of every wrapper."""
        for wrapper in self.wrappers(model):
            wrapper.target.assign(level)


class MovementSparsityAlgorithm(_SparsityAlgorithm):
    """Movement sparsity for Dense and EinsumDense (transformer-style models).

    Scores are learned during fine-tuning. Between `warmup_start_epoch` and `warmup_end_epoch`
    the schedule tightens the mask with progress `p` (0 -> 1) and weight `1 - (1 - p)**power`:
    - with `params.sparsity_target` (keras_compress extension) each layer keeps its top-scored
      weights/blocks so that `sparsity_target * weight` of them are masked;
    - without it (NNCF's semantics) the score threshold rises from `init_importance_threshold`
      (default: the lowest score when warm-up starts, so nothing is masked then) to
      `final_importance_threshold`.
    The score regularization factor ramps up with `p` to `importance_regularization_factor`.
    Masks are updated every optimizer step (`steps_per_epoch` from the config or from `fit`).
    `sparse_structure_by_scopes` gives `block` (one score per `sparse_factors` block) or
    `per_dim` (one score per row/column along `axis`) structure to matching layers.
    """

    name = "movement_sparsity"
    wrapper_class = MovementSparsityWrapper
    layer_types = (MovementSparsityWrapper,)
    kinds = ("dense", "einsum_dense")
    per_step = True

    def __init__(self, config, target_device="ANY", config_path=("compression",)):
        super().__init__(config, target_device, config_path)
        self.init_threshold = config.params.init_importance_threshold

    def make_wrapper(self, original, layer, path):
        names = [original.name, f"{path}{original.name}"]
        shape = tuple(original.kernel.shape)
        for structure in self.config.sparse_structure_by_scopes:
            if matches_scope(names, structure.target_scopes):
                if structure.mode == "block":
                    return MovementSparsityWrapper(layer, block_shape=list(structure.sparse_factors))
                if structure.mode == "per_dim":
                    block = list(shape)
                    block[structure.axis % len(shape)] = 1
                    return MovementSparsityWrapper(layer, block_shape=block)
        return MovementSparsityWrapper(layer)

    def progress(self):
        p = self.config.params
        span = p.warmup_end_epoch - p.warmup_start_epoch
        return min(max((self.epoch - p.warmup_start_epoch) / span, 0.0), 1.0)

    def update(self, model):
        p = self.config.params
        if self.epoch < p.warmup_start_epoch:
            return
        progress = self.progress()
        weight = 1.0 - (1.0 - progress) ** p.power
        wrappers = self.wrappers(model)
        for wrapper in wrappers:
            wrapper.regularization.assign(p.importance_regularization_factor * progress)
        if p.sparsity_target is not None:
            self.level = p.sparsity_target * weight
            self._mask_share(wrappers, self.level)
            return
        if self.init_threshold is None:
            lowest = [float(np.min(ops.convert_to_numpy(s))) for w in wrappers for s in w.scores.values()]
            self.init_threshold = min(lowest, default=0.0) - 1e-3
            for wrapper in wrappers:
                wrapper.init_threshold.assign(self.init_threshold)
        threshold = self.init_threshold + (p.final_importance_threshold - self.init_threshold) * weight
        for wrapper in wrappers:
            wrapper.threshold.assign(threshold)
        self.level = self.statistics(model)["figures"]["sparsity_level"]

    def _mask_share(self, wrappers, level):
        """Sets each layer's threshold so that `level` of its scores (its weights or blocks) are masked."""
        for wrapper in wrappers:
            scores = np.concatenate([ops.convert_to_numpy(wrapper.scores[a]).ravel() for a in wrapper.weight_names])
            k = int(round(level * scores.size))
            threshold = np.partition(scores, k - 1)[k - 1] if k > 0 else -1e9
            wrapper.threshold.assign(float(threshold))

    def target_level(self):
        """`params.sparsity_target` (None in NNCF's threshold mode, which has no level to aim at)."""
        target = self.config.params.sparsity_target
        return None if target is None else float(target)

    def set_level(self, model, level):
        """Masks `level` of every layer's weights (their lowest scores), overriding the schedule
        (accuracy-aware training, with `params.sparsity_target`: the config refuses it without).
        The scores keep learning: the masks follow them at the same level every optimizer step."""
        self.scheduled = False
        self.level = float(level)
        self._mask_share(self.wrappers(model), self.level)

    def on_train_batch_begin(self, model, step):
        if self.scheduled:
            super().on_train_batch_begin(model, step)
        elif self.level:
            self._mask_share(self.wrappers(model), self.level)

    def on_epoch_end(self, model):
        # The last optimizer step moved the scores after the masks were set for it: with a level to
        # hold (`sparsity_target`, or one set by accuracy-aware training) they are set once more, so
        # the model an epoch ends with (saved, evaluated, kept as the best by accuracy-aware training,
        # exported) has that level, not a step-old one.
        if self.level and (not self.scheduled or self.config.params.sparsity_target is not None):
            self._mask_share(self.wrappers(model), self.level)

    def restore(self, model, epoch):
        """Takes the warm-up's initial threshold from the model once warm-up has started."""
        self.epoch = float(epoch)
        wrappers = self.wrappers(model)
        if not wrappers:
            return
        started = float(ops.convert_to_numpy(wrappers[0].threshold)) > -1e8
        if started and self.init_threshold is None and self.config.params.sparsity_target is None:
            self.init_threshold = float(ops.convert_to_numpy(wrappers[0].init_threshold))
        self.level = self.statistics(model)["figures"]["sparsity_level"]

