"""BatchNormalization adaptation: re-estimate BN statistics on calibration data.

An initializer shared by every algorithm: `kc.compress` runs it after compressing the model.
"""

from __future__ import annotations

import keras

from keras_compress.calibration import run_batches
from keras_compress.graph import iter_layers

__all__ = ["adapt_batchnorm", "batchnorm_layers"]


def batchnorm_layers(model):
    """All BatchNormalization layers of `model`, nested models included."""
    return [layer for layer in iter_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def adapt_batchnorm(model, batches, num_samples, verbose=1):
    """Recomputes the moving mean and variance of every BatchNormalization layer.

    Runs forward passes in training mode (no weight updates) with each BN layer's momentum
    set so that its moving statistics become the running average over all the batches seen
    (batch i gets weight 1 / (i + 1)). Compression changes the activations that reach BN
    layers; this repairs their statistics before fine-tuning, and also statistics that never
    converged (Keras' default momentum 0.99 on small data).

    Args:
        model: a Keras model.
        batches: iterable of input batches.
        num_samples: stop after this many samples.
        verbose: show a Keras progress bar.

    Returns:
        The number of samples used.
    """
    layers = batchnorm_layers(model)
    if not layers or num_samples <= 0:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]

    def running_average(step):
        for layer in layers:
            layer.momentum = step / (step + 1.0)

    try:
        for layer in layers:
            layer.trainable = True
        seen = run_batches(model, batches, num_samples, True, running_average, verbose)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum = momentum
            layer.trainable = trainable
    return seen
