"""What a compressed copy of a composite layer or model subclass is, and what it records.

`kc.compress` returns copies of the user's composite layers (and model subclasses) as instances of a
subclass of the user's class made for it (`compressed_class`): they behave as the user's class, and
save the user's config plus a record of what was changed inside them (`CompressedLayer`). Loading
rebuilds the user's object from its config and applies the record with the transformer
(`keras_compress.transform.replay`, which sets `CompressedLayer.replay`).

A record: `{"layers": {path: chain}, "graphs": {graph path: insertions}, "operations": {container
path: {slot: layer config}}, "builds": {container path: build config}, "names": {graph path: its
layer names in order}}` (and a subclassed model's `input_signature`, a graph-model subclass's
`sample_signature`), paths relative to the object that holds it; a chain (`describe_chain`) is the
keras_compress wrappers around the user's layer; a container that makes its sublayers in `build()`
(MultiHeadAttention) is built from its build config before the record is applied to it.
"""

from __future__ import annotations

import copy
import functools
import logging

import keras
import numpy as np

from keras_compress.base_layer import CompressionLayer, innermost
from keras_compress.inputs_wrapper import InputsWrapper
from keras_compress.operations import applying, attention_with_public_ops, has_private_attention

logger = logging.getLogger("keras_compress")

__all__ = [
    "build_like",
    "signature_with_batch",
    "warn_unregistered",
    "BASE_CONFIG",
    "OPERATIONS",
    "PATH_KEYED",
    "RECORD",
    "CompressedLayer",
    "CompressedModel",
    "base_config",
    "build_chain",
    "compressed_class",
    "compression_base",
    "describe_chain",
    "is_compressed",
    "make_from_config",
    "remember_base_config",
    "saved_record",
    "set_sublayer",
    "signature_of",
    "signature_ones",
    "signature_zeros",
    "subtree",
]


#: The attribute holding a compressed object's record (see `Transformer`).
RECORD = "_compression_record"
#: The attribute of a compressed container holding the layers applied to the operands of its own
#: matmuls: `{"<k>_<operand>": layer}` (see `keras_compress.operations`).
OPERATIONS = "_compression_operations"



#: The attribute of a compressed object holding the user's config of the object it was made from.
BASE_CONFIG = "_compression_base_config"

#: The parts of a record keyed by path (of a layer, a graph, a container).
PATH_KEYED = ("layers", "graphs", "operations", "builds", "names")


def subtree(record, path):
    """The part of `record` under `path` (the object at `path` included), with paths relative to it."""
    if not path:
        return record
    start = f"{path}/"
    part = {k: v for k, v in record.items() if k not in PATH_KEYED}
    for key in PATH_KEYED:
        part[key] = {(k[len(start):] if k != path else ""): v for k, v in record.get(key, {}).items()
                     if k == path or k.startswith(start)}  # fmt: skip
    return part


def saved_record(record):
    """`record` as it is saved: the layers of the containers' own matmuls (`operations`, held as
    layers) serialized as they are now. They are built by then (range init calls them), so their
    configs carry a build config and loading builds them before it reads their variables (serialized
    when compressing, before range init, they would load unbuilt and their saved variables unread)."""
    operations = record.get("operations")
    if not operations:
        return record
    saved = {
        path: {key: keras.saving.serialize_keras_object(layer) if isinstance(layer, keras.layers.Layer) else layer
               for key, layer in layers.items()}
        for path, layers in operations.items()
    }  # fmt: skip
    return {**record, "operations": saved}


def describe_chain(layer):
    """The keras_compress wrappers around the user's layer, outermost first, each config without its
    `layer` (an empty list for a layer that is not wrapped)."""
    chain = []
    while layer is not innermost(layer):
        config = _config_without_layer(layer)
        chain.append({"class_name": keras.saving.get_registered_name(type(layer)), "config": config})
        layer = layer.layer
    return chain


