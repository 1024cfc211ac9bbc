"""CompressionLayer: the base class of every layer keras_compress puts into a model."""

from __future__ import annotations

import keras

__all__ = ["CompressionLayer", "innermost", "strip_layer"]


class CompressionLayer:
    """Mixin base of keras_compress' own layers: weight wrappers, activation quantizers, the input
    and attention wrappers. The rest of the package recognises them by this class, and turns them
    into their inference version with `strip()`.

    A subclass lists it first: `class FakeQuantize(CompressionLayer, keras.layers.Layer)`.
    """

    def strip(self):
        """The layer that replaces this one in an inference model (called on a copy of the trained
        model, so it may change the copy's variables). This layer itself by default."""
        return self


def strip_layer(layer):
    """`layer.strip()` for keras_compress' own layers; any other layer as it is."""
    return layer.strip() if isinstance(layer, CompressionLayer) else layer


def innermost(layer):
    """The user's layer inside any stack of keras_compress wrappers (weight wrappers, input
    quantizers, the attention wrapper)."""
    while isinstance(layer, CompressionLayer) and isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer
