"""Filter pruning speed: OpenVINO IR latency of ResNet50 with half its FLOPs pruned away.

In one process (keras.applications ResNet50, weights=None, 224x224, batch 1):
  - FP32 IR of the unpruned model;
  - pruned IR: `filter_pruning` with `pruning_flops_target` (default 0.5), `kc.compress`,
    `ctrl.strip()` (pruned filters physically removed), `kc.export`;
  - INT8 IRs: configs/int8.json quantization alone, and after the same pruning.
Latencies are medians of interleaved repeated runs (`benchmark_models`), compared at the same
precision (INFERENCE_PRECISION_HINT=f32, and the CPU plugin's default, bf16 on CPUs with
AVX512-BF16). The interleaved measurement is repeated `--repeats` times and each model keeps its
lowest median: on a shared machine, other processes only ever add time.
Weights are random: importance ranking then picks arbitrary filters, which does not change speed.

Usage:
    python benchmarks/pruning_speed.py [--flops-target 0.5] [--rounds 9] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, runtime_precisions  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402


def pruning_section(flops_target):
    return {
        "algorithm": "filter_pruning",
        "params": {"schedule": "baseline", "pruning_flops_target": flops_target},
        "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
    }


def int8_section(num_calib):
    config = kc.load_config(resources.files("keras_compress") / "configs" / "int8.json").to_dict()
    section = config["compression"][0] if isinstance(config["compression"], list) else config["compression"]
    section["initializer"]["range"]["num_init_samples"] = num_calib
    section["initializer"]["batchnorm_adaptation"]["num_bn_adaptation_samples"] = 0
    return section


def build_irs(workdir, flops_target, num_calib):
    """Exports the four IRs; returns `{name: xml}` and `{name: (GFLOPs, Mparams)}`."""
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    calib = np.random.default_rng(0).uniform(-1, 1, (num_calib, 224, 224, 3)).astype("float32")
    figures, xmls = {}, {"FP32": kc.export(model, workdir / "fp32")}
    configs = {
        "pruned": [pruning_section(flops_target)],
        "INT8": [int8_section(num_calib)],
        "pruned INT8": [pruning_section(flops_target), int8_section(num_calib)],
    }
    for name, sections in configs.items():
        start = time.perf_counter()
        compressed, ctrl = kc.compress(model, {"compression": sections}, dataset=calib)
        stripped = ctrl.strip()
        xmls[name] = kc.export(stripped, workdir / name.replace(" ", "_"))
        stats = ctrl.statistics().figures()
        if "filter_pruning/flops" in stats:
            figures[name] = (stats["filter_pruning/flops"] / 1e9, stats["filter_pruning/params"] / 1e6)
        print(f"{name}: compress + strip + export {time.perf_counter() - start:.1f} s", file=sys.stderr)
    full = kc.compress(model, {"compression": [pruning_section(0.0)]})[1].statistics().figures()
    figures["FP32"] = figures["INT8"] = (full["filter_pruning/full_flops"] / 1e9, full["filter_pruning/full_params"] / 1e6)
    return xmls, figures


def measure(models, rounds, repeats):
    """`{name: latency ms}`: the lowest median over `repeats` interleaved measurements."""
    best = {}
    for _ in range(repeats):
        for name, r in benchmark_models(models, batch_size=1, rounds=rounds).items():
            best[name] = min(best.get(name, float("inf")), r["latency_ms"])
    return best


def precision_summary(compiled):
    counts = runtime_precisions(compiled)
    return ", ".join(f"{t[:4]} {p}:{n}" for (t, p), n in sorted(counts.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops-target", type=float, default=0.5, help="share of FLOPs to prune")
    parser.add_argument("--calib", type=int, default=32, help="calibration samples for INT8")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements; the lowest median counts")
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.calib, args.rounds, args.repeats = 8, 5, 2
    workdir = Path(tempfile.mkdtemp(prefix="kc-pruning-bench-"))
    xmls, figures = build_irs(workdir, args.flops_target, args.calib)

    rows = []
    for precision in ("f32", "default"):
        models = {name: compile_ir(xml, precision) for name, xml in xmls.items()}
        latency = measure(models, args.rounds, args.repeats)
        for name, ms in latency.items():
            gflops, mparams = figures[name]
            rows.append([
                name, precision, f"{gflops:.2f}", f"{mparams:.1f}", f"{ms:.2f}",
                f"{latency['FP32'] / ms:.2f}x", precision_summary(models[name]),
            ])  # fmt: skip
    print(f"## ResNet50, {args.flops_target:.0%} of FLOPs pruned: OpenVINO CPU latency, batch 1\n")
    print(format_table(
        ["IR", "precision hint", "GFLOPs", "Mparams", "latency ms", "vs FP32 (same hint)", "runtime precision"],
        rows,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
