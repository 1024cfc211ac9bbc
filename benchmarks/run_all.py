"""Runs the benchmarks and writes docs/benchmarks.md (tables, machine, versions).

    python benchmarks/run_all.py [--quick] [--sections int8 transformers ...] [--output docs/benchmarks.md]

Sections (each runs in its own subprocess, so one's memory and threads do not bleed into
the next; `--sections` reruns those and keeps the page's other sections as they were measured):
  tfmot         keras_compress QAT (Keras 3) vs tfmot QAT (tf_keras): accuracy, train-step
                overhead, INT8 IR latency (benchmarks/tfmot_compare.py)
  qat           QAT / FP32 train-step ratios of keras_compress and tfmot on ResNet50, MobileNetV2 and a
                BERT-style encoder, batch 8 and 32 (benchmarks/qat_overhead.py)
  int8          INT8 vs FP32 (f32 hint and default) vs NNCF post-training INT8 for ResNet50,
                MobileNetV2, EfficientNetB0, and digits accuracy (benchmarks/int8_speed.py)
  transformers  BERT- and ViT-style models: int8 share, latency vs NNCF PTQ (TRANSFORMER preset),
                a digits ViT's QAT accuracy (benchmarks/transformers.py)
  text          the keras.io text-classification Transformer on standard-library lines: FP32, NNCF PTQ
                and keras_compress QAT INT8 IR accuracy (3 seeds), int8 share, latency vs NNCF
                (benchmarks/text_classification.py)
  lm            tiny KerasHub GPT-2 and Gemma causal LMs on standard-library bytes: held-out perplexity of
                FP32, NNCF PTQ and keras_compress QAT INT8 IRs (3 seeds), IR-vs-Keras agreement
                (benchmarks/lm_perplexity.py)
  hub           KerasHub families (their small test configs): int8 share, IR agreement, latency vs NNCF PTQ
                (benchmarks/hub.py)
  coverage      the smallest model of every keras.applications family (benchmarks/coverage.py)
  pruning       filter-pruning speedups (benchmarks/pruning_speed.py)
  sparsity      sparsity levels reached by magnitude, RB and movement sparsity on digits
  memory        time and peak RSS of kc.compress (range init + BN adaptation) on ResNet50
  subclassed    a subclassed model vs the same Functional model (benchmarks/subclassed.py)
  backends      TensorFlow, JAX and PyTorch: train step FP32/QAT, compress and export time, INT8 IR
                accuracy, DataParallel on two JAX host devices (benchmarks/backends.py)
Needs the `bench` and `demo` extras (and keras-hub for `lm`).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import ROOT, git_commit, machine_markdown, md_table  # noqa: E402

SECTIONS = ("tfmot", "qat", "int8", "transformers", "text", "lm", "hub", "coverage", "pruning", "sparsity",
            "memory", "subclassed", "backends")  # fmt: skip
APPLICATIONS = ("ResNet50", "MobileNetV2", "EfficientNetB0")


# ------------------------------------------------------------------------------ sections
def section_tfmot(quick):
    import tfmot_compare

    intro = (
        "Same architecture, same FP32 weights, same data, same fine-tuning (Adam 1e-4, batch 64) "
        "on both sides. tfmot runs on legacy `tf_keras` in a subprocess with "
        "`TF_USE_LEGACY_KERAS=1` (its only supported setup); keras_compress on Keras 3. "
        "keras_compress: `kc.compress` with 8-bit per-channel symmetric weights, range init and "
        "BN adaptation on the training data. tfmot: `quantize_model` with its default 8-bit "
        "scheme (it initializes ranges during the first training steps, hence its accuracy "
        "right after quantization). Both INT8 models are converted with `ov.convert_model` from "
        "a SavedModel and measured in one process with the FP32 IR, interleaved. Goal: "
        "keras_compress at least as accurate, no slower to train, at least as fast in OpenVINO."
    )
    return intro + "\n\n" + tfmot_compare.run(quick=quick)


def section_int8(quick):
    import int8_speed

    calib, rounds, train_batch, seeds = (16, 3, 4, 2) if quick else (64, 9, 8, 5)
    epochs = 4
    workdir = Path(tempfile.mkdtemp(prefix="kc-int8-bench-"))
    rows, notes = [], []
    for name in APPLICATIONS:
        r, note = int8_speed.bench_application(name, workdir, calib, rounds, train_batch)
        rows += r
        notes.append(note)
    digits = int8_speed.digits_accuracy(workdir, epochs, seeds)
    return "\n".join(
        [
            "`keras.applications` models with `weights=None` at 224x224, batch 1, with BatchNorm "
            "statistics estimated on the calibration data first (as a trained model has them: the "
            "initial mean 0 / variance 1 fold into all-zero conv biases that OpenVINO drops, which "
            "would favour whichever IR keeps them). keras_compress "
            f"INT8: `kc.compress` with `configs/int8.json` ({calib} generated calibration samples), "
            "exported with `kc.export`, no fine-tuning (speed only). NNCF PTQ: `nncf.quantize` "
            "(OpenVINO backend) of the same FP32 IR with the same samples. Latency is the median of "
            f"{rounds} interleaved rounds; speedups are against the FP32 IR with "
            "`INFERENCE_PRECISION_HINT=f32` and with the CPU plugin's default precision (bf16 "
            "where the CPU has AVX512-BF16).",
            "",
            md_table(int8_speed.HEADER, rows),
            "",
            "Standalone FQ, Reorder: FakeQuantize and Reorder ops left on their own in the runtime graph (default "
            "hint). kc / NNCF: keras_compress INT8 latency over NNCF PTQ INT8 latency, median (min..max) of the "
            "per-round ratios, with the f32 hint, the default hint, and with the CPU plugin capped to AVX2 "
            "kernels (`ONEDNN_MAX_CPU_ISA=AVX2`, f32 hint, in a process of its own).",
            "",
            *[f"- {note}" for note in notes],
            "",
            f"#### Digits CNN accuracy (load_digits test split, mean of {seeds} splits and initializations)",
            "",
            f"FP32 trained 30 epochs; keras_compress fine-tuned {epochs} epochs of 8-bit QAT "
            "(`configs/int8.json`); NNCF PTQ of the FP32 IR with 300 training images.",
            "",
            md_table(["IR", "mean accuracy", "min..max", "vs FP32 (points)"], digits),
        ]
    )


def script_section(name, quick):
    """The output of `benchmarks/<name>.py [--quick]` as Markdown (its tables become Markdown tables)."""
    command = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if quick else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"benchmarks/{name}.py failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return f"Output of `python benchmarks/{name}.py{' --quick' if quick else ''}`:\n\n" + text_to_markdown(result.stdout)


def text_to_markdown(text):
    """Plain-text script output to Markdown: `format_table` tables become Markdown tables,
    `## ` headings become `### `, progress bars and terminal colours are dropped."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in text.splitlines()]
    lines = [line for line in lines if "━" not in line]
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and " | " in line and re.fullmatch(r"-+(\+-+)+", lines[i + 1]):
            header = [c.strip() for c in line.split(" | ")]
            rows, i = [], i + 2
            while i < len(lines) and " | " in lines[i]:
                # A row whose last cell is empty ends in "|" (lines are right-stripped).
                rows.append([c.strip() for c in (lines[i] + " ").split(" | ")])
                i += 1
            out += ["", md_table(header, rows), ""]
            continue
        out.append("#" + line if line.startswith("## ") else line)
        i += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def section_sparsity(quick):
    """Magnitude, RB (digits CNN) and movement (digits MLP) sparsity: level reached, accuracy."""
    import keras

    import keras_compress as kc
    from keras_compress.demo import build_digits_cnn, load_digits_split

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    no_bn = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}

    def train_fp32(model, x, y, epochs):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
        return model

    def mlp():
        inputs = keras.Input((64,))
        h = keras.layers.Dense(128, activation="relu")(inputs)
        h = keras.layers.Dense(64, activation="relu")(h)
        return keras.Model(inputs, keras.layers.Dense(10)(h))

    schedule = {"schedule": "polynomial", "sparsity_target_epoch": 5, "sparsity_freeze_epoch": 8, "power": 1}
    runs = [
        ("magnitude_sparsity", "digits CNN", 0.7, 10,
         {"algorithm": "magnitude_sparsity", "params": {**schedule, "sparsity_target": 0.7}, "initializer": no_bn}),
        ("magnitude_sparsity + quantization", "digits CNN", 0.7, 10,
         [{"algorithm": "magnitude_sparsity", "params": {**schedule, "sparsity_target": 0.7}, "initializer": no_bn},
          {"algorithm": "quantization", "weights": {"per_channel": True}}]),
        ("rb_sparsity", "digits CNN", 0.5, 10,
         {"algorithm": "rb_sparsity", "params": {**schedule, "sparsity_target": 0.5, "sparsity_freeze_epoch": 20},
          "initializer": no_bn}),
        ("movement_sparsity", "digits MLP 64-128-64-10", 0.5, 12,
         {"algorithm": "movement_sparsity", "initializer": no_bn,
          "params": {"warmup_start_epoch": 1, "warmup_end_epoch": 6, "importance_regularization_factor": 0.01,
                     "sparsity_target": 0.5}}),
    ]  # fmt: skip
    (x, y), (xt, yt) = load_digits_split()
    flat = (x.reshape(len(x), -1), xt.reshape(len(xt), -1))
    fp32_models = {}
    rows = []
    for name, model_name, target, epochs, section in runs:
        keras.utils.set_random_seed(0)
        is_mlp = model_name.startswith("digits MLP")
        xs, xts = flat if is_mlp else (x, xt)
        if model_name not in fp32_models:
            fp32_models[model_name] = train_fp32(mlp() if is_mlp else build_digits_cnn(), xs, y, 40 if is_mlp else 30)
        model = fp32_models[model_name]
        fp32 = model.evaluate(xts, yt, verbose=0)[1]
        start = time.perf_counter()
        compressed, ctrl = kc.compress(model, {"compression": section}, dataset=(xs, y))
        compressed.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        compressed.fit(xs, y, batch_size=64, epochs=epochs, verbose=0, callbacks=ctrl.callbacks())
        seconds = time.perf_counter() - start
        acc = compressed.evaluate(xts, yt, verbose=0)[1]
        algorithm = name.split(" ")[0]
        level = ctrl.statistics().figures()[f"{algorithm}/sparsity_level"]
        rows.append([name, model_name, f"{target:.0%}", f"{level:.1%}", epochs, f"{fp32:.4f}", f"{acc:.4f}",
                     f"{100 * (acc - fp32):+.2f}", f"{seconds:.0f}"])  # fmt: skip
    return "\n".join(
        [
            "Fine-tuning from a trained FP32 model on `load_digits` (1,437 train / 360 test images), "
            "Adam 1e-3, batch 64; the level is the share of zero weights over all sparsified layers "
            "after training (the masked model), accuracy is the Keras model's on the test split.",
            "",
            md_table(["algorithm", "model", "target", "reached", "epochs", "FP32 accuracy",
                      "compressed accuracy", "points", "seconds"], rows),  # fmt: skip
        ]
    )


