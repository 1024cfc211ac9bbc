"""The whole config document: `CompressionConfig`, its inputs and accuracy-aware training."""

from __future__ import annotations

import copy
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from keras_compress.config.errors import fail, show
from keras_compress.config.fields import DEFAULT_BN_ADAPTATION_SAMPLES, NonNegativeInt, Section
from keras_compress.config.pruning import FilterPruningConfig
from keras_compress.config.quantization import QuantizationConfig
from keras_compress.config.sparsity import MagnitudeSparsityConfig, MovementSparsityConfig, RBSparsityConfig

__all__ = [
    "AccuracyAwareParams",
    "AccuracyAwareConfig",
    "AlgorithmConfig",
    "ALGORITHMS",
    "ALGORITHM_NAMES",
    "ADAPTIVE_ALGORITHMS",
    "IGNORED_ALGORITHMS",
    "PYTORCH_ONLY_KEYS",
    "SPARSITY_NAMES",
    "InputInfo",
    "CompressionConfig",
    "is_ignored",
]

AlgorithmConfig = Annotated[
    Union[QuantizationConfig, FilterPruningConfig, MagnitudeSparsityConfig, RBSparsityConfig, MovementSparsityConfig],
    Field(discriminator="algorithm"),
]
"""One section of `compression`, chosen by its `algorithm` key."""
#: The section models, and the algorithm names they stand for (in the same order).
ALGORITHMS = typing.get_args(typing.get_args(AlgorithmConfig)[0])
ALGORITHM_NAMES = tuple(typing.get_args(cls.model_fields["algorithm"].annotation)[0] for cls in ALGORITHMS)
#: Names of the sparsity algorithms (only one of them can be used at a time).
SPARSITY_NAMES = ("magnitude_sparsity", "rb_sparsity", "movement_sparsity")
#: NNCF algorithms that exist for PyTorch only: accepted, kept in `ignored_algorithms`, warned about.
IGNORED_ALGORITHMS = ("knowledge_distillation", "const_sparsity")
#: Algorithms whose compression level `adaptive_compression_level` training can adjust (the algorithms
#: whose class says `adaptive = True`: tests/test_architecture.py ties the two).
ADAPTIVE_ALGORITHMS = ("filter_pruning", *SPARSITY_NAMES)
#: NNCF keys documented for PyTorch only, per algorithm ("" = top level, "*" = every algorithm); a dotted
#: key is nested. They are stored, and each one set in a config gets a ConfigWarning.
PYTORCH_ONLY_KEYS = {
    "": ("compression_lr_multiplier", "disable_shape_matching"),
    "*": ("compression_lr_multiplier",),
    "quantization": (
        "export_to_onnx_standard_ops",
        "params",
        "weights.logarithm_scale",
        "activations.logarithm_scale",
        "initializer.precision.bitwidth_assignment_mode",
        "initializer.precision.traces_per_layer_path",
        "initializer.precision.dump_init_precision_data",
        "initializer.precision.eval_subset_ratio",
        "initializer.precision.warmup_iter_number",
    ),
    "movement_sparsity": ("params.enable_structured_masking",),
    "filter_pruning": (
        "params.interlayer_ranking_type",
        "params.legr_params",
        "params.save_ranking_coeffs_path",
        "params.load_ranking_coeffs_path",
    ),
}


class AccuracyAwareParams(Section):
    """The accuracy bound and the loop settings of accuracy-aware training."""

    maximal_relative_accuracy_degradation: float | None = Field(None, ge=0)
    """In percent of the uncompressed model's metric; 1.0 when no bound is given."""
    maximal_absolute_accuracy_degradation: float | None = Field(None, ge=0)
    """In units of the metric."""
    maximal_total_epochs: int = Field(10000, ge=1)
    """Training stops after this many epochs in all."""
    initial_training_phase_epochs: NonNegativeInt = 5
    """`adaptive_compression_level`: epochs of training before the level starts to move."""
    patience_epochs: int = Field(3, ge=1)
    """`adaptive_compression_level`: epochs outside the bound before the level backs off."""
    initial_compression_rate_step: float = Field(0.1, gt=0, le=1)
    """`adaptive_compression_level`: the first step of the compression level."""
    compression_rate_step_reduction_factor: float = Field(0.5, gt=0, lt=1)
    """The step is multiplied by this on each back-off."""
    minimal_compression_rate_step: float = Field(0.025, gt=0, le=1)
    """The search stops when the step falls below this."""
    lr_reduction_factor: float = Field(0.5, gt=0, le=1)
    """The learning rate is multiplied by this on each back-off."""
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
            fail([(("maximal_absolute_accuracy_degradation",),
                    "give only one of `maximal_relative_accuracy_degradation` and "
                    f"`maximal_absolute_accuracy_degradation` (received both: {relative} and {absolute})")])
        if relative is None and absolute is None:
            self.maximal_relative_accuracy_degradation = 1.0
        return self


class AccuracyAwareConfig(Section):
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
    """The bound and the loop settings."""

    @model_validator(mode="after")
    def _phases_fit(self) -> AccuracyAwareConfig:
        p = self.params
        if self.mode == "adaptive_compression_level" and p.initial_training_phase_epochs >= p.maximal_total_epochs:
            fail([(("params", "initial_training_phase_epochs"),
                   f"must be < `maximal_total_epochs` ({p.maximal_total_epochs}): training would end before "
                   f"the compression level is ever adapted (received {p.initial_training_phase_epochs})")])
        return self


