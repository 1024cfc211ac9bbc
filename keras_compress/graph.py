"""The call graph of a Functional model, read by replaying its construction.

Keras rebuilds a Functional model layer call by layer call in `keras.models.clone_model`. Replaying
that once with a recording `call_function` gives the graph in exactly the order in which the real
transformation will see the calls, so the transformation can address each layer call and each of
its inputs by position, with no private Keras API.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import keras
import numpy as np

from keras_compress.base_layer import CompressionLayer

__all__ = [
    "ROLES",
    "Node",
    "ModelGraph",
    "as_functional",
    "flatten_call_args",
    "fresh_copy",
    "is_any_tensor",
    "is_symbolic",
    "functional_class",
    "is_functional_subclass",
    "is_graph_model",
    "child_layers",
    "input_layer_names",
    "is_container",
    "init_with_call_signature",
    "iter_layers",
    "own_weights",
    "layers_by_path",
    "has_inputs",
    "new_inputs",
    "node_role",
    "node_weights",
    "replace_call_tensors",
    "trace_graph",
]

L = keras.layers
#: Layer classes by role (see `node_role`). A layer class of its own can declare its role with a
#: `compression_role` class attribute.
_LAYER_ROLES = {
    # Inference-time identities: output == input.
    "identity": (
        L.Identity, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
        L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
    ),
    # Each channel on its own, output values taken from the input (no new values).
    "spatial": (
        L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
        L.Cropping1D, L.Cropping2D, L.Cropping3D,
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
        L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    ),
    # Each channel on its own, new values.
    "average_pool": (
        L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
        L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    ),
    "channelwise": (L.UpSampling1D, L.UpSampling2D, L.UpSampling3D),
    # Values moved to other positions or axes, none changed.
    "reshape": (L.Reshape, L.Flatten, L.Permute, L.RepeatVector),
    "activation": (L.Activation, L.ReLU, L.LeakyReLU, L.ELU),
    "softmax": (L.Softmax,),
    "batchnorm": (L.BatchNormalization,),
    "merge": (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum),
    "concat": (L.Concatenate,),
    "matmul": (L.Dot,),
}  # fmt: skip
del L
#: Class names of keras.ops operations (the objects `x + y` or `keras.ops.relu(x)` leave in a
#: Functional graph) by role. The classes live in Keras' private modules: they are told by name.
_OP_ROLES = {
    "identity": ("StopGradient", "Copy"),
    "reshape": (
        "Reshape", "Transpose", "ExpandDims", "Squeeze", "MoveAxis", "SwapAxes", "Flatten",
        # Values selected or repeated, none changed (`x[:, 0]`, `keras.ops.slice`, `tile`).
        "GetItem", "Slice", "Tile", "Repeat", "BroadcastTo",
    ),
    "activation": (
        "Relu", "Relu6", "Gelu", "Silu", "Sigmoid", "HardSigmoid", "HardSilu", "Tanh", "Elu", "Selu",
        "LeakyRelu", "Softplus", "Softsign", "Mish", "Exp", "Abs", "Square", "Sqrt", "Rsqrt", "Negative",
        "Erf", "Log", "Clip", "Round", "Cast",
    ),
    "softmax": ("Softmax", "LogSoftmax"),
    "merge": ("Add", "Subtract", "Multiply", "Maximum", "Minimum"),
    "concat": ("Concatenate",),
    "matmul": ("Matmul", "Einsum", "Dot", "Tensordot"),
}  # fmt: skip
#: Binary elementwise ops: with a single tensor input (`x * 0.5`, `x + 1`) they act per element.
_ELEMENTWISE_OPS = frozenset((*_OP_ROLES["merge"], "TrueDivide", "Divide", "Power"))
#: Every role `node_role` returns.
ROLES = (
    "model", "weights", "identity", "spatial", "average_pool", "channelwise", "reshape", "activation",
    "softmax", "batchnorm", "normalization", "merge", "concat", "matmul", "other",
)  # fmt: skip


def node_role(op, num_tensor_inputs=1, scalar_constants=True):
    """What an operation of a graph is to compression, as one of `ROLES`.

    - "model": a nested model; "weights": a layer with weights of its own (Conv, Dense, Embedding...,
      but not BatchNormalization or LayerNormalization);
    - "identity" (Dropout, Identity: output == input at inference), "spatial" (padding, cropping,
      max pooling: each channel on its own, values taken from the input), "average_pool",
      "channelwise" (upsampling), "reshape" (Reshape, Flatten, Permute, transpose...), "activation"
      (ReLU, GELU, `x * 0.5`: one value from one value), "softmax", "batchnorm", "normalization"
      (LayerNormalization and friends);
    - "merge" (elementwise `Add`, `x + y`, `Multiply`...), "concat", "matmul" (`Dot`, `keras.ops.matmul`
      or `einsum` between two tensors);
    - "other": anything else (left alone by the algorithms that do not know it).

    Args:
        op: a layer or keras.ops operation of a Functional graph.
        num_tensor_inputs: how many tensors the call received (a binary op on one tensor and a
            constant is elementwise, not a merge).
        scalar_constants: whether every constant operand of the call is a scalar (`x * 0.5` acts
            per element; `x * vector` is "other": its constant has a channel axis of its own).

    Example:
        >>> node_role(keras.layers.ReLU()), node_role(keras.layers.Add(), 2)
        ('activation', 'merge')
    """
    if is_graph_model(op):
        return "model"
    if is_container(op):
        return "other"  # its sublayers are compressed one by one, on a graph of their own
    declared = getattr(type(op), "compression_role", None)
    if declared in ROLES:
        return declared
    if isinstance(op, keras.layers.Layer):
        for role, classes in _LAYER_ROLES.items():
            if isinstance(op, classes):
                activation = getattr(getattr(op, "activation", None), "__name__", "")
                if role == "activation" and activation in ("softmax", "log_softmax"):
                    return "softmax"
                return role
        if isinstance(op, (keras.layers.LayerNormalization, keras.layers.GroupNormalization,
                           keras.layers.UnitNormalization)):  # fmt: skip
            return "normalization"
        return "weights" if op.weights else "other"
    name = type(op).__name__
    if name in _ELEMENTWISE_OPS and num_tensor_inputs < 2:
        return "activation" if scalar_constants else "other"
    for role, names in _OP_ROLES.items():
        if name in names:
            return role if role not in ("matmul", "concat") or num_tensor_inputs >= 2 else "other"
    return "other"


def node_weights(op):
    """The weights of a graph operation (a keras.ops operation has none)."""
    return list(getattr(op, "weights", None) or [])

#: A tensor in the graph: (index of the producing call, output index). Model input i is (-1 - i, 0).
TensorRef = tuple


#: Prefixes of the attributes TensorFlow's object tracking adds to a layer (`_self_unconditional_...`):
#: bookkeeping, not sublayers (a user's `_self_attention` attribute is one).
TRACKING_ATTRIBUTES = ("_self_unconditional", "_self_update_uid", "_self_name_based", "_self_saveable", "_self_setattr")
#: Attributes every Keras layer has: not sublayers of a user's class.
_LAYER_ATTRIBUTES = frozenset(dir(keras.layers.Layer()))
#: Attributes every Keras layer and model has. A layer that is not a model may use the names only a
#: model has for its own sublayers (KerasHub's DINOV2Encoder holds its blocks in `self.layers`).
_BASE_ATTRIBUTES = _LAYER_ATTRIBUTES | frozenset(dir(keras.Model()))


def is_container(layer):
    """Whether `layer` is a layer (or subclassed model) whose sublayers are its attributes and are
    compressed one by one: a composite layer of the user's or of a library (KerasHub's transformer
    blocks), a Keras wrapper layer (`TimeDistributed`, `Bidirectional`), MultiHeadAttention (its
    projections; its matmuls are seen through `keras_compress.operations`), or a layer that lists its
    sublayers with a `compression_children()` method.

    Keras' other layers with sublayers (RNN) are leaves: their inner layers are details of their
    implementation. Sequential and Functional models (subclasses included) are
    graphs, not containers; keras_compress' own layers are neither.
    """
    if not isinstance(layer, keras.layers.Layer) or is_graph_model(layer) or isinstance(layer, CompressionLayer):
        return False
    if hasattr(type(layer), "compression_children"):
        return True
    if _is_keras_layer(layer):  # its wrappers, and attention (projections, softmax and dropout sublayers)
        return isinstance(layer, (keras.layers.Wrapper, keras.layers.MultiHeadAttention))
    return isinstance(layer, keras.Model) or bool(_attribute_children(layer))


def _is_keras_layer(layer):
    module = type(layer).__module__ or ""
    return module == "keras" or module.startswith("keras.")


def child_layers(layer):
    """`[(name, sublayer)]`: the layers `layer` holds directly, each under the name it is reached by.

    A graph model's layers are named by their layer names; a container's (`is_container`) by their
    attribute path: `"conv1"`, `"blocks/0"`, `"heads/query"` for layers held in attributes, lists
    and dicts. A wrapper holds its wrapped `layer`, and the layers in its own attributes.
    """
    if is_graph_model(layer):
        return [(child.name, child) for child in layer.layers]
    if hasattr(type(layer), "compression_children"):
        return layer.compression_children()
    if isinstance(layer, keras.layers.Wrapper):  # the wrapped layer, and the layers of its own (input quantizers)
        return [("layer", layer.layer)] + [(n, c) for n, c in _attribute_children(layer) if c is not layer.layer]
    if not is_container(layer):
        return []
    return _attribute_children(layer)


def _attribute_children(layer):
    """`[(attribute path, layer)]` of the layers in `layer`'s own attributes, lists and dicts."""
    children = []
    base = _BASE_ATTRIBUTES if isinstance(layer, keras.Model) else _LAYER_ATTRIBUTES
    for attribute, value in sorted(vars(layer).items()):
        if attribute in base or attribute.startswith(("__", *TRACKING_ATTRIBUTES)):
            continue
        if attribute == "layer" and isinstance(layer, keras.layers.Wrapper):
            continue
        if isinstance(value, keras.layers.Layer):
            children.append((attribute, value))
        elif isinstance(value, (list, tuple)):
            children += [(f"{attribute}/{i}", v) for i, v in enumerate(value) if isinstance(v, keras.layers.Layer)]
        elif isinstance(value, dict):
            children += [(f"{attribute}/{k}", v) for k, v in value.items() if isinstance(v, keras.layers.Layer)]
    return children


