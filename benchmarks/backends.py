"""Keras backends: the same QAT on TensorFlow, JAX and PyTorch, exported to the same INT8 IR.

For each backend, in a child process with `KERAS_BACKEND` set (it is fixed at `import keras`):

- digits CNN (`keras_compress.demo.build_digits_cnn`) and a digits ViT (`transformers.build_vit`: 2x2
  patches as 16 tokens, MultiHeadAttention, GELU MLPs): FP32 training, `kc.compress(model, "int8")`,
  QAT fine-tuning with the controller's callbacks (Keras' default: jit-compiled train steps on JAX),
  `kc.export`, INT8 IR test accuracy (OpenVINO's default precision) over several seeds, and the
  share of Convolution/FullyConnected/MatMul ops the CPU runs in u8/i8;
- train-step time, FP32 and QAT, same process, interleaved epochs after both models are trained: the
  train step alone (no callbacks, as benchmarks/tfmot_compare.py measures it) and the QAT epoch with
  the controller's callbacks; the QAT / FP32 ratio per round, median;
- `kc.compress` time (first call in the process: on JAX it includes compiling the eager ops) and
  `kc.export` time (first call: on JAX/PyTorch it starts the TensorFlow helper process that writes the
  SavedModel; next calls reuse it).

And `keras.distribution.DataParallel` on two JAX host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`):
the digits CNN with 8-bit QAT trained N steps on both devices vs one device from the same seed.

PyTorch runs with `--torch-python` (a Python that has torch; default: this one when it has torch).

Usage:
    python benchmarks/backends.py [--quick] [--json out.json] [--torch-python PATH]
Needs the `demo` extra (scikit-learn) and `jax`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: `(FP32 epochs, QAT epochs, timing rounds, seeds)` of the digits CNN and ViT.
FULL = {"cnn": (30, 4, 5, 3), "vit": (40, 3, 5, 3)}
QUICK = {"cnn": (20, 3, 5, 3), "vit": (20, 3, 5, 3)}
DP_STEPS = 20


def epoch_timer():
    """A Keras callback that records epoch wall times (`.seconds`); keras is imported in the child only."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self._start = [], None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _data(kind, seed):
    import numpy as np

    from keras_compress.demo import load_digits_split

    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=seed)
    if kind == "cnn":
        return (x_train, y_train), (x_test, y_test)
    positions = lambda x: np.tile(np.arange(16, dtype="int32"), (len(x), 1))  # noqa: E731
    return ([x_train, positions(x_train)], y_train), ([x_test, positions(x_test)], y_test)


def _model(kind):
    from keras_compress.demo import build_digits_cnn

    if kind == "cnn":
        return build_digits_cnn()
    sys.path.insert(0, str(HERE))
    from transformers import build_vit

    return build_vit(size=8, channels=1, patch=2, dim=64, blocks=2, heads=4, mlp=128, classes=10)


def _ir_accuracy(xml, x, y, batch_size=64):
    import numpy as np

    from keras_compress.benchmark import compile_ir

    compiled = compile_ir(xml, "default")
    x = x if isinstance(x, list) else [x]
    predictions = [compiled([a[i : i + batch_size] for a in x])[0].argmax(-1) for i in range(0, len(y), batch_size)]
    return float(np.mean(np.concatenate(predictions) == y))