MEMORY_CHILD = r"""
import os, resource, sys, time, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from importlib import resources
import keras, numpy as np
import keras_compress as kc
samples = int(sys.argv[1])
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
model = keras.applications.ResNet50(weights=None, classifier_activation=None)
calib = np.random.default_rng(0).uniform(-1, 1, (samples, 224, 224, 3)).astype("float32")
model.predict(calib[:32], batch_size=32, verbose=0)
before = rss()
config = kc.load_config(resources.files("keras_compress") / "configs" / "int8.json")
config.compression[0].initializer.range.num_init_samples = samples
config.compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_samples = samples
start = time.perf_counter()
compressed, ctrl = kc.compress(model, config, dataset=calib)
seconds = time.perf_counter() - start
figures = ctrl.statistics().figures()
print(json.dumps({"before_mib": before, "after_mib": rss(), "seconds": seconds,
                  "calib_mib": calib.nbytes / 2**20, "weights": figures["quantization/weight_quantizers"],
                  "activations": figures["quantization/activation_quantizers"]}))
"""


def section_memory(quick):
    import json

    rows = []
    for samples in (32,) if quick else (32, 64):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, str(samples)], capture_output=True, text=True, cwd=ROOT
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        r = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append([samples, f"{r['seconds']:.1f}", f"{r['before_mib']:.0f}", f"{r['after_mib']:.0f}",
                     f"{r['after_mib'] - r['before_mib']:+.0f}", f"{r['calib_mib']:.0f}",
                     f"{r['weights']} / {r['activations']}"])  # fmt: skip
    return "\n".join(
        [
            "`kc.compress(ResNet50, configs/int8.json, dataset=calib)` in a fresh process: clone and wrap, "
            "weight range init, BatchNorm adaptation and activation range init on N generated 224x224 "
            "samples (N for both). Peak RSS from `resource.getrusage` (ru_maxrss): first after building "
            "the FP32 model and one 32-image forward pass, then after `kc.compress`.",
            "",
            md_table(["samples", "kc.compress seconds", "peak RSS before (MiB)", "peak RSS after (MiB)",
                      "increase (MiB)", "calibration array (MiB)", "weight / activation quantizers"], rows),  # fmt: skip
        ]
    )


