"""KerasHub: every model family through keras_compress, INT8 in OpenVINO vs NNCF PTQ.

For each KerasHub family that goes through the whole path in tests/test_keras_hub_families.py, the
backbone of its small config (KerasHub's own test fixture, tests/keras_hub_backbones.py), batch 1, in a
process of its own:

- `kc.compress` with the packaged `int8` config, ranges from the fixture's input batch;
- the share of the IR's Convolution / FullyConnected / MatMul ops that run u8/i8 in the CPU runtime
  (MatMuls fused into the plugin's attention kernel included), for keras_compress and for NNCF;
- agreement of the INT8 IR with the compressed Keras model: the largest difference over the float
  outputs relative to the largest output;
- latency in interleaved rounds: keras_compress INT8 against the FP32 IR with
  INFERENCE_PRECISION_HINT=f32, and against NNCF post-training INT8 (`nncf.quantize`, with
  `model_type=TRANSFORMER` for an IR with a Softmax) of the same FP32 IR with the same samples, both
  at the plugin's default precision. Ratios are per round: median (min..max).

The configs are KerasHub's test configs: tiny (hidden sizes of 2 to 64), so latencies are dominated by
per-op overhead, not arithmetic; they show where each placement leaves float ops and extra
conversions, not the speedup of a full-size model (benchmarks/transformers.py measures that).

Usage:
    python benchmarks/hub.py [--quick] [--families gpt2 bert ...] [--json out.json]
Needs the `bench` extra (nncf) and keras-hub.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(TESTS))


# ------------------------------------------------------------------------------ one family
def ir_feed(compiled, x):
    """`{input index: array}` for a compiled IR from a Keras input batch (matched by name for dicts)."""
    import keras

    named = x if isinstance(x, dict) else {}
    flat = keras.tree.flatten(x)
    feed = {}
    for i, port in enumerate(compiled.inputs):
        match = next((named[name] for name in port.get_names() if name in named), None)
        feed[i] = match if match is not None else flat[i]
    return feed


def ir_names(compiled, x):
    """`{IR input name: array}` (the form NNCF's dataset items take)."""
    return {port.get_any_name(): array for port, array in zip(compiled.inputs, ir_feed(compiled, x).values())}


def measure(family, rounds, iterations, workdir):
    """All the figures of one family (run in a process of its own)."""
    import keras
    import numpy as np
    import openvino as ov

    import keras_compress as kc
    from int8_speed import nncf_ptq
    from keras_compress.benchmark import benchmark_models, compile_ir, compute_op_precisions
    from keras_hub_backbones import CASES
    from keras_hub_child import relative_difference, to_numpy

    keras.utils.set_random_seed(0)
    cls, init_kwargs, input_data = CASES[family]()
    x = to_numpy(input_data)
    count = len(keras.tree.flatten(x)[0])
    one = keras.tree.map_structure(lambda a: a[:1], x)
    model = cls(**init_kwargs)
    config = kc.load_config("int8")
    config.compression[0].initializer.range.num_init_samples = count
    config.compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_samples = count
    start = time.perf_counter()
    compressed, _ = kc.compress(model, config, dataset=x, verbose=0)
    result = {"family": family, "class": cls.__name__, "parameters": int(model.count_params()),
              "compress_s": time.perf_counter() - start}  # fmt: skip
    fp32_xml = kc.export(model, workdir / f"{family}_fp32")
    kc_xml = kc.export(compressed, workdir / f"{family}_kc")
    fp32 = compile_ir(fp32_xml, "f32")
    transformer = any(op.get_type_name() == "Softmax" for op in ov.Core().read_model(str(fp32_xml)).get_ops())
    result["model_type"] = "TRANSFORMER" if transformer else "default"
    samples = {name: np.asarray(array) for name, array in ir_names(fp32, x).items()}
    nncf_xml = nncf_ptq(fp32_xml, samples, workdir / f"{family}_nncf.xml", "TRANSFORMER" if transformer else None)
    for label, xml in (("kc", kc_xml), ("nncf", nncf_xml)):
        counts = compute_op_precisions(compile_ir(xml, "f32"), xml)
        result[f"{label}_counts"] = {f"{t}:{p}": n for (t, p), n in sorted(counts.items())}
        result[f"{label}_int8"] = sum(n for (_, p), n in counts.items() if p in ("u8", "i8"))
        result[f"{label}_ops"] = sum(counts.values())
    kc_f32 = compile_ir(kc_xml, "f32")
    expected = to_numpy(compressed.predict(one, verbose=0))
    got = kc_f32(ir_feed(kc_f32, one))
    outputs = [got[port] for port in kc_f32.outputs]
    flat = keras.tree.flatten(expected)
    if isinstance(expected, dict):  # matched by name, as the child of the families test does
        by_name = {name: got[port] for port in kc_f32.outputs for name in port.get_names()}
        outputs = [by_name[key] for key in sorted(expected)]
    result["agreement"] = relative_difference(outputs, flat)
    compiled = {
        "FP32 (f32)": fp32,
        "kc INT8": compile_ir(kc_xml, "default"),
        "NNCF INT8": compile_ir(nncf_xml, "default"),
    }
    inputs = {name: ir_feed(c, one) for name, c in compiled.items()}
    times = benchmark_models(compiled, rounds=rounds, iterations=iterations, warmup=10, inputs=inputs)
    result["latency_ms"] = {name: t["latency_ms"] for name, t in times.items()}
    for other, key in (("FP32 (f32)", "vs_fp32"), ("NNCF INT8", "vs_nncf")):
        ratio = np.array(times["kc INT8"]["rounds_ms"]) / np.array(times[other]["rounds_ms"])
        result[key] = [float(np.median(ratio)), float(ratio.min()), float(ratio.max())]
    return result


# ------------------------------------------------------------------------------ driver
def families_to_run():
    """The families the families test runs through the whole path (the others are listed there)."""
    from keras_hub_runner import FAILING, run_list

    return [family for family in run_list() if family not in FAILING]


def run(quick=False, families=None, json_path=None):
    """Measures every family, each in a fresh process; returns the Markdown table and notes."""
    rounds, iterations = (3, 10) if quick else (9, 30)
    workdir = Path(tempfile.mkdtemp(prefix="kc-hub-"))
    results, failures = [], []
    from keras_hub_runner import child_env

    env = child_env()  # this checkout importable, TensorFlow quiet, OpenVINO telemetry off
    for family in families or families_to_run():
        command = [sys.executable, __file__, "--child", family, "--workdir", str(workdir),
                   "--rounds", str(rounds), "--iterations", str(iterations)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            failures.append((family, out.returncode, out.stderr[-1500:]))
            print(f"[hub] {family}: FAILED", file=sys.stderr, flush=True)
            continue
        results.append(json.loads(lines[-1]))
        print(f"[hub] {family}: done", file=sys.stderr, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"results": results, "failures": failures}, indent=1))
    return report(results, failures)