def iter_layers(model, wrappers=True):
    """Yields every layer inside `model` once: nested models and user-defined containers are
    descended (not yielded), wrappers are yielded and (with `wrappers`) descended too."""
    seen = set()

    def walk(layer):
        for _, child in child_layers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            if isinstance(child, keras.Model) or is_container(child):
                yield from walk(child)
                continue
            yield child
            if wrappers and isinstance(child, keras.layers.Wrapper):
                yield from walk(child)

    yield from walk(model)


def layers_by_path(model, path=""):
    """`{"outer/inner/name": layer}` for the leaf layers of `model`, at any depth (wrappers not descended).

    Paths join the names of `child_layers`: layer names in graph models, attribute paths in
    subclassed ones. A layer of a compressed model and the original layer it was made from have the
    same path.
    """
    found = {}
    for name, layer in child_layers(model):
        if isinstance(layer, keras.Model) or is_container(layer):
            found.update(layers_by_path(layer, f"{path}{name}/"))
        else:
            found[f"{path}{name}"] = layer
    return found


def own_weights(layer):
    """The weights a layer created itself (`add_weight` in a container), without its sublayers'."""
    inner = {id(w) for _, child in child_layers(layer) for w in child.weights}
    return [w for w in layer.weights if id(w) not in inner]