def _config_without_layer(wrapper):
    """A wrapper's config without its `layer`, which is not serialized: a library's layer may not be
    (KerasHub's DepthAnything holds a Keras `Identity` made with a DTypePolicy object, whose automatic
    config raises). The config is read from a detached shell of the wrapper holding a stand-in layer;
    the wrapper itself is not touched."""
    shell = object.__new__(type(wrapper))
    shell.__dict__.update(vars(wrapper))
    shell.__dict__["layer"] = keras.layers.Identity(name=wrapper.layer.name)
    config = shell.get_config()
    config.pop("layer")
    return config


def build_chain(chain, layer):
    """The wrappers of a `describe_chain` description, made around `layer`."""
    for wrapper in reversed(chain):
        cls = keras.saving.get_registered_object(wrapper["class_name"])
        if cls is None:
            raise ValueError(
                f"Unknown keras_compress wrapper {wrapper['class_name']!r} in a saved compressed model: "
                "import keras_compress (and the module defining it) before loading."
            )
        layer = cls(layer, **wrapper["config"])
    return layer


# ---------------------------------------------------------------------------- compressed classes
@keras.saving.register_keras_serializable(package="keras_compress")
class CompressedLayer:
    """A compressed composite layer: the user's class, with some sublayers replaced.

    `kc.compress` returns copies of the user's composite layers (and model subclasses) as instances
    of a subclass of the user's class made for it (`compressed_class`), so they behave as the user's
    layer (`isinstance`, attributes, methods). Such a layer saves the user's config plus the record of
    what `kc.compress` changed inside it; `keras.saving.load_model` rebuilds the user's layer from its
    config and applies the record (the user's class must be registered, as Keras requires for any
    custom layer).
    """

    def get_config(self):
        base = compression_base(type(self))
        config = base_config(self)
        base_config_ = {
            "module": base.__module__,
            "class_name": base.__name__,
            "registered_name": keras.saving.get_registered_name(base),
            "config": config,
        }
        return {"base": base_config_, "compression": saved_record(getattr(self, RECORD))}

    #: `(user object, record) -> compressed object`: the transformer's `replay` (set by
    #: `keras_compress.transform`, which the package always imports).
    replay = None

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = config.copy()
        base = keras.saving.deserialize_keras_object(config.pop("base"), custom_objects=custom_objects)
        return CompressedLayer.replay(base, config["compression"])


@keras.saving.register_keras_serializable(package="keras_compress")
class CompressedModel(CompressedLayer):
    """A compressed model subclass (a subclassed model, or a KerasHub backbone or task): the user's
    class, with some of its layers compressed. See `CompressedLayer`.

    A subclassed model (one with no Functional graph) builds itself from the input signature of the
    calibration data it was compressed with (`input_signature`, also what `kc.export` traces).
    """

    @property
    def input_signature(self):
        """The inputs of a subclassed model, as a list of `keras.InputSpec` (in key order for dict
        inputs); None for a model with a Functional graph."""
        signature = getattr(self, RECORD).get("input_signature")
        if signature is None:
            return None
        specs = list(signature.values()) if isinstance(signature, dict) else list(signature)
        return [keras.InputSpec(**spec) for spec in specs]

    def sample_inputs(self, batch_size=1):
        """Zeros in the structure, shapes and dtypes of `input_signature` (unknown sizes become 1)."""
        return signature_zeros(getattr(self, RECORD)["input_signature"], batch_size)

    def build_from_config(self, config):
        if self.built:
            return
        if getattr(self, RECORD).get("input_signature") is not None:
            self(self.sample_inputs(), training=False)
            self.built = True
            return
        super().build_from_config(config)


_CLASSES = {}


