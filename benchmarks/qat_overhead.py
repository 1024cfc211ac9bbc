"""QAT training-step cost: keras_compress (Keras 3) and tfmot (tf_keras), each against its own FP32 step.

For ResNet50 and MobileNetV2 (`keras.applications`, weights=None, 224x224) and a BERT-style encoder
(benchmarks/transformers.py's `build_bert`), at batch 8 and 32:

- keras_compress: the FP32 Keras 3 model and `kc.compress(model, "int8")` (the default config:
  8-bit per-channel symmetric weights, per-tensor activations), both compiled with SGD;
- tfmot: the same architecture built in `tf_keras` (a subprocess with `TF_USE_LEGACY_KERAS=1`, tfmot's
  only supported setup) and `tfmot.quantization.keras.quantize_model` (its default 8-bit scheme). tfmot
  does not quantize MultiHeadAttention, LayerNormalization or Embedding layers: on the encoder its Dense
  layers are annotated (`quantize_annotate_layer`), the rest stays float.

Each side times `train_on_batch` of its FP32 and QAT models in interleaved rounds (FP32, QAT, FP32,
...) in one process and reports the median per-round ratio QAT / FP32 with its spread. The two
frameworks' FP32 steps differ (Keras 3 runs BatchNormalization as separate ops, tf_keras as a fused
kernel), so compare the ratios, not the milliseconds.

With `--profile`, each side's FP32 and QAT steps run under the TensorFlow profiler instead, and the op
types where QAT spends more time than FP32 are listed side by side (op-kernel CPU time per step).

Usage:
    python benchmarks/qat_overhead.py [--quick] [--models ResNet50 ...] [--batches 8 32] [--json out.json]
    python benchmarks/qat_overhead.py --profile --models ResNet50 --batches 8
Needs the `bench` extra (tensorflow-model-optimization, tf-keras).
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

HERE = Path(__file__).resolve().parent
MODELS = ("ResNet50", "MobileNetV2", "BERT")


def build(K, name, size):
    """The FP32 model `name` built with the Keras module `K` (Keras 3 or tf_keras)."""
    if name == "BERT":
        return build_bert(K)
    return getattr(K.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)


def build_bert(K, vocab=1000, length=64, dim=128, blocks=2, heads=4, mlp=256, classes=2):
    """benchmarks/transformers.py's BERT-style encoder, written for either Keras."""
    L = K.layers
    tokens = K.Input((length,), dtype="int32", name="tokens")
    positions = K.Input((length,), dtype="int32", name="positions")
    x = L.Add()([L.Embedding(vocab, dim)(tokens), L.Embedding(length, dim)(positions)])
    for _ in range(blocks):
        x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, L.MultiHeadAttention(heads, dim // heads)(x, x)]))
        h = L.Dense(dim)(L.Dense(mlp, activation="gelu")(x))
        x = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, h]))
    return K.Model([tokens, positions], L.Dense(classes)(L.GlobalAveragePooling1D()(x)))


def batch_of(name, size, batch, seed=0):
    """Generated inputs and labels of one training batch."""
    rng = np.random.default_rng(seed)
    if name == "BERT":
        x = [rng.integers(0, 1000, (batch, 64)).astype("int32"), np.tile(np.arange(64, dtype="int32"), (batch, 1))]
        return x, rng.integers(0, 2, batch)
    return rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"), rng.integers(0, 1000, batch)


def interleaved_ratio(models, x, y, rounds, steps):
    """Median ms per train step of each of `{"fp32": m, "qat": m}` and the per-round QAT / FP32 ratios."""
    for model in models.values():
        for _ in range(2):  # trace, then one untimed step
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    ratio = np.array(times["qat"]) / np.array(times["fp32"])
    return {
        "fp32_ms": 1000 * float(np.median(times["fp32"])),
        "qat_ms": 1000 * float(np.median(times["qat"])),
        "ratio": [float(np.median(ratio)), float(ratio.min()), float(ratio.max())],
    }


# ------------------------------------------------------------------------------ the two sides
def keras_models(name, size):
    """`{"fp32": model, "qat": model}` for keras_compress: the FP32 Keras 3 model and its `kc.compress(..., "int8")`."""
    import keras

    import keras_compress as kc

    keras.utils.set_random_seed(0)
    model = build(keras, name, size)
    config = kc.load_config("int8")
    config.compression[0].initializer.range.num_init_samples = 8
    config.compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_samples = 8
    compressed, _ = kc.compress(model, config, dataset=batch_of(name, size, 8, seed=1)[0], verbose=0)
    for m in (model, compressed):
        m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return {"fp32": model, "qat": compressed}


def tfmot_models(name, size):
    """`{"fp32": model, "qat": model}` for tfmot: the tf_keras model and its default 8-bit QAT model."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as K

    K.utils.set_random_seed(0)
    model = build(K, name, size)
    if name == "BERT":  # tfmot quantizes none of MultiHeadAttention, LayerNormalization, Embedding

        def annotate(layer):
            return tfmot.quantization.keras.quantize_annotate_layer(layer) if isinstance(layer, K.layers.Dense) else layer

        annotated = K.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    else:
        qat = tfmot.quantization.keras.quantize_model(model)
    for m in (model, qat):
        m.compile(optimizer="sgd", loss=K.losses.SparseCategoricalCrossentropy(from_logits=True))
    return {"fp32": model, "qat": qat}


SIDES = {"keras_side": keras_models, "tfmot_side": tfmot_models}


def ratio_side(side, name, size, batch, rounds, steps):
    """One side's QAT / FP32 step figures (`interleaved_ratio`)."""
    x, y = batch_of(name, size, batch)
    return interleaved_ratio(SIDES[side](name, size), x, y, rounds, steps)


