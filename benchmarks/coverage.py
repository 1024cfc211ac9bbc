"""Coverage: every keras.applications family through keras_compress, INT8 in OpenVINO vs NNCF PTQ.

For the smallest model of each family of `keras.applications` (found by building every constructor
with `weights=None` and counting parameters), at 224x224, batch 1, in a process of its own:

- `kc.compress` with the packaged `int8` config on generated calibration images (each family's own
  `preprocess_input`), after BatchNorm statistics are estimated on them (a trained model's are never
  the initial 0/1, which fold into all-zero biases that OpenVINO drops);
- the share of the IR's Convolution / FullyConnected / MatMul ops that run u8/i8 in the CPU runtime;
- agreement of the INT8 IR with the compressed Keras model: the largest logit difference relative to
  the largest logit, and the top-1 agreement over generated images;
- latency in interleaved rounds: keras_compress INT8 against the FP32 IR with
  INFERENCE_PRECISION_HINT=f32 and with the plugin's default precision (bf16 on CPUs with
  AVX512-BF16), and against NNCF post-training INT8 (`nncf.quantize`) of the same FP32 IR with the
  same calibration samples;
- filter pruning (50% of the filters of every prunable group) and magnitude sparsity (50%): the
  FLOPs left after pruning, and what pruning leaves whole and why.

Usage:
    python benchmarks/coverage.py [--quick] [--models ResNet50 ...] [--json out.json]
Needs the `bench` extra (nncf).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent

#: Input sizes below 32 x 32 that a family refuses (`weights=None`).
MIN_SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def application_families():
    """`{family: [constructor names]}` for every model family in `keras.applications` (the module that
    defines the constructors: `mobilenet_v3` for MobileNetV3Small and MobileNetV3Large)."""
    import keras

    families = {}
    for name, constructor in sorted(vars(keras.applications).items()):
        if callable(constructor) and name[:1].isupper():
            families.setdefault(constructor.__module__.rsplit(".", 1)[-1], []).append(name)
    return families


def smallest_models():
    """`{family: (constructor name, parameters, constructors)}`: the constructor with the fewest
    parameters in each family."""
    import keras

    chosen = {}
    for family, names in application_families().items():
        sizes = {}
        for name in names:
            size = MIN_SIZES.get(name, 32)
            model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
            sizes[name] = model.count_params()
            keras.backend.clear_session()
        name = min(sizes, key=sizes.get)
        chosen[family] = (name, sizes[name], len(names))
    return chosen


# ------------------------------------------------------------------------------ one model
def measure(name, family, size, calib_count, rounds, iterations, workdir):
    """All the figures of one model (run in a process of its own)."""
    import keras
    import numpy as np

    import keras_compress as kc
    from int8_speed import nncf_ptq, realistic_biases, runtime_figures, runtime_figures_in_child
    from keras_compress.benchmark import compile_ir, compute_op_precisions
    from keras_compress.bn_adaptation import adapt_batchnorm

    rng = np.random.default_rng(0)
    module = getattr(keras.applications, family)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    images = module.preprocess_input(rng.uniform(0, 255, (calib_count + 8, size, size, 3)).astype("float32"))
    calib, test = images[:calib_count], images[calib_count:]
    realistic_biases(model)
    adapt_batchnorm(model, np.array_split(calib, max(1, calib_count // 8)), calib_count, verbose=0)
    config = kc.load_config("int8")
    config.compression[0].initializer.range.num_init_samples = calib_count
    config.compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_samples = calib_count
    start = time.perf_counter()
    compressed, ctrl = kc.compress(model, config, dataset=calib, verbose=0)
    result = {"model": name, "family": family, "compress_s": time.perf_counter() - start}
    result["skipped"] = ctrl.statistics().skipped()
    fp32_xml = kc.export(model, workdir / f"{name}_fp32")
    start = time.perf_counter()
    kc_xml = kc.export(compressed, workdir / f"{name}_kc")
    result["export_s"] = time.perf_counter() - start
    nncf_xml = nncf_ptq(fp32_xml, calib, workdir / f"{name}_nncf.xml")
    for label, xml in (("kc", kc_xml), ("NNCF", nncf_xml)):
        counts = compute_op_precisions(compile_ir(xml, "f32"), xml)
        result[f"{label}_counts"] = {f"{t}:{p}": n for (t, p), n in sorted(counts.items())}
        result[f"{label}_int8"] = sum(n for (_, p), n in counts.items() if p in ("u8", "i8"))
        result[f"{label}_ops"] = sum(counts.values())
    expected = compressed.predict(test, verbose=0)
    got = np.concatenate([compile_ir(kc_xml, "f32")(test[i : i + 1])[0] for i in range(len(test))])
    result["agreement"] = float(np.abs(got - expected).max() / (np.abs(expected).max() + 1e-12))
    result["top1"] = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    xmls = {"FP32": fp32_xml, "kc": kc_xml, "NNCF": nncf_xml}
    result["runtime"] = runtime_figures(xmls, test[:1], rounds, iterations)
    result["runtime_avx2"] = runtime_figures_in_child(xmls, test[:1], rounds, iterations, isa="AVX2")
    result.update(prune_and_sparsify(model, calib[:4]))
    return result


def prune_and_sparsify(model, calib):
    """Filter pruning at half the filters and magnitude sparsity at 50%: what they reach and leave."""
    import keras_compress as kc

    config = {"compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.5,
         "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
        {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5},
    ]}  # fmt: skip
    _, ctrl = kc.compress(model, config, dataset=calib, verbose=0)
    statistics = ctrl.statistics()
    figures = statistics.figures()
    reasons = Counter(reason.split(": ", 1)[1] for layer, reason in statistics.skipped().items()
                      if reason.startswith("filter_pruning"))  # fmt: skip
    return {
        "flops_ratio": figures["filter_pruning/flops_ratio"],
        "pruned_filters": figures["filter_pruning/pruned_filters"],
        "sparsity": figures["magnitude_sparsity/sparsity_level"],
        "pruning_left": dict(reasons.most_common()),
    }


# ------------------------------------------------------------------------------ driver
CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {here!r})
import coverage
result = coverage.measure({name!r}, {family!r}, {size}, {calib}, {rounds}, {iterations}, Path({workdir!r}))
print("RESULT " + json.dumps(result))
"""


