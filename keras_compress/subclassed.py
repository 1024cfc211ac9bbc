"""Subclassed models: compressed by replacing sublayers of a copy, and kept serializable.

A subclassed `keras.Model` has no graph that `keras.models.clone_model` could rebuild, and its saved
config is only what its `get_config()` returns (its constructor's arguments). So keras_compress:

1. makes a copy with `type(model).from_config(model.get_config())`, the rule Keras already sets for
   saving a subclassed model, and leaves the user's model untouched;
2. records the graph of its layers from one forward pass (`record_graph`: which layer's output
   each layer reads; what `call()` computes with operations between layers is not seen, and its
   results count as inputs), so every algorithm plans on it as on a Functional graph;
3. replaces sublayers of the copy, before it is built, with what the algorithms return: the same
   `wrap` hook as for Functional models, and for the layers a plan inserts on the inputs of a layer
   (activation quantizers), an `InputsWrapper` around that layer. Sublayers are reached by
   attribute path: `"encoder/blocks/0/ffn"` for layers held in attributes, lists and dicts;
   Functional and Sequential sub-models are compressed by the graph transformer itself;
4. keeps the copy in a `CompressedModel`: its config holds the user's model config and the
   replaced layers by path, so `keras.saving.load_model` rebuilds the same structure (the user's
   class must be registered with `keras.saving.register_keras_serializable`, as Keras requires for
   any subclassed model).
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from keras_compress import backend
from keras_compress.graph import (
    ModelGraph,
    Node,
    child_layers,
    flatten_call_args,
    is_any_tensor,
    is_container,
    is_graph_model,
    own_weights,
)
from keras_compress.inputs_wrapper import InputsWrapper
from keras_compress.transform import transform_model
from keras_compress.wrapper import innermost

__all__ = [
    "CompressedModel",
    "build_replacement",
    "copy_subclassed",
    "describe_replacement",
    "get_sublayer",
    "innermost",
    "record_graph",
    "set_sublayer",
    "strip_subclassed",
    "transform_subclassed",
]

logger = logging.getLogger("keras_compress")


def get_sublayer(root, path):
    """The layer at an attribute path (`"blocks/0/ffn"`) of `root`."""
    node = root
    for part in path.split("/"):
        if isinstance(node, (list, tuple)):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node[part]
        else:
            node = getattr(node, part)
    return node


def set_sublayer(root, path, layer):
    """Puts `layer` at an attribute path of `root` (which must not be built yet), tracked by Keras."""
    *parents, last = path.split("/")
    parent = get_sublayer(root, "/".join(parents)) if parents else root
    if isinstance(parent, tuple):
        raise ValueError(
            f"Sublayers held in a tuple cannot be replaced. Received: the layer at {path!r} is in a tuple; "
            "hold the layers in a list instead."
        )
    if isinstance(parent, list):
        index = int(last)
        parent.pop(index)  # Keras' tracked lists track and untrack through these methods
        parent.insert(index, layer)
    elif isinstance(parent, dict):
        parent[last] = layer
    else:
        setattr(parent, last, layer)


def copy_subclassed(model):
    """A new, unbuilt instance of a subclassed model's class, made from its config.

    Raises:
        ValueError: when the model cannot be made again from its config, with what to do.
    """
    cls = type(model)
    try:
        config = model.get_config()
        copy = cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - user code may raise anything
        raise ValueError(
            f"kc.compress works on a copy of a subclassed model, made with "
            f"`{cls.__name__}.from_config(model.get_config())` (the rule Keras sets for saving a "
            f"subclassed model). That failed for {cls.__name__}: {type(err).__name__}: {err}. Let "
            f"`{cls.__name__}.__init__` take `**kwargs` (passed on to `super().__init__`) and give it a "
            "`get_config()` that returns its own constructor arguments "
            "(`{**super().get_config(), 'units': self.units, ...}`), so that "
            f"`{cls.__name__}.from_config(config)` builds the same model."
        ) from err
    if copy.built:
        raise ValueError(
            f"`{cls.__name__}.from_config` returned a built model. kc.compress replaces sublayers "
            "before the copy is built: build it lazily (on the first call), as Keras models do."
        )
    return copy


def describe_replacement(layer):
    """A replaced sublayer as config: the chain of keras_compress wrappers around the user's layer
    (outermost first, each config without its `layer`), or a whole (compressed) graph sub-model."""
    if is_graph_model(layer):
        return {"model": keras.saving.serialize_keras_object(layer)}
    chain = []
    while layer is not innermost(layer):
        config = layer.get_config()
        config.pop("layer")
        chain.append({"class_name": keras.saving.get_registered_name(type(layer)), "config": config})
        layer = layer.layer
    return {"wrappers": chain}


def build_replacement(description, layer):
    """The layer a `describe_replacement` config stands for, around the user's (fresh) `layer`."""
    if "model" in description:
        return keras.saving.deserialize_keras_object(description["model"])
    for wrapper in reversed(description["wrappers"]):
        cls = keras.saving.get_registered_object(wrapper["class_name"])
        if cls is None:
            raise ValueError(
                f"Unknown keras_compress wrapper {wrapper['class_name']!r} in a saved compressed model: "
                "import keras_compress (and the module defining it) before loading."
            )
        layer = cls(layer, **wrapper["config"])
    return layer


