"""copy_layer: a copy of a layer made from its state, never from its config.

Keras copies a layer with `from_config(get_config())` (and `copy.deepcopy` or pickle go through the
same config, saved into a `.keras` archive). Real layers break that round trip: KerasHub 0.32's
`ViTPatchingAndEmbedding.from_config` rejects its own `num_patches` key, its Llama decoder layer's
`get_config()` raises, and a layer whose config forgets an argument would come back computing
something else. `copy_layer` copies the Python object instead: every Keras layer below the copied
one becomes a new object of the same class with a copy of the original's attributes, and every
variable a new variable holding the same value, so the copy computes exactly what the original does,
trains on its own variables, and never shares one with the original.

What it knows of Keras' objects is written here and nowhere else:
- layers, `keras.random.SeedGenerator`s and the other Keras-saveable objects are copied attribute by
  attribute (`copy.deepcopy` would route them through a `.keras` archive, i.e. through their config);
- Keras' tracked lists, dicts and sets are filled without tracking (the copied layer is built, so its
  tracker is locked), and every copied tracker then lists the copied objects;
- the links of a layer to the Functional graphs it was called in (`_inbound_nodes`,
  `_outbound_nodes`) are not copied: the copy has been called nowhere yet;
- modules are shared (a SeedGenerator holds the backend module);
- functions held by a copied object that close over it (Keras wraps each layer's `build` in a
  closure over the layer, stored on the instance) are made again over the copy;
- a helper object Python cannot copy (Keras' `DynamicBackend`, whose `__getattr__` recurses on an
  object made without `__init__`) is shared with the original.
"""

from __future__ import annotations

import copy
import types

import keras

__all__ = ["copy_layer", "set_tracked"]

#: A layer's links to the graph nodes of its calls: the copy starts with none.
_GRAPH_LINKS = ("_inbound_nodes", "_outbound_nodes")


def _is_keras_object(value):
    """Layers, seed generators and anything else Keras saves by its config (losses, metrics...)."""
    if isinstance(value, (keras.layers.Layer, keras.random.SeedGenerator)):
        return True
    return any(cls.__name__ == "KerasSaveable" for cls in type(value).__mro__)


def _is_tracked_container(value):
    """Keras' tracked list/dict/set (an attribute list of a layer: it adds what it holds to the layer)."""
    return isinstance(value, (list, dict, set)) and type(value) not in (list, dict, set) and "tracker" in vars(value)


