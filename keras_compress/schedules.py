"""Compression-level schedules: epoch (fractional with per-step updates) -> level.

Each schedule is a small object validated in `__init__` and called with the epoch; with
`update_per_optimizer_step` the caller passes `step / steps_per_epoch` (a float). The formulas
follow NNCF's schedulers.
"""

from __future__ import annotations

import math

__all__ = [
    "PolynomialSchedule",
    "ExponentialSchedule",
    "MultiStepSchedule",
    "AdaptiveSchedule",
    "BaselinePruningSchedule",
    "ExponentialPruningSchedule",
    "ExponentialWithBiasPruningSchedule",
    "sparsity_schedule",
    "pruning_schedule",
]


def _check_level(name, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")


class PolynomialSchedule:
    """Level from `initial` to `target` over `target_epoch` epochs along a polynomial.

    `concave=True`: `init + (target - init) * (1 - (1 - p) ** power)` (fast first);
    otherwise `init + (target - init) * p ** power`, with `p = min(epoch / target_epoch, 1)`.

    Example:
        >>> s = PolynomialSchedule(0.0, 0.5, target_epoch=10, power=1)
        >>> s(0), s(5), s(20)
        (0.0, 0.25, 0.5)
    """

    def __init__(self, initial, target, target_epoch, power=0.9, concave=True):
        _check_level("initial", initial)
        _check_level("target", target)
        if target_epoch <= 0:
            raise ValueError(f"`target_epoch` must be > 0. Received: target_epoch={target_epoch}")
        self.initial, self.target, self.target_epoch = initial, target, target_epoch
        self.power, self.concave = power, concave

    def __call__(self, epoch):
        p = min(max(epoch / self.target_epoch, 0.0), 1.0)
        shape = 1.0 - (1.0 - p) ** self.power if self.concave else p**self.power
        return self.initial + (self.target - self.initial) * shape


class ExponentialSchedule:
    """Level `1 - (1 - initial) * exp(-k * epoch)` reaching `target` at `target_epoch`.

    Example:
        >>> s = ExponentialSchedule(0.0, 0.75, target_epoch=2)
        >>> round(s(1), 4), s(2), s(9)
        (0.5, 0.75, 0.75)
    """

    def __init__(self, initial, target, target_epoch):
        _check_level("initial", initial)
        _check_level("target", target)
        if target_epoch <= 0:
            raise ValueError(f"`target_epoch` must be > 0. Received: target_epoch={target_epoch}")
        self.initial, self.target, self.target_epoch = initial, target, target_epoch
        self.k = math.log((1.0 - initial) / (1.0 - target)) / target_epoch

    def __call__(self, epoch):
        if epoch >= self.target_epoch:
            return self.target
        return 1.0 - (1.0 - self.initial) * math.exp(-self.k * max(epoch, 0.0))


class MultiStepSchedule:
    """Piecewise-constant levels: `levels[i]` from epoch `steps[i-1]` (levels has one more entry).

    Example:
        >>> s = MultiStepSchedule([2, 4], [0.1, 0.3, 0.5])
        >>> s(0), s(2), s(3.5), s(10)
        (0.1, 0.3, 0.3, 0.5)
    """

    def __init__(self, steps, levels):
        if len(levels) != len(steps) + 1:
            raise ValueError(
                "`levels` must have one more entry than `steps`. "
                f"Received: steps={steps}, levels={levels}"
            )
        if list(steps) != sorted(steps):
            raise ValueError(f"`steps` must be increasing. Received: steps={steps}")
        for level in levels:
            _check_level("levels", level)
        self.steps, self.levels = list(steps), list(levels)
        self.target = self.levels[-1]

    def __call__(self, epoch):
        index = sum(1 for step in self.steps if epoch >= step)
        return self.levels[index]


class AdaptiveSchedule:
    """NNCF's adaptive schedule: raise the level by `step` once the model has kept up with it.

    Each epoch the caller reports the achieved level with `observe(epoch, achieved)`; after
    `patience` epochs in a row with `achieved >= level - eps`, the level rises by `step`
    (up to `target`). Magnitude sparsity always achieves its level, so there the level simply
    rises every `patience` epochs; RB sparsity rises only as fast as the loss makes weights zero.

    Example:
        >>> s = AdaptiveSchedule(0.1, 0.3, patience=1, step=0.1)
        >>> s.observe(0, 0.1); round(s(1), 2)
        0.2
    """

    def __init__(self, initial, target, patience=1, step=0.05, eps=0.03):
        _check_level("initial", initial)
        _check_level("target", target)
        self.initial, self.target, self.patience, self.step, self.eps = initial, target, patience, step, eps
        self.level = initial
        self.streak = 0
        self.last_epoch = None

    def observe(self, epoch, achieved):
        if epoch == self.last_epoch:
            return
        self.last_epoch = epoch
        self.streak = self.streak + 1 if achieved >= self.level - self.eps else 0
        if self.streak >= self.patience:
            self.level = min(self.level + self.step, self.target)
            self.streak = 0

    def __call__(self, epoch):
        return self.level


class BaselinePruningSchedule:
    """No pruning for `num_init_steps` epochs, then `target` at once (NNCF `baseline`)."""

    def __init__(self, initial, target, num_init_steps=0):
        _check_level("target", target)
        self.initial, self.target, self.num_init_steps = initial, target, num_init_steps

    def __call__(self, epoch):
        return self.target if epoch >= self.num_init_steps else 0.0


class ExponentialPruningSchedule:
    """After `num_init_steps` epochs, `initial` to `target` over `pruning_steps` epochs, exponentially.

    Example:
        >>> s = ExponentialPruningSchedule(0.0, 0.75, pruning_steps=2)
        >>> s(0), round(s(1), 4), s(2)
        (0.0, 0.5, 0.75)
    """

    def __init__(self, initial, target, pruning_steps, num_init_steps=0):
        self.num_init_steps = num_init_steps
        self.inner = ExponentialSchedule(initial, target, pruning_steps)
        self.initial, self.target = initial, target

    def __call__(self, epoch):
        if epoch < self.num_init_steps:
            return 0.0
        return self.inner(epoch - self.num_init_steps)


class ExponentialWithBiasPruningSchedule:
    """`a * exp(-k * x) + b` through (0, initial) and (pruning_steps, target) (NNCF's variant).

    The curve is fixed by also asking it to reach 95% of its way at `pruning_steps`
    (`k = ln(20) / pruning_steps`), then `target` is held.
    """

    def __init__(self, initial, target, pruning_steps, num_init_steps=0):
        _check_level("initial", initial)
        _check_level("target", target)
        if pruning_steps <= 0:
            raise ValueError(f"`pruning_steps` must be > 0. Received: {pruning_steps}")
        self.initial, self.target = initial, target
        self.pruning_steps, self.num_init_steps = pruning_steps, num_init_steps
        self.k = math.log(20.0) / pruning_steps
        decay = math.exp(-self.k * pruning_steps)
        self.a = (initial - target) / (1.0 - decay)
        self.b = initial - self.a

    def __call__(self, epoch):
        x = epoch - self.num_init_steps
        if x < 0:
            return 0.0
        if x >= self.pruning_steps:
            return self.target
        return self.a * math.exp(-self.k * x) + self.b


def sparsity_schedule(params, initial):
    """The schedule of a sparsity config's `params` (`schedule` already resolved)."""
    name = params.schedule
    if name == "polynomial":
        return PolynomialSchedule(
            initial, params.sparsity_target, params.sparsity_target_epoch, params.power, params.concave
        )
    if name == "exponential":
        return ExponentialSchedule(initial, params.sparsity_target, params.sparsity_target_epoch)
    if name == "multistep":
        levels = list(params.multistep_sparsity_levels)
        return MultiStepSchedule(params.multistep_steps, levels)
    if name == "adaptive":
        return AdaptiveSchedule(initial, params.sparsity_target, params.patience)
    raise ValueError(f"Unknown sparsity schedule {name!r}")


def pruning_schedule(params, initial):
    """The schedule of a filter-pruning config's `params`."""
    if params.schedule == "baseline":
        return BaselinePruningSchedule(initial, params.pruning_target, params.num_init_steps)
    cls = ExponentialPruningSchedule if params.schedule == "exponential" else ExponentialWithBiasPruningSchedule
    return cls(initial, params.pruning_target, params.pruning_steps, params.num_init_steps)