def run_model(kind, settings, workdir):
    """One model kind on this backend: accuracy per seed, int8 share, step times, compress/export times."""
    import keras
    import numpy as np

    import keras_compress as kc
    from keras_compress.benchmark import compile_ir, compute_op_precisions

    fp32_epochs, qat_epochs, rounds, seeds = settings
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    out = {"accuracy": [], "fp32_accuracy": [], "compress_s": [], "export_s": [], "int8": None}
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        (x_train, y_train), (x_test, y_test) = _data(kind, seed)
        model = _model(kind)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=64, epochs=fp32_epochs, verbose=0)
        start = time.perf_counter()
        compressed, ctrl = kc.compress(model, "int8", dataset=(x_train, y_train), verbose=0)
        out["compress_s"].append(time.perf_counter() - start)
        compressed.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
        compressed.fit(x_train, y_train, batch_size=64, epochs=qat_epochs, verbose=0, callbacks=ctrl.callbacks())
        start = time.perf_counter()
        xml = kc.export(compressed, workdir / f"{kind}{seed}_int8")
        out["export_s"].append(time.perf_counter() - start)
        out["accuracy"].append(_ir_accuracy(xml, x_test, y_test))
        out["fp32_accuracy"].append(float(model.evaluate(x_test, y_test, verbose=0)[1]))
        if seed == 0:
            counts = compute_op_precisions(compile_ir(xml, "default"), xml)
            out["int8"] = [sum(n for (_, p), n in counts.items() if p in ("u8", "i8")), sum(counts.values())]
            out["ops"] = {f"{t} {p}": n for (t, p), n in sorted(counts.items())}
            # Step times: interleaved epochs of the trained FP32 and QAT models (each already compiled).
            steps = int(np.ceil(len(y_train) / 64))
            fp32_ms, qat_ms, qat_callbacks_ms = [], [], []
            for _ in range(rounds):
                for target, callbacks, times in ((model, [], fp32_ms), (compressed, [], qat_ms),
                                                 (compressed, ctrl.callbacks(), qat_callbacks_ms)):  # fmt: skip
                    timer = epoch_timer()
                    target.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0, callbacks=[*callbacks, timer])
                    times.append(1000 * timer.seconds[0] / steps)
            out["fp32_step_ms"], out["qat_step_ms"] = float(np.median(fp32_ms)), float(np.median(qat_ms))
            out["qat_over_fp32"] = float(np.median(np.array(qat_ms) / np.array(fp32_ms)))
            out["qat_callbacks_over_fp32"] = float(np.median(np.array(qat_callbacks_ms) / np.array(fp32_ms)))
    return out


