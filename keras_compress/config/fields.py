"""Building blocks of the config models: the section base class, scopes, bit widths, levels."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from keras_compress.config.errors import show

__all__ = [
    "Section",
    "ScopedSection",
    "Scopes",
    "Bits",
    "Fraction",
    "NonNegativeInt",
    "check_regex",
    "BatchnormAdaptationConfig",
    "DEFAULT_BN_ADAPTATION_SAMPLES",
    "GenericInitializer",
    "AlgorithmSection",
]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, JSON types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


def _as_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"must be a string or an array of strings (received {show(value)})")
    return value


def check_regex(scope: str) -> str:
    """Raises `ValueError` when a `{re}` scope is not a valid regular expression."""
    if scope.startswith("{re}"):
        try:
            re.compile(scope[4:])
        except (re.error, ValueError, OverflowError, RecursionError) as err:
            raise ValueError(f"{scope!r} is not a valid regular expression ({err})") from None
    return scope


def _check_regexes(scopes: list[str]) -> list[str]:
    for scope in scopes:
        check_regex(scope)
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


class ScopedSection(Section):
    """A section that applies to some layers only: `target_scopes` minus `ignored_scopes`."""

    target_scopes: Scopes = []
    """Layers to compress (all when empty)."""
    ignored_scopes: Scopes = []
    """Layers to leave alone."""
    validate_scopes: bool = True
    """Whether an exact layer name that is not in the model is an error (false: it matches nothing)."""


#: Samples BatchNorm adaptation reads when no `compression` section sets `num_bn_adaptation_samples`
#: (NNCF's default).
DEFAULT_BN_ADAPTATION_SAMPLES = 2000


class BatchnormAdaptationConfig(Section):
    """Re-estimates BatchNormalization statistics on training data after the model is compressed."""

    num_bn_adaptation_samples: NonNegativeInt | None = None
    """Samples to run through the model in training mode; 0 disables BN adaptation. It runs once for
    all algorithms, on the smallest value any section sets (2000 when none sets it), so a section
    that leaves the key out never overrules one that sets it."""


class GenericInitializer(Section):
    """The initializer of pruning and sparsity algorithms."""

    batchnorm_adaptation: BatchnormAdaptationConfig = Field(default_factory=BatchnormAdaptationConfig)
    """BatchNorm adaptation after compression."""


class AlgorithmSection(ScopedSection):
    """Keys common to every algorithm section of `compression`."""

    algorithm: str
    """The algorithm's name."""
    initializer: GenericInitializer = Field(default_factory=GenericInitializer)
    """Initialization after the model is compressed."""
    compression_lr_multiplier: float | None = None
    """PyTorch-only in NNCF; no effect."""

    def _describe(self) -> str:
        """One line for `summary()`; algorithm sections add their own settings."""
        return self._describe_scopes().lstrip("; ")

    def _describe_scopes(self) -> str:
        parts = [f"{len(scopes)} {name}" for name, scopes in
                 (("target scopes", self.target_scopes), ("ignored scopes", self.ignored_scopes)) if scopes]
        return f"; {', '.join(parts)}" if parts else ""