@keras.saving.register_keras_serializable(package="keras_compress")
class CompressedModel(keras.Model):
    """A subclassed model with some of its sublayers replaced: what `kc.compress` returns for one.

    Calls, `fit`, `save` and `keras.saving.load_model` work as for any Keras model; attributes of
    the user's model (`compressed.encoder`, custom methods) are reached through it.

    Args:
        model: the user's model (an unbuilt copy; its sublayers are replaced in place).
        layers: `{attribute path: layer}`: the layers to put in, each made around the sublayer it
            replaces (wrappers) or a compressed graph sub-model; or `{attribute path: config}` as
            `describe_replacement` gives.
        input_signature: the model's inputs, a list of `keras.InputSpec` (or their configs); a dict of
            them for dict inputs.
        **kwargs: base `keras.Model` arguments (`name`, ...).
    """

    #: The compressed model has the paths of the user's model (`graph.child_layers`).
    def compression_children(self):
        return child_layers(self.model)

    def __init__(self, model, layers=None, input_signature=None, **kwargs):
        kwargs.setdefault("name", model.name)
        super().__init__(**kwargs)
        self.replaced_paths = sorted(layers or {})
        for path in self.replaced_paths:
            layer = layers[path]
            if isinstance(layer, dict):
                layer = build_replacement(layer, get_sublayer(model, path))
            set_sublayer(model, path, layer)
        self.model = model
        specs = input_signature or []
        self._input_names = list(specs) if isinstance(specs, dict) else None
        specs = list(specs.values()) if isinstance(specs, dict) else list(specs)
        self._signature = [s if isinstance(s, keras.InputSpec) else keras.InputSpec(**s) for s in specs]

    @property
    def input_signature(self):
        """The inputs, as a list of `keras.InputSpec` (in key order for dict inputs)."""
        return list(self._signature)

    def signature_config(self):
        """`input_signature` as configs, in the structure of the inputs (a dict for dict inputs)."""
        specs = [{"shape": list(s.shape), "dtype": str(s.dtype), "name": s.name} for s in self._signature]
        return dict(zip(self._input_names, specs)) if self._input_names is not None else specs

    def sample_inputs(self, batch_size=1):
        """Zeros in the structure, shapes and dtypes of the inputs (unknown sizes become 1)."""
        return _zeros(self.signature_config(), batch_size)

    def build(self, input_shape=None):
        if not self.model.built:
            self.model(self.sample_inputs(), training=False)
        self.built = True

    def call(self, inputs, training=None, **kwargs):
        return self.model(inputs, training=training, **kwargs)

    def copy(self, replaced=None):
        """A new, built `CompressedModel` of the same structure (weights not copied).

        Made from the user's class itself (not through Keras' registry), so it works whether or not
        the class is registered. `replaced` gives other `{path: layer}` replacements to describe.
        """
        layers = {path: describe_replacement(layer) for path, layer in (replaced or self.replaced_layers()).items()}
        signature = self.signature_config()
        copy = CompressedModel(copy_subclassed(self.model), layers, signature, name=self.name)
        copy.build()
        return copy

    def replaced_layers(self):
        """`{attribute path: layer}` of the replaced sublayers."""
        return {path: get_sublayer(self.model, path) for path in self.replaced_paths}

    def get_config(self):
        inner = keras.saving.serialize_keras_object(self.model)
        # The inner model is rebuilt unbuilt: its sublayers are replaced before it is built.
        inner.pop("build_config", None)
        inner.pop("compile_config", None)
        layers = {path: describe_replacement(layer) for path, layer in self.replaced_layers().items()}
        return {"name": self.name, "model": inner, "layers": layers, "input_signature": self.signature_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = config.copy()
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)

    def __getattr__(self, name):
        # Only called for names not found the normal way: attributes of the user's model.
        model = self.__dict__.get("model")
        if model is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(model, name)


