"""The model transformer: clones a Keras model and puts compression wrappers in it.

The mechanism is Keras' own `keras.models.clone_model(clone_function=..., call_function=...)`:
`clone_function` swaps a layer for its wrapper, `call_function` inserts activation quantizers
before a layer call. Nested models are cloned recursively the same way. The input model is
never changed; the clone starts with the original weights copied over exactly.
"""

from __future__ import annotations

import logging
import re

import keras

from keras_compress.graph import fresh_copy, flatten_call_args, new_inputs, trace_graph
from keras_compress.wrapper import unwrap

__all__ = ["compress", "transform_model", "matches_scope", "as_functional"]

logger = logging.getLogger("keras_compress")


def matches_scope(name, scopes):
    """Whether a layer name (or "outer/inner" path) matches one of NNCF-style `scopes`.

    A scope is an exact layer name, or a regular expression prefixed with `{re}` that must
    match the whole name.

    Example:
        >>> matches_scope("conv2_block1_1_conv", ["{re}conv2_.*"])
        True
    """
    names = [name] if isinstance(name, str) else list(name)
    for scope in scopes:
        if scope.startswith("{re}"):
            pattern = re.compile(scope[4:])
            if any(pattern.fullmatch(n) for n in names):
                return True
        elif scope in names:
            return True
    return False


def _is_graph_model(model):
    if isinstance(model, keras.Sequential):
        return True
    if not isinstance(model, keras.Model):
        return False
    try:
        config = model.get_config()
    except Exception:  # noqa: BLE001 - subclassed models may raise anything here
        return False
    return isinstance(config, dict) and "layers" in config and "input_layers" in config


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
    if not _is_graph_model(model):
        raise ValueError(
            "keras_compress transforms Sequential and Functional models (including nested "
            f"ones). Received a subclassed model of type {type(model).__name__}, whose graph "
            "cannot be cloned. Build the same network with the Functional API "
            "(`keras.Model(inputs, outputs)`) and load its weights, or compress the Functional "
            "sub-models it contains."
        )
    if isinstance(model, keras.Sequential):
        if not model.built or not _has_inputs(model):
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
    return model


def _has_inputs(model):
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def transform_model(model, wrap_fn=None, planner=None, layer_factory=None):
    """Clones `model`, wrapping layers and inserting layers before layer calls.

    Args:
        model: a Sequential or Functional model (nested models are handled recursively).
        wrap_fn: `(original_layer, fresh_layer, path) -> layer` that returns the layer to put in
            the clone (a wrapper around `fresh_layer`, or `fresh_layer` itself). `path` is the
            "outer/inner/" prefix of nested models.
        planner: `(graph, path) -> plan` with `plan.edges` {(call index, input position): key}
            and `plan.outputs` {output position: key}; or None.
        layer_factory: `(key, plan) -> keras.layers.Layer` that makes the layer inserted for a
            key (called once per key per model).

    Returns:
        (new_model, pairs): the clone and the list of `(original_layer, new_layer, path)`.
    """
    pairs = []
    new_model = _rebuild(as_functional(model), wrap_fn, planner, layer_factory, "", pairs)
    for original, new, _ in pairs:
        if not isinstance(original, keras.layers.Layer) or isinstance(original, keras.Model):
            continue  # keras.ops operations have no weights; nested models copy their own
        weights = original.get_weights()
        if weights:
            unwrap(new).set_weights(weights)
    return new_model, pairs


def _rebuild(model, wrap_fn, planner, layer_factory, path, pairs):
    graph = trace_graph(model)
    plan = planner(graph, path) if planner is not None else None
    edges = plan.edges if plan is not None else {}

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            new = _rebuild(
                as_functional(layer), wrap_fn, planner, layer_factory, f"{path}{layer.name}/", pairs
            )
        else:
            new = fresh_copy(layer)
            if wrap_fn is not None:
                new = wrap_fn(layer, new, path)
        pairs.append((layer, new, path))
        return new

    inserted = {}  # key -> inserted layer
    applied = {}  # (key, TensorRef) -> output of the inserted layer
    counter = [0]

    def insert(key, ref, tensor):
        if (key, ref) not in applied:
            if key not in inserted:
                inserted[key] = layer_factory(key, plan)
            applied[(key, ref)] = inserted[key](tensor)
        return applied[(key, ref)]

    def call_function(layer, *args, **kwargs):
        call = graph.calls[counter[0]]
        counter[0] += 1
        replace = {}
        for pos, tensor in enumerate(flatten_call_args(args, kwargs)):
            key = edges.get((call.index, pos))
            if key is not None:
                replace[id(tensor)] = insert(key, call.inputs[pos], tensor)
        if replace:
            swap = lambda x: replace.get(id(x), x) if isinstance(x, keras.KerasTensor) else x  # noqa: E731
            args = keras.tree.map_structure(swap, list(args))
            kwargs = keras.tree.map_structure(swap, dict(kwargs))
        return layer(*args, **kwargs)

    new_model = keras.models.clone_model(
        model,
        input_tensors=new_inputs(model),
        clone_function=clone_function,
        call_function=call_function,
    )
    if plan is not None and plan.outputs:
        outputs = keras.tree.flatten(new_model.outputs)
        for pos, key in plan.outputs.items():
            outputs[pos] = insert(key, graph.outputs[pos], outputs[pos])
        structure = keras.tree.pack_sequence_as(new_model.output, outputs)
        new_model = keras.Model(new_model.inputs, structure, name=new_model.name)
    return new_model


