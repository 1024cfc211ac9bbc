"""strip_model: a plain inference copy of a compressed model."""

from __future__ import annotations

import keras

from keras_compress.graph import fresh_copy, is_graph_model, iter_layers
from keras_compress.pruning import FilterPruningWrapper, remove_pruned_filters
from keras_compress.subclassed import CompressedModel, strip_subclassed

__all__ = ["strip_layer", "strip_model"]


def strip_model(model, algorithms=()):
    """Returns an inference copy of `model` with training-only state resolved.

    Every keras_compress wrapper and activation quantizer is replaced by what its `strip()` returns
    (quantizers stay, with NNCF's overflow fix applied and their ranges frozen into constants;
    sparsity wrappers fold their masks into the weights and disappear); then each algorithm's model-level `strip(model)` runs (filter pruning
    removes the pruned filters). `model` itself is not changed.

    Args:
        model: a model returned by `kc.compress` (or any Keras model).
        algorithms: algorithm objects whose `strip(model)` to apply (the controller's).

    Returns:
        A new `keras.Model` (a `CompressedModel` for a subclassed one).
    """
    if isinstance(model, CompressedModel):
        return strip_subclassed(model, strip_layer)
    pruned = any(isinstance(layer, FilterPruningWrapper) for layer in iter_layers(model))
    copy = keras.models.clone_model(model, clone_function=fresh_copy, recursive=True)
    copy.set_weights(model.get_weights())
    stripped = keras.models.clone_model(copy, clone_function=_strip_wrapper, recursive=True)
    for algorithm in algorithms:
        strip = getattr(algorithm, "strip", None)
        if strip is not None:
            stripped = strip(stripped)
    # Without the controller (kc.export of a compressed model), remove pruned filters from
    # the masks the model carries.
    if pruned and not any(getattr(a, "name", None) == "filter_pruning" for a in algorithms):
        stripped = remove_pruned_filters(stripped)
    return stripped


def _strip_wrapper(layer):
    """A keras_compress layer's `strip()` (wrappers, activation quantizers); other layers as they are."""
    strip = getattr(layer, "strip", None)
    if type(layer).__module__.startswith("keras_compress.") and not isinstance(layer, keras.Model) and callable(strip):
        return strip()
    return layer


def strip_layer(layer):
    """The inference version of one layer: a wrapper's `strip()`, a stripped graph model, or the layer."""
    if is_graph_model(layer):
        return strip_model(layer)
    strip = getattr(layer, "strip", None)
    return strip() if isinstance(layer, keras.layers.Wrapper) and callable(strip) else layer
