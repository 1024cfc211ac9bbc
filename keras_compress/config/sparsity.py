"""Config models of magnitude, RB and movement sparsity."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from keras_compress.config.errors import fail
from keras_compress.config.fields import AlgorithmSection, Fraction, NonNegativeInt, Scopes, Section

__all__ = [
    "SparsityParams",
    "MagnitudeSparsityParams",
    "MagnitudeSparsityConfig",
    "RBSparsityConfig",
    "SparseStructureConfig",
    "MovementSparsityParams",
    "MovementSparsityConfig",
]


class SparsityParams(Section):
    """Schedule of magnitude and RB sparsity."""

    schedule: Literal["polynomial", "exponential", "adaptive", "multistep"] | None = None
    """Defaults to `polynomial` for magnitude sparsity and `exponential` for RB sparsity."""
    sparsity_target: Fraction = 0.5
    """The share of zero weights at the end of the schedule."""
    sparsity_target_epoch: NonNegativeInt = 90
    """The epoch at which the schedule reaches `sparsity_target`."""
    sparsity_freeze_epoch: NonNegativeInt = 100
    """From this epoch on the masks stop changing."""
    multistep_steps: list[NonNegativeInt] = Field(default_factory=lambda: [90])
    """Epochs at which the `multistep` schedule moves to its next level."""
    multistep_sparsity_levels: list[Fraction] = Field(default_factory=lambda: [0.1, 0.5])
    """One more level than `multistep_steps`: the first applies from the start, the last is the target."""
    patience: NonNegativeInt = 1
    """`adaptive` schedule: epochs at the current level before it rises."""
    power: float = 0.9
    """`polynomial` schedule: the exponent of the curve."""
    concave: bool = True
    """`polynomial` schedule: rise fast first (true) or slow first (false)."""
    update_per_optimizer_step: bool = False
    """Move the level every optimizer step instead of every epoch."""
    steps_per_epoch: int | None = Field(None, ge=1)
    """Optimizer steps per epoch for per-step updates (default: read from `fit`)."""
    sparsity_level_setting_mode: Literal["global", "local"] = "global"
    """`global`: one threshold over all weights; `local`: every layer at the level."""

    @model_validator(mode="after")
    def _check_multistep(self) -> SparsityParams:
        steps, levels = self.multistep_steps, self.multistep_sparsity_levels
        problems = []
        if len(levels) != len(steps) + 1:
            problems.append((("multistep_sparsity_levels",),
                             f"must have one more entry than `multistep_steps` ({len(steps)} steps need "
                             f"{len(steps) + 1} levels; received {len(levels)} levels)"))
        if any(a >= b for a, b in zip(steps, steps[1:])):
            problems.append((("multistep_steps",), f"must be strictly increasing (received {steps})"))
        fail(problems)
        return self


def _schedule_problems(p: SparsityParams) -> list:
    """Schedule settings that contradict each other (`p.schedule` resolved)."""
    freeze = p.sparsity_freeze_epoch
    if p.schedule in ("polynomial", "exponential"):
        if p.sparsity_target_epoch < 1:
            return [(("params", "sparsity_target_epoch"),
                     f"must be >= 1 for the {p.schedule} schedule, which reaches `sparsity_target` at that "
                     f"epoch (received {p.sparsity_target_epoch})")]
        if freeze <= p.sparsity_target_epoch:
            return [(("params", "sparsity_freeze_epoch"),
                     f"must be > `sparsity_target_epoch` ({p.sparsity_target_epoch}): the masks stop changing "
                     f"at the freeze epoch, so `sparsity_target` would never be reached (received {freeze})")]
    if p.schedule == "multistep" and p.multistep_steps and freeze <= p.multistep_steps[-1]:
        return [(("params", "sparsity_freeze_epoch"),
                 f"must be > the last of `multistep_steps` ({p.multistep_steps[-1]}): the masks stop changing "
                 f"at the freeze epoch, so the last level would never be reached (received {freeze})")]
    return []


class MagnitudeSparsityParams(SparsityParams):
    """Schedule and weight ranking of magnitude sparsity."""

    weight_importance: Literal["abs", "normed_abs"] = "normed_abs"
    """How weights are ranked: `abs` (|w|) or `normed_abs` (|w| / ||W||, comparable across layers)."""


class _SparsityBase(AlgorithmSection):
    default_schedule: ClassVar[str]
    sparsity_init: Fraction = 0.0
    """The sparsity level at the start of training."""
    params: SparsityParams
    """Schedule settings."""

    @model_validator(mode="after")
    def _check_levels(self) -> _SparsityBase:
        p = self.params
        if p.schedule is None:
            p.schedule = self.default_schedule
        problems = []
        if p.schedule == "multistep":
            final, name = p.multistep_sparsity_levels[-1], "the last of `multistep_sparsity_levels`"
        else:
            final, name = p.sparsity_target, "`sparsity_target`"
        if self.sparsity_init > final:
            problems.append((("sparsity_init",), f"must be <= {name} ({final}) (received {self.sparsity_init})"))
        problems += _schedule_problems(p)
        if self.algorithm == "rb_sparsity" and p.sparsity_level_setting_mode == "local":
            problems.append((("params", "sparsity_level_setting_mode"),
                             "rb_sparsity supports only 'global' (received \"local\")"))
        fail(problems)
        return self

    def _describe(self) -> str:
        p = self.params
        if p.schedule == "multistep":
            schedule = f"multistep schedule: levels {p.multistep_sparsity_levels} at epochs {p.multistep_steps}"
            target = p.multistep_sparsity_levels[-1]
        else:
            schedule = f"{p.schedule} schedule reaching the target at epoch {p.sparsity_target_epoch}"
            target = p.sparsity_target
        text = f"sparsity {target:.0%} (starting at {self.sparsity_init:.0%}), {schedule}"
        if self.algorithm == "rb_sparsity":
            text += f", masks frozen at epoch {p.sparsity_freeze_epoch}"
        if isinstance(p, MagnitudeSparsityParams):
            text += f", weight importance {p.weight_importance}"
        return text + self._describe_scopes()


class MagnitudeSparsityConfig(_SparsityBase):
    """Magnitude sparsity: zero the weights of smallest magnitude, following a schedule.

    Example:

    ```python
    MagnitudeSparsityConfig().params.schedule  # 'polynomial'
    ```
    """

    default_schedule: ClassVar[str] = "polynomial"
    algorithm: Literal["magnitude_sparsity"] = "magnitude_sparsity"
    """The algorithm's name."""
    params: MagnitudeSparsityParams = Field(default_factory=MagnitudeSparsityParams)
    """Schedule and weight ranking."""


