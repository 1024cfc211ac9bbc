"""Subclassed models: compressed by replacing sublayers of a copy, and kept serializable.

A subclassed `keras.Model` has no graph that `keras.models.clone_model` could rebuild, and its saved
config is only what its `get_config()` returns (its constructor's arguments). So keras_compress:

1. makes a copy with `type(model).from_config(model.get_config())`, the rule Keras already sets for
   saving a subclassed model, and leaves the user's model untouched;
2. replaces sublayers of the copy, before it is built, with what the algorithms return: the same
   `wrap` hook as for Functional models and, where a Functional model would get activation
   quantizers on graph edges, `wrap_inputs` (there is no graph to put them on). Sublayers are
   reached by attribute path: `"encoder/blocks/0/ffn"` for layers held in attributes, lists and
   dicts; Functional and Sequential sub-models are compressed by the graph transformer itself;
3. keeps the copy in a `CompressedModel`: its config holds the user's model config and the
   replaced layers by path, so `keras.saving.load_model` rebuilds the same structure (the user's
   class must be registered with `keras.saving.register_keras_serializable`, as Keras requires for
   any subclassed model).
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from keras_compress.graph import child_layers, is_container, is_graph_model, own_weights
from keras_compress.transform import transform_model
from keras_compress.wrapper import innermost

__all__ = [
    "CompressedModel",
    "build_replacement",
    "copy_subclassed",
    "describe_replacement",
    "get_sublayer",
    "innermost",
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
        zeros = [
            keras.ops.zeros([batch_size] + [d or 1 for d in s.shape[1:]], dtype=s.dtype) for s in self._signature
        ]
        if self._input_names is not None:
            return dict(zip(self._input_names, zeros))
        return zeros[0] if len(zeros) == 1 else zeros

    def build(self, input_shape=None):
        if not self.model.built:
            self.model(self.sample_inputs(), training=False)
        self.built = True

    def call(self, inputs, training=None, **kwargs):
        return self.model(inputs, training=training, **kwargs)

    def replaced_layers(self):
        """`{attribute path: layer}` of the replaced sublayers."""
        return {path: get_sublayer(self.model, path) for path in self.replaced_paths}

    def get_config(self, replaced=None):
        """The config; `replaced` gives other `{path: layer}` replacements to describe instead."""
        inner = keras.saving.serialize_keras_object(self.model)
        # The inner model is rebuilt unbuilt: its sublayers are replaced before it is built.
        inner.pop("build_config", None)
        inner.pop("compile_config", None)
        layers = {path: describe_replacement(layer) for path, layer in (replaced or self.replaced_layers()).items()}
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


def transform_subclassed(model, wrap_fn, wrap_inputs_fn=None, planners=(), sample=None):
    """Compresses a copy of a subclassed model by replacing its sublayers.

    Args:
        model: the user's subclassed model (not modified).
        wrap_fn: `(original_layer, fresh_layer, path) -> layer`, as for `transform_model`.
        wrap_inputs_fn: `(original_layer, layer, path) -> layer`: what replaces a graph's activation
            quantizers (a wrapper that quantizes the layer's inputs), or None.
        planners: passed to `transform_model` for Functional and Sequential sub-models.
        sample: an input batch (to learn the input signature and build the copy); default: the
            model's build shape, with float32 inputs.

    Returns:
        `(CompressedModel, pairs)`, pairs being `(original_layer, new_layer, path)` as for
        `transform_model`.

    Raises:
        ValueError: when the model cannot be copied, or its input shape is unknown.
    """
    copy = copy_subclassed(model)
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
            if wrap_inputs_fn is not None:
                new = wrap_inputs_fn(original, new, prefix)
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
    copy = CompressedModel.from_config(model.get_config())
    copy.build()
    _copy_weights(model, copy)
    stripped = {path: strip_layer(layer) for path, layer in copy.replaced_layers().items()}
    replaced = {path: layer for path, layer in stripped.items() if is_graph_model(layer) or layer is not innermost(layer)}
    config = copy.get_config(replaced=replaced)
    result = CompressedModel.from_config(config)
    result.build()
    _copy_weights(copy, result, leaves=stripped)
    return result