def compressed_class(base):
    """The compressed version of class `base` (a composite layer or model class of the user's):
    a subclass of it and of `CompressedLayer` / `CompressedModel`, made once per class."""
    base = compression_base(base)
    if base not in _CLASSES:
        mixin = CompressedModel if issubclass(base, keras.Model) else CompressedLayer
        namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, "_compression_base": base}
        if not issubclass(base, keras.Model):
            namespace["call"] = _call_applying_operation_layers(base.call)
        if has_private_attention(base):
            namespace["_compute_attention"] = attention_with_public_ops
        cls = type(base.__name__, (mixin, base), namespace)
        # Every compressed class saves under the mixin's registered name; its from_config reads the
        # user's class from the config.
        keras.saving.register_keras_serializable(package="keras_compress", name=mixin.__name__)(cls)
        _CLASSES[base] = cls
    return _CLASSES[base]


def _call_applying_operation_layers(call):
    """The user's `call`, with the layers of the container's own matmuls applied (see `OPERATIONS`);
    its signature is the user's (Keras reads `training` and `mask` from it)."""

    @functools.wraps(call)
    def wrapped(self, *args, **kwargs):
        layers = vars(self).get(OPERATIONS)
        if not layers:
            return call(self, *args, **kwargs)
        with applying(self, layers):
            return call(self, *args, **kwargs)

    return wrapped


def compression_base(cls):
    """The user's class behind a compressed class (a class that is not compressed: itself)."""
    return cls.__dict__.get("_compression_base") or getattr(cls, "_compression_base", None) or cls


def is_compressed(layer):
    """Whether `layer` is a compressed container or model subclass (an instance of a `compressed_class`)."""
    return isinstance(layer, CompressedLayer)


def signature_zeros(signature, batch_size=1):
    """Zeros for an input signature config: one array, a list or a dict of `{shape, dtype}`."""

    def zeros(spec):
        return keras.ops.zeros([batch_size] + [d or 1 for d in spec["shape"][1:]], dtype=spec["dtype"])

    if isinstance(signature, dict):
        return {name: zeros(spec) for name, spec in signature.items()}
    return zeros(signature[0]) if len(signature) == 1 else [zeros(spec) for spec in signature]


def signature_ones(signature, batch_size=1):
    """An input batch for a signature config: ones for integer and boolean inputs (valid token ids and
    masks), zeros for the others (`keras_compress.recording.sample_inputs` for a signature); of the
    batch size a spec holds (`"batch"`), else `batch_size`."""

    def make(spec):
        fill = keras.ops.ones if ("int" in spec["dtype"] or "bool" in spec["dtype"]) else keras.ops.zeros
        return fill([spec.get("batch", batch_size)] + [d or 1 for d in spec["shape"][1:]], dtype=spec["dtype"])

    if isinstance(signature, dict):
        return {name: make(spec) for name, spec in signature.items()}
    return make(signature[0]) if len(signature) == 1 else [make(spec) for spec in signature]


def signature_of(batch):
    """An input signature config (batch axis free) for an input batch: one array, a list or a dict."""

    def spec(name, array):
        array = np.asarray(array)
        return {"shape": [None, *array.shape[1:]], "dtype": str(array.dtype), "name": name}

    if isinstance(batch, dict):
        return {name: spec(name, keras.ops.convert_to_numpy(value)) for name, value in batch.items()}
    parts = keras.tree.flatten(batch)
    return [spec(f"input_{i}" if len(parts) > 1 else "inputs", keras.ops.convert_to_numpy(p)) for i, p in enumerate(parts)]


def base_config(layer):
    """The user's config of `layer`: for a compressed one, the config of the user's object it was made
    from (`remember_base_config`), else what its own class's `get_config` returns on it."""
    if not is_compressed(layer):
        return layer.get_config()
    remembered = vars(layer).get(BASE_CONFIG)
    return copy.deepcopy(remembered) if remembered is not None else super(CompressedLayer, layer).get_config()


