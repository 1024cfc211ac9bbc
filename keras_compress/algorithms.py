"""The registry of algorithms: the one list of them in the package.

Adding an algorithm is its package (a `CompressionAlgorithm` subclass and its layers), its config
section (`keras_compress.config`) and one line in `ALGORITHMS` here.
"""

from __future__ import annotations

import keras

from keras_compress.algorithm import CompressionAlgorithm
from keras_compress.config import CompressionConfig
from keras_compress.graph import iter_layers
from keras_compress.pruning import FilterPruningAlgorithm
from keras_compress.quantization import QuantizationAlgorithm
from keras_compress.sparsity import MagnitudeSparsityAlgorithm, MovementSparsityAlgorithm, RBSparsityAlgorithm

__all__ = ["ALGORITHMS", "algorithms_in", "build_algorithms", "compressed_with"]

#: Config `algorithm` name -> algorithm class: the only list of algorithms in the package.
ALGORITHMS: dict[str, type[CompressionAlgorithm]] = {
    cls.name: cls
    for cls in (
        QuantizationAlgorithm,
        FilterPruningAlgorithm,
        MagnitudeSparsityAlgorithm,
        RBSparsityAlgorithm,
        MovementSparsityAlgorithm,
    )
}


def build_algorithms(config: CompressionConfig) -> list[CompressionAlgorithm]:
    """The algorithm objects for the config's `compression` sections.

    Weight-masking algorithms (pruning, sparsity) come first and quantization last, whatever
    the config order, so quantizers see the masked weights (wrappers nest in that order).
    """
    algorithms = []
    for index, section in enumerate(config.compression):
        cls = ALGORITHMS.get(section.algorithm)
        if cls is None:
            raise ValueError(
                f"The {section.algorithm!r} algorithm is not available in this version of "
                f"keras_compress. Available: {sorted(ALGORITHMS)}"
            )
        path = ("compression",) if len(config.compression) == 1 else ("compression", index)
        algorithms.append(cls(section, config.target_device, path))
    return sorted(algorithms, key=lambda a: a.wraps_outermost)


def algorithms_in(model: keras.Model) -> list[type[CompressionAlgorithm]]:
    """The algorithm classes whose layers `model` holds."""
    layers = list(iter_layers(model))
    return [cls for cls in ALGORITHMS.values() if any(isinstance(layer, cls.layer_types) for layer in layers)]


def compressed_with(model: keras.Model) -> list[str]:
    """The algorithms whose layers `model` holds (empty for a model that is not compressed).

    Example:
        ```python
        compressed_with(keras.saving.load_model("sparse_int8.keras"))
        # ['magnitude_sparsity', 'quantization']
        ```
    """
    return [cls.name for cls in algorithms_in(model)]
