"""Config models of quantization: quantizer settings, range init, mixed precision."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from keras_compress.config.errors import fail, show
from keras_compress.config.fields import (
    AlgorithmSection,
    BatchnormAdaptationConfig,
    Bits,
    GenericInitializer,
    NonNegativeInt,
    ScopedSection,
    Scopes,
    Section,
    check_regex,
)
from keras_compress.config.scopes import split_precision_scope

__all__ = [
    "RANGE_TYPES",
    "RangeInitParams",
    "RangeInitConfig",
    "PerScopeRangeInitConfig",
    "PrecisionInitConfig",
    "QuantizationInitializer",
    "QuantizerSettings",
    "QuantizerGroupConfig",
    "ActivationsQuantizerConfig",
    "QuantizerOverride",
    "StagedQuantizationParams",
    "QuantizationConfig",
    "UNION_TAGS",
]


class RangeInitParams(Section):
    """Parameters of the percentile range initializers."""

    min_percentile: float = Field(0.1, ge=0, le=100)
    """Lower percentile of the observed values (`percentile`, `mean_percentile`), in percent."""
    max_percentile: float = Field(99.9, ge=0, le=100)
    """Upper percentile of the observed values (`percentile`, `mean_percentile`), in percent."""

    @model_validator(mode="after")
    def _ordered(self) -> RangeInitParams:
        if self.min_percentile >= self.max_percentile:
            fail([(("min_percentile",), f"must be < `max_percentile` ({self.max_percentile}) "
                                        f"(received {self.min_percentile})")])
        return self


RangeInitType = Literal["min_max", "mean_min_max", "mixed_min_max", "threesigma", "percentile", "mean_percentile"]
#: The range initializer names, in the order the docs list them.
RANGE_TYPES: tuple[str, ...] = typing.get_args(RangeInitType)


class RangeInitConfig(Section):
    """How the initial quantizer ranges are computed from calibration data."""

    num_init_samples: NonNegativeInt = 256
    """Calibration samples whose activations set the ranges; 0 keeps the default ranges."""
    type: RangeInitType = "mixed_min_max"
    """How per-sample statistics become a range: `min_max`, `mean_min_max`, `mixed_min_max` (min of minima,
    mean of maxima), `threesigma` (median +- 3 MAD), `percentile`, `mean_percentile`."""
    params: RangeInitParams = Field(default_factory=RangeInitParams)
    """Percentiles for the percentile types."""


class PerScopeRangeInitConfig(RangeInitConfig, ScopedSection):
    """A range initializer for the quantizers of some layers only."""

    target_quantizer_group: Literal["weights", "activations"] | None = None
    """Apply this rule to one kind of quantizer only (weight ranges always come from the weights)."""


RangeInit = Annotated[
    Union[Annotated[RangeInitConfig, Tag("object")], Annotated[list[PerScopeRangeInitConfig], Tag("list")]],
    Discriminator(lambda value: "list" if isinstance(value, list) else "object"),
]
#: Tags pydantic puts in error paths after these keys (left out of the JSON paths users see).
UNION_TAGS = {"range": ("object", "list")}


def _bitwidth_scope_pair(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"must be a [bits, scope] pair (received {show(value)})")
        return tuple(value)
    return value


class PrecisionInitConfig(Section):
    """Mixed precision: choose a bit width per quantizer (NNCF's `initializer.precision`)."""

    type: Literal["hawq", "autoq", "manual"] = "manual"
    """`hawq`: bits by Hessian sensitivity under a budget; `manual`: bits from `bitwidth_per_scope`;
    `autoq` (NNCF's reinforcement-learning search) is not supported: a config asking for it is
    refused."""
    bits: list[Bits] = Field(default_factory=lambda: [4, 8], min_length=1)
    """Candidate weight bit widths (NNCF's default was [2, 4, 8]; 2-bit weights rarely pay)."""
    criterion: Literal["hessian", "loss_perturbation"] = "hessian"
    """keras_compress extension for `hawq`: Hutchinson Hessian traces, or the cheaper measured
    loss change when one layer at a time is quantized."""
    num_data_points: int = Field(100, ge=1)
    """Calibration samples used to measure sensitivity."""
    iter_number: int | None = Field(None, ge=0)
    """Most Hutchinson iterations per batch. Defaults to 200 for `hawq` and 0 for `autoq`."""
    tolerance: float = Field(1e-4, ge=0)
    """Hutchinson stops when the relative change of the trace estimate is below this."""
    compression_ratio: float | None = Field(None, gt=0)
    """Bit budget as `max(bits) / compression_ratio` mean bits when `average_bits` is not given.
    Defaults to 1.5 for `hawq` and 0.15 for `autoq`."""
    eval_subset_ratio: float = Field(1.0, gt=0, le=1)
    """NNCF `autoq` setting; no effect."""
    warmup_iter_number: NonNegativeInt = 20
    """NNCF `autoq` setting; no effect."""
    bitwidth_per_scope: list[Annotated[tuple[Bits, str], BeforeValidator(_bitwidth_scope_pair)]] = []
    """`[bits, scope]` pairs for `manual` precision: the first pair whose scope matches sets the bits.
    `scope` names a layer (its weights) and may end in `|WEIGHT` (the same) or `|OUTPUT` (the
    activation quantizer on its output); NNCF PyTorch scope names are looked up by module path."""
    traces_per_layer_path: str | None = None
    """NNCF PyTorch setting (a file of precomputed traces); no effect."""
    dump_init_precision_data: bool = False
    """NNCF PyTorch setting (debug dumps); no effect."""
    bitwidth_assignment_mode: Literal["strict", "liberal"] = "liberal"
    """NNCF PyTorch setting (hardware bit-width constraints); no effect."""
    average_bits: float | None = None
    """keras_compress extension: the mean weight bit width to aim for."""

    @model_validator(mode="after")
    def _resolve_defaults(self) -> PrecisionInitConfig:
        problems = []
        if self.type == "autoq":
            problems.append((("type",), "'autoq' (NNCF's reinforcement-learning bit-width search) is not supported; "
                                        "use 'hawq' (bits by sensitivity under a budget) or 'manual' "
                                        "(bits from `bitwidth_per_scope`)"))
        for index, (_, scope) in enumerate(self.bitwidth_per_scope):
            try:
                check_regex(split_precision_scope(scope)[0])
            except ValueError as err:
                problems.append((("bitwidth_per_scope", index), str(err)))
        fail(problems)
        if self.iter_number is None:
            self.iter_number = 0 if self.type == "autoq" else 200
        if self.compression_ratio is None:
            self.compression_ratio = 0.15 if self.type == "autoq" else 1.5
        if self.average_bits is not None and not min(self.bits) <= self.average_bits <= max(self.bits):
            fail([(("average_bits",), f"must be between the smallest and largest of `bits` {self.bits} "
                                      f"(received {self.average_bits})")])
        return self


class QuantizationInitializer(GenericInitializer):
    """Range init, BN adaptation and mixed precision settings of quantization."""

    range: RangeInit = Field(default_factory=RangeInitConfig)
    """How activation ranges are initialized: one rule, or a list of per-scope rules."""
    precision: PrecisionInitConfig | None = None
    """Mixed precision; absent: every weight quantizer uses `weights.bits`."""


class QuantizerSettings(Section):
    """The settings one quantizer can have; unset (null) settings are inherited."""

    mode: Literal["symmetric", "asymmetric"] | None = None
    """`symmetric` (a scale; zero maps to zero) or `asymmetric` (a low end and a range)."""
    bits: Bits | None = None
    """Bit width, 2 to 8."""
    signed: bool | None = None
    """Force signedness; null: decided by range init (unsigned when no negative value is seen)."""
    per_channel: bool | None = None
    """One range per output channel (weights) instead of one per tensor."""


class QuantizerGroupConfig(QuantizerSettings, ScopedSection):
    """Settings of the weight quantizers (or, subclassed, the activation quantizers)."""

    bits: Bits = 8
    """Bit width, 2 to 8."""
    per_channel: bool = False
    """One range per output channel (weights) instead of one per tensor."""
    logarithm_scale: bool | None = None
    """PyTorch-only in NNCF; no effect."""


class ActivationsQuantizerConfig(QuantizerGroupConfig):
    """Settings of the activation quantizers."""

    unified_scale_ops: list[Scopes] | None = None
    """Groups of layers whose input quantizers share one scale."""


class RangeOnlyInitializer(Section):
    """The initializer of one `scope_overrides` entry: only its range rule."""

    range: RangeInit | None = None
    """The range rule for this scope's quantizers."""


class QuantizerOverride(QuantizerSettings):
    """Quantizer settings for one scope in `scope_overrides`; unset keys keep the group's settings."""

    initializer: RangeOnlyInitializer | None = None
    """A range rule for this scope's quantizers."""


class StagedQuantizationParams(Section):
    """NNCF's staged quantization schedule (PyTorch-only in NNCF; no effect)."""

    batch_multiplier: int | None = None
    """No effect."""
    activations_quant_start_epoch: int = 1
    """No effect."""
    weights_quant_start_epoch: int = 1
    """No effect."""
    lr_poly_drop_start_epoch: int | None = None
    """No effect."""
    lr_poly_drop_duration_epochs: int = 30
    """No effect."""
    disable_wd_start_epoch: int | None = None
    """No effect."""
    base_lr: float = 1e-3
    """No effect."""
    base_wd: float = 1e-5
    """No effect."""


class QuantizationConfig(AlgorithmSection):
    """Quantization-aware training: fake-quantize weights and activations.

    Example:

    ```python
    q = QuantizationConfig(preset="mixed", weights={"per_channel": True})
    (q.weights.mode, q.activations.mode)  # ('symmetric', 'asymmetric')
    ```
    """

    algorithm: Literal["quantization"] = "quantization"
    """The algorithm's name."""
    initializer: QuantizationInitializer = Field(default_factory=QuantizationInitializer)
    """Range init, BatchNorm adaptation and mixed precision."""
    preset: Literal["performance", "mixed"] = "performance"
    """`performance`: symmetric weights and activations; `mixed`: asymmetric activations."""
    weights: QuantizerGroupConfig = Field(default_factory=QuantizerGroupConfig)
    """Weight quantizers (their `mode` defaults to symmetric)."""
    activations: ActivationsQuantizerConfig = Field(default_factory=ActivationsQuantizerConfig)
    """Activation quantizers (their `mode` defaults from `preset`)."""
    quantize_inputs: bool = True
    """Quantize the model inputs that feed quantized layers."""
    quantize_outputs: bool = False
    """Quantize the model outputs."""
    overflow_fix: Literal["enable", "disable", "first_layer_only"] = "enable"
    """Train 8-bit weights on a 7-bit grid (NNCF's fix for int8 overflow on CPUs without VNNI)."""
    scope_overrides: dict[Literal["weights", "activations"], dict[str, QuantizerOverride]] = {}
    """Per-scope quantizer settings: `{"weights": {scope: {...}}, "activations": {scope: {...}}}`."""
    export_to_onnx_standard_ops: bool | None = None
    """PyTorch-only in NNCF; no effect."""
    params: StagedQuantizationParams | None = None
    """PyTorch-only in NNCF; no effect."""

    @model_validator(mode="after")
    def _resolve_modes(self) -> QuantizationConfig:
        problems = []
        for group, overrides in self.scope_overrides.items():
            for scope in overrides:
                try:
                    check_regex(scope)
                except ValueError as err:
                    problems.append((("scope_overrides", group, scope), str(err)))
        fail(problems)
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
        text = (f"preset {self.preset}; {group('weights', self.weights)}; {group('activations', self.activations)}; "
                f"{range_init}; overflow fix {self.overflow_fix}")
        if init.precision is not None:
            p = init.precision
            target = f", average {p.average_bits} bits" if p.average_bits is not None else ""
            text += f"; mixed precision {p.type} from bits {p.bits}{target}"
        if self.scope_overrides:
            text += f"; {sum(map(len, self.scope_overrides.values()))} scope overrides"
        return text + self._describe_scopes()
