"""Latency and throughput of OpenVINO IR models, measured with interleaved repeated runs."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

__all__ = ["compile_ir", "benchmark_models", "compute_op_precisions", "runtime_precisions", "PRECISIONS"]

#: "f32": INFERENCE_PRECISION_HINT=f32; "default": the plugin's default (bf16 on CPUs with
#: AVX512-BF16 for float models).
PRECISIONS = ("f32", "default")


def compile_ir(model, precision="default", device="CPU"):
    """Compiles an IR path (or `ov.Model`) for latency (one stream).

    Args:
        model: path to an `.xml`, or an `openvino.Model`.
        precision: "f32" or "default".
        device: OpenVINO device name.
    """
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: {precision!r}")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return ov.Core().compile_model(str(model) if not isinstance(model, ov.Model) else model, device, config)


def runtime_precisions(compiled, layer_types=("Convolution", "FullyConnected")):
    """Counts `(layerType, runtimePrecision)` of the compiled runtime model's ops.

    Returns:
        A `Counter` such as `{("Convolution", "u8"): 53, ("FullyConnected", "u8"): 1}`.
    """
    counts = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str) if "layerType" in info else ""
        if layer_type in layer_types:
            counts[(layer_type, info["runtimePrecision"].astype(str))] += 1
    return counts


#: IR operation types counted by `compute_op_precisions`, by the name they are counted under.
COMPUTE_OPS = {"Convolution": "Convolution", "GroupConvolution": "Convolution", "MatMul": "MatMul", "Einsum": "MatMul"}


def compute_op_precisions(compiled, model):
    """Counts the runtime precision of every Convolution / FullyConnected / MatMul of an IR.

    Like `runtime_precisions(compiled, ("Convolution", "FullyConnected", "MatMul"))`, plus the IR
    MatMuls that the CPU plugin fused into a `Subgraph` (its int8 multi-head-attention kernel runs
    `MatMul -> Softmax -> MatMul` as one node): each is counted as a MatMul with the subgraph's
    precision. (Compiling with `{"SNIPPETS_MODE": "DISABLE"}` shows them as MatMul nodes.)

    Args:
        compiled: the compiled model.
        model: the `openvino.Model` (or IR path) it was compiled from.

    Returns:
        A `Counter` such as `{("FullyConnected", "i8"): 13, ("MatMul", "u8"): 2, ...}`.
    """
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = ov.Core().read_model(str(model))
    types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()}
    counts = runtime_precisions(compiled, ("Convolution", "FullyConnected", "MatMul"))
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) != "Subgraph":
            continue
        names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        for name in names:
            if types.get(name) in COMPUTE_OPS:
                counts[(COMPUTE_OPS[types[name]], info["runtimePrecision"].astype(str))] += 1
    return counts


def _random_inputs(compiled, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {}
    for i, port in enumerate(compiled.inputs):
        shape = [batch_size if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
        if shape:
            shape[0] = batch_size
        dtype = port.get_element_type().to_dtype()
        if np.issubdtype(dtype, np.integer):
            inputs[i] = rng.integers(0, 10, shape).astype(dtype)
        else:
            inputs[i] = rng.uniform(0, 1, shape).astype(dtype)
    return inputs


def benchmark_models(models, batch_size=1, rounds=7, iterations=20, warmup=5, inputs=None):
    """Measures several compiled models with interleaved rounds, in one process.

    Each round runs `iterations` inferences of every model in turn, so slow drifts of the
    machine (other load, thermal) affect all models alike; the reported latency is the median
    over all rounds.

    Args:
        models: `{name: compiled_model}`.
        batch_size: batch size of the generated inputs (models with a dynamic batch).
        rounds: number of interleaved rounds.
        iterations: inferences per model per round.
        warmup: untimed inferences per model first.
        inputs: optional `{name: inputs}`; random inputs otherwise.

    Returns:
        `{name: {"latency_ms": median, "throughput": samples per second, "p90_ms": ..., "rounds_ms":
        [mean of each round]}}` (compare two models round by round: the ratio of their `rounds_ms`).
    """
    requests = {name: compiled.create_infer_request() for name, compiled in models.items()}
    data = {
        name: _random_inputs(compiled, batch_size) if (inputs or {}).get(name) is None else inputs[name]
        for name, compiled in models.items()
    }
    for name, request in requests.items():
        for _ in range(warmup):
            request.infer(data[name])
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, request in requests.items():
            for _ in range(iterations):
                start = time.perf_counter()
                request.infer(data[name])
                times[name].append(time.perf_counter() - start)
    results = {}
    for name, samples in times.items():
        samples = np.asarray(samples) * 1000.0
        median = float(np.median(samples))
        results[name] = {
            "latency_ms": median,
            "p90_ms": float(np.percentile(samples, 90)),
            "throughput": batch_size * 1000.0 / median,
            "rounds_ms": [float(r.mean()) for r in np.array_split(samples, rounds)],
        }
    return results