def profile_side(side, name, size, batch, steps):
    """Milliseconds per train step by TensorFlow op type, `{"fp32": {...}, "qat": {...}}`, from the
    TensorFlow profiler (the CPU time of each op kernel, summed over threads)."""
    import tensorflow as tf

    models = SIDES[side](name, size)
    x, y = batch_of(name, size, batch)
    result = {}
    for kind, model in models.items():
        for _ in range(2):  # trace, then one untimed step
            model.train_on_batch(x, y)
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            for _ in range(steps):
                model.train_on_batch(x, y)
            tf.profiler.experimental.stop()
            result[kind] = {op: ms / steps for op, ms in op_times(logdir).items()}
    return result


def op_times(logdir):
    """`{op type: ms}` summed over the op-kernel events of the profile in `logdir`."""
    # The profile's protocol buffer: TensorFlow ships its module under `tensorflow.tsl` (no public path).
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = {}
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            for line in plane.lines:
                if not line.name.startswith("tf_"):  # the executor's threads, not Python's
                    continue
                for event in line.events:
                    label = plane.event_metadata[event.metadata_id].name
                    if ":" not in label or "::" in label:  # "name:OpType" events are op kernels
                        continue
                    op = label.rsplit(":", 1)[1]
                    totals[op] = totals.get(op, 0.0) + event.duration_ps / 1e9
    return totals


CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import qat_overhead
print("RESULT " + json.dumps(qat_overhead.ratio_side({side!r}, {name!r}, {size}, {batch}, {rounds}, {steps})))
"""


PROFILE_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import qat_overhead
print("RESULT " + json.dumps(qat_overhead.profile_side({side!r}, {name!r}, {size}, {batch}, {steps})))
"""


def run_child(side, name, size, batch, rounds, steps, profile=False):
    """One side's measurement in a fresh process (tfmot's with `TF_USE_LEGACY_KERAS=1`)."""
    env = dict(os.environ, **({"TF_USE_LEGACY_KERAS": "1"} if side == "tfmot_side" else {}))
    template = PROFILE_CHILD if profile else CHILD
    code = template.format(here=str(HERE), side=side, name=name, size=size, batch=batch, rounds=rounds, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = [line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        return {"error": f"exit {out.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def run(quick=False, models=MODELS, batches=(8, 32), size=224, json_path=None):
    """Measures every model and batch; returns the Markdown table."""
    from int8_speed import ratio_text
    from report import md_table

    rounds, steps = (3, 1) if quick else (7, 2)
    rows, results = [], []
    for name in models:
        for batch in batches:
            figures = {side: run_child(side, name, size, batch, rounds, steps) for side in ("keras_side", "tfmot_side")}
            results.append({"model": name, "batch": batch, **figures})
            cells = []
            for side in ("keras_side", "tfmot_side"):
                f = figures[side]
                cells += ([ratio_text(f["ratio"]), f"{f['qat_ms']:.0f} / {f['fp32_ms']:.0f}"] if "ratio" in f
                          else [f["error"], ""])  # fmt: skip
            label = "BERT-style, 64 tokens, width 128" if name == "BERT" else f"{name}, {size}x{size}"
            rows.append([label, batch, *cells])
            print(f"[qat_overhead] {name} batch {batch}: done", file=sys.stderr, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
    header = ["model", "batch", "keras_compress QAT / FP32 step", "ms (QAT / FP32)", "tfmot QAT / FP32 step",
              "ms (QAT / FP32)"]  # fmt: skip
    intro = (f"Median (min..max) over {rounds} interleaved rounds of {steps} `train_on_batch` step(s), SGD; "
             "each framework against its own FP32 model in one process.")  # fmt: skip
    return "\n".join([intro, "", md_table(header, rows)])


def profile(name, batch, size=224, steps=3, top=12):
    """The op types where each side's QAT step spends more than its FP32 step (TensorFlow profiler)."""
    from report import md_table

    lines = [f"Op-kernel CPU time per train step by op type ({name}, batch {batch}, mean of {steps} profiled "
             "steps after two untimed ones), QAT minus FP32; summed over threads, so totals exceed wall time."]  # fmt: skip
    for side, label in (("keras_side", "keras_compress"), ("tfmot_side", "tfmot")):
        figures = run_child(side, name, size, batch, 0, steps, profile=True)
        if "error" in figures:
            lines += ["", f"{label}: {figures['error']}"]
            continue
        fp32, qat = figures["fp32"], figures["qat"]
        total_fp32, total_qat = sum(fp32.values()), sum(qat.values())
        delta = {op: qat.get(op, 0.0) - fp32.get(op, 0.0) for op in set(fp32) | set(qat)}
        rows = [[op, f"{fp32.get(op, 0.0):.1f}", f"{qat.get(op, 0.0):.1f}", f"{d:+.1f}", f"{100 * d / total_fp32:+.1f}%"]
                for op, d in sorted(delta.items(), key=lambda item: -abs(item[1]))[:top]]  # fmt: skip
        lines += ["", f"**{label}**: FP32 {total_fp32:.0f} ms, QAT {total_qat:.0f} ms of op time "
                  f"({total_qat / total_fp32:.2f}x)", "",
                  md_table(["op type", "FP32 ms", "QAT ms", "QAT - FP32 ms", "of the FP32 total"], rows)]  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--size", type=int, default=224, help="image size of the CNNs")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--profile", action="store_true",
                        help="instead: the TensorFlow profiler's op times of both sides, QAT against FP32")  # fmt: skip
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.profile:
        print("\n\n".join(profile(name, batch, args.size) for name in args.models for batch in args.batches))
        return 0
    print(run(args.quick, args.models, args.batches, args.size, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
