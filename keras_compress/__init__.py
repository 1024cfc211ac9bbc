"""keras_compress: training-time model compression for Keras 3, exported to OpenVINO INT8.

Importing the package registers every Keras-serializable class it defines (wrappers, quantizers),
so a saved compressed model loads with `keras.saving.load_model` in a new process.

Example:
    ```python
    import keras_compress as kc

    compressed, ctrl = kc.compress(model, "configs/int8.json", dataset=(x, y))
    compressed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    compressed.fit(x, y, epochs=2, callbacks=ctrl.callbacks())
    kc.export(compressed, "out/model")
    ```
"""

from keras_compress.config import CompressionConfig, ConfigError, ConfigWarning, load_config
from keras_compress.controller import CompressionController, compress
from keras_compress.export import export
from keras_compress.pruning import FilterPruningWrapper
from keras_compress.quantization import FakeQuantize, QuantizeWrapper
from keras_compress.sparsity import MagnitudeSparsityWrapper, MovementSparsityWrapper, RBSparsityWrapper
from keras_compress.statistics import CompressionStatistics
from keras_compress.wrapper import WeightsWrapper

__version__ = "0.1.0"

__all__ = [
    "CompressionConfig",
    "CompressionController",
    "CompressionStatistics",
    "ConfigError",
    "ConfigWarning",
    "FakeQuantize",
    "FilterPruningWrapper",
    "MagnitudeSparsityWrapper",
    "MovementSparsityWrapper",
    "QuantizeWrapper",
    "RBSparsityWrapper",
    "WeightsWrapper",
    "compress",
    "export",
    "load_config",
]
