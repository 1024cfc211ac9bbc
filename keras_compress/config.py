"""The compression config: pydantic models of an NNCF-style JSON file, and `load_config`.

A config names the compression algorithms to apply (`compression`), optionally an accuracy bound
for training (`accuracy_aware_training`), and the model inputs (`input_info`). Keys and defaults are
NNCF's (`nncf/config/schemata`), so NNCF's TensorFlow sample configs load unchanged:

- keys that belong to NNCF's sample training scripts (`model`, `batch_size`, `optimizer`, ...) are
  kept in `CompressionConfig.extra` and reported with one `ConfigWarning`;
- keys and algorithms that NNCF documents for PyTorch only are accepted, stored and reported with a
  `ConfigWarning` each, since they have no effect here;
- anything else that is wrong raises one `ConfigError` that lists every problem found with the
  JSON path of the bad key, e.g. `compression[1].params.pruning_target: must be < 1 (received 1.5)`.

Example:

```python
config = load_config({"compression": {"algorithm": "quantization", "preset": "mixed"}})
config.get_algorithm("quantization").activations.mode  # 'asymmetric'
```
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "AccuracyAwareConfig",
    "AccuracyAwareParams",
    "ActivationsQuantizerConfig",
    "AlgorithmConfig",
    "BatchnormAdaptationConfig",
    "CompressionConfig",
    "ConfigError",
    "ConfigWarning",
    "FilterPruningConfig",
    "FilterPruningParams",
    "InputInfo",
    "MagnitudeSparsityConfig",
    "MagnitudeSparsityParams",
    "MovementSparsityConfig",
    "MovementSparsityParams",
    "PerScopeRangeInitConfig",
    "PrecisionInitConfig",
    "QuantizationConfig",
    "QuantizationInitializer",
    "QuantizerGroupConfig",
    "QuantizerOverride",
    "RangeInitConfig",
    "RBSparsityConfig",
    "SparseStructureConfig",
    "SparsityParams",
    "json_schema",
    "load_config",
]


class ConfigError(ValueError):
    """A config could not be loaded; lists every problem found, one per line.

    Args:
        errors: `(json_path, message)` pairs; the path is `$` for the document as a whole.

    Example:

    ```python
    try:
        load_config({"compression": {"algorithm": "quantization", "weights": {"bits": 12}}})
    except ConfigError as err:
        err.errors  # [('compression.weights.bits', '`bits` must be between 2 and 8. Received: bits=12')]
    ```
    """

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = list(errors)
        super().__init__("\n".join(f"{path}: {message}" for path, message in self.errors))

    def __reduce__(self):
        return type(self), (self.errors,)


class ConfigWarning(UserWarning):
    """A config key is accepted but has no effect in keras_compress."""


SPARSITY_ALGORITHMS = ("magnitude_sparsity", "rb_sparsity", "movement_sparsity")
# NNCF algorithms that exist for PyTorch only: accepted, kept in `ignored_algorithms`, warned about.
IGNORED_ALGORITHMS = ("knowledge_distillation", "const_sparsity")
# Algorithms whose compression level `adaptive_compression_level` training can adjust.
ADAPTIVE_ALGORITHMS = ("filter_pruning", *SPARSITY_ALGORITHMS)
# NNCF keys documented for PyTorch only, per algorithm ("" = top level, "*" = every algorithm);
# a dotted key is nested. They are stored, and each one set in a config gets a ConfigWarning.
PYTORCH_ONLY_KEYS = {
    "": ("compression_lr_multiplier", "disable_shape_matching"),
    "*": ("compression_lr_multiplier",),
    "quantization": (
        "export_to_onnx_standard_ops",
        "params",
        "weights.logarithm_scale",
        "activations.logarithm_scale",
    ),
    "filter_pruning": (
        "params.interlayer_ranking_type",
        "params.legr_params",
        "params.save_ranking_coeffs_path",
        "params.load_ranking_coeffs_path",
    ),
}


# ---------------------------------------------------------------------------------------------------
# Building blocks


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, JSON types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


def _fail(problems: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Raises cross-field problems, each with its path relative to the model being validated."""
    if problems:
        summary = "; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in problems)
        raise PydanticCustomError("config_rule", "{summary}", {"summary": summary, "problems": problems})


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"must be a string or an array of strings (received {_show(value)})")
    return value


def _check_regexes(scopes: list[str]) -> list[str]:
    for scope in scopes:
        if scope.startswith("{re}"):
            try:
                re.compile(scope[4:])
            except (re.error, ValueError, OverflowError, RecursionError) as err:
                raise ValueError(f"{scope!r} is not a valid regular expression ({err})") from None
    return scopes


Scopes = Annotated[
    list[str],
    BeforeValidator(_as_list),
    AfterValidator(_check_regexes),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "Layer names; a name starting with `{re}` is a regular expression.",
        }
    ),
]
"""Layer names, exact or `{re}regex`; NNCF allows one string or a list, always stored as a list."""