class RBSparsityConfig(_SparsityBase):
    """Regularization-based sparsity: learn a stochastic mask per weight, with a sparsity loss.

    The loss pulls the share of kept weights towards `1 - level` while the schedule raises the
    level (exponentially by default); the masks stop changing at `sparsity_freeze_epoch`.

    Example:

    ```python
    rb = RBSparsityConfig(params={"sparsity_target": 0.7, "sparsity_target_epoch": 20})
    rb.params.schedule, rb.params.sparsity_freeze_epoch  # ('exponential', 100)
    ```
    """

    default_schedule: ClassVar[str] = "exponential"
    algorithm: Literal["rb_sparsity"] = "rb_sparsity"
    """The algorithm's name."""
    params: SparsityParams = Field(default_factory=SparsityParams)
    """Schedule settings."""


class SparseStructureConfig(Section):
    """How the layers in `target_scopes` are sparsified by movement sparsity."""

    mode: Literal["fine", "block", "per_dim"]
    """`fine`: one score per weight; `block`: one per `sparse_factors` block; `per_dim`: one per
    row/column along `axis`."""
    sparse_factors: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)
    """Block shape, required for `block`."""
    axis: int | None = None
    """The dimension to sparsify, required for `per_dim`."""
    target_scopes: Scopes
    """The layers this structure applies to."""

    @model_validator(mode="after")
    def _mode_needs(self) -> SparseStructureConfig:
        if self.mode == "block" and self.sparse_factors is None:
            fail([(("sparse_factors",), "is required when `mode` is 'block'")])
        if self.mode == "per_dim" and self.axis is None:
            fail([(("axis",), "is required when `mode` is 'per_dim'")])
        return self


class MovementSparsityParams(Section):
    """Warmup schedule of movement sparsity (NNCF's PyTorch movement sparsity keys)."""

    warmup_start_epoch: NonNegativeInt
    """The epoch at which masking starts."""
    warmup_end_epoch: NonNegativeInt
    """The epoch at which the final threshold (or `sparsity_target`) is reached."""
    importance_regularization_factor: float = Field(ge=0)
    """Weight of the loss that pushes importance scores down."""
    enable_structured_masking: bool = True
    """NNCF PyTorch key (structured masks for attention heads); no effect."""
    init_importance_threshold: float | None = None
    """Score threshold when warmup starts (default: just below the lowest score)."""
    final_importance_threshold: float = 0.0
    """Score threshold at the end of warmup (NNCF semantics, without `sparsity_target`)."""
    power: float = 3.0
    """Exponent of the threshold schedule."""
    steps_per_epoch: int | None = Field(None, ge=1)
    """Optimizer steps per epoch (default: read from `fit`)."""
    sparsity_target: Fraction | None = None
    """keras_compress extension: the sparsity level to aim for."""

    @model_validator(mode="after")
    def _warmup_order(self) -> MovementSparsityParams:
        if self.warmup_end_epoch <= self.warmup_start_epoch:
            fail([(("warmup_end_epoch",), f"must be > `warmup_start_epoch` ({self.warmup_start_epoch}) "
                                           f"(received {self.warmup_end_epoch})")])
        return self


class MovementSparsityConfig(AlgorithmSection):
    """Movement sparsity: learn weight importance scores during a warmup, then keep the important weights.

    Example:

    ```python
    m = MovementSparsityConfig(params={"warmup_start_epoch": 1, "warmup_end_epoch": 4,
                                       "importance_regularization_factor": 0.01})
    m.params.power  # 3.0
    ```
    """

    algorithm: Literal["movement_sparsity"] = "movement_sparsity"
    """The algorithm's name."""
    params: MovementSparsityParams
    """Warmup schedule."""
    sparse_structure_by_scopes: list[SparseStructureConfig] = []
    """Structured (block or per-dimension) masks for some layers."""

    def _describe(self) -> str:
        p = self.params
        target = f"sparsity {p.sparsity_target:.0%}, " if p.sparsity_target is not None else ""
        return (f"{target}warmup epochs {p.warmup_start_epoch}-{p.warmup_end_epoch}, regularization factor "
                f"{p.importance_regularization_factor}" + self._describe_scopes())