TITLES = {
    "tfmot": "keras_compress vs tfmot: QAT on the same models",
    "qat": "QAT training-step cost: keras_compress and tfmot",
    "int8": "INT8 vs FP32 vs NNCF post-training quantization in OpenVINO",
    "transformers": "Transformers: INT8 share, latency and accuracy vs NNCF post-training quantization",
    "text": "Text classification (keras.io Transformer): INT8 accuracy, int8 share and latency",
    "lm": "Causal LMs (KerasHub GPT-2 and Gemma): INT8 perplexity and IR agreement",
    "hub": "KerasHub families",
    "coverage": "Coverage: every keras.applications family",
    "pruning": "Filter pruning speedups",
    "sparsity": "Sparsity levels reached",
    "memory": "Time and memory of kc.compress on ResNet50",
    "subclassed": "Subclassed models vs the same Functional model",
    "backends": "Keras backends: TensorFlow, JAX, PyTorch",
}
#: Sections that are the output of a benchmark script: section -> script name.
SCRIPTS = {"qat": "qat_overhead", "pruning": "pruning_speed", "transformers": "transformers", "coverage": "coverage",
           "subclassed": "subclassed", "backends": "backends", "text": "text_classification", "lm": "lm_perplexity",
           "hub": "hub"}
FUNCTIONS = {
    "tfmot": section_tfmot,
    "int8": section_int8,
    "sparsity": section_sparsity,
    "memory": section_memory,
    **{name: functools.partial(script_section, script) for name, script in SCRIPTS.items()},
}