def copy_layer(layer, replacements=None, cls=None):
    """A copy of `layer` with new variables holding the same values, made without its config.

    Args:
        layer: a Keras layer (built or not), or a subclassed model held by another model (a model
            whose config does not make it again: `keras_compress.transform`).
        replacements: `{sublayer: layer}`: objects to put in the copy in place of some of the layers
            it holds (already-made copies, compressed versions of them). A `keras.Model` held by
            `layer` must be among them (models are copied through their graph or config).
        cls: the class of the copy (default: `layer`'s own); a subclass of it.

    Returns:
        The copy: same class, same attributes, every sublayer and variable a new object (but the
        replacements), not connected to any Functional graph.

    Raises:
        ValueError: for a `keras.Model` held by `layer` that is not in `replacements`.
        TypeError: for an attribute Python cannot copy (a lock, an open file).

    Example:
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 3))
        >>> copy = copy_layer(dense)
        >>> copy.kernel is dense.kernel, bool((copy.kernel.numpy() == dense.kernel.numpy()).all())
        (False, True)
    """
    memo = _Memo({id(original): new for original, new in (replacements or {}).items()})
    keep = [layer]  # the originals, alive while `memo` holds their ids
    shells = []

    def visit(value):
        if id(value) in memo:
            return
        if isinstance(value, types.ModuleType):
            memo[id(value)] = value
        elif isinstance(value, keras.Variable):
            memo[id(value)] = _copy_variable(value)
            keep.append(value)
        elif _is_keras_object(value):
            if isinstance(value, keras.Model) and value is not layer:
                raise ValueError(
                    f"copy_layer copies the layers a layer holds, not models: model {value.name!r} held by "
                    f"{layer.name!r} must be given in `replacements`."
                )
            memo[id(value)] = object.__new__(type(value))
            keep.append(value)
            shells.append(value)
            for name, item in vars(value).items():
                if name in _GRAPH_LINKS and isinstance(item, list):
                    memo[id(item)] = []
                else:
                    visit(item)
        elif _is_tracked_container(value):
            memo[id(value)] = type(value).__new__(type(value))
            keep.append(value)
            shells.append(value)
            for item in list(value.values() if isinstance(value, dict) else value):
                visit(item)
        elif isinstance(value, dict):
            for item in list(value.values()):
                visit(item)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in list(value):
                visit(item)

    visit(layer)
    if cls is not None:
        memo[id(layer)].__class__ = cls
    memo[id(memo)] = keep  # deepcopy's own keep-alive slot

    def deep(value):
        if isinstance(value, types.FunctionType) and value.__closure__:
            return _rebind_closure(value, memo)
        memo.journal = []
        try:
            return copy.deepcopy(value, memo)
        except (RecursionError, TypeError, AttributeError):
            for key in memo.journal:  # forget what the failed copy registered
                memo.pop(key, None)
            return value
        finally:
            memo.journal = None

    for original in shells:
        shell = memo[id(original)]
        # Tracked containers are filled past their tracking (the copied tracker is set below).
        if isinstance(original, list):
            list.extend(shell, [deep(item) for item in original])
        elif isinstance(original, dict):
            dict.update(shell, {key: deep(item) for key, item in original.items()})
        elif isinstance(original, set):
            set.update(shell, {deep(item) for item in original})
        shell.__dict__.update({name: deep(value) for name, value in vars(original).items()})
    for original in shells:
        tracker = vars(memo[id(original)]).get("_tracker")
        if tracker is not None:  # it remembers what it holds by id: the copies' ids
            tracker.stored_ids = {name: {id(v) for v in store} for name, (_, store) in tracker.config.items()}
    return memo[id(layer)]


def _copy_variable(variable):
    """A new variable like `variable` (same value, dtype, trainability, name and path)."""
    value = keras.ops.convert_to_numpy(variable)
    scopes = variable.path.split("/")[:-1]

    def make(depth=0):
        if depth < len(scopes):
            with keras.name_scope(scopes[depth]):
                return make(depth + 1)
        return keras.Variable(
            initializer=value,
            shape=variable.shape,
            dtype=variable.dtype,
            trainable=variable.trainable,
            name=variable.name,
            aggregation=variable.aggregation,
            synchronization=variable.synchronization,
        )

    return make()


def _rebind_closure(function, memo):
    """`function` made again with the copies of what its closure holds (the copied objects, bound
    methods of them); a closure over anything else is shared."""
    if not any(id(cell.cell_contents) in memo or id(getattr(cell.cell_contents, "__self__", None)) in memo
               for cell in function.__closure__ if _filled(cell)):  # fmt: skip
        return function
    cells = tuple(types.CellType(copy.deepcopy(cell.cell_contents, memo)) if _filled(cell) else cell
                  for cell in function.__closure__)  # fmt: skip
    new = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__, cells)
    new.__kwdefaults__ = function.__kwdefaults__
    new.__dict__.update(copy.deepcopy(function.__dict__, memo))
    return new


def _filled(cell):
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def set_tracked(layer, name, value):
    """`setattr(layer, name, value)`, tracked by Keras (sublayers, variables) even when `layer` is built.

    Keras locks a built layer's state (new sublayers raise); keras_compress adds layers to a copy it made
    (the activation quantizers of a container's own matmuls), so it opens the lock for this one attribute.
    """
    tracker = vars(layer).get("_tracker")
    locked = tracker is not None and tracker.locked
    if locked:
        tracker.unlock()
    try:
        setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()


class _Memo(dict):
    """`copy.deepcopy`'s memo, with a journal of the keys one copy adds (to undo a failed one)."""

    journal = None

    def __setitem__(self, key, value):
        if self.journal is not None and key not in self:
            self.journal.append(key)
        super().__setitem__(key, value)
