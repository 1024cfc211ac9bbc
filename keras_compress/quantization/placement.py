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
- nothing sits between a convolution and its BatchNormalization: OpenVINO folds that BN into the
  convolution. A BatchNormalization that does not follow a layer with weights (ResNetV2's
  pre-activation `BN -> ReLU -> Conv`) is a quantizing consumer when its result is read in int8:
  OpenVINO's low-precision transformations run its Multiply/Add on the int8 tensor and fold them,
  with the ReLU, into the requantization of the next quantizer;
- a tensor that has a quantizer for one consumer is read quantized by every consumer that OpenVINO
  runs on int8 input (BatchNormalization, activations, precision-preserving layers; `SHARED_READER_ROLES`),
  as NNCF's post-training placement does. Otherwise the producer must also write the float tensor and
  the quantizer stays in the runtime graph as a standalone f32 FakeQuantize plus Reorders. Measured on
  ResNet50V2 (batch 1, this 2-core VNNI CPU, OpenVINO 2026.4): 26 standalone FakeQuantize and 15
  Reorders with one quantizer per int8 consumer, and INT8 1.53x NNCF PTQ's latency; see
  docs/benchmarks.md#coverage for the figures with this rule;
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
    "SHARED_READER_ROLES",
]

#: Node roles whose output is on the input's quantization grid when the input is (precision
#: preserving): a tensor quantizer moves up through them.
AGNOSTIC_ROLES = ("identity", "spatial", "reshape")
#: Node roles whose inputs are quantized: average pooling, merges (`Add`, `x + y`, Concatenate) and
#: matmuls between activations.
QUANTIZED_INPUT_ROLES = ("average_pool", "merge", "concat", "matmul")
#: Node roles a merge's result passes through on its way to an int8 reader (see `_read_in_int8`).
_TOWARDS_INT8_ROLES = (*AGNOSTIC_ROLES, "activation", "batchnorm", "channelwise")
#: Node roles that read a tensor's quantized copy when the tensor is quantized for another consumer:
#: OpenVINO runs them on the int8 tensor (its low-precision transformations move the dequantization
#: through them or fold them into the next requantization).
SHARED_READER_ROLES = _TOWARDS_INT8_ROLES


#: Layer classes that `keras_compress.graph.node_role` calls "other", by class name, with the role they
#: have to placement. keras.applications' InceptionResNetV2 adds each residual as
#: `CustomScaleLayer(scale)([x, up])`, i.e. `x + scale * up`: a merge of two tensors. As "other" it ran in
#: float with 40 standalone FakeQuantize ops and 81 Reorders in the runtime graph (NNCF PTQ: 1 and 1).
_ROLES_BY_CLASS_NAME = {"CustomScaleLayer": "merge"}


