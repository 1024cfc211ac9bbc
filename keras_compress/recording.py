"""The graphs of composite layers and subclassed models, recorded from one forward pass.

A layer that holds layers (a container: a composite layer such as a KerasHub transformer block, a
subclassed model, `TimeDistributed`) calls them in its `call()`, with operations in between that no
graph shows. `record_containers` runs the model once on a sample and records, for every container
at any depth, which of its sublayers read which tensors: its inputs, the outputs of its other
sublayers, or tensors its own operations made (an "unseen" producer). Every algorithm then plans on
that graph as on a Functional one.

The recording instruments the model's objects for the duration of one call: each container and
each of its sublayers gets an instance attribute `call` that records and then runs the class's own
`call` (Keras' `__call__` runs `self.call`). Nothing else of the model changes, and the instance
attributes are removed afterwards whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types

import keras

from keras_compress.graph import (
    ModelGraph,
    Node,
    child_layers,
    flatten_call_args,
    is_any_tensor,
    is_container,
    is_graph_model,
)
from keras_compress.operations import OperationNode, attention_with_public_ops, has_private_attention, intercepting

__all__ = ["RecordedGraph", "containers_of", "record_containers", "sample_inputs"]


@dataclasses.dataclass
class RecordedGraph:
    """The graph of one container's sublayers, from its first call.

    Attributes:
        graph: a `ModelGraph` whose nodes hold the sublayers (and `Unseen` producers); its inputs are
            the tensors the container was called with.
        names: each node's sublayer name (its attribute path, see `graph.child_layers`), None for an
            unseen producer, `("op", k)` for the k-th matmul between activations of the container's
            own `call()` (see `keras_compress.operations`).
    """

    graph: ModelGraph
    names: list
    owner: object = None


class Unseen:
    """Stands for what produced a tensor no recorded sublayer returned (operations in `call()`)."""

    def __init__(self, name):
        self.name = name


def containers_of(model):
    """Every container inside `model` (the model itself included when it is one), each once,
    outermost first."""
    found, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if is_container(layer):
            found.append(layer)
        if is_container(layer) or is_graph_model(layer):
            for _, child in child_layers(layer):
                walk(child)

    walk(model)
    return found


def _is_concrete(tensor):
    """Whether a tensor holds values: not symbolic, not traced (Keras traces a layer without `build()`
    to build it, a `tf.function` or `jax.jit` traces its body)."""
    if isinstance(tensor, keras.KerasTensor):
        return False
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if keras.backend.backend() == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    return True


class _Recording:
    """The graph of one container under construction."""

    def __init__(self, container):
        self.container = container
        self.children = {id(child): name for name, child in child_layers(container)}
        self.started = False
        self.done = False
        self.nodes, self.names, self.refs, self.dtypes, self.keep = [], [], {}, {}, []
        self.inputs, self.outputs = [], []

    def begin(self, args, kwargs):
        self.started = True
        tensors = flatten_call_args(args, kwargs, is_any_tensor)
        for i, tensor in enumerate(tensors):
            self.refs[id(tensor)] = (-1 - i, 0)
            self.dtypes[(-1 - i, 0)] = str(tensor.dtype)
            self.keep.append(tensor)
        self.inputs = [(-1 - i, 0) for i in range(len(tensors))]

    def end(self, outputs):
        self.done = True
        self.outputs = [self.refs[id(t)] for t in keras.tree.flatten(outputs) if id(t) in self.refs]

    def ref_of(self, tensor):
        if id(tensor) not in self.refs:
            index = len(self.nodes)
            self.nodes.append(Node(index, Unseen(f"{self.container.name}_op{index}"), [], 1))
            self.names.append(None)
            self.refs[id(tensor)], self.dtypes[(index, 0)] = (index, 0), str(tensor.dtype)
        self.keep.append(tensor)
        return self.refs[id(tensor)]

    def operation(self, name, operands, output):
        """A matmul between activations made by the container itself (`keras_compress.operations`)."""
        number = sum(1 for n in self.names if isinstance(n, tuple))
        inputs = [self.ref_of(t) for t in operands]
        index = len(self.nodes)
        self.nodes.append(Node(index, OperationNode(f"{self.container.name}_{name}{number}", number), inputs, 1))
        self.names.append(("op", number))
        self.refs[id(output)], self.dtypes[(index, 0)] = (index, 0), str(output.dtype)
        self.keep.append(output)

    def node(self, child, args, kwargs, outputs):
        inputs = [self.ref_of(t) for t in flatten_call_args(args, kwargs, is_any_tensor)]
        flat = [t for t in keras.tree.flatten(outputs) if is_any_tensor(t)]
        index = len(self.nodes)
        self.nodes.append(Node(index, child, inputs, len(flat)))
        self.names.append(self.children[id(child)])
        for j, tensor in enumerate(flat):
            self.refs[id(tensor)], self.dtypes[(index, j)] = (index, j), str(tensor.dtype)
            self.keep.append(tensor)

    def result(self):
        names = [f"input_{i}" if len(self.inputs) > 1 else "inputs" for i in range(len(self.inputs))]
        graph = ModelGraph(self.nodes, self.inputs, self.outputs, self.dtypes, names)
        return RecordedGraph(graph, self.names, self.container)


def record_containers(model, sample):
    """Records the graph of every container inside `model` from one call on `sample`.

    Args:
        model: a model (not changed; its objects are instrumented during the call only).
        sample: an input batch for `model`.

    Returns:
        `{id(container): RecordedGraph}` for the containers the call went through (a container it
        never called is missing).
    """
    containers = containers_of(model)
    if not containers:
        return {}
    recordings = {id(c): _Recording(c) for c in containers}
    parents = {}
    for container in containers:
        for _, child in child_layers(container):
            parents.setdefault(id(child), []).append(recordings[id(container)])
    stack = []
    patched = []

    def instrument(layer):
        own = recordings.get(id(layer))
        recorders = parents.get(id(layer), [])
        original = layer.call

        def call(*args, **kwargs):
            tensors = flatten_call_args(args, kwargs, is_any_tensor)
            concrete = bool(tensors) and all(_is_concrete(t) for t in tensors)
            parent = stack[-1] if stack and concrete else None
            begin = own is not None and concrete and not own.started
            if begin:
                own.begin(args, kwargs)
                stack.append(own)
            try:
                outputs = original(*args, **kwargs)
            finally:
                if begin:
                    stack.pop()
            if begin:
                own.end(outputs)
            if parent is not None and parent in recorders and not parent.done:
                parent.node(layer, args, kwargs, outputs)
            return outputs

        object.__setattr__(layer, "call", call)
        patched.append(layer)

    def handler(recording):
        def record(name, original, args, kwargs, positions):
            output = original(*args, **kwargs)
            operands = [args[p] for p in positions]
            if recording.started and not recording.done and all(_is_concrete(t) for t in operands):
                recording.operation(name, operands, output)
            return output

        return record

    attention = [c for c in containers if has_private_attention(type(c))]
    try:
        with contextlib.ExitStack() as contexts:
            for layer in {id(l): l for c in containers for l in [c, *(ch for _, ch in child_layers(c))]}.values():
                instrument(layer)
            for container in containers:
                contexts.enter_context(intercepting(container, handler(recordings[id(container)])))
            for layer in attention:  # its matmuls through the public ops, while recording
                object.__setattr__(layer, "_compute_attention", types.MethodType(attention_with_public_ops, layer))
            sample = keras.tree.map_structure(keras.ops.convert_to_tensor, sample)
            model(sample, training=False)
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
        for layer in attention:
            object.__delattr__(layer, "_compute_attention")
    return {key: recording.result() for key, recording in recordings.items() if recording.done}


def sample_inputs(model, batch_size=1, unknown=16):
    """An input batch for a graph model: ones for integer and boolean inputs (valid token ids and
    masks), zeros for the others; unknown sizes become `unknown`."""

    def make(tensor):
        shape = [batch_size] + [d if d is not None else unknown for d in tensor.shape[1:]]
        dtype = str(tensor.dtype)
        fill = keras.ops.ones if ("int" in dtype or "bool" in dtype) else keras.ops.zeros
        return fill(shape, dtype=dtype)

    return keras.tree.map_structure(make, model.input)
