"""The model transformer: clones a Keras model and puts compression layers in it.

The mechanism is Keras' own `keras.models.clone_model(clone_function=..., call_function=...)`:
`clone_function` swaps a layer for its wrapper, `call_function` inserts layers (activation
quantizers) on the inputs of a layer call. Nested models are cloned recursively the same way. The
input model is never changed; the clone starts with the original weights copied over exactly.
"""

from __future__ import annotations

import keras

from keras_compress.graph import as_functional, fresh_copy, new_inputs, replace_call_tensors, trace_graph
from keras_compress.wrapper import innermost

__all__ = ["transform_model"]


def transform_model(model, wrap_fn=None, planners=()):
    """Clones `model`, wrapping layers and inserting layers on the edges of its graph.

    Args:
        model: a Sequential or Functional model (nested models are handled recursively).
        wrap_fn: `(original_layer, fresh_layer, path) -> layer` that returns the layer to put in
            the clone (a wrapper around `fresh_layer`, or `fresh_layer` itself). `path` is the
            "outer/inner/" prefix of nested models.
        planners: objects with `plan(graph, path) -> plan` and `make_layer(key, plan) -> layer`
            (algorithms). A plan has `edges` {(call index, input position): key} and `outputs`
            {output position: key}; `make_layer` is called once per key per (sub)model. Where
            several planners insert on one edge, their layers are applied in planner order.

    Returns:
        (new_model, pairs): the clone and the list of `(original_layer, new_layer, path)`.
    """
    pairs = []
    new_model = _rebuild(as_functional(model), wrap_fn, list(planners), "", pairs)
    for original, new, _ in pairs:
        if not isinstance(original, keras.layers.Layer) or isinstance(original, keras.Model):
            continue  # keras.ops operations have no weights; nested models copy their own
        weights = original.get_weights()
        if weights:
            innermost(new).set_weights(weights)
    return new_model, pairs


class _Inserter:
    """The layers one planner inserts into one (sub)model, each applied once per tensor."""

    def __init__(self, planner, graph, path):
        self.planner = planner
        self.plan = planner.plan(graph, path)
        self.layers = {}  # key -> inserted layer
        self.applied = {}  # (key, id of the input tensor) -> (input tensor, output of the inserted layer)

    def edge(self, edge):
        return None if self.plan is None else self.plan.edges.get(edge)

    def output(self, position):
        return None if self.plan is None else self.plan.outputs.get(position)

    def apply(self, key, tensor):
        if (key, id(tensor)) not in self.applied:
            if key not in self.layers:
                self.layers[key] = self.planner.make_layer(key, self.plan)
            self.applied[(key, id(tensor))] = (tensor, self.layers[key](tensor))
        return self.applied[(key, id(tensor))][1]


def _rebuild(model, wrap_fn, planners, path, pairs):
    graph = trace_graph(model)
    inserters = [_Inserter(planner, graph, path) for planner in planners]

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            new = _rebuild(as_functional(layer), wrap_fn, planners, f"{path}{layer.name}/", pairs)
        else:
            new = fresh_copy(layer)
            if wrap_fn is not None:
                new = wrap_fn(layer, new, path)
        pairs.append((layer, new, path))
        return new

    counter = [0]

    def insert(tensor, key_of):
        for inserter in inserters:
            key = key_of(inserter)
            if key is not None:
                tensor = inserter.apply(key, tensor)
        return tensor

    def call_function(layer, *args, **kwargs):
        call = graph.calls[counter[0]]
        counter[0] += 1
        replace = {
            pos: lambda tensor, pos=pos: insert(tensor, lambda inserter: inserter.edge((call.index, pos)))
            for pos in range(len(call.inputs))
        }
        args, kwargs = replace_call_tensors(args, kwargs, replace)
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(
        model,
        input_tensors=new_inputs(model),
        clone_function=clone_function,
        call_function=call_function,
    )
    if any(inserter.plan is not None and inserter.plan.outputs for inserter in inserters):
        outputs = keras.tree.flatten(new_model.outputs)
        for pos in range(len(outputs)):
            outputs[pos] = insert(outputs[pos], lambda inserter: inserter.output(pos))
        structure = keras.tree.pack_sequence_as(new_model.output, outputs)
        new_model = keras.Model(new_model.inputs, structure, name=new_model.name)
    return new_model
