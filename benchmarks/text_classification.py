"""Text classification with the keras.io Transformer: FP32 vs keras_compress QAT INT8 vs NNCF PTQ in OpenVINO.

The model is the keras.io example "Text classification with Transformer" as written there
(`TokenAndPositionEmbedding` and `TransformerBlock(layers.Layer)` composite layers, its sizes: embedding
32, 2 heads, feed-forward 32; `tests/composite_models.text_classifier`). The task is one the project can
make with no download: which of four standard-library packages (asyncio, email, tkinter, xml) a line of
Python source comes from; lines as word ids (a vocabulary of the training lines' most frequent words),
a random train/test split per seed (`benchmarks/text_data.py`).

For each seed, in one process:
- FP32: trained with Adam and a cosine-decayed learning rate; its Keras test accuracy and its IR's
  (`kc.export`, INFERENCE_PRECISION_HINT=f32);
- NNCF PTQ INT8: `nncf.quantize(fp32_ir, model_type=nncf.ModelType.TRANSFORMER)` with training lines, and
  the same with SmoothQuant off (the preset turns it on; on this model it costs NNCF about 50 points:
  see `docs/benchmarks.md`);
- keras_compress QAT INT8: `kc.compress(model, "int8", dataset=training lines)`, a short fine-tuning with
  `ctrl.callbacks()`, `kc.export`.
INT8 IRs are evaluated with the CPU plugin's default precision hint (as deployed).
Then, on the first seed's IRs: the share of MatMul/FullyConnected ops running u8/i8 in the runtime model
and the latency at batch 1 in interleaved rounds (FP32, keras_compress and NNCF IRs, both precision hints):
the keras_compress / NNCF ratio of every round, median and min..max.

Usage:
    python benchmarks/text_classification.py [--quick] [--seeds 3] [--workdir DIR] [--json out.json]
    python benchmarks/text_classification.py --latency-only --workdir DIR   # re-measure saved IRs
Needs the `bench` extra (nncf).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, compute_op_precisions  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
import composite_models  # noqa: E402
from int8_speed import nncf_ptq  # noqa: E402
from text_data import module_lines  # noqa: E402

MODULES = ("asyncio", "email", "tkinter", "xml")
#: The keras.io example's sizes; a line is at most `MAXLEN` words (99% of lines have fewer than 20).
MODEL = {"maxlen": 24, "vocab_size": 4000, "embed_dim": 32, "num_heads": 2, "ff_dim": 32}
INT8 = ("u8", "i8")
IRS = ("FP32", "keras_compress INT8", "NNCF PTQ INT8", "NNCF PTQ INT8, SQ off")


def nncf_transformer_ptq(fp32_xml, samples, out_xml, smooth_quant=True):
    """NNCF post-training quantization of an FP32 IR with `model_type=TRANSFORMER` (`int8_speed.nncf_ptq`),
    optionally with SmoothQuant off (`smooth_quant_alphas.matmul=-1`), which that preset turns on."""
    if smooth_quant:
        return nncf_ptq(fp32_xml, samples, out_xml, "TRANSFORMER")
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    if isinstance(samples, dict):
        count = len(next(iter(samples.values())))
        items = [{name: array[i : i + 1] for name, array in samples.items()} for i in range(count)]
    else:
        items = [s[None] for s in samples]
    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    model = ov.Core().read_model(str(fp32_xml))
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), model_type=nncf.ModelType.TRANSFORMER,
                              advanced_parameters=advanced)  # fmt: skip
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml


def load_task(seed, per_class):
    return module_lines(MODULES, maxlen=MODEL["maxlen"], per_class=per_class, vocabulary=MODEL["vocab_size"], seed=seed)


def compile_and_fit(model, x, y, learning_rate, epochs, batch_size, callbacks=()):
    """Adam with a learning rate decayed to 0 over the run (cosine), from-logits cross-entropy."""
    steps = epochs * int(np.ceil(len(x) / batch_size))
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=list(callbacks))


def ir_accuracy(xml, x, y, precision, batch_size=256):
    compiled = compile_ir(xml, precision)
    predictions = [compiled(x[i : i + batch_size])[0].argmax(-1) for i in range(0, len(x), batch_size)]
    return float(np.mean(np.concatenate(predictions) == y))


def run_seed(seed, workdir, settings):
    """Trains, quantizes and evaluates one seed; returns its accuracies, times and IR paths."""
    keras.utils.set_random_seed(seed)
    (x, y), (x_test, y_test) = load_task(seed, settings["per_class"])
    model = composite_models.text_classifier(**MODEL, classes=len(MODULES))
    start = time.perf_counter()
    compile_and_fit(model, x, y, 1e-3, settings["fp32_epochs"], 64)
    fp32_s = time.perf_counter() - start
    result = {"seed": seed, "train": len(y), "test": len(y_test), "fp32_s": fp32_s}
    result["FP32 Keras"] = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    fp32_xml = kc.export(model, workdir / f"seed{seed}_fp32")
    result["FP32 IR"] = ir_accuracy(fp32_xml, x_test, y_test, "f32")

    calibration = x[: settings["calibration"]]
    nncf_xml = nncf_transformer_ptq(fp32_xml, calibration, workdir / f"seed{seed}_nncf.xml")
    result["NNCF PTQ INT8 IR"] = ir_accuracy(nncf_xml, x_test, y_test, "default")
    nncf_sq_off_xml = nncf_transformer_ptq(fp32_xml, calibration, workdir / f"seed{seed}_nncf_sq_off.xml", False)
    result["NNCF PTQ INT8 IR, SQ off"] = ir_accuracy(nncf_sq_off_xml, x_test, y_test, "default")

    start = time.perf_counter()
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    compressed.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result["keras_compress INT8 Keras, before QAT"] = float(compressed.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    compile_and_fit(compressed, x, y, settings["qat_lr"], settings["qat_epochs"], 64, ctrl.callbacks())
    result["qat_s"] = time.perf_counter() - start
    result["keras_compress INT8 Keras"] = float(compressed.evaluate(x_test, y_test, batch_size=256, verbose=0)[1])
    kc_xml = kc.export(compressed, workdir / f"seed{seed}_kc")
    result["keras_compress QAT INT8 IR"] = ir_accuracy(kc_xml, x_test, y_test, "default")
    result["xml"] = {"FP32": str(fp32_xml), "keras_compress INT8": str(kc_xml), "NNCF PTQ INT8": str(nncf_xml),
                     "NNCF PTQ INT8, SQ off": str(nncf_sq_off_xml)}  # fmt: skip
    np.save(workdir / f"seed{seed}_sample.npy", x_test[:1])
    return result


def int8_share(xml):
    """`(int8 ops, all ops, {"Type:precision": n})` of the IR's MatMul/FullyConnected/Convolution ops in
    the CPU runtime model (f32 hint; MatMuls fused into the attention kernel included)."""
    counts = compute_op_precisions(compile_ir(xml, "f32"), xml)
    int8 = sum(n for (_, precision), n in counts.items() if precision in INT8)
    return int8, sum(counts.values()), {f"{t}:{p}": n for (t, p), n in sorted(counts.items())}


def measure_latency(xmls, sample, rounds, iterations):
    """Batch-1 latency of every IR under both precision hints, interleaved; per-round kc/NNCF ratios."""
    compiled = {f"{label} ({hint})": compile_ir(xml, hint) for label, xml in xmls.items() for hint in ("f32", "default")}
    times = benchmark_models(compiled, rounds=rounds, iterations=iterations, warmup=50, inputs={k: sample for k in compiled})
    result = {"latency_ms": {k: v["latency_ms"] for k, v in times.items()}, "ratios": {}}
    for label in IRS:
        for hint in ("f32", "default"):
            per_round = np.array(times[f"keras_compress INT8 ({hint})"]["rounds_ms"]) / np.array(
                times[f"{label} ({hint})"]["rounds_ms"]
            )
            result["ratios"][f"{label} ({hint})"] = [float(np.median(per_round)), float(per_round.min()),
                                                      float(per_round.max())]  # fmt: skip
    return result


ACCURACY_COLUMNS = ("FP32 Keras", "FP32 IR", "NNCF PTQ INT8 IR", "NNCF PTQ INT8 IR, SQ off", "keras_compress QAT INT8 IR")


def accuracy_table(seeds):
    def row(label, r):
        return [label, *(f"{100 * r[c]:.2f}" for c in ACCURACY_COLUMNS),
                *(f"{100 * (r[c] - r['FP32 Keras']):+.2f}" for c in ACCURACY_COLUMNS[2:])]  # fmt: skip

    rows = [row(str(r["seed"]), r) for r in seeds]
    rows.append(row("mean", {c: float(np.mean([r[c] for r in seeds])) for c in ACCURACY_COLUMNS}))
    header = ["seed", *(f"{c} (%)" for c in ACCURACY_COLUMNS),
              *(f"{c.replace(' INT8 IR', '')} - FP32 (points)" for c in ACCURACY_COLUMNS[2:])]  # fmt: skip
    return header, rows


def report(seeds, shares, latency, settings):
    lines = [
        f"## keras.io text classifier: test accuracy, {len(seeds)} seeds\n",
        f"Task: which of {', '.join(MODULES)} a line of standard-library source comes from; "
        f"{seeds[0]['train']} train / {seeds[0]['test']} test lines per seed (own split), "
        f"{MODEL['maxlen']} word ids of a {MODEL['vocab_size']}-word vocabulary. FP32: {settings['fp32_epochs']} "
        f"epochs, Adam 1e-3 cosine-decayed; keras_compress: `kc.compress(model, \"int8\")`, "
        f"{settings['qat_epochs']} epochs of QAT at {settings['qat_lr']:g} cosine-decayed; NNCF PTQ "
        f"(`model_type=TRANSFORMER`) with {settings['calibration']} training lines, as the preset is and with "
        "SmoothQuant off (SQ off). INT8 IRs at the default precision hint, the FP32 IR at f32.\n",
    ]
    header, rows = accuracy_table(seeds)
    lines += [format_table(header, rows), ""]
    before = np.mean([r["keras_compress INT8 Keras, before QAT"] for r in seeds])
    after = np.mean([r["keras_compress INT8 Keras"] for r in seeds])
    lines.append(f"keras_compress Keras model: {100 * before:.2f}% after `kc.compress` (range init only), "
                 f"{100 * after:.2f}% after QAT (mean); FP32 training {np.mean([r['fp32_s'] for r in seeds]):.0f} s, "
                 f"compress + QAT {np.mean([r['qat_s'] for r in seeds]):.0f} s per seed.")  # fmt: skip
    if shares:
        lines += ["", "## Runtime precision of MatMul/FullyConnected (seed 0 IRs, CPU plugin)\n"]
        rows = [[label, f"{s[0]}/{s[1]}", f"{100 * s[0] / max(s[1], 1):.0f}%", ", ".join(f"{k} {n}" for k, n in s[2].items())]
                for label, s in shares.items()]  # fmt: skip
        lines += [format_table(["IR", "u8/i8 ops", "share", "ops by runtime precision"], rows)]
    if latency:
        lines += ["", f"## Latency, batch 1 (seed 0 IRs; median of {settings['rounds']} interleaved rounds)\n"]
        rows = []
        for label in IRS:
            ms, ratios = latency["latency_ms"], latency["ratios"]
            cells = [f"{ms[f'{label} (f32)']:.3f}", f"{ms[f'{label} (default)']:.3f}"]
            for hint in ("f32", "default"):
                m, lo, hi = ratios[f"{label} ({hint})"]
                cells.append("" if label == "keras_compress INT8" else f"{m:.2f} ({lo:.2f}..{hi:.2f})")
            rows.append([label, *cells])
        lines += [format_table(["IR", "ms (f32 hint)", "ms (default)", "keras_compress INT8 / this IR, f32 hint: "
                                "median (min..max of rounds)", "default hint"], rows)]  # fmt: skip
    return "\n".join(lines)


SETTINGS = {"per_class": 4000, "fp32_epochs": 6, "qat_epochs": 2, "qat_lr": 3e-5, "calibration": 300,
            "rounds": 15, "iterations": 300}  # fmt: skip
QUICK = {"per_class": 800, "fp32_epochs": 2, "qat_epochs": 1, "rounds": 3, "iterations": 50}


def run(quick=False, seeds=3, workdir=None, json_path=None, latency_only=False):
    """Runs the benchmark; returns the plain-text report (raw figures to `json_path`)."""
    settings = {**SETTINGS, **(QUICK if quick else {})}
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kc-text-classification-"))
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "accuracy.json"
    if latency_only:
        results = json.loads(saved.read_text())
    else:
        results = [run_seed(seed, workdir, settings) for seed in range(1 if quick else seeds)]
        saved.write_text(json.dumps(results, indent=1))
    xmls = results[0]["xml"]
    shares = {label: int8_share(xml) for label, xml in xmls.items()}
    sample = np.load(workdir / f"seed{results[0]['seed']}_sample.npy")
    latency = measure_latency(xmls, sample, settings["rounds"], settings["iterations"])
    if json_path:
        Path(json_path).write_text(json.dumps({"seeds": results, "shares": shares, "latency": latency}, indent=1))
    return report(results, shares, latency, settings)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, less data, fewer epochs and rounds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workdir", help="where the IRs go (kept); default: a new temporary folder")
    parser.add_argument("--latency-only", action="store_true", help="re-measure int8 shares and latency of the IRs in --workdir")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.latency_only and not args.workdir:
        parser.error("--latency-only needs --workdir")
    print(run(args.quick, args.seeds, args.workdir, args.json, args.latency_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