def fresh_copy(layer):
    """A new, unbuilt layer (or operation) with the same config.

    A `Lambda` layer is returned as it is (shared): it holds no weights, and Keras refuses to
    re-create a Python lambda from its config outside `safe_mode=False`.
    """
    if isinstance(layer, keras.layers.Lambda):
        return layer
    return layer.__class__.from_config(layer.get_config())


def _scalar_constants(args, kwargs):
    """Whether every array-like operand of a call that is not a tensor of the graph is a scalar."""
    flat = keras.tree.flatten(list(args)) + keras.tree.flatten(dict(kwargs))
    return all(
        len(getattr(x, "shape", ())) == 0 or int(np.prod(x.shape)) == 1
        for x in flat
        if not isinstance(x, keras.KerasTensor) and hasattr(x, "shape")
    )


def is_symbolic(x):
    """Whether `x` is a tensor of a Functional graph (a `keras.KerasTensor`)."""
    return isinstance(x, keras.KerasTensor)


def is_any_tensor(x):
    """Whether `x` is a tensor: symbolic, or the backend's (eager or traced)."""
    return isinstance(x, keras.KerasTensor) or keras.ops.is_tensor(x)


def flatten_call_args(args, kwargs, is_tensor=is_symbolic):
    """The tensors among a call's arguments, in a fixed order (positional, then keywords)."""
    flat = keras.tree.flatten(list(args)) + keras.tree.flatten(dict(kwargs))
    return [t for t in flat if is_tensor(t)]


