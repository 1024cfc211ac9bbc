"""strip_model: a plain inference copy of a compressed model."""

from __future__ import annotations

import keras

from keras_compress.graph import iter_layers
from keras_compress.quantization.quantize_wrapper import QuantizeWrapper

__all__ = ["strip_model"]


def strip_model(model):
    """Returns an inference copy of `model` with training-only state resolved.

    The copy has the same layers and weights; half-range weight quantizers get NNCF's
    overflow fix (quantized weights baked in, full-width grid), so the exported IR holds plain
    8-bit FakeQuantize ops. `model` itself is not changed.

    Args:
        model: a model returned by `kc.compress` (or any Keras model).

    Returns:
        A new `keras.Model`.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in iter_layers(copy):
        if isinstance(layer, QuantizeWrapper):
            layer.apply_overflow_fix()
    return copy
