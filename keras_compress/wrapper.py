"""Base class of the wrappers that transform a layer's weights before its computation."""

from __future__ import annotations

import logging
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_compress.base_layer import CompressionLayer, innermost
from keras_compress.compressible import call_with_weights, compressible_spec

__all__ = ["PROGRESS_VARIABLES", "WeightsWrapper", "exported_entries", "innermost", "unwrap"]

logger = logging.getLogger("keras_compress")

#: The training-progress counters every wrapper holds (see `WeightsWrapper`).
PROGRESS_VARIABLES = ("compression_epoch", "compression_step")
# Training functions (tf.function graphs) already warned about a missing schedule driver.
_WARNED_GRAPHS = weakref.WeakSet()


def unwrap(layer):
    """Returns the innermost layer under a stack of `WeightsWrapper`s."""
    while isinstance(layer, WeightsWrapper):
        layer = layer.layer
    return layer


def exported_entries(layers, wrapper):
    """`{weight name: bool array}`: the entries of `wrapper`'s weights that survive export.

    Export removes some weight entries altogether (filter pruning drops pruned filters and the
    input channels that read them), whichever wrapper of the stack around the layer asks for it;
    figures about the exported model (sparsity) count only the entries that survive. A weight
    with no entry in the result survives whole.

    Args:
        layers: the layers of the model (`iter_layers(model)`: every wrapper, outer ones first).
        wrapper: a `WeightsWrapper` of the model.
    """
    outermost = wrapper
    for layer in layers:
        if isinstance(layer, WeightsWrapper) and wrapper in layer._chain()[0]:
            outermost = layer
            break
    kept = {}
    for member in outermost._chain()[0]:
        for name, mask in (member.surviving_entries() or {}).items():
            kept[name] = kept[name] & mask if name in kept else mask
    return kept


class WeightsWrapper(CompressionLayer, keras.layers.Wrapper):
    """Wraps a compressible layer and runs it with transformed weights.

    Subclasses create their variables in `build_wrapper(input_shape)` and implement
    `transform_weights(weights, training)`. Wrappers nest (for example quantization
    around pruning): the outermost wrapper applies every transform from the innermost
    outwards, then calls the wrapped layer's computation once with the result.

    Every wrapper also holds the model's compression progress, two non-trainable counters
    (`compression_epoch`: epochs begun, `compression_step`: optimizer steps begun under the
    controller). They are saved with the weights, so schedules continue where they stopped
    after `model.save` / `load_model`, a weights checkpoint, or a new `compile()`.

    A wrapper whose class has `scheduled = True` (pruning, sparsity) needs the controller's
    callbacks to move its compression level: when `fit` traces it for training while no
    controller drives it (`driven`), one warning per training function says so.

    Args:
        layer: a layer of a class listed in `keras_compress.compressible.COMPRESSIBLE_LAYERS`,
            or another `WeightsWrapper`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, ...).
    """

    def __init__(self, layer, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.spec = compressible_spec(unwrap(layer))
        if self.spec is None:
            raise ValueError(
                "`layer` must be a compressible Keras layer (Conv*, Dense, EinsumDense, "
                f"Embedding, ...). Received: layer={unwrap(layer).__class__.__name__}"
            )

    #: Whether the compression level of this kind of wrapper follows a schedule.
    scheduled = False
    #: Whether the wrapper holds the progress counters (not in an inference model's frozen wrappers).
    tracks_progress = True

    def build(self, input_shape=None):
        self.input_shape_at_build = input_shape
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.tracks_progress:
            for name in PROGRESS_VARIABLES:
                setattr(self, name, self.add_weight(name=name, shape=(), initializer="zeros",
                                                    trainable=False, dtype="float32"))  # fmt: skip
        self.build_wrapper(input_shape)
        self.built = True

    def build_wrapper(self, input_shape):
        """Creates the wrapper's own variables. The wrapped layer is already built."""

    def transform_weights(self, weights, training=None):
        """Returns the transformed weights (a new dict; never modifies variables)."""
        return weights

    def strip(self):
        """The layer that replaces this wrapper in an inference model.

        Called on a copy of the trained model by `strip_model`; it may change variables. The
        default strips the wrapped layer (when it is a wrapper itself) and keeps this wrapper
        around the result.
        """
        if isinstance(self.layer, WeightsWrapper):
            inner = self.layer.strip()
            if inner is not self.layer:
                return self.rewrap(inner)
        return self

    def own_variables(self):
        """The wrapper's variables, without those of the wrapped layer."""
        inner = {id(v) for v in self.layer.weights}
        return [v for v in self.weights if id(v) not in inner]

    def rewrap(self, layer):
        """A new wrapper of this kind and config around `layer`, with this wrapper's variables."""
        config = self.get_config()
        config.pop("layer")
        new = type(self)(layer, **config)
        new.build(self.input_shape_at_build)
        for target, source in zip(new.own_variables(), self.own_variables()):
            target.assign(source)
        return new

    def _chain(self):
        chain, layer = [], self
        while isinstance(layer, WeightsWrapper):
            chain.append(layer)
            layer = layer.layer
        return list(reversed(chain)), layer

    def effective_weights(self, training=False):
        """The weights as the wrapped layer sees them: every transform applied."""
        chain, base = self._chain()
        weights = {name: getattr(base, name) for name in self.spec.weights}
        for wrapper in chain:
            weights = wrapper.transform_weights(weights, training=training)
        return weights

    def training_loss(self):
        """A loss term this wrapper adds in training (RB, movement sparsity), or None."""
        return None

    def surviving_entries(self):
        """`{weight name: bool array}` of the wrapped layer's weight entries this wrapper keeps at
        export, or None when it removes none (see `exported_entries`)."""
        return None

    #: True while a `CompressionController` drives this wrapper's schedule (set by the controller).
    driven = False

    def _warn_if_not_driven(self):
        """Warns once per training function when a scheduled wrapper is trained with no controller."""
        undriven = any(w.scheduled and not w.driven for w in self._chain()[0])
        if not undriven or tf.executing_eagerly():
            return
        graph = tf.compat.v1.get_default_graph()
        if graph in _WARNED_GRAPHS:
            return
        _WARNED_GRAPHS.add(graph)
        logger.warning(
            "A compressed model is being trained without the controller's callbacks (layer %r): "
            "its pruning/sparsity schedule does not advance and the compression level stays where it "
            "is. Pass `callbacks=ctrl.callbacks()` to `fit` (for a loaded model, get its controller "
            "with `kc.compress(model, config)`).",
            self.name,
        )

    def call(self, inputs, *args, training=None, **kwargs):
        if training:
            self._warn_if_not_driven()
            # Only the outermost wrapper's call runs: it adds the losses of the whole stack.
            for wrapper in self._chain()[0]:
                loss = wrapper.training_loss()
                if loss is not None:
                    self.add_loss(loss)
        hooks = {}
        for wrapper in self._chain()[0]:
            hooks.update(wrapper.call_hooks())
        return call_with_weights(unwrap(self), inputs, self.effective_weights(training), hooks, *args, **kwargs)

    def call_hooks(self):
        """Functions this wrapper applies to intermediate tensors of the layer's computation (see
        `call_with_weights`); none by default."""
        return {}


    def compute_output_spec(self, *args, **kwargs):
        # Traced through `call` (as Keras does for a layer without shape rules), which also builds the
        # wrapped layers: its own shape rule may not know the call's other arguments (`reverse=True`).
        return keras.Operation.compute_output_spec(self, *args, **kwargs)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        # For the layers that ask the wrapped layer's shape rule (TimeDistributed).
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = config.copy()
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)