HEADER = ["family", "backbone", "parameters", "u8/i8 Conv+FC+MatMul: kc (NNCF)", "IR vs Keras", "kc INT8 ms",
          "kc / FP32 f32", "kc / NNCF PTQ", "NNCF preset"]  # fmt: skip


def ratio_text(values):
    median, low, high = values
    return f"{median:.2f} ({low:.2f}..{high:.2f})"


def summary(results):
    """The figures over all families: shares, and the medians of the per-family median ratios."""
    import numpy as np

    kc_share = sum(r["kc_int8"] for r in results) / max(sum(r["kc_ops"] for r in results), 1)
    nncf_share = sum(r["nncf_int8"] for r in results) / max(sum(r["nncf_ops"] for r in results), 1)
    full = sum(r["kc_int8"] >= 0.95 * r["kc_ops"] for r in results)
    vs_nncf = np.array([r["vs_nncf"][0] for r in results])
    vs_fp32 = np.array([r["vs_fp32"][0] for r in results])
    return {
        "families": len(results),
        "at_least_95_percent_int8": int(full),
        "kc_int8_share": kc_share,
        "nncf_int8_share": nncf_share,
        "vs_nncf_median": float(np.median(vs_nncf)) if len(vs_nncf) else float("nan"),
        "vs_nncf_range": [float(vs_nncf.min()), float(vs_nncf.max())] if len(vs_nncf) else [],
        "vs_nncf_at_most_1": int((vs_nncf <= 1.0).sum()),
        "vs_fp32_median": float(np.median(vs_fp32)) if len(vs_fp32) else float("nan"),
    }


def report(results, failures):
    from report import md_table

    rows = [
        [r["family"], r["class"], f"{r['parameters']:,}", f"{r['kc_int8']}/{r['kc_ops']} ({r['nncf_int8']}/{r['nncf_ops']})",
         f"{r['agreement']:.3f}", f"{r['latency_ms']['kc INT8']:.3f}", ratio_text(r["vs_fp32"]),
         ratio_text(r["vs_nncf"]), r["model_type"]]
        for r in results
    ]  # fmt: skip
    s = summary(results)
    lines = [
        md_table(HEADER, rows),
        "",
        f"- {s['at_least_95_percent_int8']} of {s['families']} families run at least 95% of their Convolution / "
        f"FullyConnected / MatMul ops in u8/i8 (all families: {s['kc_int8_share']:.1%} of the ops; NNCF PTQ of "
        f"the same IRs: {s['nncf_int8_share']:.1%}).",
        f"- keras_compress INT8 / NNCF PTQ INT8 latency: median over families of the per-family median ratio "
        f"{s['vs_nncf_median']:.2f} (per-family medians {s['vs_nncf_range'][0]:.2f}..{s['vs_nncf_range'][1]:.2f}; "
        f"{s['vs_nncf_at_most_1']} of {s['families']} at most 1.0). Against the FP32 IR (f32 hint): "
        f"{s['vs_fp32_median']:.2f}." if results else "- no family measured",
    ]
    for family, code, tail in failures:
        lines.append(f"- {family}: the benchmark failed (exit {code}): `{tail.strip().splitlines()[-1] if tail.strip() else ''}`")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--families", nargs="+", help="only these families")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=9, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.rounds, args.iterations, Path(args.workdir))), flush=True)
        return 0
    print(run(args.quick, args.families, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