def replace_call_tensors(args, kwargs, replace, is_tensor=is_symbolic):
    """A call's arguments with some tensors replaced: `replace` maps a position in
    `flatten_call_args` order to a function of the tensor there.

    Returns:
        `(args, kwargs)`, unchanged when nothing is replaced.
    """
    new = {}
    for position, tensor in enumerate(flatten_call_args(args, kwargs, is_tensor)):
        if position in replace:
            new[id(tensor)] = replace[position](tensor)
    if not new:
        return args, kwargs
    swap = lambda x: new.get(id(x), x) if is_tensor(x) else x  # noqa: E731
    return tuple(keras.tree.map_structure(swap, list(args))), keras.tree.map_structure(swap, dict(kwargs))


@dataclasses.dataclass
class Node:
    """One call of an operation (a layer, a nested model or a keras.ops operation) in the graph.

    Every algorithm reads the graph through nodes: placement of activation quantizers, pruning
    groups and layer selection. What an operation is to compression is its `role`.

    Attributes:
        index: position of the call in construction order.
        layer: the original (user's) layer or operation.
        inputs: `TensorRef`s of the tensor arguments, in `flatten_call_args` order.
        num_outputs: how many tensors the call returned.
        scalar_constants: whether every non-tensor array operand of the call is a scalar.
        prefix: the path prefix of the layer, when it differs from the graph's (a graph recorded
            from a subclassed model: the attribute path of the layer's parent, `"blocks/0/"`).
    """

    index: int
    layer: object
    inputs: list
    num_outputs: int
    scalar_constants: bool = True
    prefix: str | None = None

    @property
    def name(self):
        return self.layer.name

    @property
    def role(self):
        """The operation's role (`node_role`), one of `ROLES`."""
        return node_role(self.layer, len(self.inputs), self.scalar_constants)

    @property
    def weights(self):
        return node_weights(self.layer)


@dataclasses.dataclass
class ModelGraph:
    """The nodes of a Functional model (`calls`, in construction order) with producer/consumer links."""

    calls: list
    inputs: list
    outputs: list
    dtypes: dict
    input_names: list
    #: Whether the graph is inside another one (a nested model, a container's recorded graph): its
    #: inputs are tensors of the model, not the model's inputs.
    inner: bool = False
    #: The model or container whose graph this is (as the graph around it names it).
    owner: object = None

    def __post_init__(self):
        self._consumers = {}
        for call in self.calls:
            for pos, ref in enumerate(call.inputs):
                self._consumers.setdefault(ref, []).append((call.index, pos))

    def consumers(self, ref):
        """(call index, input position) of every use of `ref` as a layer input."""
        return self._consumers.get(ref, [])

    def producer(self, ref):
        """The `Node` that produced `ref`, or None for a model input."""
        return self.calls[ref[0]] if ref[0] >= 0 else None

    def is_model_output(self, ref):
        return ref in self.outputs


def init_with_call_signature(layer, stand_for, init, *args, **kwargs):
    """Runs `init(*args, **kwargs)` (the `__init__` of Keras' Layer, for `layer`) with `layer.call`
    taking the signature of `stand_for.call`: for a layer that calls another with `call(inputs, *args,
    **kwargs)` (a wrapper, a stand-in).

    Keras binds the arguments of every call of a layer by the signature its `call` had when the layer
    was made: with `**kwargs`, all keyword arguments would be one nested argument, which Keras refuses
    when it mixes tensors and other values (KerasHub's DINOv3 layers take `position_embeddings=(cos,
    sin), num_prefix_tokens=5`), and `training` / `mask` would not be passed on. The signature is given
    while `init` runs only; the layer's class `call` runs the calls.
    """
    signature = inspect.signature(stand_for.call)

    def call(*call_args, **call_kwargs):  # pragma: no cover - removed before any call
        raise RuntimeError("a signature carrier for Layer.__init__, never called")

    call.__signature__ = signature
    object.__setattr__(layer, "call", call)
    try:
        init(*args, **kwargs)
    finally:
        object.__delattr__(layer, "call")


