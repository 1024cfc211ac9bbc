"""Language models in OpenVINO INT8: perplexity of KerasHub GPT-2 and Gemma, keras_compress QAT vs NNCF PTQ.

Two tiny KerasHub causal LMs with their own classes (`GPT2CausalLM` on a small `GPT2Backbone`,
`GemmaCausalLM` on a small `GemmaBackbone`; `preprocessor=None`), byte-level: token ids are the UTF-8
bytes of Python source (vocabulary 256). Trained from scratch on the standard library's own source
(`benchmarks/text_data.py`: asyncio, email, logging, argparse, json, http, unittest), evaluated on
held-out modules (tarfile, zipfile): a fixed set of evenly spaced windows.

For each model and seed, in one process:
- FP32: a few hundred Adam steps (linear warmup, cosine decay to 0); perplexity of the Keras model and
  of its IR (`kc.export`, INFERENCE_PRECISION_HINT=f32);
- NNCF PTQ INT8: `nncf.quantize(fp32_ir, model_type=nncf.ModelType.TRANSFORMER)`, training windows as
  calibration data, as the preset is and with SmoothQuant off;
- keras_compress QAT INT8: `kc.compress(model, "int8", dataset=training windows)` (the model keeps its
  class), a short fine-tuning with `ctrl.callbacks()`, `kc.export`.
Perplexity is exp of the mean next-token cross-entropy over every position of the held-out windows,
computed from the IR's logits (float64). INT8 IRs run with the CPU plugin's default precision hint (as
deployed). Agreement of each IR with the Keras model it came from (f32 hint, held-out windows): largest
and mean |logit difference| and the share of positions with the same top-1 token. The share of
MatMul/FullyConnected ops running u8/i8 in the CPU runtime model, and the latency of one forward pass
over a window at batch 1 (interleaved rounds), are given for the first seed's IRs.

Usage:
    python benchmarks/lm_perplexity.py [--quick] [--seeds 3] [--models gpt2 gemma] [--json out.json]
Needs the `bench` extra (nncf) and keras-hub.
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
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, compute_op_precisions  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from text_classification import nncf_transformer_ptq  # noqa: E402
from text_data import source_bytes  # noqa: E402

TRAIN_MODULES = ("asyncio", "email", "logging", "argparse", "json", "http", "unittest")
TEST_MODULES = ("tarfile", "zipfile")
LENGTH = 128
INT8 = ("u8", "i8")
IRS = ("FP32", "keras_compress INT8", "NNCF PTQ INT8", "NNCF PTQ INT8, SQ off")


def gpt2():
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=256, num_layers=2, num_heads=4, hidden_dim=64,
                                             intermediate_dim=256, dropout=0.0, max_sequence_length=LENGTH)  # fmt: skip
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def gemma():
    backbone = keras_hub.models.GemmaBackbone(vocabulary_size=256, num_layers=2, num_query_heads=4,
                                              num_key_value_heads=1, hidden_dim=64, intermediate_dim=256,
                                              head_dim=16)  # fmt: skip
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


MODELS = {"gpt2": ("GPT-2 (GPT2CausalLM)", gpt2), "gemma": ("Gemma (GemmaCausalLM)", gemma)}
DESCRIPTIONS = {
    "gpt2": "2 layers, 4 heads, hidden 64, MLP 256, learned positions, tied embedding",
    "gemma": "2 layers, 4 query heads / 1 key-value head of 16, hidden 64, gated MLP 256, RoPE, tied embedding",
}


# ------------------------------------------------------------------------------ data
def as_inputs(windows):
    """Windows of `LENGTH + 1` bytes -> (`{"token_ids", "padding_mask"}`, next-token labels)."""
    x = {"token_ids": windows[:, :-1].copy(), "padding_mask": np.ones((len(windows), LENGTH), "int32")}
    return x, windows[:, 1:].copy()


def random_windows(data, count, rng):
    starts = rng.integers(0, len(data) - LENGTH - 1, count)
    return as_inputs(np.stack([data[s : s + LENGTH + 1] for s in starts]))


def fixed_windows(data, count):
    """`count` evenly spaced windows over `data` (the same for every model and seed)."""
    starts = np.linspace(0, len(data) - LENGTH - 1, count).astype(int)
    return as_inputs(np.stack([data[s : s + LENGTH + 1] for s in starts]))


# ------------------------------------------------------------------------------ measurements
def perplexity(logits, labels):
    """exp of the mean next-token cross-entropy (float64)."""
    logits = logits.astype("float64")
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return float(np.exp(np.mean(log_z - picked)))


def keras_logits(model, x, batch_size=16):
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), "float32")


def ir_logits(xml, x, precision, batch_size=16):
    compiled = compile_ir(xml, precision)
    names = [port.get_any_name() for port in compiled.inputs]
    count = len(next(iter(x.values())))
    return np.concatenate(
        [compiled({n: x[n][i : i + batch_size] for n in names})[0] for i in range(0, count, batch_size)]
    ).astype("float32")


def agreement(reference, other):
    """Largest and mean |logit difference|, and the share of positions with the same top-1 token."""
    diff = np.abs(reference - other)
    return {"max": float(diff.max()), "mean": float(diff.mean()),
            "top1": float(np.mean(reference.argmax(-1) == other.argmax(-1)))}  # fmt: skip


def int8_share(xml):
    counts = compute_op_precisions(compile_ir(xml, "f32"), xml)
    int8 = sum(n for (_, precision), n in counts.items() if precision in INT8)
    return int8, sum(counts.values()), {f"{t}:{p}": n for (t, p), n in sorted(counts.items())}


def fit_steps(model, x, y, learning_rate, batch_size, callbacks=()):
    """One pass over the windows `(x, y)` (`len / batch_size` steps): Adam, 10% linear warmup to
    `learning_rate`, cosine decay to 0."""
    steps = len(y) // batch_size
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=learning_rate, warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[])  # fmt: skip
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks))


def run_model_seed(key, seed, data, workdir, settings, shares):
    """Trains, quantizes and measures one model for one seed."""
    train, (x_test, y_test) = data
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = MODELS[key][1]()
    batch = settings["batch_size"]
    x, y = random_windows(train, settings["fp32_steps"] * batch, rng)
    start = time.perf_counter()
    fit_steps(model, x, y, settings["fp32_lr"], batch)
    result = {"model": key, "seed": seed, "fp32_s": time.perf_counter() - start}
    fp32_logits = keras_logits(model, x_test)
    result["FP32 Keras"] = perplexity(fp32_logits, y_test)
    fp32_xml = kc.export(model, workdir / f"{key}{seed}_fp32")
    fp32_ir = ir_logits(fp32_xml, x_test, "f32")
    result["FP32 IR"] = perplexity(fp32_ir, y_test)
    result["FP32 IR (default hint)"] = perplexity(ir_logits(fp32_xml, x_test, "default"), y_test)
    result["agreement FP32"] = agreement(fp32_logits, fp32_ir)

    calibration, _ = random_windows(train, settings["calibration"], rng)
    nncf_xml = nncf_transformer_ptq(fp32_xml, calibration, workdir / f"{key}{seed}_nncf.xml")
    result["NNCF PTQ INT8 IR"] = perplexity(ir_logits(nncf_xml, x_test, "default"), y_test)
    nncf_sq_off_xml = nncf_transformer_ptq(fp32_xml, calibration, workdir / f"{key}{seed}_nncf_sq_off.xml", False)
    result["NNCF PTQ INT8 IR, SQ off"] = perplexity(ir_logits(nncf_sq_off_xml, x_test, "default"), y_test)

    start = time.perf_counter()
    compressed, ctrl = kc.compress(model, "int8", dataset=calibration, verbose=0)
    result["keras_compress INT8 Keras, before QAT"] = perplexity(keras_logits(compressed, x_test), y_test)
    x_qat, y_qat = random_windows(train, settings["qat_steps"] * batch, rng)
    fit_steps(compressed, x_qat, y_qat, settings["qat_lr"], batch, ctrl.callbacks())
    result["qat_s"] = time.perf_counter() - start
    compressed_logits = keras_logits(compressed, x_test)
    result["keras_compress INT8 Keras"] = perplexity(compressed_logits, y_test)
    kc_xml = kc.export(compressed, workdir / f"{key}{seed}_kc")
    result["keras_compress QAT INT8 IR"] = perplexity(ir_logits(kc_xml, x_test, "default"), y_test)
    result["agreement INT8"] = agreement(compressed_logits, ir_logits(kc_xml, x_test, "f32"))
    result["class"] = type(compressed).__name__
    if key not in shares:
        xmls = dict(zip(IRS, (fp32_xml, kc_xml, nncf_xml, nncf_sq_off_xml)))
        shares[key] = {label: int8_share(xml) for label, xml in xmls.items()}
        if settings["rounds"]:
            one = {name: array[:1] for name, array in x_test.items()}
            compiled = {f"{label} ({hint})": compile_ir(xml, hint) for label, xml in xmls.items() for hint in ("f32", "default")}
            times = benchmark_models(compiled, rounds=settings["rounds"], iterations=settings["iterations"], warmup=10,
                                     inputs={k: one for k in compiled})  # fmt: skip
            result["latency_ms"] = {k: v["latency_ms"] for k, v in times.items()}
            result["ratios"] = {}
            for k in compiled:
                hint = k.rsplit(" (", 1)[1][:-1]
                per_round = np.array(times[f"keras_compress INT8 ({hint})"]["rounds_ms"]) / np.array(times[k]["rounds_ms"])
                result["ratios"][k] = [float(np.median(per_round)), float(per_round.min()), float(per_round.max())]
    return result


# ------------------------------------------------------------------------------ report
COLUMNS = ("FP32 Keras", "FP32 IR", "NNCF PTQ INT8 IR", "NNCF PTQ INT8 IR, SQ off", "keras_compress QAT INT8 IR")


def perplexity_rows(results):
    def row(label, r):
        return [label, *(f"{r[c]:.4f}" for c in COLUMNS), *(f"{100 * (r[c] / r['FP32 Keras'] - 1):+.2f}" for c in COLUMNS[2:])]

    rows = []
    for key in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == key]
        rows += [row(f"{MODELS[key][0]}, seed {r['seed']}", r) for r in runs]
        rows.append(row(f"{MODELS[key][0]}, mean", {c: float(np.mean([r[c] for r in runs])) for c in COLUMNS}))
    return rows


PERPLEXITY_HEADER = ["model, seed", *COLUMNS, *(f"{c.replace(' INT8 IR', '')} vs FP32 (%)" for c in COLUMNS[2:])]


def agreement_rows(results):
    rows = []
    for r in results:
        a, b = r["agreement FP32"], r["agreement INT8"]
        rows.append([f"{MODELS[r['model']][0]}, seed {r['seed']}", f"{a['max']:.2e}", f"{a['mean']:.2e}",
                     f"{100 * a['top1']:.2f}", f"{b['max']:.3f}", f"{b['mean']:.4f}", f"{100 * b['top1']:.2f}"])  # fmt: skip
    return rows


AGREEMENT_HEADER = ["model, seed", "FP32 Keras vs IR: max |diff|", "mean |diff|", "top-1 same (%)",
                    "keras_compress Keras vs INT8 IR: max |diff|", "mean |diff|", "top-1 same (%)"]  # fmt: skip


def report(results, shares, settings, test_tokens):
    lines = [
        f"## Byte-level causal LMs: held-out perplexity, {len({r['seed'] for r in results})} seeds\n",
        f"Trained on {', '.join(TRAIN_MODULES)} ({settings['fp32_steps']} steps of {settings['batch_size']} "
        f"windows of {LENGTH} bytes, Adam {settings['fp32_lr']:g} with warmup and cosine decay); perplexity on "
        f"{settings['test_windows']} fixed windows of {', '.join(TEST_MODULES)} ({test_tokens} predicted bytes). "
        f"keras_compress: `kc.compress(model, \"int8\")` with {settings['calibration']} training windows, "
        f"{settings['qat_steps']} QAT steps at {settings['qat_lr']:g}; NNCF PTQ (`model_type=TRANSFORMER`) with the "
        "same calibration windows, as the preset is and with SmoothQuant off (SQ off). INT8 IRs at the default "
        "precision hint, the FP32 IR at f32.",
        "",
    ]
    for key in dict.fromkeys(r["model"] for r in results):
        lines.append(f"- {MODELS[key][0]}: {DESCRIPTIONS[key]}.")
    lines += ["", format_table(PERPLEXITY_HEADER, perplexity_rows(results)), ""]
    for key in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == key]
        lines.append(f"{MODELS[key][0]}: the compressed model is a `{runs[0]['class']}`; perplexity right after "
                     f"`kc.compress` (range init only) {np.mean([r['keras_compress INT8 Keras, before QAT'] for r in runs]):.4f}, "
                     f"after QAT (Keras) {np.mean([r['keras_compress INT8 Keras'] for r in runs]):.4f}; FP32 IR at the "
                     f"default hint {np.mean([r['FP32 IR (default hint)'] for r in runs]):.4f}; FP32 training "
                     f"{np.mean([r['fp32_s'] for r in runs]):.0f} s, compress + QAT {np.mean([r['qat_s'] for r in runs]):.0f} s "
                     "(mean per seed).")  # fmt: skip
    lines += ["", "## IR vs Keras agreement (logits on the held-out windows, f32 hint)\n",
              format_table(AGREEMENT_HEADER, agreement_rows(results)), ""]  # fmt: skip
    lines += ["## Runtime precision of MatMul/FullyConnected (first seed's IRs, CPU plugin)\n"]
    rows = [[MODELS[key][0], label, f"{s[0]}/{s[1]}", f"{100 * s[0] / max(s[1], 1):.0f}%",
             ", ".join(f"{k} {n}" for k, n in s[2].items())]
            for key, by_ir in shares.items() for label, s in by_ir.items()]  # fmt: skip
    lines.append(format_table(["model", "IR", "u8/i8 ops", "share", "ops by runtime precision"], rows))
    timed = [r for r in results if "latency_ms" in r]
    if timed:
        lines += ["", f"## Latency of one {LENGTH}-byte window, batch 1 (first seed's IRs; median of "
                      f"{settings['rounds']} interleaved rounds)\n"]  # fmt: skip
        rows = []
        for r in timed:
            for label in IRS:
                cells = [f"{r['latency_ms'][f'{label} ({hint})']:.3f}" for hint in ("f32", "default")]
                for hint in ("f32", "default"):
                    m, lo, hi = r["ratios"][f"{label} ({hint})"]
                    cells.append("" if label == "keras_compress INT8" else f"{m:.2f} ({lo:.2f}..{hi:.2f})")
                rows.append([MODELS[r["model"]][0], label, *cells])
        lines.append(format_table(["model", "IR", "ms (f32 hint)", "ms (default)", "keras_compress INT8 / this IR, "
                                   "f32 hint: median (min..max of rounds)", "default hint"], rows))  # fmt: skip
    return "\n".join(lines)


SETTINGS = {"fp32_steps": 400, "fp32_lr": 1e-2, "qat_steps": 100, "qat_lr": 1e-4, "batch_size": 32,
            "calibration": 64, "test_windows": 64, "rounds": 9, "iterations": 30}  # fmt: skip
QUICK = {"fp32_steps": 30, "qat_steps": 10, "calibration": 16, "test_windows": 16, "rounds": 3, "iterations": 10}


def run(quick=False, seeds=3, models=tuple(MODELS), workdir=None, json_path=None):
    """Runs the benchmark; returns the plain-text report (raw figures to `json_path`)."""
    settings = {**SETTINGS, **(QUICK if quick else {})}
    workdir = Path(workdir or tempfile.mkdtemp(prefix="kc-lm-perplexity-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = (source_bytes(TRAIN_MODULES), fixed_windows(source_bytes(TEST_MODULES), settings["test_windows"]))
    results, shares = [], {}
    for key in models:
        for seed in range(1 if quick else seeds):
            results.append(run_model_seed(key, seed, data, workdir, settings, shares))
            if json_path:
                Path(json_path).write_text(json.dumps({"results": results, "shares": shares}, indent=1))
    return report(results, shares, settings, data[1][1].size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, few steps and windows")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--workdir", help="where the IRs go (kept); default: a new temporary folder")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    print(run(args.quick, args.seeds, args.models, args.workdir, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