def _zeros(signature, batch_size=1):
    """Zeros for a signature config (`CompressedModel.signature_config`): one array, a list or a dict."""
    zeros = lambda spec: keras.ops.zeros(  # noqa: E731
        [batch_size] + [d or 1 for d in spec["shape"][1:]], dtype=spec["dtype"]
    )
    if isinstance(signature, dict):
        return {name: zeros(spec) for name, spec in signature.items()}
    return zeros(signature[0]) if len(signature) == 1 else [zeros(spec) for spec in signature]


def _signature_of(batch):
    """`keras.InputSpec`s (batch axis free) for an input batch: one array, a list or a dict of them."""

    def spec(name, array):
        array = np.asarray(array)
        return keras.InputSpec(shape=(None, *array.shape[1:]), dtype=str(array.dtype), name=name)

    if isinstance(batch, dict):
        return {name: spec(name, value) for name, value in batch.items()}
    parts = keras.tree.flatten(batch)
    return [spec(f"input_{i}" if len(parts) > 1 else "inputs", part) for i, part in enumerate(parts)]


def _leaves(layer, path=""):
    """`[(path, layer)]` of the layers to transform: leaves and graph sub-models, below containers."""
    found = []
    for name, child in child_layers(layer):
        if is_container(child):
            found += _leaves(child, f"{path}{name}/")
        else:
            found.append((f"{path}{name}", child))
    return found


def _containers(layer, path=""):
    found = [(path, layer)]
    for name, child in child_layers(layer):
        if is_container(child):
            found += _containers(child, f"{path}{name}/")
    return found


def _inner_model(model):
    return model.model if isinstance(model, CompressedModel) else model


def _copy_weights(source, target, skip=(), leaves=None):
    """Copies the weights of `source`'s leaves and containers into `target`'s at the same paths.

    A leaf of the same class on both sides is copied whole (wrappers included); otherwise the
    user's layer inside the target's wrappers gets the source's (innermost) weights. `leaves` gives
    `{path: layer}` to read instead of some of `source`'s leaves.
    """
    source, target = _inner_model(source), _inner_model(target)
    targets = dict(_leaves(target))
    for path, layer in {**dict(_leaves(source)), **(leaves or {})}.items():
        if path in skip or path not in targets or not layer.weights:
            continue
        if type(layer) is type(targets[path]):
            targets[path].set_weights(layer.get_weights())
        else:
            innermost(targets[path]).set_weights(innermost(layer).get_weights())
    for (_, original), (_, copy) in zip(_containers(source), _containers(target)):
        for source_weight, target_weight in zip(own_weights(original), own_weights(copy)):
            target_weight.assign(source_weight)


class _Unseen:
    """Stands for what produced a tensor no recorded layer returned (operations in `call()`)."""

    def __init__(self, name):
        self.name = name