class _StandIn(keras.layers.Layer):
    """Takes a layer's place while a graph is traced: computes what it would return, and calls nothing.

    Tracing by cloning with copies of the layers would need a copy of every layer (through its config,
    which some layers cannot round-trip); calling the user's layers themselves would add nodes to them.
    """

    def __init__(self, original):
        init_with_call_signature(
            self, original, super().__init__, name=original.name, dtype=original.dtype_policy, autocast=False
        )
        self.original = original
        self.built = True

    def compute_output_spec(self, *args, **kwargs):
        return self.original.compute_output_spec(*args, **kwargs)


def trace_graph(model):
    """Records the layer calls of a Functional `model` (which is left unchanged).

    Args:
        model: a Functional Keras model (or a Sequential one, or a subclass that builds a Functional
            graph: see `as_functional`).

    Returns:
        A `ModelGraph`.
    """
    model = as_functional(model)
    originals = {}
    refs = {}

    def clone_function(layer):
        copy = _StandIn(layer) if isinstance(layer, keras.layers.Layer) else fresh_copy(layer)
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
        calls.append(Node(index, originals[id(layer)], inputs, len(outputs), _scalar_constants(args, kwargs)))
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
    """Names of the model's inputs, in the order of `keras.tree.flatten(model.input)`."""
    return [tensor.name for tensor in keras.tree.flatten(model.input)]


def new_inputs(model):
    """Fresh `keras.Input`s with the structure, shapes, dtypes and names of `model.input`."""
    return keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input
    )


def is_graph_model(model):
    """Whether `model` is a Sequential or Functional model, or a `keras.Model` subclass whose
    `__init__` builds a Functional graph (`super().__init__(inputs=..., outputs=...)`, as every
    KerasHub backbone and task does): a model whose graph can be traced."""
    if isinstance(model, keras.Sequential):
        return True
    if not isinstance(model, keras.Model):
        return False
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
        return False
    tensors = keras.tree.flatten(inputs) + keras.tree.flatten(outputs)
    return bool(tensors) and all(is_symbolic(t) for t in tensors)


def is_functional_subclass(model):
    """Whether `model` is a graph model of a class of its own (a KerasHub backbone or task, or a
    compressed one): its class, attributes and methods must survive a transformation of its graph."""
    return is_graph_model(model) and not isinstance(model, keras.Sequential) and type(model) is not functional_class()


@functools.cache
def functional_class():
    """Keras' Functional model class (what `keras.Model(inputs, outputs)` makes)."""
    inputs = keras.Input((1,))
    return type(keras.Model(inputs, inputs))


def as_functional(model, input_shape=None):
    """Returns `model` as a Functional model (Sequential models are converted, sharing layers).

    Args:
        model: a Sequential or Functional `keras.Model`.
        input_shape: shape (without batch) used to build an unbuilt Sequential model.

    Raises:
        ValueError: for subclassed models, which have no graph to transform, and for
            Sequential models whose input shape is unknown.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={type(model).__name__}")
    if not is_graph_model(model):
        raise ValueError(
            "keras_compress transforms Sequential and Functional models (including nested "
            f"ones). Received a subclassed model of type {type(model).__name__}, whose graph "
            "cannot be cloned. Build the same network with the Functional API "
            "(`keras.Model(inputs, outputs)`) and load its weights, or compress the Functional "
            "sub-models it contains."
        )
    if isinstance(model, keras.Sequential):
        if not model.built or not has_inputs(model):
            if input_shape is None:
                raise ValueError(
                    f"Sequential model {model.name!r} has no input shape. Start it with "
                    "`keras.Input(shape)`, call `model.build(input_shape)`, or give "
                    "`input_info.sample_size` in the config."
                )
            # Unbuilt: it has no weights yet, so build a copy and leave the user's model as is.
            model = keras.models.clone_model(model)
            model.build((None, *input_shape))
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if is_functional_subclass(model):  # its graph, as a plain Functional model sharing its layers
        return keras.Model(model.input, model.output, name=model.name)
    return model


def has_inputs(model):
    """Whether `model` has symbolic inputs (a built graph model)."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False
