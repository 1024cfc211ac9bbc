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

The package imports nothing but pydantic: the CLI validates configs without loading TensorFlow.

Modules: `fields` (building blocks), `quantization`, `pruning`, `sparsity` (the algorithm sections),
`document` (the whole config), `loading` (`load_config`), `packaged` (the configs shipped in the package,
`list_configs`), `errors` (`ConfigError`, JSON paths).

Example:

```python
config = load_config({"compression": {"algorithm": "quantization", "preset": "mixed"}})
config.get_algorithm("quantization").activations.mode  # 'asymmetric'
```
"""

from keras_compress.config.document import (
    AccuracyAwareConfig,
    AccuracyAwareParams,
    AlgorithmConfig,
    CompressionConfig,
    InputInfo,
)
from keras_compress.config.errors import ConfigError, ConfigWarning
from keras_compress.config.fields import BatchnormAdaptationConfig, GenericInitializer
from keras_compress.config.loading import json_schema, load_config
from keras_compress.config.packaged import list_configs
from keras_compress.config.pruning import FilterPruningConfig, FilterPruningParams
from keras_compress.config.quantization import (
    ActivationsQuantizerConfig,
    PerScopeRangeInitConfig,
    PrecisionInitConfig,
    QuantizationConfig,
    QuantizationInitializer,
    QuantizerGroupConfig,
    QuantizerOverride,
    RangeInitConfig,
)
from keras_compress.config.sparsity import (
    MagnitudeSparsityConfig,
    MagnitudeSparsityParams,
    MovementSparsityConfig,
    MovementSparsityParams,
    RBSparsityConfig,
    SparseStructureConfig,
    SparsityParams,
)

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
    "GenericInitializer",
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
    "list_configs",
    "load_config",
]