def _role(call):
    """The call's role to placement: its graph role, or the role `_ROLES_BY_CLASS_NAME` gives its class."""
    role = call.role
    if role == "other" and len(call.inputs) >= 2:
        return _ROLES_BY_CLASS_NAME.get(type(call.layer).__name__, role)
    return role


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
    read_in_int8 = _read_in_int8(graph, weight_quantized, is_unified, is_ignored)
    for call in graph.calls:
        role = _role(call)
        merge = role in ("merge", "concat") and is_unified(call)
        if not (id(call.layer) in weight_quantized or role in QUANTIZED_INPUT_ROLES or role == "batchnorm"):
            continue
        if role in ("merge", "batchnorm") and call.index not in read_in_int8:
            continue
        if role == "batchnorm" and _folded_batchnorm(graph, call):
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

    # Move tensor quantizers up through precision-preserving layers, latest producers first. A
    # concatenation whose inputs share one quantizer reads its input on that grid too (see
    # `_join_concatenations`), so it counts as wanting the tensor quantizer: DenseNet's first pooling,
    # read by the first block's BatchNormalization and concatenation, then runs on int8 with the
    # quantizer on the ReLU before it, as NNCF places it.
    pending = sorted(needs, key=lambda r: r[0])
    while pending:
        ref = pending.pop()
        producer = graph.producer(ref)
        unified = {edge for edge in graph.consumers(ref)
                   if edges.get(edge, ("",))[0] == "merge" and _role(graph.calls[edge[0]]) == "concat"}  # fmt: skip
        if (
            producer is not None
            and _role(producer) in AGNOSTIC_ROLES
            and len(producer.inputs) == 1
            and needs[ref] | unified == set(graph.consumers(ref))
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

    # Every other consumer that OpenVINO runs on int8 input reads the same quantized tensor.
    for ref, consumer_edges in needs.items():
        for index, pos in graph.consumers(ref):
            call = graph.calls[index]
            if (index, pos) not in edges and _role(call) in SHARED_READER_ROLES and index in read_in_int8:
                consumer_edges.add((index, pos))

    _join_concatenations(graph, edges, names, needs, signed_refs)

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


def _join_concatenations(graph, edges, names, needs, signed_refs):
    """Concatenations whose inputs share one quantizer are on that quantizer's grid: no new quantizer.

    The result of such a concatenation is read as it is (its tensor quantizer is dropped), the other
    int8 readers of an input read it through the shared quantizer (one quantizer per tensor), and a
    concatenation that reads another one (directly or through precision-preserving layers,
    InceptionV3's `Concatenate([..., MaxPool(mixed2)])`) shares its quantizer
    with it, as NNCF's post-training placement does. Measured on InceptionV3 (batch 1, this 2-core
    VNNI CPU, OpenVINO 2026.4): a quantizer on each concatenation's result left 15 requantizing
    FakeQuantize ops that NNCF's placement does not have. Changes `edges`, `names` and `needs` in place.
    """
    keys = {}  # concatenation call index -> its key in `edges`
    for (index, _), key in edges.items():
        if key[0] == "merge" and _role(graph.calls[index]) == "concat":
            keys[index] = key
    complete = {
        index for index in keys
        if all((index, pos) in edges for pos, ref in enumerate(graph.calls[index].inputs)
               if _is_float(graph.dtypes.get(ref)))
    }  # fmt: skip
    root = {key: key for key in keys.values()}

    def find(key):
        while root[key] != key:
            key = root[key]
        return key

    for index in sorted(complete):
        for pos, ref in enumerate(graph.calls[index].inputs):
            if (index, pos) not in edges:
                continue
            chain, producer = [ref], graph.producer(ref)
            while producer is not None and _role(producer) in AGNOSTIC_ROLES and len(producer.inputs) == 1:
                chain.append(producer.inputs[0])  # precision-preserving layers keep the grid
                producer = graph.producer(producer.inputs[0])
            if producer is not None and producer.index in complete:
                del edges[(index, pos)]
                root[find(keys[producer.index])] = find(keys[index])
                for tensor in chain:
                    if tensor not in signed_refs:
                        needs.pop(tensor, None)
                continue
            # A tensor on the way that is quantized for other readers: the concatenation's quantizer is
            # its quantizer (InceptionResNetV2's `Concatenate([..., MaxPool(x)])` with `x` read by convs).
            for depth, tensor in enumerate(chain):
                if tensor in needs and tensor not in signed_refs:
                    readers = needs.pop(tensor)
                    for edge in readers:
                        edges[edge] = keys[index]
                    if depth and (graph.producer(chain[depth - 1]).index, 0) in readers:
                        del edges[(index, pos)]  # the layers between read the quantized tensor
                    break
    for index in complete:
        ref = (index, 0)
        if ref in needs and ref not in signed_refs:
            del needs[ref]
    for edge, key in list(edges.items()):
        if key in root and find(key) != key:
            edges[edge] = find(key)
    for key in list(root):
        if find(key) != key:
            del names[key]


def _folded_batchnorm(graph, call):
    """Whether a BatchNormalization call follows a layer with weights (OpenVINO folds it into that layer)."""
    producer = graph.producer(call.inputs[0])
    return producer is not None and _role(producer) in ("weights", "model")


def _read_in_int8(graph, weight_quantized, is_unified, is_ignored):
    """Indices of the calls whose result is read in int8.

    A result is followed through activations, BatchNormalization and precision-preserving layers
    (`_TOWARDS_INT8_ROLES`) to its readers: a weight-quantized layer, average pooling, a concatenation,
    a matmul, or a merge or pre-activation BatchNormalization whose own result is read in int8 (not a
    reader whose activation quantizers are out of scope). A merge asked to have a unified input scale (`is_unified`) counts as
    read in int8. Calls come after their producers in `graph.calls`, so one pass from the end decides.
    """
    found = set()

    def reads_int8(call):
        role = _role(call)
        if is_ignored(call):
            return False
        if role == "merge" or (role == "batchnorm" and not _folded_batchnorm(graph, call)):
            return call.index in found
        return id(call.layer) in weight_quantized or role in QUANTIZED_INPUT_ROLES

    for call in reversed(graph.calls):
        consumers = [graph.calls[index] for j in range(call.num_outputs) for index, _ in graph.consumers((call.index, j))]
        if (_role(call) == "merge" and is_unified(call)) or any(
            reads_int8(c) or (_role(c) in _TOWARDS_INT8_ROLES and c.index in found) for c in consumers
        ):
            found.add(call.index)
    return found


def _tensor_name(graph, ref):
    producer = graph.producer(ref)
    if producer is None:
        return graph.input_names[-1 - ref[0]]
    return producer.name if producer.num_outputs == 1 else f"{producer.name}_{ref[1]}"
