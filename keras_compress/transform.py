"""The model transformer: the one way keras_compress copies a model, with layers replaced and inserted.

Every kind of model and layer a Keras user writes is copied by one recursive mechanism,
`Transformer.transform`, which dispatches on what it meets:

- a **graph model** (Sequential, Functional, and a `keras.Model` subclass whose `__init__` builds a
  Functional graph, as KerasHub backbones and tasks do) is rebuilt with Keras' own
  `keras.models.clone_model(clone_function=..., call_function=...)`: `clone_function` transforms each
  layer, `call_function` inserts the planned layers (activation quantizers) on the inputs of a call.
  A subclass keeps its class, its attributes and its methods (`generate()`), rebound to the copied
  layers (`_rebind`);
- a **container** (a composite layer that holds layers in attributes, lists and dicts, a subclassed
  model, `TimeDistributed`) has each of its sublayers transformed, the layers planned on the graph
  recorded from one forward pass (`keras_compress.recording`) put in an `InputsWrapper` around the
  sublayer that reads them, and is then copied around them (`copy_layer`; a subclassed model from its
  config, the rule Keras sets for saving one);
- a **leaf** layer is copied (`copy_layer`: from its state, never its config) and handed to the
  decisions (`wrap`: the algorithms' wrappers, or its inference version when stripping).

A copy never shares a variable with the original, whichever way it was made.

The copy of a container or of a model subclass whose inside changed is an instance of a subclass of
the user's class made here (`compressed_class`): it behaves as the user's class, and saves its own
config plus a record of what was changed (`CompressedLayer.get_config`). Loading rebuilds the user's
object from its config and applies the record with the same transformer (`replay`), so a compressed
model loads wherever the uncompressed one loads, and no copy depends on a layer's config round trip.
"""

from __future__ import annotations

import keras

from keras_compress.base_layer import CompressionLayer
from keras_compress.compressed import (
    OPERATIONS,
    PATH_KEYED,
    RECORD,
    CompressedLayer,
    build_chain,
    build_like,
    compressed_class,
    describe_chain,
    is_compressed,
    make_from_config,
    remember_base_config,
    set_sublayer,
    signature_of,
    signature_ones,
    signature_with_batch,
    signature_zeros,
    subtree,
    warn_unregistered,
)
from keras_compress.copying import copy_layer, set_tracked
from keras_compress.graph import (
    _BASE_ATTRIBUTES,
    TRACKING_ATTRIBUTES,
    as_functional,
    functional_class,
    child_layers,
    fresh_copy,
    has_inputs,
    is_container,
    is_functional_subclass,
    is_graph_model,
    new_inputs,
    own_weights,
    replace_call_tensors,
    trace_graph,
)
from keras_compress.inputs_wrapper import InputsWrapper
from keras_compress.insertion import Inserter, ReplayedPlan, SequentialPlan, call_keys
from keras_compress.recording import containers_of, record_containers, sample_inputs

__all__ = ["Transformer", "replay", "transform_model"]


def _join(path, name):
    return f"{path}/{name}" if path else name


def _prefix(path):
    """The scope prefix of the object at `path` (its parent's path and a slash): "outer/inner/"."""
    return path.rsplit("/", 1)[0] + "/" if "/" in path else ""


def _attribute_layers(model):
    """Ids of the layers a graph-model subclass (or one nested in it) holds in its attributes."""
    found, seen = set(), set()

    def walk(value):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, keras.layers.Layer):
            found.add(id(value))
            if is_functional_subclass(value):
                for name, item in vars(value).items():
                    if name not in _BASE_ATTRIBUTES and not name.startswith(TRACKING_ATTRIBUTES):
                        walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for name, item in vars(model).items():
        if name not in _BASE_ATTRIBUTES and not name.startswith(TRACKING_ATTRIBUTES):
            walk(item)
    return found


