"""Latency and throughput of OpenVINO IR models, measured with interleaved repeated runs."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

__all__ = ["compile_ir", "benchmark_models", "runtime_precisions", "PRECISIONS"]

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
        `{name: {"latency_ms": median, "throughput": samples per second, "p90_ms": ...}}`.
    """
    requests = {name: compiled.create_infer_request() for name, compiled in models.items()}
    data = {
        name: (inputs or {}).get(name) or _random_inputs(compiled, batch_size)
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
        }
    return results
