"""The call graph of a Functional model, read by replaying its construction.

Keras rebuilds a Functional model layer call by layer call in `keras.models.clone_model`. Replaying
that once with a recording `call_function` gives the graph in exactly the order in which the real
transformation will see the calls, so the transformation can address each layer call and each of
its inputs by position, with no private Keras API.
"""

from __future__ import annotations

import dataclasses

import keras

__all__ = ["iter_layers", "LayerCall", "ModelGraph", "trace_graph", "flatten_call_args", "fresh_copy"]

#: A tensor in the graph: (index of the producing call, output index). Model input i is (-1 - i, 0).
TensorRef = tuple


def iter_layers(model, wrappers=True):
    """Yields every layer of `model`, descending into nested models (and wrappers)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, wrappers)
            continue
        yield layer
        while wrappers and isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
            yield layer


def fresh_copy(layer):
    """A new, unbuilt layer (or operation) with the same config.

    A `Lambda` layer is returned as it is (shared): it holds no weights, and Keras refuses to
    re-create a Python lambda from its config outside `safe_mode=False`.
    """
    if isinstance(layer, keras.layers.Lambda):
        return layer
    return layer.__class__.from_config(layer.get_config())


def flatten_call_args(args, kwargs):
    """The tensors among a call's arguments, in a fixed order (positional, then keywords)."""
    flat = keras.tree.flatten(list(args)) + keras.tree.flatten(dict(kwargs))
    return [t for t in flat if isinstance(t, keras.KerasTensor)]


@dataclasses.dataclass
class LayerCall:
    """One call of a layer in the graph.

    Attributes:
        index: position of the call in construction order.
        layer: the original (user's) layer object.
        inputs: `TensorRef`s of the tensor arguments, in `flatten_call_args` order.
        num_outputs: how many tensors the call returned.
    """

    index: int
    layer: object
    inputs: list
    num_outputs: int

    @property
    def name(self):
        return self.layer.name


@dataclasses.dataclass
class ModelGraph:
    """Layer calls of a Functional model with their producer/consumer links."""

    calls: list
    inputs: list
    outputs: list
    dtypes: dict
    input_names: list

    def __post_init__(self):
        self._consumers = {}
        for call in self.calls:
            for pos, ref in enumerate(call.inputs):
                self._consumers.setdefault(ref, []).append((call.index, pos))

    def consumers(self, ref):
        """(call index, input position) of every use of `ref` as a layer input."""
        return self._consumers.get(ref, [])

    def producer(self, ref):
        """The `LayerCall` that produced `ref`, or None for a model input."""
        return self.calls[ref[0]] if ref[0] >= 0 else None

    def is_model_output(self, ref):
        return ref in self.outputs


def trace_graph(model):
    """Records the layer calls of a Functional `model` (which is left unchanged).

    Args:
        model: a Functional Keras model.

    Returns:
        A `ModelGraph`.
    """
    originals = {}
    refs = {}

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            copy = keras.models.clone_model(layer)
        else:
            copy = fresh_copy(layer)
        originals[id(copy)] = layer
        return copy

    calls = []
    dtypes = {}

    input_tensors = new_inputs(model)
    for i, t in enumerate(keras.tree.flatten(input_tensors)):
        refs[id(t)] = (-1 - i, 0)
        dtypes[(-1 - i, 0)] = t.dtype

    def recording_call(layer, *args, **kwargs):
        inputs = [refs[id(t)] for t in flatten_call_args(args, kwargs)]
        result = layer(*args, **kwargs)
        outputs = keras.tree.flatten(result)
        index = len(calls)
        calls.append(LayerCall(index, originals[id(layer)], inputs, len(outputs)))
        for j, t in enumerate(outputs):
            refs[id(t)] = (index, j)
            dtypes[(index, j)] = t.dtype
        return result

    clone = keras.models.clone_model(
        model,
        input_tensors=input_tensors,
        clone_function=clone_function,
        call_function=recording_call,
    )
    outputs = [refs[id(t)] for t in keras.tree.flatten(clone.outputs)]
    inputs = [(-1 - i, 0) for i in range(len(keras.tree.flatten(input_tensors)))]
    names = input_layer_names(model)
    return ModelGraph(calls, inputs, outputs, dtypes, names)


def input_layer_names(model):
    """Names of the model's input layers, in input order (from its public config)."""
    return [entry[0] for entry in _input_entries(model.get_config()["input_layers"])]


def _input_entries(layers):
    if isinstance(layers, dict):
        return [e for v in layers.values() for e in _input_entries(v)]
    if len(layers) == 3 and isinstance(layers[0], str):
        return [layers]
    return [e for v in layers for e in _input_entries(v)]


def new_inputs(model):
    """Fresh `keras.Input`s with the structure, shapes, dtypes and names of `model.input`."""
    return keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input
    )
