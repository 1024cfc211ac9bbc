"""The layers a transformer inserts on the edges of a graph: from the planners, or from a record."""

from __future__ import annotations

import keras

__all__ = ["Inserter", "ReplayedPlan", "SequentialPlan", "call_keys"]


def call_keys(graph):
    """How a record names each call of `graph`: a layer by its name; a `keras.ops` operation by its
    class and how-manieth operation of that class it is in the graph (`GetItem#0`), not by its name,
    which Keras numbers from a counter of the process (`get_item_3` when the same model is built again
    in the process that compressed it)."""
    keys, counts = [], {}
    for call in graph.calls:
        if isinstance(call.layer, keras.layers.Layer) or not isinstance(call.layer, keras.Operation):
            keys.append(call.name)
            continue
        kind = type(call.layer).__name__
        keys.append(f"{kind}#{counts.get(kind, 0)}")
        counts[kind] = counts.get(kind, 0) + 1
    return keys


class Inserter:
    """The layers one planner inserts into one graph, each applied once per tensor."""

    def __init__(self, planner, plan, unique=lambda layer: layer):
        self.planner = planner
        self.plan = plan
        self.unique = unique
        self.layers = {}  # key -> inserted layer
        self.applied = {}  # (key, id of the input tensor) -> (input tensor, output of the inserted layer)

    def edge(self, edge):
        return None if self.plan is None else self.plan.edges.get(edge)

    def output(self, position):
        return None if self.plan is None else self.plan.outputs.get(position)

    def apply(self, key, tensor):
        if key not in self.layers:
            self.layers[key] = self.unique(self.planner.make_layer(key, self.plan))
        if (key, id(tensor)) not in self.applied:
            self.applied[(key, id(tensor))] = (tensor, self.layers[key](tensor))
        return self.layers[key], self.applied[(key, id(tensor))][1]


class ReplayedPlan:
    """The layers a record inserts into one graph, slot by slot: slot k holds the k-th layer inserted
    on each edge (one inserted layer per edge and algorithm when it was recorded)."""

    def __init__(self, record, graph, slot, renamed=None):
        calls = {}
        index_of = {}
        renamed = renamed or {}
        for call, key in zip(graph.calls, call_keys(graph)):
            number = calls.get(id(call.layer), 0)
            calls[id(call.layer)] = number + 1
            key = renamed.get(key, key)  # a layer's name when the record was made
            index_of[(call.name, number)] = call.index  # records written before `call_keys`
            index_of[(key, number)] = call.index
        self.edges = {
            (index_of[(name, number)], position): names[slot]
            for name, number, position, names in record.get("edges", [])
            if (name, number) in index_of and len(names) > slot
        }
        self.outputs = {int(p): names[slot] for p, names in record.get("outputs", {}).items() if len(names) > slot}
        self.configs = record.get("inserted", {})

    @staticmethod
    def slots(record):
        lengths = [len(names) for *_, names in record.get("edges", [])] + [len(n) for n in record.get("outputs", {}).values()]
        return max(lengths, default=0)

    def make_layer(self, key, plan):
        return keras.saving.deserialize_keras_object(self.configs[key])


class SequentialPlan:
    """The layers to insert before each layer of a Sequential model, and after its last one."""

    def __init__(self, before, after):
        self._before, self._after = before, after

    def before(self, index):
        return self._before.get(index, [])

    def after(self):
        return self._after

    @classmethod
    def from_planners(cls, planners, graph, prefix, unique):
        before, after = {}, []
        for planner in planners:
            plan = planner.plan(graph, prefix)
            if plan is None:
                continue
            for (call, _), key in sorted(plan.edges.items()):
                before.setdefault(call, []).append(unique(planner.make_layer(key, plan)))
            after += [unique(planner.make_layer(key, plan)) for _, key in sorted(plan.outputs.items())]
        return cls(before, after)

    @classmethod
    def from_record(cls, record, layers):
        if not record:
            return cls({}, [])
        index_of = {layer.name: i for i, layer in enumerate(layers)}
        make = lambda name: keras.saving.deserialize_keras_object(record["inserted"][name])  # noqa: E731
        before = {index_of[name]: [make(n) for n in names] for name, _, _, names in record.get("edges", [])}
        return cls(before, [make(n) for n in record.get("outputs", {}).get("0", [])])