def run_data_parallel(steps):
    """Digits CNN: `steps` steps under DataParallel on 2 JAX host devices vs one device, with 8-bit QAT
    and, as the control, in FP32 (no compression)."""
    import jax
    import keras
    import numpy as np

    import keras_compress as kc
    from keras_compress.demo import build_digits_cnn

    (x_train, y_train), _ = _data("cnn", 0)
    x, y = x_train[: 64 * steps], y_train[: 64 * steps]
    result = {"devices": len(jax.devices()), "steps": steps, "replicas_equal": True}
    for kind in ("int8", "fp32"):
        outputs = []
        for distribution in (keras.distribution.DataParallel(devices=jax.devices()), None):
            keras.distribution.set_distribution(distribution)
            keras.utils.set_random_seed(0)
            model, callbacks = build_digits_cnn(), []
            if kind == "int8":
                model, ctrl = kc.compress(model, "int8", dataset=(x, y), verbose=0)
                callbacks = ctrl.callbacks()
            model.compile(optimizer=keras.optimizers.SGD(0.05),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
            model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
            outputs.append(np.asarray(model.predict(x_train[:256], verbose=0)))
            if distribution is not None:
                for v in model.weights:
                    shards = [np.asarray(s.data) for s in v.value.addressable_shards]
                    equal = len(shards) == 2 and all(np.array_equal(shards[0], s) for s in shards[1:])
                    result["replicas_equal"] = result["replicas_equal"] and equal
        key = "relative_difference" if kind == "int8" else "fp32_relative_difference"
        result[key] = float(np.abs(outputs[0] - outputs[1]).max() / np.abs(outputs[1]).max())
    keras.distribution.set_distribution(None)
    return result


def child(backend, quick, output):
    import keras

    assert keras.backend.backend() == backend.split("-")[0], keras.backend.backend()
    workdir = Path(tempfile.mkdtemp(prefix=f"kc-backends-{backend}-"))
    if backend == "jax-dp":
        result = run_data_parallel(DP_STEPS // 2 if quick else DP_STEPS)
    else:
        settings = QUICK if quick else FULL
        result = {kind: run_model(kind, settings[kind], workdir) for kind in ("cnn", "vit")}
    result["backend"] = backend
    Path(output).write_text(json.dumps(result, indent=1))


def run_child(backend, quick, python):
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "result.json"
        env = {**os.environ, "KERAS_BACKEND": backend.split("-")[0], "PYTHONPATH": str(ROOT)}
        if backend == "jax-dp":
            env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        command = [python, __file__, "--child", backend, "--child-output", str(output)] + (["--quick"] if quick else [])
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"the {backend} child failed:\n{result.stderr[-3000:]}")
        figures = json.loads(output.read_text())
        figures["seconds"] = time.perf_counter() - start
        return figures


def _mean(values):
    return sum(values) / len(values)


def report(results):
    """The tables, as `keras_compress.statistics.format_table` text (run_all.py turns them into Markdown)."""
    sys.path.insert(0, str(ROOT))
    from keras_compress.statistics import format_table

    lines = ["## Per backend: train step, compress, export (digits CNN, then digits ViT; batch 64)\n"]
    header = ["backend", "model", "FP32 step ms", "QAT step ms", "QAT / FP32", "with callbacks", "kc.compress s (first, next)",
              "kc.export s (first, next)", "INT8 IR accuracy (mean, min..max)", "FP32 Keras accuracy",
              "u8/i8 Conv+FC+MatMul"]  # fmt: skip
    rows = []
    for r in results:
        if r["backend"] == "jax-dp":
            continue
        for kind, label in (("cnn", "digits CNN"), ("vit", "digits ViT")):
            m = r[kind]
            rest = lambda v: f"{_mean(v[1:]):.2f}" if len(v) > 1 else "-"  # noqa: E731
            rows.append([r["backend"], label, f"{m['fp32_step_ms']:.2f}", f"{m['qat_step_ms']:.2f}",
                         f"{m['qat_over_fp32']:.2f}", f"{m['qat_callbacks_over_fp32']:.2f}",
                         f"{m['compress_s'][0]:.1f}, {rest(m['compress_s'])}",
                         f"{m['export_s'][0]:.1f}, {rest(m['export_s'])}",
                         f"{_mean(m['accuracy']):.4f} ({min(m['accuracy']):.4f}..{max(m['accuracy']):.4f})",
                         f"{_mean(m['fp32_accuracy']):.4f}", f"{m['int8'][0]}/{m['int8'][1]}"])  # fmt: skip
    lines += [format_table(header, rows), ""]
    for r in results:
        if r["backend"] == "jax-dp":
            lines.append(f"DataParallel on {r['devices']} JAX host devices, digits CNN + 8-bit QAT, {r['steps']} steps "
                         f"of batch 64: outputs vs one device, max |difference| / max |output| = "
                         f"{r['relative_difference']:.2e} (the FP32 model, same recipe: "
                         f"{r['fp32_relative_difference']:.2e}); every variable's replicas identical: "
                         f"{r['replicas_equal']}. The two runs differ by float rounding of the gradient "
                         "all-reduce (FP32 figure); a quantizer turns such a difference into one grid step "
                         "where a value sits on a rounding boundary, and training carries that step on "
                         "(docs/backends.md).")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, rounds and seeds")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--torch-python", help="a Python with torch installed (default: this one, if it has torch)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.child_output)
        return 0
    runs = [("tensorflow", sys.executable), ("jax", sys.executable), ("jax-dp", sys.executable)]
    torch_python = args.torch_python or (sys.executable if importlib.util.find_spec("torch") else None)
    if torch_python:
        runs.append(("torch", torch_python))
    results = [run_child(backend, args.quick, python) for backend, python in runs]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(report(results))
    if not torch_python:
        print("\nPyTorch: not measured (torch is not installed in this Python; pass --torch-python).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
