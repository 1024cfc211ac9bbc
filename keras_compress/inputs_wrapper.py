"""InputsWrapper: layers applied to some input tensors of a layer, then the layer itself.

In a Functional model an algorithm's planned layers (activation quantizers) are inserted on the
edges of the graph (`transform.transform_model`). A subclassed model has no graph that can be
rebuilt, so the layers planned for the inputs of one of its layers (on a graph recorded from one
forward pass, see `keras_compress.subclassed`) are held by a wrapper around that layer instead.
"""

from __future__ import annotations

import inspect

import keras

from keras_compress.base_layer import CompressionLayer, strip_layer
from keras_compress.graph import init_with_call_signature, is_any_tensor, replace_call_tensors

__all__ = ["InputsWrapper"]


def _takes_one_shape(layer):
    """Whether `layer.build` takes one shape (`build(input_shape)`), not one per input."""
    required = [p for p in inspect.signature(layer.build).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    return len(required) <= 1


@keras.saving.register_keras_serializable(package="keras_compress")
class InputsWrapper(CompressionLayer, keras.layers.Wrapper):
    """Applies a layer to each of some input tensors of `layer`, then calls `layer` on the result.

    Args:
        layer: the wrapped layer.
        inputs: `{position: layer}`: the layer applied to the tensor at each position, counting the
            call's tensor arguments in order (positional arguments flattened, then keywords: the
            order of `graph.flatten_call_args`), or the layer's serialized config.
        **kwargs: base layer arguments.

    Example:
        >>> wrapped = InputsWrapper(keras.layers.Add(), {1: keras.layers.Identity()})
        >>> tuple(wrapped([keras.ops.ones((2, 3)), keras.ops.ones((2, 3))]).shape)
        (2, 3)
    """

    def __init__(self, layer, inputs, **kwargs):
        kwargs.setdefault("name", layer.name)  # it stands for the layer (a graph names it, scopes match it)
        # Its calls bound as the wrapped layer's (keyword arguments mixing tensors and other values).
        init_with_call_signature(self, layer, super().__init__, layer, **kwargs)
        items = sorted((int(position), inner) for position, inner in inputs.items())
        self.positions = [position for position, _ in items]
        self.input_layers = [
            inner if isinstance(inner, keras.layers.Layer) else keras.saving.deserialize_keras_object(inner)
            for _, inner in items
        ]

    def build(self, *args, **kwargs):
        # The shapes are the wrapped layer's: a composite layer's own `build()` may build its sublayers
        # by hand, with the arguments of their own `build` (KerasHub's blocks do, then compute their
        # output shape without calling them). Keras' first call gives one shape; a wrapped layer whose
        # `build` takes one per input builds on its first call instead. The input layers (activation
        # quantizers) need no shape.
        given = [a for a in (*args, *kwargs.values()) if a is not None]
        if not self.layer.built and given and (len(args) + len(kwargs) > 1 or _takes_one_shape(self.layer)):
            self.layer.build(*args, **kwargs)
        for layer in self.input_layers:
            if not layer.built:
                layer.build()
        self.built = True

    def call(self, inputs, *args, **kwargs):
        # A call whose tensor at a position is not a float one (token ids for a reversible embedding's
        # lookup, whose reverse call reads floats) leaves it as it is.
        replace = {
            position: (lambda x, inner=inner: inner(x) if "float" in str(x.dtype) else x)
            for position, inner in zip(self.positions, self.input_layers)
        }
        (inputs, *args), kwargs = replace_call_tensors((inputs, *args), kwargs, replace, is_any_tensor)
        return self.layer(inputs, *args, **kwargs)


    def strip(self):
        """This wrapper of an inference model: its layer and its input layers stripped (activation
        quantizers stay, they are the INT8 recipe, with their ranges frozen into constants)."""
        inner, input_layers = strip_layer(self.layer), [strip_layer(layer) for layer in self.input_layers]
        if inner is self.layer and all(new is old for new, old in zip(input_layers, self.input_layers)):
            return self
        return InputsWrapper(inner, dict(zip(self.positions, input_layers)), name=self.name)

    def get_config(self):
        inputs = {
            str(position): keras.saving.serialize_keras_object(inner)
            for position, inner in zip(self.positions, self.input_layers)
        }
        return {**super().get_config(), "inputs": inputs}

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