def _check_bits(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be between 2 and 8. Received: bits={bits}")
    return bits


Bits = Annotated[int, AfterValidator(_check_bits), WithJsonSchema({"type": "integer", "minimum": 2, "maximum": 8})]
Fraction = Annotated[float, Field(ge=0, lt=1)]
"""A level in [0, 1): the share of filters pruned or weights zeroed."""
NonNegativeInt = Annotated[int, Field(ge=0)]


def _bitwidth_scope_pair(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"must be a [bits, scope] pair (received {_show(value)})")
        return tuple(value)
    return value


class BatchnormAdaptationConfig(_Section):
    """Re-estimates BatchNormalization statistics on training data after the model is compressed."""

    num_bn_adaptation_samples: NonNegativeInt = 2000
    """Samples to run through the model in training mode; 0 disables BN adaptation."""


class GenericInitializer(_Section):
    """The initializer of pruning and sparsity algorithms."""

    batchnorm_adaptation: BatchnormAdaptationConfig = Field(default_factory=BatchnormAdaptationConfig)


# ---------------------------------------------------------------------------------------------------
# Quantization


class RangeInitParams(_Section):
    """Parameters of the percentile range initializers."""

    min_percentile: float = Field(0.1, ge=0, le=100)
    max_percentile: float = Field(99.9, ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> RangeInitParams:
        if self.min_percentile >= self.max_percentile:
            _fail([(("min_percentile",), f"must be < `max_percentile` ({self.max_percentile}) "
                                         f"(received {self.min_percentile})")])
        return self


RangeInitType = Literal["min_max", "mean_min_max", "mixed_min_max", "threesigma", "percentile", "mean_percentile"]


class RangeInitConfig(_Section):
    """How the initial quantizer ranges are computed from calibration data."""

    num_init_samples: NonNegativeInt = 256
    type: RangeInitType = "mixed_min_max"
    params: RangeInitParams = Field(default_factory=RangeInitParams)


class PerScopeRangeInitConfig(RangeInitConfig):
    """A range initializer for the quantizers of some layers only."""

    target_scopes: Scopes = []
    ignored_scopes: Scopes = []
    validate_scopes: bool = True
    target_quantizer_group: Literal["weights", "activations"] | None = None


RangeInit = Annotated[
    Union[Annotated[RangeInitConfig, Tag("object")], Annotated[list[PerScopeRangeInitConfig], Tag("list")]],
    Discriminator(lambda value: "list" if isinstance(value, list) else "object"),
]
_UNION_TAGS = {"range": ("object", "list")}  # tags pydantic puts in error paths after these keys


class PrecisionInitConfig(_Section):
    """Mixed precision: choose a bit width per quantizer (NNCF's `initializer.precision`)."""

    type: Literal["hawq", "autoq", "manual"] = "manual"
    bits: list[Bits] = Field(default_factory=lambda: [4, 8], min_length=1)
    """Candidate weight bit widths (NNCF's default was [2, 4, 8]; 2-bit weights rarely pay)."""
    criterion: Literal["hessian", "loss_perturbation"] = "hessian"
    """keras_compress extension for `hawq`: Hutchinson Hessian traces, or the cheaper measured
    loss change when one layer at a time is quantized."""
    num_data_points: int = Field(100, ge=1)
    iter_number: int | None = Field(None, ge=0)
    """Defaults to 200 for `hawq` and 0 for `autoq`."""
    tolerance: float = Field(1e-4, ge=0)
    compression_ratio: float | None = Field(None, gt=0)
    """Defaults to 1.5 for `hawq` and 0.15 for `autoq`."""
    eval_subset_ratio: float = Field(1.0, gt=0, le=1)
    warmup_iter_number: NonNegativeInt = 20
    bitwidth_per_scope: list[Annotated[tuple[Bits, str], BeforeValidator(_bitwidth_scope_pair)]] = []
    """`[bits, scope]` pairs for `manual` precision."""
    traces_per_layer_path: str | None = None
    dump_init_precision_data: bool = False
    bitwidth_assignment_mode: Literal["strict", "liberal"] = "liberal"
    average_bits: float | None = None
    """keras_compress extension: the mean weight bit width to aim for."""

    @model_validator(mode="after")
    def _resolve_defaults(self) -> PrecisionInitConfig:
        if self.iter_number is None:
            self.iter_number = 0 if self.type == "autoq" else 200
        if self.compression_ratio is None:
            self.compression_ratio = 0.15 if self.type == "autoq" else 1.5
        if self.average_bits is not None and not min(self.bits) <= self.average_bits <= max(self.bits):
            _fail([(("average_bits",), f"must be between the smallest and largest of `bits` {self.bits} "
                                       f"(received {self.average_bits})")])
        return self


class QuantizationInitializer(_Section):
    """Range init, BN adaptation and mixed precision settings of quantization."""

    range: RangeInit = Field(default_factory=RangeInitConfig)
    batchnorm_adaptation: BatchnormAdaptationConfig = Field(default_factory=BatchnormAdaptationConfig)
    precision: PrecisionInitConfig | None = None


class QuantizerGroupConfig(_Section):
    """Settings of the weight quantizers (or, subclassed, the activation quantizers)."""

    mode: Literal["symmetric", "asymmetric"] | None = None
    """Filled in from `preset` when not given."""
    bits: Bits = 8
    signed: bool | None = None
    """None: decided by range init (unsigned when no negative value is seen)."""
    per_channel: bool = False
    ignored_scopes: Scopes = []
    target_scopes: Scopes = []
    validate_scopes: bool = True
    logarithm_scale: bool | None = None
    """PyTorch-only in NNCF; no effect."""


class ActivationsQuantizerConfig(QuantizerGroupConfig):
    """Settings of the activation quantizers."""

    unified_scale_ops: list[list[str]] | None = None
    """Groups of layers whose input quantizers share one scale."""


class _RangeOnlyInitializer(_Section):
    range: RangeInit | None = None


class QuantizerOverride(_Section):
    """Quantizer settings for one scope in `scope_overrides`; unset keys keep the group's settings."""

    mode: Literal["symmetric", "asymmetric"] | None = None
    bits: Bits | None = None
    signed: bool | None = None
    per_channel: bool | None = None
    initializer: _RangeOnlyInitializer | None = None


class StagedQuantizationParams(_Section):
    """NNCF's staged quantization schedule (PyTorch-only in NNCF; no effect)."""

    batch_multiplier: int | None = None
    activations_quant_start_epoch: int = 1
    weights_quant_start_epoch: int = 1
    lr_poly_drop_start_epoch: int | None = None
    lr_poly_drop_duration_epochs: int = 30
    disable_wd_start_epoch: int | None = None
    base_lr: float = 1e-3
    base_wd: float = 1e-5


class _AlgorithmBase(_Section):
    """Keys common to every algorithm section."""

    algorithm: str
    initializer: GenericInitializer = Field(default_factory=GenericInitializer)
    ignored_scopes: Scopes = []
    target_scopes: Scopes = []
    validate_scopes: bool = True
    compression_lr_multiplier: float | None = None
    """PyTorch-only in NNCF; no effect."""

    def _describe(self) -> str:
        """One line for `summary()`; algorithm sections add their own settings."""
        return self._describe_scopes().lstrip("; ")

    def _describe_scopes(self) -> str:
        parts = [f"{len(scopes)} {name}" for name, scopes in
                 (("target scopes", self.target_scopes), ("ignored scopes", self.ignored_scopes)) if scopes]
        return f"; {', '.join(parts)}" if parts else ""


class QuantizationConfig(_AlgorithmBase):
    """Quantization-aware training: fake-quantize weights and activations.

    Example:

    ```python
    q = QuantizationConfig(preset="mixed", weights={"per_channel": True})
    (q.weights.mode, q.activations.mode)  # ('symmetric', 'asymmetric')
    ```
    """

    algorithm: Literal["quantization"] = "quantization"
    initializer: QuantizationInitializer = Field(default_factory=QuantizationInitializer)
    preset: Literal["performance", "mixed"] = "performance"
    """`performance`: symmetric weights and activations; `mixed`: asymmetric activations."""
    weights: QuantizerGroupConfig = Field(default_factory=QuantizerGroupConfig)
    activations: ActivationsQuantizerConfig = Field(default_factory=ActivationsQuantizerConfig)
    quantize_inputs: bool = True
    quantize_outputs: bool = False
    overflow_fix: Literal["enable", "disable", "first_layer_only"] = "enable"
    scope_overrides: dict[Literal["weights", "activations"], dict[str, QuantizerOverride]] = {}
    """Per-scope quantizer settings: `{"weights": {scope: {...}}, "activations": {scope: {...}}}`."""
    export_to_onnx_standard_ops: bool | None = None
    """PyTorch-only in NNCF; no effect."""
    params: StagedQuantizationParams | None = None
    """PyTorch-only in NNCF; no effect."""

    @model_validator(mode="after")
    def _resolve_modes(self) -> QuantizationConfig:
        if self.weights.mode is None:
            self.weights.mode = "symmetric"
        if self.activations.mode is None:
            self.activations.mode = "asymmetric" if self.preset == "mixed" else "symmetric"
        return self

    def _describe(self) -> str:
        def group(name: str, g: QuantizerGroupConfig) -> str:
            per = "per-channel" if g.per_channel else "per-tensor"
            sign = "" if g.signed is None else (" signed" if g.signed else " unsigned")
            return f"{name} {g.bits}-bit {g.mode}{sign} {per}"

        init = self.initializer
        if isinstance(init.range, list):
            range_init = f"range init: {len(init.range)} per-scope rules"
        else:
            range_init = f"range init {init.range.type} on {init.range.num_init_samples} samples"
        bn = init.batchnorm_adaptation.num_bn_adaptation_samples
        text = (f"preset {self.preset}; {group('weights', self.weights)}; {group('activations', self.activations)}; "
                f"{range_init}; BN adaptation {f'on {bn} samples' if bn else 'off'}; overflow fix {self.overflow_fix}")
        if init.precision is not None:
            p = init.precision
            target = f", average {p.average_bits} bits" if p.average_bits is not None else ""
            text += f"; mixed precision {p.type} from bits {p.bits}{target}"
        if self.scope_overrides:
            text += f"; {sum(map(len, self.scope_overrides.values()))} scope overrides"
        return text + self._describe_scopes()


# ---------------------------------------------------------------------------------------------------
# Filter pruning


class FilterPruningParams(_Section):
    """Schedule and filter selection of filter pruning."""

    schedule: Literal["baseline", "exponential", "exponential_with_bias"] = "exponential"
    pruning_target: Fraction = 0.5
    pruning_flops_target: Fraction | None = None
    """When set, prune until this share of the FLOPs is removed (instead of `pruning_target` filters)."""
    pruning_steps: int = Field(100, ge=1)
    num_init_steps: NonNegativeInt = 0
    filter_importance: Literal["L1", "L2", "geometric_median"] = "L2"
    all_weights: bool = False
    """Rank filters across all layers together instead of per layer."""
    prune_first_conv: bool = False
    prune_downsample_convs: bool = False
    prune_batch_norms: bool = True
    interlayer_ranking_type: Literal["unweighted_ranking", "learned_ranking"] | None = None
    """PyTorch-only in NNCF; no effect."""
    legr_params: dict[str, Any] | None = None
    """PyTorch-only in NNCF; no effect."""
    save_ranking_coeffs_path: str | None = None
    """PyTorch-only in NNCF; no effect."""
    load_ranking_coeffs_path: str | None = None
    """PyTorch-only in NNCF; no effect."""


class FilterPruningConfig(_AlgorithmBase):
    """Filter pruning: zero out, then remove, whole convolution filters.

    Example:

    ```python
    p = FilterPruningConfig(pruning_init=0.1, params={"pruning_target": 0.4})
    p.params.schedule  # 'exponential'
    ```
    """

    algorithm: Literal["filter_pruning"] = "filter_pruning"
    pruning_init: Fraction = 0.0
    params: FilterPruningParams = Field(default_factory=FilterPruningParams)

    @model_validator(mode="after")
    def _init_below_target(self) -> FilterPruningConfig:
        if self.params.pruning_flops_target is None and self.pruning_init > self.params.pruning_target:
            _fail([(("pruning_init",), f"must be <= `pruning_target` ({self.params.pruning_target}) "
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


# ---------------------------------------------------------------------------------------------------
# Sparsity


class SparsityParams(_Section):
    """Schedule of magnitude and RB sparsity."""

    schedule: Literal["polynomial", "exponential", "adaptive", "multistep"] | None = None
    """Defaults to `polynomial` for magnitude sparsity and `exponential` for RB sparsity."""
    sparsity_target: Fraction = 0.5
    sparsity_target_epoch: NonNegativeInt = 90
    sparsity_freeze_epoch: NonNegativeInt = 100
    multistep_steps: list[NonNegativeInt] = Field(default_factory=lambda: [90])
    multistep_sparsity_levels: list[Fraction] = Field(default_factory=lambda: [0.1, 0.5])
    """One more level than `multistep_steps`: the first applies from the start, the last is the target."""
    patience: NonNegativeInt = 1
    power: float = 0.9
    concave: bool = True
    update_per_optimizer_step: bool = False
    steps_per_epoch: int | None = Field(None, ge=1)
    sparsity_level_setting_mode: Literal["global", "local"] = "global"

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
        _fail(problems)
        return self


class MagnitudeSparsityParams(SparsityParams):
    """Schedule and weight ranking of magnitude sparsity."""

    weight_importance: Literal["abs", "normed_abs"] = "normed_abs"


class _SparsityBase(_AlgorithmBase):
    default_schedule: ClassVar[str]
    sparsity_init: Fraction = 0.0
    params: SparsityParams

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
        if self.algorithm == "rb_sparsity" and p.sparsity_level_setting_mode == "local":
            problems.append((("params", "sparsity_level_setting_mode"),
                             "rb_sparsity supports only 'global' (received \"local\")"))
        _fail(problems)
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
    params: MagnitudeSparsityParams = Field(default_factory=MagnitudeSparsityParams)


class RBSparsityConfig(_SparsityBase):
    """Regularization-based sparsity: learn a stochastic mask per weight, with a sparsity loss.

    Example:

    ```python
    RBSparsityConfig().params.schedule  # 'exponential'
    ```
    """

    default_schedule: ClassVar[str] = "exponential"
    algorithm: Literal["rb_sparsity"] = "rb_sparsity"
    params: SparsityParams = Field(default_factory=SparsityParams)


class SparseStructureConfig(_Section):
    """How the layers in `target_scopes` are sparsified by movement sparsity."""

    mode: Literal["fine", "block", "per_dim"]
    sparse_factors: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)
    """Block shape, required for `block`."""
    axis: int | None = None
    """The dimension to sparsify, required for `per_dim`."""
    target_scopes: Scopes

    @model_validator(mode="after")
    def _mode_needs(self) -> SparseStructureConfig:
        if self.mode == "block" and self.sparse_factors is None:
            _fail([(("sparse_factors",), "is required when `mode` is 'block'")])
        if self.mode == "per_dim" and self.axis is None:
            _fail([(("axis",), "is required when `mode` is 'per_dim'")])
        return self


class MovementSparsityParams(_Section):
    """Warmup schedule of movement sparsity (NNCF's PyTorch movement sparsity keys)."""

    warmup_start_epoch: NonNegativeInt
    warmup_end_epoch: NonNegativeInt
    importance_regularization_factor: float = Field(ge=0)
    enable_structured_masking: bool = True
    init_importance_threshold: float | None = None
    final_importance_threshold: float = 0.0
    power: float = 3.0
    steps_per_epoch: int | None = Field(None, ge=1)
    sparsity_target: Fraction | None = None
    """keras_compress extension: the sparsity level to aim for."""

    @model_validator(mode="after")
    def _warmup_order(self) -> MovementSparsityParams:
        if self.warmup_end_epoch <= self.warmup_start_epoch:
            _fail([(("warmup_end_epoch",), f"must be > `warmup_start_epoch` ({self.warmup_start_epoch}) "
                                           f"(received {self.warmup_end_epoch})")])
        return self


class MovementSparsityConfig(_AlgorithmBase):
    """Movement sparsity: learn weight importance scores during a warmup, then keep the important weights.

    Example:

    ```python
    m = MovementSparsityConfig(params={"warmup_start_epoch": 1, "warmup_end_epoch": 4,
                                       "importance_regularization_factor": 0.01})
    m.params.power  # 3.0
    ```
    """

    algorithm: Literal["movement_sparsity"] = "movement_sparsity"
    params: MovementSparsityParams
    sparse_structure_by_scopes: list[SparseStructureConfig] = []

    def _describe(self) -> str:
        p = self.params
        target = f"sparsity {p.sparsity_target:.0%}, " if p.sparsity_target is not None else ""
        return (f"{target}warmup epochs {p.warmup_start_epoch}-{p.warmup_end_epoch}, regularization factor "
                f"{p.importance_regularization_factor}, structured masking "
                f"{'on' if p.enable_structured_masking else 'off'}" + self._describe_scopes())


AlgorithmConfig = Annotated[
    Union[QuantizationConfig, FilterPruningConfig, MagnitudeSparsityConfig, RBSparsityConfig, MovementSparsityConfig],
    Field(discriminator="algorithm"),
]
"""One section of `compression`, chosen by its `algorithm` key."""
ALGORITHMS = typing.get_args(typing.get_args(AlgorithmConfig)[0])
ALGORITHM_NAMES = tuple(typing.get_args(cls.model_fields["algorithm"].annotation)[0] for cls in ALGORITHMS)


# ---------------------------------------------------------------------------------------------------
# Accuracy-aware training


class AccuracyAwareParams(_Section):
    """The accuracy bound and the loop settings of accuracy-aware training."""

    maximal_relative_accuracy_degradation: float | None = Field(None, ge=0)
    """In percent of the uncompressed model's metric; 1.0 when no bound is given."""
    maximal_absolute_accuracy_degradation: float | None = Field(None, ge=0)
    """In units of the metric."""
    maximal_total_epochs: int = Field(10000, ge=1)
    initial_training_phase_epochs: NonNegativeInt = 5
    patience_epochs: int = Field(3, ge=1)
    initial_compression_rate_step: float = Field(0.1, gt=0, le=1)
    compression_rate_step_reduction_factor: float = Field(0.5, gt=0, lt=1)
    minimal_compression_rate_step: float = Field(0.025, gt=0, le=1)
    lr_reduction_factor: float = Field(0.5, gt=0, le=1)
    metric: str = Field("val_accuracy", min_length=1)
    """keras_compress extension: the Keras `logs` key the bound applies to."""
    metric_mode: Literal["max", "min"] = "max"
    """keras_compress extension: whether larger (`max`) or smaller values of `metric` are better."""
    uncompressed_model_accuracy: float | None = None
    """keras_compress extension: the reference metric; measured before training when not given."""

    @model_validator(mode="after")
    def _one_bound(self) -> AccuracyAwareParams:
        relative, absolute = self.maximal_relative_accuracy_degradation, self.maximal_absolute_accuracy_degradation
        if relative is not None and absolute is not None:
            _fail([(("maximal_absolute_accuracy_degradation",),
                    "give only one of `maximal_relative_accuracy_degradation` and "
                    f"`maximal_absolute_accuracy_degradation` (received both: {relative} and {absolute})")])
        if relative is None and absolute is None:
            self.maximal_relative_accuracy_degradation = 1.0
        return self


class AccuracyAwareConfig(_Section):
    """Accuracy-aware training: keep the metric within a bound of the uncompressed model's.

    Example:

    ```python
    aa = AccuracyAwareConfig(mode="early_exit", params={"maximal_total_epochs": 100})
    aa.params.maximal_relative_accuracy_degradation  # 1.0
    ```
    """

    mode: Literal["early_exit", "adaptive_compression_level"]
    """`early_exit`: stop once the bound is met; `adaptive_compression_level`: search the largest
    compression level that stays within the bound (pruning or sparsity only)."""
    params: AccuracyAwareParams = Field(default_factory=AccuracyAwareParams)


# ---------------------------------------------------------------------------------------------------
# The whole config


class InputInfo(_Section):
    """One model input."""

    sample_size: list[int] = Field(min_length=1)
    """Shape including the batch dimension, e.g. `[1, 224, 224, 3]`."""
    type: str = "float"
    filler: str | None = None
    keyword: str | None = None


class CompressionConfig(_Section):
    """A whole compression config; build it with `load_config`.

    Keys that are not part of the compression config (NNCF's training-script keys such as `model`,
    `batch_size`, `optimizer`) are kept in `extra`. NNCF algorithms that are PyTorch-only
    (`knowledge_distillation`, `const_sparsity`) are kept, as written, in `ignored_algorithms`.

    Example:

    ```python
    config = CompressionConfig(compression=[{"algorithm": "filter_pruning"}], batch_size=32)
    config.algorithm_names(), config.extra  # (['filter_pruning'], {'batch_size': 32})
    ```
    """

    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    input_info: list[InputInfo] = []
    """NNCF allows one object or a list; always stored as a list."""
    target_device: Literal["ANY", "CPU", "GPU", "NPU", "TRIAL", "CPU_SPR"] = "ANY"
    compression: list[AlgorithmConfig] = []
    """One algorithm object or a list of them; always stored as a list."""
    accuracy_aware_training: AccuracyAwareConfig | None = None
    log_dir: str | None = None
    compression_lr_multiplier: float | None = None
    """PyTorch-only in NNCF; no effect."""
    disable_shape_matching: bool | None = None
    """Deprecated and PyTorch-only in NNCF; no effect."""
    extra: dict[str, Any] = {}
    """Top-level keys keras_compress does not use, kept as written."""
    ignored_algorithms: list[dict[str, Any]] = []
    """PyTorch-only NNCF algorithm sections, kept as written."""

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        unknown = {key: data.pop(key) for key in list(data) if key not in cls.model_fields}
        if unknown:
            extra = data.get("extra", {})
            data["extra"] = {**extra, **unknown} if isinstance(extra, dict) else extra
        for key in ("input_info", "compression"):
            if isinstance(data.get(key), dict):
                data[key] = [data[key]]
        sections = data.get("compression")
        if isinstance(sections, list) and any(map(_is_ignored, sections)):
            data["compression"] = [s for s in sections if not _is_ignored(s)]
            kept = data.get("ignored_algorithms", [])
            data["ignored_algorithms"] = [*kept, *filter(_is_ignored, sections)] if isinstance(kept, list) else kept
        return data

    @model_validator(mode="after")
    def _check_combination(self) -> CompressionConfig:
        problems = []
        first: dict[str, int] = {}
        sparsity: str | None = None
        for index, section in enumerate(self.compression):
            name = section.algorithm
            if name in first:
                problems.append((("compression", index, "algorithm"),
                                 f"'{name}' appears more than once; give each algorithm one section"))
            elif name in SPARSITY_ALGORITHMS and sparsity is not None:
                problems.append((("compression", index, "algorithm"),
                                 f"only one sparsity algorithm can be used at a time (received '{sparsity}' "
                                 f"and '{name}')"))
            first.setdefault(name, index)
            if name in SPARSITY_ALGORITHMS:
                sparsity = sparsity or name
        for key in self.extra:
            if key in CompressionConfig.model_fields:
                problems.append((("extra", key), f"'{key}' is a config key, it cannot be kept in `extra`"))
        for index, section in enumerate(self.ignored_algorithms):
            if not _is_ignored(section):
                problems.append((("ignored_algorithms", index, "algorithm"),
                                 f"must be one of {', '.join(map(repr, IGNORED_ALGORITHMS))} "
                                 f"(received {_show(section.get('algorithm'))})"))
        if self.accuracy_aware_training and self.accuracy_aware_training.mode == "adaptive_compression_level":
            adaptive = [name for name in self.algorithm_names() if name in ADAPTIVE_ALGORITHMS]
            if len(adaptive) != 1:
                received = ", ".join(self.algorithm_names()) or "none"
                problems.append((("accuracy_aware_training", "mode"),
                                 "'adaptive_compression_level' needs exactly one filter_pruning or sparsity "
                                 f"algorithm in `compression` (received: {received})"))
        _fail(problems)
        return self

    def get_algorithm(self, name: str) -> AlgorithmConfig | None:
        """Returns the first `compression` section of algorithm `name`, or None.

        Args:
            name: an algorithm name, e.g. `"quantization"`.

        Returns:
            The section's model, or None when the config has no such section.

        Example:

        ```python
        load_config({"compression": {"algorithm": "quantization"}}).get_algorithm("quantization").preset
        # 'performance'
        ```
        """
        return next((section for section in self.compression if section.algorithm == name), None)

    def algorithm_names(self) -> list[str]:
        """Returns the algorithm names of `compression`, in order.

        Example:

        ```python
        CompressionConfig(compression=[{"algorithm": "rb_sparsity"}]).algorithm_names()  # ['rb_sparsity']
        ```
        """
        return [section.algorithm for section in self.compression]

    def summary(self) -> str:
        """Returns a short human-readable description of what the config will do.

        Example:

        ```python
        print(load_config({"compression": {"algorithm": "quantization"}}).summary())
        ```
        """
        lines = [f"target device: {self.target_device}"]
        if self.input_info:
            lines.append("inputs: " + ", ".join(str(info.sample_size) for info in self.input_info))
        if not self.compression:
            lines.append("compression: none (the model is left as it is)")
        for number, section in enumerate(self.compression, 1):
            lines.append(f"{number}. {section.algorithm}: {section._describe()}")
        if self.accuracy_aware_training is not None:
            aa = self.accuracy_aware_training
            p = aa.params
            if p.maximal_absolute_accuracy_degradation is not None:
                bound = f"at most {p.maximal_absolute_accuracy_degradation} absolute"
            else:
                bound = f"at most {p.maximal_relative_accuracy_degradation}% relative"
            lines.append(f"accuracy-aware training: {aa.mode}, {bound} degradation of {p.metric} "
                         f"({'higher' if p.metric_mode == 'max' else 'lower'} is better), "
                         f"at most {p.maximal_total_epochs} epochs")
        if self.ignored_algorithms:
            names = ", ".join(str(section.get("algorithm")) for section in self.ignored_algorithms)
            lines.append(f"ignored (PyTorch-only in NNCF): {names}")
        if self.extra:
            lines.append(f"not used by keras_compress: {', '.join(self.extra)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-able dict in NNCF layout; `load_config` of it gives an equal config.

        Keys of `extra` go back to the top level and `ignored_algorithms` back into `compression`.

        Example:

        ```python
        config = load_config({"compression": {"algorithm": "quantization"}})
        assert load_config(config.to_dict()) == config
        ```
        """
        data = self.model_dump(mode="json", exclude={"extra", "ignored_algorithms"}, exclude_none=True)
        data["compression"] += copy.deepcopy(self.ignored_algorithms)
        return {**copy.deepcopy(self.extra), **data}


def _is_ignored(section: Any) -> bool:
    return isinstance(section, dict) and section.get("algorithm") in IGNORED_ALGORITHMS


# ---------------------------------------------------------------------------------------------------
# Loading


def load_config(source: str | os.PathLike | dict | CompressionConfig) -> CompressionConfig:
    """Loads and validates a compression config; never evaluates code.

    Args:
        source: a path to a JSON file, a dict, a JSON string (a str starting with `{` or `[`),
            or a `CompressionConfig` (returned as it is).

    Returns:
        The validated config, with defaults and presets filled in.

    Raises:
        ConfigError: listing every problem found, each with its JSON path.

    Warns:
        ConfigWarning: once for all top-level keys keras_compress does not use (kept in `extra`), and
            once for each PyTorch-only NNCF key or algorithm (stored, no effect).

    Example:

    ```python
    config = load_config('{"compression": {"algorithm": "filter_pruning", "params": {"pruning_target": 0.4}}}')
    config.get_algorithm("filter_pruning").params.pruning_target  # 0.4
    ```
    """
    if isinstance(source, CompressionConfig):
        return source
    raw = _read(source)
    if not isinstance(raw, dict):
        raise ConfigError([("$", f"the config must be a JSON object (received {_json_type(raw)})")])
    single = {key for key in ("input_info", "compression") if isinstance(raw.get(key), dict)}
    sections = raw.get("compression")
    sections = [sections] if isinstance(sections, dict) else sections if isinstance(sections, list) else []
    kept = [index for index, section in enumerate(sections) if not _is_ignored(section)]
    try:
        config = CompressionConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_convert_errors(err, single, kept)) from None
    for message in _notices(config, sections, single):
        warnings.warn(message, ConfigWarning, stacklevel=2)
    return config


def json_schema() -> dict[str, Any]:
    """Returns the JSON Schema of a compression config.

    Returns:
        A JSON Schema (draft 2020-12) dict; `properties.compression` describes the algorithms.

    Example:

    ```python
    sorted(json_schema()["properties"])[:3]  # ['accuracy_aware_training', 'compression', ...]
    ```
    """
    return CompressionConfig.model_json_schema()


def _read(source: Any) -> Any:
    """Returns the parsed JSON of `source` (or `source` itself when it is a dict)."""
    if isinstance(source, dict):
        return source
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        text = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError([("$", f"config file not found: '{path}'")]) from None
        except IsADirectoryError:
            raise ConfigError([("$", f"config path is a directory, not a JSON file: '{path}'")]) from None
        except (OSError, ValueError) as err:  # permissions, bad encoding, NUL in the path, ...
            raise ConfigError([("$", f"cannot read config file '{path}': {err}")]) from None
    else:
        raise ConfigError([("$", "`source` must be a path, a dict, a JSON string or a CompressionConfig. "
                                 f"Received: {type(source).__name__}")])
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as err:
        raise ConfigError([("$", f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}")]) from None
    except (ValueError, RecursionError) as err:
        raise ConfigError([("$", f"invalid JSON: {err}")]) from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        duplicate = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise ValueError(f"key '{duplicate}' appears twice in one object")
    return data


def _notices(config: CompressionConfig, sections: list, single: set[str]) -> list[str]:
    """Returns the warnings for a loaded config: unused top-level keys, PyTorch-only keys and algorithms."""
    notices = []
    if config.extra:
        known = [name for name in CompressionConfig.model_fields if name not in ("extra", "ignored_algorithms")]
        names = []
        for key in config.extra:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            names.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        notices.append(f"keys not used by keras_compress (training-script settings, kept in `extra`): "
                       f"{', '.join(names)}")
    located = [("", {k: getattr(config, k) for k in PYTORCH_ONLY_KEYS[""]}, "")]
    for index, section in enumerate(sections):
        where = "compression" if "compression" in single else f"compression[{index}]"
        if _is_ignored(section):
            notices.append(f"{where}: algorithm '{section['algorithm']}' is PyTorch-only in NNCF and has no "
                           "effect in keras_compress (kept in `ignored_algorithms`)")
        else:
            located.append((where, section, section["algorithm"]))
    for where, section, algorithm in located:
        for dotted in PYTORCH_ONLY_KEYS.get(algorithm, ()) + (PYTORCH_ONLY_KEYS["*"] if algorithm else ()):
            *parents, key = dotted.split(".")
            node = section
            for parent in parents:
                node = node.get(parent) or {}
            if node.get(key) is not None:
                path = ".".join(filter(None, [where, dotted]))
                notices.append(f"{path}: PyTorch-only in NNCF, it has no effect in keras_compress")
    return notices


# ---------------------------------------------------------------------------------------------------
# Error reporting: pydantic errors -> (JSON path, message)


_TYPE_MESSAGES = {
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "tuple_type": "must be a JSON array",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
}
_COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _convert_errors(error: ValidationError, single: set[str], kept: list[int]) -> list[tuple[str, str]]:
    converted = []
    for err in error.errors():
        loc = _clean_loc(err["loc"], kept)
        if err["type"] == "config_rule":
            for subpath, message in err["ctx"]["problems"]:
                converted.append((_json_path(_clean_loc((*err["loc"], *subpath), kept), single), message))
            continue
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "algorithm")
        converted.append((_json_path(loc, single), _message(err, loc)))
    return list(dict.fromkeys(converted))


def _clean_loc(loc: tuple, kept: list[int]) -> tuple:
    """Drops the union tags pydantic puts in `loc`, and maps `compression` indices back to the file's."""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "compression" and isinstance(parts[1], int):
        if parts[1] < len(kept):
            parts[1] = kept[parts[1]]
        if len(parts) >= 3 and parts[2] in ALGORITHM_NAMES:
            del parts[2]
    cleaned = []
    for part in parts:
        if not (cleaned and part in _UNION_TAGS.get(str(cleaned[-1]), ())):
            cleaned.append(part)
    return tuple(cleaned)


def _json_path(loc: tuple, single: set[str]) -> str:
    path = ""
    for position, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int):
            if not (position == 1 and loc[0] in single and part == 0):
                path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            path += f".{part}" if path else str(part)
        else:
            path += f"[{json.dumps(str(part))}]"
    return path or "$"


def _message(err: dict, loc: tuple) -> str:
    kind, ctx, received = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        key, allowed = str(loc[-1]), _allowed_keys(err["loc"][:-1])
        return f"unknown key '{key}'" + _suggest(key, allowed, "allowed keys")
    if kind == "missing":
        return "required key is missing" if isinstance(loc[-1], str) else "required item is missing"
    if kind == "union_tag_not_found":
        return "required key is missing: every compression section needs an `algorithm`"
    if kind == "union_tag_invalid":
        name = received.get("algorithm") if isinstance(received, dict) else ctx.get("tag")
        return f"unknown algorithm {_show(name)}" + _suggest(str(name), ALGORITHM_NAMES + IGNORED_ALGORITHMS, "known")
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return (f"must be one of {', '.join(map(repr, expected))} (received {_show(received)})"
                + (_suggest(received, expected, None) if isinstance(received, str) else ""))
    if kind in _COMPARISONS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {_COMPARISONS[kind]} {bound} (received {_show(received)})"
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]} (received {_show(received)})"
    message = str(err["msg"])
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return f"{message[:1].lower()}{message[1:]} (received {_show(received)})"


def _suggest(word: str, choices: typing.Iterable[str], listing: str | None) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) or [
        choice for choice in choices if word and choice.lower().startswith(word.lower())][:1]
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" ({listing}: {', '.join(choices)})" if listing else ""


def _allowed_keys(loc: tuple) -> list[str]:
    """Returns the keys allowed in the object at `loc` (a raw pydantic loc), by walking the models."""
    models: list[type[BaseModel]] = [CompressionConfig]
    for part in loc:
        if not isinstance(part, str):
            continue
        inner = [m for model in models if part in model.model_fields
                 for m in _models_in(model.model_fields[part].annotation)]
        tagged = [model for model in models if model in ALGORITHMS and part == model.model_fields["algorithm"].default]
        models = inner or tagged or models
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)
