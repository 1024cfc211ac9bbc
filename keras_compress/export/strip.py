"""strip_model: a plain inference copy of a compressed model."""

from __future__ import annotations

from keras_compress.algorithms import algorithms_in
from keras_compress.base_layer import CompressionLayer, strip_layer
from keras_compress.graph import iter_layers
from keras_compress.transform import Transformer

__all__ = ["strip_model"]


def strip_model(model):
    """Returns an inference copy of `model` with training-only state resolved.

    The model is copied by the same transformer `kc.compress` uses, every keras_compress layer
    replaced by what its `strip()` returns (quantizers stay, with NNCF's overflow fix applied and
    their ranges frozen into constants; sparsity wrappers fold their masks into the weights and
    disappear); then the model-level export step of each algorithm whose layers the model holds
    runs (`CompressionAlgorithm.export_model`: filter pruning removes the pruned filters). `model`
    itself is not changed; a model with no keras_compress layer is returned as it is (nothing to
    strip, and nothing copied).

    Args:
        model: a model returned by `kc.compress` (or any Keras model).

    Returns:
        A `keras.Model` of the same class (a KerasHub task stays that task).
    """
    if not any(isinstance(layer, CompressionLayer) for layer in iter_layers(model)):
        return model
    algorithms = algorithms_in(model)
    stripped = Transformer(wrap=lambda original, fresh, prefix: strip_layer(fresh)).transform(model)
    for algorithm in algorithms:
        stripped = algorithm.export_model(stripped)
    return stripped
