"""keras_compress: training-time model compression for Keras 3, exported to OpenVINO INT8.

Importing the package registers every Keras-serializable class it defines (wrappers, quantizers),
so a saved compressed model loads with `keras.saving.load_model` in a new process.

The light import (for the command line only). Registering those classes means importing Keras
and TensorFlow, which takes seconds and prints native log lines. The `keras-compress` console
script answers `--help`, `schema` and `validate` without them: its launcher
(`keras_compress_launcher`, a module outside this package, because this file runs before any
module of the package) sets the environment variable named by `LIGHT_IMPORT_ENV` to `1` while it
imports `keras_compress.cli`. This file then imports nothing heavy, and every public name below
is imported on first use instead (PEP 562 module `__getattr__`), together with the module that
registers its classes. Without the variable, which is the case for every `import keras_compress`
in user code, everything is imported here, as the first paragraph says. Do not set the variable
in code that loads saved models.

Example:
    ```python
    import keras_compress as kc

    compressed, ctrl = kc.compress(model, "int8", dataset=(x, y))
    compressed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    compressed.fit(x, y, epochs=2, callbacks=ctrl.callbacks())
    kc.export(compressed, "out/model")
    ```
"""

import importlib
import os

__version__ = "0.1.0"

#: Environment variable that asks for the light import (set by the console script's launcher only).
LIGHT_IMPORT_ENV = "KERAS_COMPRESS_LIGHT_IMPORT"

# Public name -> the module that defines it.
_PUBLIC = {
    "CompressionConfig": "keras_compress.config",
    "ConfigError": "keras_compress.config",
    "ConfigWarning": "keras_compress.config",
    "list_configs": "keras_compress.config",
    "load_config": "keras_compress.config",
    "register_compressible": "keras_compress.compressible",
    "CompressionController": "keras_compress.controller",
    "compress": "keras_compress.controller",
    "export": "keras_compress.export",
    "FilterPruningWrapper": "keras_compress.pruning",
    "FakeQuantize": "keras_compress.quantization",
    "InputsWrapper": "keras_compress.inputs_wrapper",
    "QuantizeWrapper": "keras_compress.quantization",
    "MagnitudeSparsityWrapper": "keras_compress.sparsity",
    "MovementSparsityWrapper": "keras_compress.sparsity",
    "RBSparsityWrapper": "keras_compress.sparsity",
    "CompressionStatistics": "keras_compress.statistics",
    "CompressedLayer": "keras_compress.compressed",
    "CompressedModel": "keras_compress.compressed",
    "CompressionLayer": "keras_compress.base_layer",
    "WeightsWrapper": "keras_compress.wrapper",
}

__all__ = [
    "CompressedLayer",
    "CompressedModel",
    "CompressionLayer",
    "CompressionConfig",
    "CompressionController",
    "CompressionStatistics",
    "ConfigError",
    "ConfigWarning",
    "FakeQuantize",
    "FilterPruningWrapper",
    "InputsWrapper",
    "MagnitudeSparsityWrapper",
    "MovementSparsityWrapper",
    "QuantizeWrapper",
    "RBSparsityWrapper",
    "WeightsWrapper",
    "compress",
    "export",
    "list_configs",
    "load_config",
    "register_compressible",
]


def __getattr__(name):
    """Imports a public name on first use (only reached after the light import)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if os.environ.get(LIGHT_IMPORT_ENV) != "1":
    from keras_compress.compressible import register_compressible
    from keras_compress.config import CompressionConfig, ConfigError, ConfigWarning, list_configs, load_config
    from keras_compress.controller import CompressionController, compress
    from keras_compress.export import export
    from keras_compress.pruning import FilterPruningWrapper
    from keras_compress.inputs_wrapper import InputsWrapper
    from keras_compress.quantization import FakeQuantize, QuantizeWrapper
    from keras_compress.sparsity import MagnitudeSparsityWrapper, MovementSparsityWrapper, RBSparsityWrapper
    from keras_compress.statistics import CompressionStatistics
    from keras_compress.compressed import CompressedLayer, CompressedModel
    import keras_compress.transform  # noqa: F401 - loading a compressed layer replays its record with it
    from keras_compress.base_layer import CompressionLayer
    from keras_compress.wrapper import WeightsWrapper