class InputInfo(Section):
    """One model input."""

    sample_size: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    """Shape including the batch dimension, e.g. `[1, 224, 224, 3]`; every dimension at least 1."""
    type: str = "float"
    """NNCF key for generated inputs; keras_compress reads only `sample_size`."""
    filler: str | None = None
    """NNCF key for generated inputs; no effect."""
    keyword: str | None = None
    """NNCF key (the input's keyword argument name); no effect."""


class CompressionConfig(Section):
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
    """The device the model is compressed for; `ANY` and `CPU` turn on the 8-bit overflow fix."""
    compression: list[AlgorithmConfig] = []
    """One algorithm object or a list of them; always stored as a list."""
    accuracy_aware_training: AccuracyAwareConfig | None = None
    """Keep the metric within a bound of the uncompressed model's during `fit`."""
    log_dir: str | None = None
    """Where `ctrl.callbacks()` writes TensorBoard compression scalars when no `log_dir` is passed."""
    compression_lr_multiplier: float | None = None
    """PyTorch-only in NNCF; no effect."""
    disable_shape_matching: bool | None = None
    """Deprecated and PyTorch-only in NNCF; no effect."""
    # Where loading keeps what it does not use; not keys of the file, so not in the JSON Schema.
    extra: SkipJsonSchema[dict[str, Any]] = {}
    """Top-level keys keras_compress does not use, kept as written."""
    ignored_algorithms: SkipJsonSchema[list[dict[str, Any]]] = []
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
        if isinstance(sections, list) and any(map(is_ignored, sections)):
            data["compression"] = [s for s in sections if not is_ignored(s)]
            kept = data.get("ignored_algorithms", [])
            data["ignored_algorithms"] = [*kept, *filter(is_ignored, sections)] if isinstance(kept, list) else kept
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
            elif name in SPARSITY_NAMES and sparsity is not None:
                problems.append((("compression", index, "algorithm"),
                                 f"only one sparsity algorithm can be used at a time (received '{sparsity}' "
                                 f"and '{name}')"))
            first.setdefault(name, index)
            if name in SPARSITY_NAMES:
                sparsity = sparsity or name
        for key in self.extra:
            if key in CompressionConfig.model_fields:
                problems.append((("extra", key), f"'{key}' is a config key, it cannot be kept in `extra`"))
        for index, section in enumerate(self.ignored_algorithms):
            if not is_ignored(section):
                problems.append((("ignored_algorithms", index, "algorithm"),
                                 f"must be one of {', '.join(map(repr, IGNORED_ALGORITHMS))} "
                                 f"(received {show(section.get('algorithm'))})"))
        if self.accuracy_aware_training and self.accuracy_aware_training.mode == "adaptive_compression_level":
            adaptive = [name for name in self.algorithm_names() if name in ADAPTIVE_ALGORITHMS]
            if len(adaptive) != 1:
                received = ", ".join(self.algorithm_names()) or "none"
                problems.append((("accuracy_aware_training", "mode"),
                                 "'adaptive_compression_level' needs exactly one filter_pruning or sparsity "
                                 f"algorithm in `compression` (received: {received})"))
            for index, section in enumerate(self.compression):
                if section.algorithm == "movement_sparsity" and section.params.sparsity_target is None:
                    path = ("compression",) if len(self.compression) == 1 else ("compression", index)
                    problems.append(((*path, "params", "sparsity_target"),
                                     "movement_sparsity under 'adaptive_compression_level' needs a sparsity_target "
                                     "(the level the search may go up to); NNCF's threshold mode has no level to set"))
        fail(problems)
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

    def batchnorm_adaptation_samples(self) -> int:
        """Returns how many samples BatchNorm adaptation reads (0: it does not run).

        BN adaptation runs once for the whole model, whatever the number of algorithms. Every
        `compression` section may set `initializer.batchnorm_adaptation.num_bn_adaptation_samples`:
        the smallest value set wins (so 0 in any section turns it off), and a section that does not
        set it counts for nothing. When no section sets it, BN adaptation reads 2000 samples (NNCF's
        default); a config without `compression` sections does not run it. `load_config` warns when
        sections set different values.

        Example:

        ```python
        config = load_config({"compression": [
            {"algorithm": "filter_pruning"},
            {"algorithm": "quantization", "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 512}}},
        ]})
        config.batchnorm_adaptation_samples()  # 512: the pruning section sets nothing
        ```
        """
        chosen = [value for _, value in self.batchnorm_adaptation_settings()]
        if chosen:
            return min(chosen)
        return DEFAULT_BN_ADAPTATION_SAMPLES if self.compression else 0

    def batchnorm_adaptation_settings(self) -> list[tuple[int, int]]:
        """Returns `(section index, num_bn_adaptation_samples)` for every section that sets it."""
        return [(index, section.initializer.batchnorm_adaptation.num_bn_adaptation_samples)
                for index, section in enumerate(self.compression)
                if section.initializer.batchnorm_adaptation.num_bn_adaptation_samples is not None]

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
        if self.compression:
            bn = self.batchnorm_adaptation_samples()
            lines.append(f"BatchNorm adaptation: {f'{bn} samples, once for all algorithms' if bn else 'off'}")
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


def is_ignored(section: Any) -> bool:
    """Whether a `compression` entry is a PyTorch-only NNCF algorithm (kept, not used)."""
    return isinstance(section, dict) and section.get("algorithm") in IGNORED_ALGORITHMS