def compress(model, config, dataset=None):
    """Compresses a Keras model as the config says.

    Clones the model (Sequential, Functional, nested), wraps the layers each algorithm
    selects, inserts activation quantizers, copies the weights, and runs the initializers
    that need data (quantizer range init, BatchNorm adaptation).

    Args:
        model: a Sequential or Functional `keras.Model`. It is not modified.
        config: a path to an NNCF-style JSON file, a dict, a JSON string or a
            `CompressionConfig`.
        dataset: calibration data: a `tf.data.Dataset`, an `(x, y)` tuple of arrays, an array
            of inputs, or an iterable of batches. Needed for range init and BN adaptation.

    Returns:
        `(compressed_model, controller)`: a `keras.Model` to compile and fit as usual, and the
        `CompressionController` that gives its callbacks, statistics and `strip()`.

    Raises:
        ConfigError: for a bad config, and for an exact layer name in `ignored_scopes` or
            `target_scopes` that is not a layer of the model.
        ValueError: for calibration data that is empty, does not fit the model's inputs (the
            message names the input and both shapes), is not numeric or holds NaN/Inf; for a
            subclassed model or a Sequential model without an input shape.
        TypeError: when `model` is not a `keras.Model`.

    A model in which no layer can be compressed is returned as a working clone, with a logged
    warning; Lambda and unsupported layers are left as they are and listed in
    `ctrl.statistics().skipped()`.

    Example:
        ```python
        compressed, ctrl = kc.compress(model, "configs/int8.json", dataset=(x_train, y_train))
        compressed.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        compressed.fit(x_train, y_train, callbacks=ctrl.callbacks())
        ```
    """
    from keras_compress.config import load_config
    from keras_compress.controller import CompressionController, build_algorithms
    from keras_compress.graph import iter_layers
    from keras_compress.quantization.fake_quantize import FakeQuantize
    from keras_compress.quantization.range_init import check_calibration_data
    from keras_compress.wrapper import WeightsWrapper

    cfg = load_config(config)
    input_shape = tuple(cfg.input_info[0].sample_size[1:]) if cfg.input_info else None
    functional = as_functional(model, input_shape)
    # Bad input fails here, before anything is cloned or run.
    if dataset is not None:
        check_calibration_data(functional, dataset)
    _check_scopes(functional, cfg)
    algorithms = build_algorithms(cfg)

    def wrap_fn(original, fresh, path):
        layer = fresh
        for algorithm in algorithms:
            layer = algorithm.wrap(original, layer, path)
        return layer

    planners = [a for a in algorithms if hasattr(a, "plan")]
    planner = planners[0].plan if planners else None
    factory = planners[0].make_layer if planners else None
    compressed, pairs = transform_model(functional, wrap_fn, planner, factory)
    controller = CompressionController(compressed, cfg, algorithms, pairs, original_model=model)
    if algorithms and not any(isinstance(layer, WeightsWrapper) for layer in iter_layers(compressed)):
        skipped = controller.statistics().skipped()
        quantizers = any(isinstance(layer, FakeQuantize) for layer in iter_layers(compressed))
        logger.warning(
            "kc.compress found no layer to compress in model %r: no layer has weights that %s can "
            "compress (Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose, Dense, EinsumDense; "
            "Embedding for sparsity). The returned model computes what the original does%s.%s",
            model.name,
            " / ".join(a.name for a in algorithms),
            " (plus activation quantizers)" if quantizers else "",
            f" Left as they are: {skipped}" if skipped else "",
        )
    if dataset is not None:
        controller.initialize(dataset)
    elif controller.needs_data():
        logger.warning(
            "kc.compress got no `dataset`: quantizer range init and BatchNorm adaptation are "
            "skipped. Pass calibration data for accurate initialization."
        )
    return compressed, controller


def _check_scopes(model, config):
    """Raises `ConfigError` for an exact layer name in `ignored_scopes`/`target_scopes` that is not
    a layer of `model` (a misspelt scope would otherwise silently select nothing).

    `{re}` patterns are not checked (one pattern often serves a family of models), nor sections
    or groups with `validate_scopes: false`.
    """
    import difflib

    from keras_compress.config import ConfigError

    names = set()

    def collect(m, path):
        for layer in m.layers:
            names.update((layer.name, f"{path}{layer.name}"))
            if isinstance(layer, keras.Model):
                collect(layer, f"{path}{layer.name}/")

    collect(model, "")
    problems = []
    for index, section in enumerate(config.compression):
        where = "compression" if len(config.compression) == 1 else f"compression[{index}]"
        groups = [(where, section)] + [
            (f"{where}.{group}", getattr(section, group))
            for group in ("weights", "activations")
            if hasattr(getattr(section, group, None), "validate_scopes")
        ]
        for path, group in groups:
            if not (section.validate_scopes and group.validate_scopes):
                continue
            for key in ("ignored_scopes", "target_scopes"):
                for scope in getattr(group, key):
                    if scope.startswith("{re}") or scope in names:
                        continue
                    close = difflib.get_close_matches(scope, sorted(names), n=1, cutoff=0.6)
                    problems.append((
                        f"{path}.{key}",
                        f"'{scope}' is not the name of a layer of model '{model.name}'"
                        + (f"; did you mean '{close[0]}'?" if close else "")
                        + " (a `{re}` prefix makes it a regular expression; `validate_scopes: false` "
                        "accepts names that match nothing)",
                    ))  # fmt: skip
    if problems:
        raise ConfigError(problems)