def remember_base_config(compressed, original):
    """Keeps the user's config of `original` on its compressed copy, for `base_config`.

    The user's `get_config` run on the copy would describe the copy: the compressed sub-models it holds
    (a KerasHub DeepLabV3's `image_encoder`, saved compressed, would then be compressed again when the
    record is replayed on load, and the models the backbone builds on it would not match), or attributes
    of sublayers that are wrappers now (`TokenAndPositionEmbedding.get_config` reads
    `token_embedding.tie_weights`). The original's config, with the record, rebuilds the copy. An object
    whose `get_config` raises keeps nothing (its copy's own `get_config` is used, and may raise too).
    """
    try:
        # Serialized as saving serializes it (a KerasHub backbone's config holds its sub-models as objects).
        config = keras.saving.serialize_keras_object(base_config(original))
    except Exception:  # noqa: BLE001 - a user's get_config may raise anything; saving will say so
        return
    object.__setattr__(compressed, BASE_CONFIG, config)


def make_from_config(cls, layer):
    """A new, unbuilt instance of `cls` (the user's class of `layer`, or its compressed class) made
    from `layer`'s config, with the user's class's own `from_config`.

    Raises:
        ValueError: when the model cannot be made again from its config, with what to do.
    """
    base = compression_base(type(layer))
    try:
        instance = base.from_config.__func__(cls, base_config(layer))
    except Exception as err:  # noqa: BLE001 - user code may raise anything
        raise ValueError(
            f"kc.compress works on a copy of a subclassed model, made with "
            f"`{base.__name__}.from_config(model.get_config())` (the rule Keras sets for saving a "
            f"subclassed model). That failed for {base.__name__}: {type(err).__name__}: {err}. Let "
            f"`{base.__name__}.__init__` take `**kwargs` (passed on to `super().__init__`) and give it a "
            "`get_config()` that returns its own constructor arguments "
            "(`{**super().get_config(), 'units': self.units, ...}`), so that "
            f"`{base.__name__}.from_config(config)` builds the same model."
        ) from err
    if instance.built:
        raise ValueError(
            f"`{base.__name__}.from_config` returned a built model. kc.compress replaces sublayers "
            "before the copy is built: build it lazily (on the first call), as Keras models do."
        )
    return instance


def set_sublayer(root, path, layer):
    """Puts `layer` at an attribute path (`"blocks/0/ffn"`) of `root` (not built yet), tracked by Keras."""
    *parents, last = path.split("/")
    parent = root
    for part in parents:
        if isinstance(parent, (list, tuple)):
            parent = parent[int(part)]
        elif isinstance(parent, dict):
            parent = parent[part]
        else:
            parent = getattr(parent, part)
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


def build_like(new, layer):
    """Builds `new` (wrappers around a copy of `layer`), innermost first, as `layer` was built: a
    container called in a graph may compute its output shape without calling its sublayers, which
    would leave them unbuilt. An `InputsWrapper` needs no shape: it is built even around a layer
    that is not (a Dropout that a loaded model has not called yet), or its quantizers' saved
    variables would not load."""
    config = layer.get_build_config() if layer.built else None
    chain = []
    while isinstance(new, CompressionLayer) and isinstance(new, keras.layers.Wrapper):
        chain.append(new)
        new = new.layer
    for wrapper in reversed(chain):
        if wrapper.built:
            continue
        if config:
            wrapper.build_from_config(config)
        elif isinstance(wrapper, InputsWrapper):
            wrapper.build()


def signature_with_batch(signature, size):
    """A signature config (`signature_of`) whose specs also hold the batch size they were taken at."""
    if isinstance(signature, dict):
        return {name: {**spec, "batch": size} for name, spec in signature.items()}
    return [{**spec, "batch": size} for spec in signature]


def warn_unregistered(model):
    """Warns when the user class of a compressed subclassed model is not registered for saving."""
    base = compression_base(type(model))
    if keras.saving.get_registered_object(keras.saving.get_registered_name(base)) is not base:
        logger.warning(
            "%s is not registered with `@keras.saving.register_keras_serializable()`: the compressed model "
            "trains and exports, but `keras.saving.load_model` cannot rebuild it from a saved file until "
            "the class is registered (Keras' rule for subclassed models).", base.__name__
        )