class _Recorder:
    """Takes a leaf layer's place in a throwaway copy: calls it and records the call."""

    def __init__(self, layer, path, record):
        self.layer, self.path, self.record = layer, path, record

    def __call__(self, *args, **kwargs):
        outputs = self.layer(*args, **kwargs)
        # Keras also traces a user's layer that has no build() in a graph, to build it: only the
        # eager forward pass is recorded.
        if backend.executing_eagerly(outputs):
            self.record(self, args, kwargs, outputs)
        return outputs


def record_graph(model, sample):
    """The graph of a subclassed model's layers, recorded from one forward pass on `sample`.

    A throwaway copy of the model runs with each of its leaf layers replaced by a recorder. A node
    per layer call, linked to the calls whose outputs it read; a tensor that no recorded layer
    returned (computed by operations in `call()`, or a constant) gets a node of its own, with role
    "other" (its consumers' quantizers stay at their inputs). A layer called several times has
    one node per call.

    Args:
        model: the user's subclassed model (not run, not changed).
        sample: an input batch.

    Returns:
        `(graph, paths)`: a `ModelGraph` whose nodes hold the user's layers (with the attribute path of
        their parent as `prefix`), and each node's layer path (None for unseen producers).
    """
    originals = dict(_leaves(model))
    copy = copy_subclassed(model)
    nodes, paths, refs, dtypes, keep = [], [], {}, {}, []

    def ref_of(tensor):
        if id(tensor) not in refs:  # not returned by a recorded layer: an unseen producer
            index = len(nodes)
            nodes.append(Node(index, _Unseen(f"unseen_{index}"), [], 1))
            paths.append(None)
            refs[id(tensor)], dtypes[(index, 0)] = (index, 0), str(tensor.dtype)
        keep.append(tensor)
        return refs[id(tensor)]

    def record(recorder, args, kwargs, outputs):
        inputs = [ref_of(t) for t in flatten_call_args(args, kwargs, is_any_tensor)]
        flat = [t for t in keras.tree.flatten(outputs) if is_any_tensor(t)]
        index = len(nodes)
        prefix = recorder.path.rsplit("/", 1)[0] + "/" if "/" in recorder.path else ""
        layer = originals[recorder.path]
        nodes.append(Node(index, layer, inputs, len(flat), prefix=prefix))
        paths.append(recorder.path)
        for j, tensor in enumerate(flat):
            refs[id(tensor)], dtypes[(index, j)] = (index, j), str(tensor.dtype)
            keep.append(tensor)

    for path, layer in _leaves(copy):
        if path in originals:
            set_sublayer(copy, path, _Recorder(layer, path, record))
    sample = keras.tree.map_structure(keras.ops.convert_to_tensor, sample)
    inputs = [t for t in keras.tree.flatten(sample)]
    for i, tensor in enumerate(inputs):
        refs[id(tensor)], dtypes[(-1 - i, 0)] = (-1 - i, 0), str(tensor.dtype)
    outputs = copy(sample, training=False)
    graph_outputs = [refs[id(t)] for t in keras.tree.flatten(outputs) if id(t) in refs]
    names = [f"input_{i}" if len(inputs) > 1 else "inputs" for i in range(len(inputs))]
    graph = ModelGraph(nodes, [(-1 - i, 0) for i in range(len(inputs))], graph_outputs, dtypes, names)
    return graph, paths


def _input_layers(planners, graph, paths):
    """`{layer path: {input position: layer}}`: what the planners insert on the recorded graph's edges.

    Each consumer gets its own instance of a planned layer (a planned layer shared by several
    consumers in a Functional graph cannot be shared by several wrappers and still load from a
    file); they all start from the same statistics. A layer called several times takes what its
    first call was given.
    """
    inserted = {}
    for planner in planners:
        plan = planner.plan(graph, "")
        if plan is None:
            continue
        uses = {}
        for (call, position), key in sorted(plan.edges.items()):
            path = paths[call]
            if path is None or position in inserted.get(path, {}):
                continue
            layer = planner.make_layer(key, plan)
            uses[key] = uses.get(key, 0) + 1
            if uses[key] > 1:  # one name per instance
                layer = type(layer).from_config({**layer.get_config(), "name": f"{layer.name}_{uses[key]}"})
            inserted.setdefault(path, {})[position] = layer
    return inserted