# ------------------------------------------------------------------------------ page
def run_section_subprocess(name, quick):
    """Runs one section in a fresh Python; returns (markdown, seconds, ok)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.md"
        command = [sys.executable, __file__, "--child", name, "--child-output", str(out)]
        command += ["--quick"] if quick else []
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        if result.returncode != 0 or not out.is_file():
            tail = (result.stderr or result.stdout)[-3000:]
            return f"This section failed (exit {result.returncode}):\n\n```\n{tail}\n```", seconds, False
        return out.read_text().strip(), seconds, True


def section_stamp(seconds, quick):
    """The line that opens a section: when, on which commit and how it was measured."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = ", quick mode: fewer seeds, samples and rounds" if quick else ""
    return f"*Measured {now} on commit `{git_commit()}` in {seconds / 60:.0f} min{mode}.*"


def existing_sections(path):
    """`{name: text}` of the sections of an existing page (a section without its own stamp gets the
    page's generation date, which older pages carried for all sections)."""
    if not path.is_file():
        return {}
    text = path.read_text()
    generated = re.search(r"Generated by `[^`]*` on ([^(]+?) \(", text)
    commit_line = re.search(r"keras_compress commit: `(\w+)`", text)
    sections = {}
    parts = re.split(r"^## .*? \{#(\w+)\}\n", text, flags=re.M)
    for name, body in zip(parts[1::2], parts[2::2]):
        body = body.strip()
        if not body.startswith("*Measured") and generated:
            body = f"*Measured {generated.group(1)} on commit `{commit_line.group(1) if commit_line else '?'}`.*\n\n{body}"
        sections[name] = body
    return sections


def page(texts):
    command = "python benchmarks/run_all.py"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}`; do not edit by hand. Each section says when and on which commit it "
        "was measured (`--sections` reruns some sections and keeps the others). Rerun it after "
        '`pip install -e ".[bench,demo]"` to measure your machine.',
        "",
        "!!! note \"How to read these numbers\"",
        "    The machine has 2 cores (shared, virtualized), so absolute times are noisy. "
        "Every comparison is a **ratio measured in one process, in interleaved rounds** (model A, "
        "model B, model A, ...; median over rounds), so slow drifts of the machine affect both "
        "sides alike. Compare ratios, not absolute milliseconds, and do not compare numbers across "
        "sections or runs.",
        "",
        "## Machine and versions",
        "",
        machine_markdown(),
        "",
    ]
    for name in SECTIONS:
        if name in texts:
            lines += [f"## {TITLES[name]} {{#{name}}}", "", texts[name], ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, samples and rounds")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        try:
            text = FUNCTIONS[args.child](args.quick)
        except Exception:  # noqa: BLE001 - reported in the page by the parent
            traceback.print_exc()
            return 1
        Path(args.child_output).write_text(text)
        return 0
    texts, seconds, failed = {}, {}, []
    for name in args.sections:
        print(f"[run_all] {name} ...", flush=True)
        texts[name], seconds[name], ok = run_section_subprocess(name, args.quick)
        print(f"[run_all] {name}: {'done' if ok else 'FAILED'} in {seconds[name]:.0f} s", flush=True)
        if not ok:
            failed.append(name)
    output = Path(args.output)
    texts = {**existing_sections(output), **{name: f"{section_stamp(seconds[name], args.quick)}\n\n{texts[name]}"
                                              for name in texts}}
    output.write_text(page(texts))
    print(f"[run_all] wrote {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
