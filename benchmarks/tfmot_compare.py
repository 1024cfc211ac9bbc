"""keras_compress QAT on Keras 3 against tfmot QAT on legacy tf_keras, same models and data.

Two tasks: the digits CNN on sklearn's `load_digits`, and a ResNet-style CNN (3 residual
stages, 16-32-64 filters) on generated 32x32x3 images of 10 noisy, shifted class patterns.

For each task and seed, this process (Keras 3) trains the FP32 model and saves its weights.
Then, from the same FP32 weights:
  - keras_compress: `kc.compress` (8-bit, per-channel symmetric weights, range init and BN
    adaptation on the training data), fine-tuned with `fit`, exported with `kc.export`;
  - tfmot: a subprocess with `TF_USE_LEGACY_KERAS=1` builds the same architecture in
    `tf_keras`, loads the weights, `tfmot.quantization.keras.quantize_model` (its default 8-bit
    scheme), fine-tunes with the same optimizer, epochs and batch size, saves a SavedModel,
    which this process converts with `ov.convert_model`.
Each side also measures its QAT epoch time over its FP32 epoch time, interleaved in its own
process (the two frameworks' FP32 speeds differ, so only the ratios compare). Finally all IRs
are evaluated on the test split and benchmarked interleaved in one process.

Usage:
    python benchmarks/tfmot_compare.py [--quick] [--markdown OUT.md]
Needs the `bench` extra (tensorflow-model-optimization, tf-keras) and the `demo` extra.
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

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import md_table  # noqa: E402

BATCH = 64
LR = 1e-4  # fine-tuning learning rate, both sides
KC_CONFIG = {
    "compression": {
        "algorithm": "quantization",
        "overflow_fix": "first_layer_only",
        "initializer": {
            "range": {"num_init_samples": 512, "type": "mixed_min_max"},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": 512},
        },
        "weights": {"per_channel": True},
    }
}


# ------------------------------------------------------------------------------ models and data
# Builders take the Keras module (Keras 3 or tf_keras) so both sides build the same layers in
# the same order, and `get_weights()` of one fits `set_weights()` of the other.
def build_digits_cnn(K, width=32):
    """keras_compress.demo.build_digits_cnn, written for either Keras."""
    L = K.layers
    inputs = K.Input((8, 8, 1), name="image")
    x = inputs
    for i, filters in enumerate((width, width * 2, width * 2)):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = L.ReLU(name=f"relu{i + 1}")(x)
        if i == 1:
            x = L.MaxPooling2D(name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(inputs, L.Dense(10, name="logits")(x), name="digits_cnn")


def build_resnet_cnn(K, widths=(16, 32, 64)):
    """A small ResNet: stem, one basic residual block per stage, projection shortcuts."""
    L = K.layers

    def conv_bn(x, filters, kernel, strides, name):
        x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        return L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)

    inputs = K.Input((32, 32, 3), name="image")
    x = L.ReLU(name="stem_relu")(conv_bn(inputs, widths[0], 3, 1, "stem"))
    for i, filters in enumerate(widths):
        strides = 1 if i == 0 else 2
        y = L.ReLU(name=f"s{i}_relu1")(conv_bn(x, filters, 3, strides, f"s{i}_a"))
        y = conv_bn(y, filters, 3, 1, f"s{i}_b")
        if strides != 1 or x.shape[-1] != filters:
            x = conv_bn(x, filters, 1, strides, f"s{i}_proj")
        x = L.ReLU(name=f"s{i}_out")(L.Add(name=f"s{i}_add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(inputs, L.Dense(10, name="logits")(x), name="resnet_cnn")


def make_patterns(n, seed, noise=3.0):
    """Generated 32x32x3 images: 10 smooth class patterns, scaled, shifted, with heavy noise.

    The patterns are fixed (seed 1234); `seed` draws the samples. With noise 3.0 the ResNet
    CNN reaches about 85-90% test accuracy, so quantization has room to cost accuracy.
    """
    rng = np.random.default_rng(1234)
    templates = np.kron(rng.normal(size=(10, 8, 8, 3)), np.ones((1, 4, 4, 1)))
    kernel = np.ones(5) / 5
    for axis in (1, 2):
        templates = np.apply_along_axis(
            lambda v: np.convolve(np.pad(v, 2, mode="wrap"), kernel, "valid"), axis, templates
        )
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = templates[y] * rng.uniform(0.6, 1.4, (n, 1, 1, 1))
    shifts = rng.integers(-4, 5, (n, 2))
    x = np.stack([np.roll(image, tuple(s), axis=(0, 1)) for image, s in zip(x, shifts)])
    x = x + rng.normal(0, noise, x.shape)
    return x.astype("float32"), y.astype("int32")


def load_task(task, seed):
    if task == "digits":
        from keras_compress.demo import load_digits_split

        return load_digits_split(seed=seed)
    return make_patterns(2500, 2 * seed), make_patterns(500, 2 * seed + 1)


TASKS = {
    # task: (builder, FP32 epochs, QAT epochs, label)
    "digits": (build_digits_cnn, 30, 4, "digits CNN (load_digits 8x8, 1,437 train / 360 test)"),
    "resnet": (build_resnet_cnn, 10, 3, "ResNet-style CNN (generated 32x32x3, 2,500 train / 500 test)"),
}


# ------------------------------------------------------------------------------ timing
def epoch_time_ratio(fp32_model, qat_model, x, y, rounds):
    """Median seconds per training epoch of both models, measured in interleaved rounds."""
    times = {"fp32": [], "qat": []}
    models = {"fp32": fp32_model, "qat": qat_model}
    for name, model in models.items():  # build and trace the train functions first
        model.fit(x[: 2 * BATCH], y[: 2 * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - start)
    fp32, qat = (float(np.median(times[k])) for k in ("fp32", "qat"))
    return {"fp32_epoch_s": fp32, "qat_epoch_s": qat, "ratio": qat / fp32}


# ------------------------------------------------------------------------------ tfmot side
def tfmot_side(workdir, task, seeds, epochs, rounds):
    """Runs in the legacy subprocess: tfmot QAT from the saved FP32 weights."""
    import tensorflow as tf  # noqa: F401 - TF_USE_LEGACY_KERAS=1 is set by the parent
    import tensorflow_model_optimization as tfmot
    import tf_keras as K

    builder = TASKS[task][0]
    results = []
    for seed in seeds:
        data = np.load(workdir / f"{task}{seed}_data.npz")  # written by the parent: no keras_compress import here
        x, y, xt, yt = (data[k] for k in ("x", "y", "xt", "yt"))
        weights = np.load(workdir / f"{task}{seed}_fp32_weights.npz")
        K.utils.set_random_seed(seed)
        model = builder(K)
        model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
        loss = K.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=K.optimizers.Adam(LR), loss=loss, metrics=["accuracy"])
        fp32 = model.evaluate(xt, yt, verbose=0)[1]
        start = time.perf_counter()
        qat = tfmot.quantization.keras.quantize_model(model)
        quantize_s = time.perf_counter() - start
        qat.compile(optimizer=K.optimizers.Adam(LR), loss=loss, metrics=["accuracy"])
        init = qat.evaluate(xt, yt, verbose=0)[1]
        qat.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
        tuned = qat.evaluate(xt, yt, verbose=0)[1]
        qat.save(str(workdir / f"{task}{seed}_tfmot_savedmodel"), include_optimizer=False)
        result = {"seed": seed, "fp32_keras": fp32, "init": init, "tuned": tuned, "quantize_s": quantize_s}
        if seed == seeds[0]:
            result["timing"] = epoch_time_ratio(model, qat, x, y, rounds)
        results.append(result)
    return results


# ------------------------------------------------------------------------------ Keras 3 side
def keras_side(workdir, task, seeds, epochs, rounds):
    """This process: FP32 training, keras_compress QAT, exports."""
    import keras

    import keras_compress as kc

    builder, fp32_epochs, _, _ = TASKS[task]
    results = []
    for seed in seeds:
        (x, y), (xt, yt) = load_task(task, seed)
        np.savez(workdir / f"{task}{seed}_data.npz", x=x, y=y, xt=xt, yt=yt)
        keras.utils.set_random_seed(seed)
        model = builder(keras)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        model.fit(x, y, batch_size=BATCH, epochs=fp32_epochs, verbose=0)
        np.savez(workdir / f"{task}{seed}_fp32_weights.npz", *model.get_weights())
        kc.export(model, workdir / f"{task}{seed}_fp32")
        model.compile(optimizer=keras.optimizers.Adam(LR), loss=loss, metrics=["accuracy"])
        fp32 = model.evaluate(xt, yt, verbose=0)[1]
        start = time.perf_counter()
        compressed, ctrl = kc.compress(model, KC_CONFIG, dataset=(x, y))
        quantize_s = time.perf_counter() - start
        compressed.compile(optimizer=keras.optimizers.Adam(LR), loss=loss, metrics=["accuracy"])
        init = compressed.evaluate(xt, yt, verbose=0)[1]
        compressed.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=ctrl.callbacks())
        tuned = compressed.evaluate(xt, yt, verbose=0)[1]
        kc.export(compressed, workdir / f"{task}{seed}_kc_int8")
        result = {"seed": seed, "fp32_keras": fp32, "init": init, "tuned": tuned, "quantize_s": quantize_s,
                  "n_test": len(yt)}  # fmt: skip
        if seed == seeds[0]:
            result["timing"] = epoch_time_ratio(model, compressed, x, y, rounds)
        results.append(result)
    return results


def run_tfmot_subprocess(workdir, task, seeds, epochs, rounds):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = workdir / f"{task}_tfmot.json"
    command = [
        sys.executable, __file__, "--side", "tfmot", "--task", task, "--workdir", str(workdir),
        "--seeds", *map(str, seeds), "--epochs", str(epochs), "--rounds", str(rounds), "--json", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"tfmot subprocess failed:\n{result.stderr[-4000:]}")
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------ IRs
def compare_irs(workdir, task, seeds, rounds):
    """IR accuracy for every seed; latency and runtime precision on the first seed's IRs."""
    from keras_compress.benchmark import benchmark_models, compile_ir, runtime_precisions
    from keras_compress.demo import evaluate_ir
    from keras_compress.export.openvino import convert_saved_model

    accuracy = {"fp32": [], "tfmot": [], "kc": []}
    for seed in seeds:
        data = np.load(workdir / f"{task}{seed}_data.npz")
        xt, yt = data["xt"], data["yt"]
        tfmot_xml = convert_saved_model(workdir / f"{task}{seed}_tfmot_savedmodel", workdir / f"{task}{seed}_tfmot_int8")
        accuracy["fp32"].append(evaluate_ir(workdir / f"{task}{seed}_fp32.xml", xt, yt, "f32"))
        accuracy["tfmot"].append(evaluate_ir(tfmot_xml, xt, yt))
        accuracy["kc"].append(evaluate_ir(workdir / f"{task}{seed}_kc_int8.xml", xt, yt))
    seed = seeds[0]
    irs = {
        "FP32 (f32 hint)": (workdir / f"{task}{seed}_fp32.xml", "f32"),
        "FP32 (default)": (workdir / f"{task}{seed}_fp32.xml", "default"),
        "tfmot INT8": (workdir / f"{task}{seed}_tfmot_int8.xml", "default"),
        "keras_compress INT8": (workdir / f"{task}{seed}_kc_int8.xml", "default"),
    }
    compiled = {name: compile_ir(xml, precision) for name, (xml, precision) in irs.items()}
    latency = {}
    for batch in (1, 64):
        results = benchmark_models(compiled, batch_size=batch, rounds=rounds, iterations=20 if batch == 1 else 5)
        latency[batch] = {name: r["latency_ms"] for name, r in results.items()}
    precisions = {}
    for name, model in compiled.items():
        counts = runtime_precisions(model)
        precisions[name] = ", ".join(f"{t[:4]} {p}:{n}" for (t, p), n in sorted(counts.items()))
    return accuracy, latency, precisions