def transform_subclassed(model, wrap_fn, planners=(), sample=None):
    """Compresses a copy of a subclassed model by replacing its sublayers.

    Args:
        model: the user's subclassed model (not modified).
        wrap_fn: `(original_layer, fresh_layer, path) -> layer`, as for `transform_model`.
        planners: objects with `plan(graph, path)` and `make_layer(key, plan)` (the algorithms), as
            for `transform_model`: they plan on the graph recorded from one forward pass
            (`record_graph`), and the layers they insert on a layer's inputs go into an
            `InputsWrapper` around it. Functional and Sequential sub-models get them on their own
            graph, through `transform_model`.
        sample: an input batch (to learn the input signature, record the graph and build the copy);
            default: the model's build shape, with float32 inputs.

    Returns:
        `(CompressedModel, pairs)`, pairs being `(original_layer, new_layer, path)` as for
        `transform_model`.

    Raises:
        ValueError: when the model cannot be copied, or its input shape is unknown.
    """
    copy = copy_subclassed(model)
    if keras.saving.get_registered_object(keras.saving.get_registered_name(type(model))) is not type(model):
        logger.warning(
            "%s is not registered with `@keras.saving.register_keras_serializable()`: the compressed model "
            "trains and exports, but `keras.saving.load_model` cannot rebuild it from a saved file until "
            "the class is registered (Keras' rule for subclassed models).", type(model).__name__
        )
    if sample is not None:
        signature = _signature_of(sample)
    elif model.built and (model.get_build_config() or {}).get("input_shape") is not None:
        shape = model.get_build_config()["input_shape"]
        signature = [keras.InputSpec(shape=(None, *shape[1:]), dtype="float32", name="inputs")]
    else:
        raise ValueError(
            f"kc.compress needs the input shape of subclassed model {model.name!r}: pass calibration "
            "data (`dataset=...`) or call the model once before compressing it."
        )
    if sample is None:
        sample = _zeros([{"shape": list(spec.shape), "dtype": str(spec.dtype)} for spec in signature])
    graph, paths = record_graph(model, sample)
    inputs = _input_layers(planners, graph, paths)
    fresh = dict(_leaves(copy))
    layers, pairs = {}, []
    for path, original in _leaves(model):
        prefix = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        if path not in fresh:
            logger.warning(
                "kc.compress leaves %r of %s uncompressed: the layer does not exist in a model made from "
                "its config (it is created in build() or call()).", path, type(model).__name__
            )
            continue
        if is_graph_model(original):
            new, inner_pairs = transform_model(original, wrap_fn, planners)
            pairs += [(o, n, f"{prefix}{p}") for o, n, p in inner_pairs]
        else:
            new = wrap_fn(original, fresh[path], prefix) if wrap_fn is not None else fresh[path]
            if path in inputs:
                new = InputsWrapper(new, inputs[path])
        pairs.append((original, new, prefix))
        if new is not fresh[path]:
            layers[path] = new
    compressed = CompressedModel(copy, layers, signature)
    compressed.build()
    _copy_weights(model, compressed, skip={path for path, layer in layers.items() if is_graph_model(layer)})
    return compressed, pairs


def strip_subclassed(model, strip_layer):
    """An inference copy of a `CompressedModel`: every replaced sublayer stripped by `strip_layer`.

    Args:
        model: the `CompressedModel` (not changed).
        strip_layer: `(layer) -> layer`: the stripped version of a replaced sublayer (built, with its
            weights); applied to a copy of `model`'s layers.
    """
    copy = model.copy()
    _copy_weights(model, copy)
    stripped = {path: strip_layer(layer) for path, layer in copy.replaced_layers().items()}
    # A stripped layer that is the user's layer itself (sparsity folded away) replaces nothing.
    replaced = {p: layer for p, layer in stripped.items() if is_graph_model(layer) or layer is not innermost(layer)}
    result = copy.copy(replaced)
    _copy_weights(copy, result, leaves=stripped)
    return result