class Transformer:
    """Copies a model or layer, with the layers its decisions replace and insert (see the module).

    Args:
        wrap: `(original_layer, fresh_copy, prefix) -> layer`: the layer to put in the copy for a leaf
            (a wrapper around the fresh copy, or the copy itself); `prefix` is the "outer/inner/" path
            of its parent. None keeps every copy.
        planners: objects with `plan(graph, path) -> plan` and `make_layer(key, plan) -> layer` (the
            algorithms): a plan has `edges` `{(call index, input position): key}` and `outputs`
            `{output position: key}`. On a graph model's graph the layers are inserted on those edges;
            on a container's recorded graph they go into an `InputsWrapper` around the sublayer.
        recorded: `{id(container): RecordedGraph}` (`record_containers`), for the containers' plans.
        record: a record to apply instead of decisions (`replay`).
        input_shape: the input shape of an unbuilt Sequential model at the top.
        signature: the input signature config of a subclassed model at the top (`signature_of`).
        sample_signature: the signature of the batch a graph-model subclass at the top was compressed
            with (`signature_of`): what it is run on when loaded (`replay`).

    Attributes:
        record: what the copy holds that the original did not: `{"layers": {path: describe_chain},
            "graphs": {graph path: insertions}}` (compressed objects keep the part under them).
    """

    def __init__(self, wrap=None, planners=(), recorded=None, record=None, input_shape=None, signature=None,
                 sample_signature=None):
        self.wrap = wrap
        self.planners = list(planners)
        self.recorded = recorded or {}
        self.replaying = record
        self.input_shape = input_shape
        self.signature = signature if signature is not None else (record or {}).get("input_signature")
        self.sample_signature = sample_signature if sample_signature is not None else (record or {}).get("sample_signature")
        self.copies = {}  # id(original) -> its copy (a layer used in two graphs is copied once)
        self.keep = []  # the originals, alive while `copies` holds their ids
        self.frozen = []  # paths of objects that were compressed already (replay leaves them as they are)
        self.names = set()  # the names of the layers inserted so far
        self.pending = {}  # id(original layer) -> {input position: layer}: its InputsWrapper's layers
        self.record = {key: {} for key in PATH_KEYED}

    # ------------------------------------------------------------------ dispatch
    def transform(self, obj, path=""):
        """The copy of `obj` (a model, layer or keras.ops operation) at `path`."""
        if id(obj) in self.copies:
            return self.copies[id(obj)]
        if self.replaying is not None and (is_compressed(obj) or isinstance(obj, CompressionLayer)):
            self.frozen.append(path)
        if isinstance(obj, keras.Sequential) and path:
            new = self._sequential(obj, path)
        elif is_graph_model(obj):
            new = self._graph(obj, path)
        elif is_container(obj):
            new = self._container(obj, path)
        elif isinstance(obj, keras.layers.Layer):
            new = self._leaf(obj, path)
        else:
            new = fresh_copy(obj)  # a keras.ops operation: no state
        self.copies[id(obj)] = new
        self.keep.append(obj)
        return new

    def _is_frozen(self, path):
        return any(path == f or path.startswith(f"{f}/") or not f for f in self.frozen)

    def _unique(self, layer):
        """`layer`, renamed when an inserted layer of the model already has its name (planners name the
        layers of one graph uniquely; containers and nested graphs may repeat names)."""
        name, number = layer.name, 1
        while name in self.names:
            name, number = f"{layer.name}_{number}", number + 1
        self.names.add(name)
        return layer if name == layer.name else type(layer).from_config({**layer.get_config(), "name": name})

    def _note(self, path, layer):
        chain = describe_chain(layer)
        if chain:
            self.record["layers"][path] = chain

    # ------------------------------------------------------------------ leaves
    def _leaf(self, layer, path):
        fresh = copy_layer(layer)
        if self.replaying is not None:
            chain = None if self._is_frozen(path) else self.replaying["layers"].get(path)
            new = build_chain(chain, fresh) if chain else fresh
        else:
            new = self.wrap(layer, fresh, _prefix(path)) if self.wrap is not None else fresh
            if id(layer) in self.pending:
                new = InputsWrapper(new, self.pending.pop(id(layer)))
        build_like(new, fresh)
        self._note(path, new)
        return new

    # ------------------------------------------------------------------ containers
    def _container(self, obj, path):
        config = None
        if self.replaying is not None and not self._is_frozen(path):
            config = self.replaying.get("builds", {}).get(path)
            if config and not obj.built:  # a layer that makes its sublayers in build(): they must exist to be replaced
                obj.build_from_config(config)
        if not config and obj.built and type(obj).build is not keras.layers.Layer.build and not isinstance(obj, keras.Model):
            config = obj.get_build_config()
        if config:  # kept in the record of a replayed model too, so that it saves and loads again
            self.record["builds"][path] = config
        recorded = self.recorded.get(id(obj))
        planned, operations = self._input_layers(recorded, path) if recorded is not None else ({}, {})
        if self.replaying is not None and not self._is_frozen(path):
            configs = self.replaying.get("operations", {}).get(path, {})
            operations = {k: keras.saving.deserialize_keras_object(c) for k, c in configs.items()}
        replacements = {}
        for name, child in child_layers(obj):
            child_path = _join(path, name)
            new = self.transform(child, child_path)
            if name in planned:
                new = InputsWrapper(new, planned[name])
                build_like(new, child)
                self._note(child_path, new)
            replacements[child] = new
        changed = bool(operations) or any(
            k == path or k.startswith(f"{path}/") or not path
            for part in PATH_KEYED if part != "names" for k in self.record[part]  # names: what graphs hold
        )
        if isinstance(obj, keras.Model):
            shell = self._model_shell(obj, replacements, path)
        else:
            cls = compressed_class(type(obj)) if changed else type(obj)
            shell = copy_layer(obj, replacements, cls=cls)
            if operations:
                for layer in operations.values():
                    if not layer.built:
                        layer.build()
                set_tracked(shell, OPERATIONS, operations)
            if vars(shell).get(OPERATIONS):
                # The layers themselves: serialized when the model is saved (`saved_record`), built by then.
                self.record["operations"][path] = dict(vars(shell)[OPERATIONS])
        if changed or is_compressed(shell):
            record = subtree(self.record, path)
            signature = (self.signature if not path else None) or getattr(obj, RECORD, {}).get("input_signature")
            if isinstance(obj, keras.Model) and signature is not None:
                record = {**record, "input_signature": signature}
            object.__setattr__(shell, RECORD, record)
            remember_base_config(shell, obj)
        return shell

    def _input_layers(self, recorded, path):
        """What the planners insert on the recorded graph: `({sublayer name: {input position: layer}},
        {"<k>_<operand>": layer})`, the latter for the container's own matmuls (`OPERATIONS`).

        Each consumer gets its own instance of a planned layer (one layer held by several wrappers
        would not load from a file); they all start from the same statistics. A sublayer called
        several times takes what its first call was given.
        """
        graph = recorded.graph
        graph.inner, graph.owner = True, recorded.owner
        stem = _prefix(_join(path, "x")).replace("/", "_")  # the container's path: names unique in the model
        graph.input_names = [f"{stem}{name}" for name in graph.input_names]
        for node, name in zip(graph.calls, recorded.names):
            node.prefix = _prefix(_join(path, name)) if isinstance(name, str) else None
        inserted, operations = {}, {}
        own_operations = not isinstance(recorded.owner, keras.Model)  # a model's call is not intercepted
        for planner in self.planners:
            plan = planner.plan(graph, _prefix(_join(path, "x")))
            if plan is None:
                continue
            for (call, position), key in sorted(plan.edges.items()):
                name = recorded.names[call]
                if isinstance(name, tuple):
                    slot = f"{name[1]}_{position}"
                    if own_operations and slot not in operations:
                        operations[slot] = self._unique(planner.make_layer(key, plan))
                elif name is not None and position not in inserted.get(name, {}):
                    inserted.setdefault(name, {})[position] = self._unique(planner.make_layer(key, plan))
        return inserted, operations

    def _model_shell(self, model, replacements, path):
        """A subclassed model's copy: made from its config, its sublayers replaced, then built. One held
        by another model whose config does not make it again (KerasHub's Flux `MLPEmbedder`, whose
        `get_config` raises) is copied from its state, as a composite layer is: the model that holds
        it makes it again when loaded."""
        try:
            shell = make_from_config(compressed_class(type(model)), model)
        except ValueError:
            if not path:
                raise
            return copy_layer(model, replacements, cls=compressed_class(type(model)))
        for name, child in child_layers(model):
            set_sublayer(shell, name, replacements[child])
        signature = self.signature if not path else None
        signature = signature or getattr(model, RECORD, {}).get("input_signature")
        if signature is not None:
            shell(signature_zeros(signature), training=False)
        else:
            shape = (model.get_build_config() or {}).get("input_shape")
            if shape is None:
                raise ValueError(
                    f"kc.compress needs the input shape of subclassed model {model.name!r}: pass calibration "
                    "data (`dataset=...`) or call the model once before compressing it."
                )
            shell(keras.ops.zeros([1] + [d or 1 for d in shape[1:]]), training=False)
        for source, target in zip(own_weights(model), own_weights(shell)):
            target.assign(source)
        return shell

    # ------------------------------------------------------------------ graph models
    def _recorded_names(self, functional, path):
        """`{layer name now: its name when compressed}` for the layers of a graph being replayed whose
        names changed (a KerasHub backbone made without a name names its blocks `embedder`; made again
        from its config, with its name, `hg_net_v2_backbone_embedder`): the record's paths use the old
        names. Matched by position in the graph's layer list; empty when nothing changed."""
        if self.replaying is None or self._is_frozen(path):
            return {}
        recorded = self.replaying.get("names", {}).get(path)
        names = [layer.name for layer in functional.layers]
        if not recorded or len(recorded) != len(names) or recorded == names:
            return {}
        return {now: then for now, then in zip(names, recorded) if now != then}

    def _planner_states(self, graph, path, renamed=None):
        if self.replaying is not None:
            record = self.replaying["graphs"].get(path)
            if record is None or self._is_frozen(path):
                return []
            replayed = [ReplayedPlan(record, graph, slot, renamed) for slot in range(ReplayedPlan.slots(record))]
            return [Inserter(planner, planner) for planner in replayed]
        prefix = f"{path}/" if path else ""
        return [Inserter(planner, planner.plan(graph, prefix), self._unique) for planner in self.planners]

    def _graph(self, model, path):
        functional = as_functional(model, self.input_shape if not path else None)
        graph = trace_graph(functional)
        graph.inner, graph.owner = bool(path), model
        renamed = self._recorded_names(functional, path)
        self.record["names"][path] = [renamed.get(layer.name, layer.name) for layer in functional.layers]
        inserters = self._planner_states(graph, path, renamed)
        in_wrappers = self._move_to_wrappers(model, graph, inserters)
        numbers, counts, keys = [], {}, call_keys(graph)
        for call in graph.calls:
            numbers.append(counts.get(id(call.layer), 0))
            counts[id(call.layer)] = numbers[-1] + 1
        edges, outputs, inserted = [], {}, {}

        def insert(tensor, key_of):
            names = []
            for inserter in inserters:
                key = key_of(inserter)
                if key is not None:
                    layer, tensor = inserter.apply(key, tensor)
                    names.append(layer.name)
                    inserted[layer.name] = layer
            return tensor, names

        counter = [0]

        def call_function(layer, *args, **kwargs):
            call = graph.calls[counter[0]]
            counter[0] += 1
            replace = {}
            for position in range(len(call.inputs)):
                if (call.index, position) in in_wrappers:
                    continue

                def quantize(tensor, position=position):
                    tensor, names = insert(tensor, lambda inserter: inserter.edge((call.index, position)))
                    if names:
                        edges.append([keys[call.index], numbers[call.index], position, names])
                    return tensor

                replace[position] = quantize
            args, kwargs = replace_call_tensors(args, kwargs, replace)
            return layer(*args, **kwargs)

        new = keras.models.clone_model(
            functional,
            input_tensors=new_inputs(functional),
            clone_function=lambda layer: self.transform(layer, _join(path, renamed.get(layer.name, layer.name))),
            call_function=call_function,
        )
        if any(inserter.plan is not None and inserter.plan.outputs for inserter in inserters):
            flat = keras.tree.flatten(new.outputs)
            for position in range(len(flat)):
                flat[position], names = insert(flat[position], lambda inserter: inserter.output(position))
                if names:
                    outputs[str(position)] = names
            new = keras.Model(new.inputs, keras.tree.pack_sequence_as(new.output, flat), name=new.name)
        if edges or outputs:
            configs = {name: keras.saving.serialize_keras_object(layer) for name, layer in inserted.items()}
            self.record["graphs"][path] = {"edges": edges, "outputs": outputs, "inserted": configs}
        elif is_compressed(model):
            self._carry_graph_record(model, new, path)
        if is_functional_subclass(model):
            new = self._rebind(model, new, path)
        return new

    def _sequential(self, model, path):
        """A Sequential model inside another: a Sequential of the transformed layers with the planned
        layers between them (one that is not built yet, inside a container being loaded, included)."""
        layers = list(model.layers)
        if self.replaying is not None:
            record = self.replaying["graphs"].get(path) if not self._is_frozen(path) else None
            plan = SequentialPlan.from_record(record, layers)
        else:
            graph = trace_graph(model)
            graph.inner, graph.owner = True, model
            plan = SequentialPlan.from_planners(self.planners, graph, f"{path}/", self._unique)
        new_layers, edges, outputs, inserted = [], [], {}, {}
        for index, layer in enumerate(layers):
            names = []
            for inserted_layer in plan.before(index):
                new_layers.append(inserted_layer)
                names.append(inserted_layer.name)
                inserted[inserted_layer.name] = inserted_layer
            if names:
                edges.append([layer.name, 0, 0, names])
            new_layers.append(self.transform(layer, _join(path, layer.name)))
        for inserted_layer in plan.after():
            new_layers.append(inserted_layer)
            outputs.setdefault("0", []).append(inserted_layer.name)
            inserted[inserted_layer.name] = inserted_layer
        if has_inputs(model):
            new_layers.insert(0, keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype))
        if edges or outputs:
            configs = {name: keras.saving.serialize_keras_object(layer) for name, layer in inserted.items()}
            self.record["graphs"][path] = {"edges": edges, "outputs": outputs, "inserted": configs}
        return keras.Sequential(new_layers, name=model.name)

    def _move_to_wrappers(self, model, graph, inserters):
        """Moves the layers planned on the inputs of a graph-model subclass's attribute layers into
        their `InputsWrapper`: its methods call them directly (a KerasHub `CausalLM.generate()` calls
        `backbone.token_embedding(x, reverse=True)` for the logits), and must get the same quantizers
        as the graph. Returns the edges moved (not inserted in the graph)."""
        moved = set()
        if not is_functional_subclass(model) or self.replaying is not None:
            return moved
        direct = _attribute_layers(model)
        for inserter in inserters:
            if inserter.plan is None:
                continue
            for (index, position), key in sorted(inserter.plan.edges.items()):
                layer = graph.calls[index].layer
                if id(layer) in direct and id(layer) not in self.copies and isinstance(layer, keras.layers.Layer):
                    layer_inputs = self.pending.setdefault(id(layer), {})
                    if position not in layer_inputs:
                        layer_inputs[position] = self._unique(inserter.planner.make_layer(key, inserter.plan))
                    moved.add((index, position))
        return moved

    def _carry_graph_record(self, model, new, path):
        """The insertions of a compressed model's graph, as the copy holds them (its layers of the
        same names: the inference versions when stripping)."""
        record = getattr(model, RECORD, {}).get("graphs", {}).get("")
        if not record:
            return
        configs = {}
        for name in record["inserted"]:
            try:
                configs[name] = keras.saving.serialize_keras_object(new.get_layer(name))
            except ValueError:
                configs[name] = record["inserted"][name]
        self.record["graphs"][path] = {**record, "inserted": configs}

    def _rebind(self, original, clone, path):
        """The copy of a graph-model subclass: an instance of its (compressed) class built on the
        copied graph, holding the original's attributes with every layer replaced by its copy and
        every tensor of the original's graph by the copy's (`pyramid_outputs` of KerasHub's vision
        backbones, which the models built on them read)."""
        cls = compressed_class(type(original))
        model = cls.__new__(cls)
        # What the user's class does in `__init__` (`super().__init__(inputs=..., outputs=...)`, once
        # Keras has put Functional among its bases), on the copied graph.
        functional_class().__init__(model, clone.input, clone.output, name=original.name)
        own = set(vars(model))
        tensors = self._graph_tensors(original, clone)
        for name, value in vars(original).items():
            if name in own or name in _BASE_ATTRIBUTES or name.startswith(TRACKING_ATTRIBUTES) or name == RECORD:
                continue
            setattr(model, name, self._map_attribute(value, _join(path, name), tensors))
        record = subtree(self.record, path)
        # Kept by the copies of a compressed model too (its stripped version exports at those shapes).
        sample_signature = self.sample_signature or getattr(original, RECORD, {}).get("sample_signature")
        if not path and sample_signature is not None:
            record = {**record, "sample_signature": sample_signature}
        object.__setattr__(model, RECORD, record)
        remember_base_config(model, original)
        return model

    def _graph_tensors(self, original, clone):
        """`{id(tensor of the original's graph): the same tensor of the copy's graph}`: the inputs, and
        the outputs of each operation (of its first call: the graph's) with a copy in the clone."""
        tensors = {id(old): new for old, new in zip(keras.tree.flatten(original.input), keras.tree.flatten(clone.input))}
        for operation in original.operations:
            copy = self.copies.get(id(operation))
            if copy is None or copy is operation:
                continue
            try:
                old, new = keras.tree.flatten(operation.output), keras.tree.flatten(copy.output)
            except (AttributeError, ValueError, RuntimeError):  # not called in a graph
                continue
            if len(old) == len(new):
                tensors.update({id(o): n for o, n in zip(old, new)})
        return tensors

    def _map_attribute(self, value, path, tensors):
        """An attribute of a graph-model subclass for its copy: layers replaced by their copies (a
        layer outside the graph with weights is transformed; one without is shared), tensors of the
        original's graph by the copy's."""
        if isinstance(value, keras.layers.Layer):
            if id(value) in self.copies or value.weights:
                return self.transform(value, path)
            return value
        if isinstance(value, keras.KerasTensor):
            return tensors.get(id(value), value)
        if isinstance(value, dict):
            return {k: self._map_attribute(v, f"{path}/{k}", tensors) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            items = [self._map_attribute(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
            return tuple(items) if isinstance(value, tuple) else items
        return value


def replay(base, record):
    """Applies a record (`Transformer.record`) to a freshly made user object: how a compressed layer
    or model is loaded. A graph model is then run once, which builds the layers its graph does not
    build (a container's sublayers when it has a shape rule of its own), before Keras loads weights:
    on a batch of the shapes it was compressed with when the record has them (`sample_signature`: a
    model whose inputs have free sizes may take only some, a position embedding's length, a feature
    map's size), else on `sample_inputs`."""
    model = Transformer(record=record).transform(base)
    if is_graph_model(model):
        signature = record.get("sample_signature")
        model(sample_inputs(model) if signature is None else signature_ones(signature), training=False)
    return model


CompressedLayer.replay = staticmethod(replay)


def transform_model(model, wrap=None, planners=(), sample=None, input_shape=None):
    """Compresses a copy of `model`: what `kc.compress` does to the model (see `Transformer`).

    Args:
        model: a Sequential, Functional or subclassed `keras.Model`, or a graph-model subclass
            (not changed).
        wrap: `(original_layer, fresh_copy, prefix) -> layer` (see `Transformer`).
        planners: the algorithms (see `Transformer`).
        sample: an input batch: the input signature of a subclassed model, and the forward pass that
            records the graphs of the containers (default: the model's inputs, zeros; a subclassed
            model's build shape).
        input_shape: the input shape (without batch) of an unbuilt Sequential model.

    Returns:
        The compressed copy.

    Raises:
        ValueError: when the model cannot be copied, or a subclassed model's input shape is unknown.
    """
    signature = None
    if not is_graph_model(model):
        if sample is not None:
            signature = signature_of(sample)
        elif model.built and (model.get_build_config() or {}).get("input_shape") is not None:
            shape = model.get_build_config()["input_shape"]
            signature = [{"shape": [None, *shape[1:]], "dtype": "float32", "name": "inputs"}]
        else:
            raise ValueError(
                f"kc.compress needs the input shape of subclassed model {model.name!r}: pass calibration "
                "data (`dataset=...`) or call the model once before compressing it."
            )
        warn_unregistered(model)
    elif not is_functional_subclass(model):
        model = as_functional(model, input_shape)
    recorded = {}
    if containers_of(model):
        if sample is None:
            sample = sample_inputs(model) if signature is None else signature_zeros(signature)
        recorded = record_containers(model, sample)
    # The shapes a graph-model subclass was compressed on: what it runs on when loaded (`replay`).
    sample_signature = None
    if signature is None and sample is not None:  # with its batch size (TensorFlow's oneDNN MaxPool
        # failed on BASNet's 1x1 feature maps at batch 1 and not at the calibration batch's 2)
        size = int(keras.tree.flatten(sample)[0].shape[0])
        sample_signature = signature_with_batch(signature_of(sample), size)
    transformer = Transformer(wrap, planners, recorded, input_shape=input_shape, signature=signature,
                              sample_signature=sample_signature)  # fmt: skip
    return transformer.transform(model)