def _mean(values):
    return float(np.mean(values))


def task_markdown(task, seeds, kc_results, tfmot_results, accuracy, latency, precisions):
    label, epochs = TASKS[task][3], TASKS[task][2]
    kc_t, tf_t = kc_results[0]["timing"], tfmot_results[0]["timing"]
    n = len(seeds)
    mean = "" if n == 1 else f" (mean of {n} seeds)"

    def acc(results, key):
        return f"{_mean([r[key] for r in results]):.4f}"

    rows = [
        [f"FP32 Keras accuracy{mean}", acc(kc_results, "fp32_keras"), acc(tfmot_results, "fp32_keras")],
        [f"accuracy right after quantization{mean}", acc(kc_results, "init"), acc(tfmot_results, "init")],
        [f"accuracy after {epochs} epochs QAT{mean}", acc(kc_results, "tuned"), acc(tfmot_results, "tuned")],
        [f"INT8 IR accuracy{mean} (FP32 IR: {_mean(accuracy['fp32']):.4f})",
         f"{_mean(accuracy['kc']):.4f}", f"{_mean(accuracy['tfmot']):.4f}"],
        ["QAT epoch time / FP32 epoch time (same process, interleaved)",
         f"{kc_t['ratio']:.2f}x ({kc_t['qat_epoch_s']:.2f} s / {kc_t['fp32_epoch_s']:.2f} s)",
         f"{tf_t['ratio']:.2f}x ({tf_t['qat_epoch_s']:.2f} s / {tf_t['fp32_epoch_s']:.2f} s)"],
        ["time to quantize the model (s)", f"{_mean([r['quantize_s'] for r in kc_results]):.1f} (with range init)",
         f"{_mean([r['quantize_s'] for r in tfmot_results]):.1f} (no range init)"],
    ]  # fmt: skip
    for batch, values in latency.items():
        base = values["FP32 (f32 hint)"]
        rows.append(
            [f"INT8 IR latency, batch {batch} (ms; speedup vs FP32 f32 / default)"]
            + [
                f"{values[name]:.3f} ({base / values[name]:.2f}x / {values['FP32 (default)'] / values[name]:.2f}x)"
                for name in ("keras_compress INT8", "tfmot INT8")
            ]
        )
    rows.append(["runtime precision (Conv/FC)", precisions["keras_compress INT8"], precisions["tfmot INT8"]])
    fp32_row = (
        f"FP32 IR latency: batch 1 {latency[1]['FP32 (f32 hint)']:.3f} ms (f32 hint), "
        f"{latency[1]['FP32 (default)']:.3f} ms (default); batch 64 {latency[64]['FP32 (f32 hint)']:.3f} ms "
        f"(f32 hint), {latency[64]['FP32 (default)']:.3f} ms (default)."
    )
    verdict = []
    kc_acc, tf_acc = _mean(accuracy["kc"]), _mean(accuracy["tfmot"])
    verdict.append(
        f"INT8 IR accuracy: keras_compress {'>=' if kc_acc >= tf_acc else '<'} tfmot "
        f"({100 * (kc_acc - tf_acc):+.2f} points; one test image is {100 / kc_results[0]['n_test']:.2f})"
    )
    verdict.append(
        f"training overhead: keras_compress {kc_t['ratio']:.2f}x vs tfmot {tf_t['ratio']:.2f}x "
        f"({'no slower' if kc_t['ratio'] <= tf_t['ratio'] * 1.05 else 'slower'})"
    )
    speed = latency[1]["tfmot INT8"] / latency[1]["keras_compress INT8"]
    verdict.append(f"INT8 IR batch-1 latency: keras_compress {speed:.2f}x the speed of tfmot's")
    return "\n".join(
        [
            f"### {label}",
            "",
            md_table(["", "keras_compress (Keras 3)", "tfmot (tf_keras)"], rows),
            "",
            fp32_row,
            "",
            "Result: " + "; ".join(verdict) + ".",
        ]
    )


