"""Where activation quantizers go: a pure function over the model graph.

The rules follow what OpenVINO's CPU plugin needs to run layers in INT8 (see docs/quantization.md):
- the inputs of weight-quantized layers, average pooling and model inputs get a quantizer;
- one quantizer per tensor is shared by all such consumers, and it moves up through
  precision-preserving layers (padding, max pooling, reshape, dropout, ...) when every consumer
  of the tensor wants it, so a ReLU output feeding `ZeroPadding -> MaxPool -> Conv` is quantized
  right after the ReLU;
- the inputs of a Concatenate share one quantizer (equal scales let OpenVINO concatenate
  integers); the inputs of Add and the other element-wise merges get the per-tensor quantizer
  of each input, shared with that tensor's other consumers. Measured on ResNet50 (batch 1, this
  2-core VNNI CPU): one shared range for both Add inputs made the INT8 IR 1.34x slower
  (10.6 ms vs 7.9 ms, the same as NNCF's post-training placement) because the identity branch
  then needs its own signed quantizer. `activations.unified_scale_ops` can still ask for a
  shared range on chosen merge layers;
- nothing sits between a convolution and its BatchNormalization (BN is not a quantizing consumer);
- the two inputs of a matmul between activations (`keras.ops.matmul`, `einsum`, `Dot`) get
  quantizers, the second one signed: OpenVINO's CPU plugin runs such a MatMul in int8 only when
  its second input is signed symmetric (u8 or i8 first input, i8 second input; measured with every
  combination of signed, unsigned and asymmetric FakeQuantize on both inputs of the attention
  matmuls, OpenVINO 2026.4: any other one ran in f32/bf16);
- the inputs of a merge are quantized only when the merge's result is read in int8 (by a quantizing
  consumer, possibly through activations, BatchNormalization or precision-preserving layers), as
  residual adds in CNNs are; a residual add that is normalized first (a transformer's
  `LayerNormalization(x + attention(x))`) stays in float, as in NNCF's transformer preset.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ActivationPlan",
    "plan_activation_quantizers",
    "AGNOSTIC_ROLES",
    "QUANTIZED_INPUT_ROLES",
]

#: Node roles whose output is on the input's quantization grid when the input is (precision
#: preserving): a tensor quantizer moves up through them.
AGNOSTIC_ROLES = ("identity", "spatial", "reshape")
#: Node roles whose inputs are quantized: average pooling, merges (`Add`, `x + y`, Concatenate) and
#: matmuls between activations.
QUANTIZED_INPUT_ROLES = ("average_pool", "merge", "concat", "matmul")
#: Node roles a merge's result passes through on its way to an int8 reader (see `_merges_read_in_int8`).
_TOWARDS_INT8_ROLES = (*AGNOSTIC_ROLES, "activation", "batchnorm", "channelwise")


@dataclasses.dataclass
class ActivationPlan:
    """Activation quantizers for one Functional model.

    Attributes:
        edges: {(call index, input position): quantizer key}: the call's input at that position
            goes through the quantizer. Keys are ("tensor", TensorRef) or ("merge", call index).
        names: {quantizer key: layer name for the FakeQuantize}.
        outputs: {model output position: quantizer key} (only with `quantize_outputs`).
        signed: the keys whose quantizer must be signed (the second input of a matmul).
    """

    edges: dict
    names: dict
    outputs: dict
    signed: set = dataclasses.field(default_factory=set)


def _is_float(dtype):
    return "float" in str(dtype)


def plan_activation_quantizers(
    graph,
    weight_quantized,
    quantize_inputs=True,
    quantize_outputs=False,
    is_ignored=lambda node: False,
    is_unified=lambda node: node.role == "concat",
):
    """Decides where the activation quantizers of a model go.

    Args:
        graph: the model's `ModelGraph`.
        weight_quantized: set of ids of the original layers whose weights are quantized.
        quantize_inputs: quantize model inputs (NNCF `quantize_inputs`).
        quantize_outputs: quantize model outputs (NNCF `quantize_outputs`).
        is_ignored: predicate on a consumer node: True skips its input quantizers.
        is_unified: predicate on a merge node: True makes its inputs share one quantizer.

    Returns:
        An `ActivationPlan`.
    """
    needs = {}  # TensorRef -> set of consumer edges that want the shared tensor quantizer
    signed_refs = set()  # TensorRefs whose quantizer must be signed
    edges = {}
    names = {}
    read_in_int8 = _merges_read_in_int8(graph, weight_quantized, is_unified)
    for call in graph.calls:
        role = call.role
        merge = role in ("merge", "concat") and is_unified(call)
        if not (id(call.layer) in weight_quantized or role in QUANTIZED_INPUT_ROLES):
            continue
        if role == "merge" and call.index not in read_in_int8:
            continue
        if is_ignored(call):
            continue
        for pos, ref in enumerate(call.inputs):
            if not _is_float(graph.dtypes.get(ref)):
                continue
            if graph.producer(ref) is None and not quantize_inputs:
                continue
            if merge:
                key = ("merge", call.index)
                edges[(call.index, pos)] = key
                names[key] = f"{call.name}_inputs_quantizer"
            else:
                needs.setdefault(ref, set()).add((call.index, pos))
                if role == "matmul" and pos == 1:
                    signed_refs.add(ref)

    # Move tensor quantizers up through precision-preserving layers, latest producers first.
    pending = sorted(needs, key=lambda r: r[0])
    while pending:
        ref = pending.pop()
        producer = graph.producer(ref)
        if (
            producer is not None
            and producer.role in AGNOSTIC_ROLES
            and len(producer.inputs) == 1
            and needs[ref] == set(graph.consumers(ref))
            and not graph.is_model_output(ref)
            and (graph.producer(producer.inputs[0]) is not None or quantize_inputs)
        ):
            source = producer.inputs[0]
            if source not in needs:
                pending.append(source)
                pending.sort(key=lambda r: r[0])
            needs.setdefault(source, set()).add((producer.index, 0))
            del needs[ref]
            if ref in signed_refs:
                signed_refs.add(source)

    taken = {call.name for call in graph.calls} | set(graph.input_names) | set(names.values())

    def unique(name):
        candidate, i = name, 1
        while candidate in taken:
            candidate, i = f"{name}_{i}", i + 1
        taken.add(candidate)
        return candidate

    signed = set()
    for ref, consumer_edges in needs.items():
        key = ("tensor", ref)
        names[key] = unique(_tensor_name(graph, ref) + "_quantizer")
        for edge in consumer_edges:
            edges[edge] = key
        if ref in signed_refs:
            signed.add(key)

    outputs = {}
    if quantize_outputs:
        for pos, ref in enumerate(graph.outputs):
            if _is_float(graph.dtypes.get(ref)):
                key = ("output", pos)
                outputs[pos] = key
                names[key] = unique(_tensor_name(graph, ref) + "_output_quantizer")
    return ActivationPlan(edges, names, outputs, signed)


def _merges_read_in_int8(graph, weight_quantized, is_unified):
    """Indices of the merge calls whose result is read by a layer that quantizes its inputs.

    A merge's result is followed through activations, BatchNormalization and precision-preserving
    layers to its readers: a weight-quantized layer, average pooling, a concatenation, a matmul, or
    another merge read in int8 (not a layer that quantizes its own inputs: it reads the float
    tensor). A merge asked to have a unified input scale (`is_unified`) counts as read in int8.
    """
    found = set()

    def reads_int8(call):
        role = call.role
        if role == "merge":
            return call.index in found
        return id(call.layer) in weight_quantized or role in QUANTIZED_INPUT_ROLES

    def read(refs, seen):
        for ref in refs:
            for index, _ in graph.consumers(ref):
                if index in seen:
                    continue
                seen.add(index)
                call = graph.calls[index]
                if reads_int8(call):
                    return True
                if call.role in _TOWARDS_INT8_ROLES and read([(index, j) for j in range(call.num_outputs)], seen):
                    return True
        return False

    for call in reversed(graph.calls):  # consumers come after their producers
        if call.role == "merge" and (is_unified(call) or read([(call.index, 0)], set())):
            found.add(call.index)
    return found


def _tensor_name(graph, ref):
    producer = graph.producer(ref)
    if producer is None:
        return graph.input_names[-1 - ref[0]]
    return producer.name if producer.num_outputs == 1 else f"{producer.name}_{ref[1]}"
