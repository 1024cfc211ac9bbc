"""strip_model: a plain inference copy of a compressed model."""

from __future__ import annotations

from keras_compress.base_layer import CompressionLayer, strip_layer
from keras_compress.graph import iter_layers
from keras_compress.pruning import FilterPruningWrapper, remove_pruned_filters
from keras_compress.transform import Transformer

__all__ = ["strip_model"]


def strip_model(model, algorithms=()):
    """Returns an inference copy of `model` with training-only state resolved.

    The model is copied by the same transformer `kc.compress` uses, every keras_compress layer
    replaced by what its `strip()` returns (quantizers stay, with NNCF's overflow fix applied and
    their ranges frozen into constants; sparsity wrappers fold their masks into the weights and
    disappear); then each algorithm's model-level `strip(model)` runs (filter pruning removes the
    pruned filters). `model` itself is not changed; a model with no keras_compress layer is
    returned as it is (nothing to strip, and nothing copied).

    Args:
        model: a model returned by `kc.compress` (or any Keras model).
        algorithms: algorithm objects whose `strip(model)` to apply (the controller's).

    Returns:
        A `keras.Model` of the same class (a KerasHub task stays that task).
    """
    if not any(isinstance(layer, CompressionLayer) for layer in iter_layers(model)):
        return model
    pruned = any(isinstance(layer, FilterPruningWrapper) for layer in iter_layers(model))
    stripped = Transformer(wrap=lambda original, fresh, prefix: strip_layer(fresh)).transform(model)
    for algorithm in algorithms:
        stripped = algorithm.strip(stripped)
    # Without the controller (kc.export of a compressed model), remove pruned filters from
    # the masks the model carries.
    if pruned and not any(getattr(a, "name", None) == "filter_pruning" for a in algorithms):
        stripped = remove_pruned_filters(stripped)
    return stripped