def run(quick=False, seeds=None, tasks=("digits", "resnet")):
    """Runs the comparison and returns its Markdown section."""
    seeds = seeds or ([0] if quick else [0, 1, 2])
    rounds = 7  # timing rounds are cheap next to training: quick mode keeps them
    workdir = Path(tempfile.mkdtemp(prefix="kc-tfmot-bench-"))
    parts = []
    for task in tasks:
        epochs = TASKS[task][2]
        kc_results = keras_side(workdir, task, seeds, epochs, rounds)
        tfmot_results = run_tfmot_subprocess(workdir, task, seeds, epochs, rounds)
        accuracy, latency, precisions = compare_irs(workdir, task, seeds, rounds)
        parts.append(task_markdown(task, seeds, kc_results, tfmot_results, accuracy, latency, precisions))
    return "\n\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed instead of three")
    parser.add_argument("--tasks", nargs="+", default=["digits", "resnet"], choices=sorted(TASKS))
    parser.add_argument("--markdown", help="write the Markdown section here (default: print it)")
    # Internal: the tfmot subprocess.
    parser.add_argument("--side", choices=["tfmot"], help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", nargs="+", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "tfmot":
        results = tfmot_side(Path(args.workdir), args.task, args.seeds, args.epochs, args.rounds)
        Path(args.json).write_text(json.dumps(results))
        return 0
    text = run(quick=args.quick, tasks=args.tasks)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
