"""Config models of filter pruning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from keras_compress.config.errors import fail
from keras_compress.config.fields import AlgorithmSection, Fraction, NonNegativeInt, Section

__all__ = ["FilterPruningParams", "FilterPruningConfig"]


class FilterPruningParams(Section):
    """Schedule and filter selection of filter pruning."""

    schedule: Literal["baseline", "exponential", "exponential_with_bias"] = "exponential"
    """How the pruning level rises: `baseline` (all at once after `num_init_steps` epochs), `exponential`,
    `exponential_with_bias` (over `pruning_steps` epochs)."""
    pruning_target: Fraction = 0.5
    """Share of the filters of each prunable group to prune at the end of the schedule."""
    pruning_flops_target: Fraction | None = None
    """When set, prune until this share of the FLOPs is removed (instead of `pruning_target` filters)."""
    pruning_steps: int = Field(100, ge=1)
    """Epochs over which the level rises from `pruning_init` to the target."""
    num_init_steps: NonNegativeInt = 0
    """Epochs of training before pruning starts."""
    filter_importance: Literal["L1", "L2", "geometric_median"] = "L2"
    """How a filter's importance is measured: the L1 or L2 norm of its weights, or its distance to the
    geometric median of the layer's filters."""
    all_weights: bool = False
    """Rank filters across all layers together instead of per layer."""
    prune_first_conv: bool = False
    """Also prune the convolutions that read the model input."""
    prune_downsample_convs: bool = False
    """Also prune convolutions with a stride above 1."""
    prune_batch_norms: bool = True
    """NNCF key: the BatchNormalization channels of pruned filters are always removed with them."""
    interlayer_ranking_type: Literal["unweighted_ranking", "learned_ranking"] | None = None
    """PyTorch-only in NNCF; no effect."""
    legr_params: dict[str, Any] | None = None
    """PyTorch-only in NNCF; no effect."""
    save_ranking_coeffs_path: str | None = None
    """PyTorch-only in NNCF; no effect."""
    load_ranking_coeffs_path: str | None = None
    """PyTorch-only in NNCF; no effect."""


class FilterPruningConfig(AlgorithmSection):
    """Filter pruning: zero out, then remove, whole convolution filters.

    Example:

    ```python
    p = FilterPruningConfig(pruning_init=0.1, params={"pruning_target": 0.4})
    p.params.schedule  # 'exponential'
    ```
    """

    algorithm: Literal["filter_pruning"] = "filter_pruning"
    """The algorithm's name."""
    pruning_init: Fraction = 0.0
    """The pruning level at the start of training."""
    params: FilterPruningParams = Field(default_factory=FilterPruningParams)
    """Schedule and filter selection."""

    @model_validator(mode="after")
    def _init_below_target(self) -> FilterPruningConfig:
        if self.params.pruning_flops_target is None and self.pruning_init > self.params.pruning_target:
            fail([(("pruning_init",), f"must be <= `pruning_target` ({self.params.pruning_target}) "
                                       f"(received {self.pruning_init})")])
        return self

    def _describe(self) -> str:
        p = self.params
        target = (f"remove {p.pruning_flops_target:.0%} of FLOPs" if p.pruning_flops_target is not None
                  else f"prune {p.pruning_target:.0%} of filters")
        if p.schedule == "baseline":
            schedule = f"baseline schedule (prune once after {p.num_init_steps} epochs)"
        else:
            schedule = f"{p.schedule} schedule over {p.pruning_steps} epochs"
        return (f"{target} (starting at {self.pruning_init:.0%}), {schedule}, importance {p.filter_importance}, "
                f"{'global' if p.all_weights else 'per-layer'} ranking" + self._describe_scopes())