def run(quick=False, models=None, json_path=None):
    """Measures every family's smallest model, each in a fresh process; returns the Markdown table."""
    calib, rounds, iterations, size = (8, 3, 10, 224) if quick else (32, 7, 20, 224)
    if models:  # the named constructors, in the order given (no need to build every model to find them)
        families = {name: (family, len(names)) for family, names in application_families().items() for name in names}
        chosen = {families[name][0]: (name, None, families[name][1]) for name in models}
    else:
        chosen = smallest_models()
    results, failures = [], []
    workdir = Path(tempfile.mkdtemp(prefix="kc-coverage-"))
    for family, (name, params, count) in chosen.items():
        code = CHILD.format(here=str(HERE), name=name, family=family, size=max(size, MIN_SIZES.get(name, 32)),
                            calib=calib, rounds=rounds, iterations=iterations, workdir=str(workdir))  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        lines = [line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            failures.append((name, out.returncode, out.stderr[-1500:]))
            continue
        result = json.loads(lines[-1])
        result.update(params=params, family_models=count)
        results.append(result)
        print(f"[coverage] {name}: done", file=sys.stderr, flush=True)
        if json_path:  # after every model: a long run that is stopped keeps what it measured
            Path(json_path).write_text(json.dumps({"results": results, "failures": failures}, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps({"results": results, "failures": failures}, indent=1))
    return table(results, failures)


HEADER = ["family (models)", "smallest model", "kc.compress s", "u8/i8 Conv+FC+MatMul (NNCF)", "IR vs Keras",
          "INT8 ms", "vs FP32 f32", "vs FP32 default", "pruning: FLOPs left", "sparsity"]  # fmt: skip
SPEED_HEADER = ["smallest model", "kc / NNCF f32 hint", "kc / NNCF default", "standalone FQ, Reorder (kc/NNCF)",
                "AVX2: kc / NNCF", "AVX2: standalone (kc/NNCF)", "AVX2 kernels"]  # fmt: skip


def table(results, failures):
    """The Markdown tables (coverage; keras_compress vs NNCF PTQ on both instruction sets) and the notes
    (what was left in float or unpruned, and why)."""
    from int8_speed import ratio_text, standalone_text
    from report import md_table

    rows, speed, notes = [], [], []
    for r in results:
        native, avx2 = r["runtime"], r["runtime_avx2"]
        ms = native["latency_ms"]
        kc_ms = ms["kc (default)"]
        rows.append([
            f"{r['family']} ({r['family_models']})", r["model"], f"{r['compress_s']:.1f}",
            f"{r['kc_int8']}/{r['kc_ops']} ({r['NNCF_int8']}/{r['NNCF_ops']})",
            f"{r['agreement']:.3f}, top-1 {r['top1']:.0%}", f"{kc_ms:.2f}",
            f"{ms['FP32 (f32)'] / kc_ms:.2f}x", f"{ms['FP32 (default)'] / kc_ms:.2f}x",
            f"{r['flops_ratio']:.0%}", f"{r['sparsity']:.0%}",
        ])  # fmt: skip
        speed.append([
            r["model"], ratio_text(native["ratios"]["f32"]), ratio_text(native["ratios"]["default"]),
            standalone_text(native), ratio_text(avx2["ratios"]["f32"]), standalone_text(avx2), "+".join(avx2["isa"]),
        ])  # fmt: skip
        float_ops = [f"{k} {n}" for k, n in r["kc_counts"].items() if not k.endswith(("u8", "i8"))]
        if float_ops:
            notes.append(f"{r['model']}: not int8: {', '.join(float_ops)}")
        quantization_skips = {k: v for k, v in r["skipped"].items() if v.startswith("quantization")}
        if quantization_skips:
            reasons = Counter(v.split(": ", 1)[1] for v in quantization_skips.values())
            notes.append(f"{r['model']}: left in float by quantization: "
                         + "; ".join(f"{n} x {reason}" for reason, n in reasons.items()))  # fmt: skip
        if r["pruning_left"]:
            notes.append(f"{r['model']}: filter pruning leaves whole: "
                         + "; ".join(f"{n} x {reason}" for reason, n in list(r["pruning_left"].items())[:4]))  # fmt: skip
    for name, code, err in failures:
        notes.append(f"{name}: FAILED (exit {code}): {err.strip().splitlines()[-1] if err.strip() else ''}")
    worst = {label: max((r[key]["ratios"][hint][0] for r in results), default=float("nan"))
             for label, key, hint in (("f32 hint", "runtime", "f32"), ("default", "runtime", "default"),
                                      ("AVX2", "runtime_avx2", "f32"))}  # fmt: skip
    return "\n".join([
        md_table(HEADER, rows), "", *[f"- {note}" for note in notes], "",
        "keras_compress INT8 latency over NNCF PTQ INT8 latency, batch 1: median (min..max) of the per-round "
        "ratios of interleaved rounds, with the CPU plugin's INFERENCE_PRECISION_HINT=f32 and its default, on "
        "this CPU, and with the plugin capped to AVX2 kernels (`ONEDNN_MAX_CPU_ISA=AVX2`, in a process of its "
        "own, f32 hint: an AVX2 CPU's default; the last column names the instruction sets of the int8 "
        "kernels). Standalone FakeQuantize and Reorder ops are counted in the runtime graph: keras_compress / NNCF.",
        "",
        md_table(SPEED_HEADER, speed), "",
        "Largest median kc / NNCF ratio over the families: " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items()),
    ])  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    parser.add_argument("--models", nargs="+", help="only these constructors")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    print(run(args.quick, args.models, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
