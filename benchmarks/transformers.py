"""Transformers in OpenVINO INT8: keras_compress QAT vs NNCF post-training quantization.

Two Functional models written the usual Keras 3 way (MultiHeadAttention, LayerNormalization, GELU
MLPs, `x + y` residuals): a BERT-style encoder (token and position Embeddings) and a ViT-style
classifier (a patch Conv2D). For each, in one process:

- the FP32 IR (`kc.export` of the Keras model), with INFERENCE_PRECISION_HINT=f32 and the CPU
  plugin's default precision (bf16 on CPUs with AVX512-BF16);
- keras_compress INT8: `kc.compress(model, "int8", dataset=calibration)`, `kc.export`;
- NNCF PTQ INT8: `nncf.quantize(fp32_ir, model_type=nncf.ModelType.TRANSFORMER)` of the same IR
  with the same calibration samples.

Reported: the share of MatMul/FullyConnected/Convolution ops that run u8/i8 in the runtime model,
the IR-vs-Keras agreement, and latency at batch 1 in interleaved rounds: the keras_compress / NNCF
latency ratio of every round (median and min..max), for both precision hints.

Then accuracy on real data: a small ViT on scikit-learn digits (2x2 patches as 16 tokens), trained in
FP32, fine-tuned with 8-bit QAT, and quantized by NNCF PTQ (TRANSFORMER preset); test accuracy of
the three IRs over several seeds.

Usage:
    python benchmarks/transformers.py [--quick] [--json out.json]
Needs the `bench` extra (nncf) and the `demo` extra (scikit-learn).
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
from keras import layers  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, compute_op_precisions  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_speed import nncf_ptq, ratio_text, runtime_figures_in_child, standalone_text  # noqa: E402



# ------------------------------------------------------------------------------ models
#: Biases start random, as a trained model has them: OpenVINO drops an all-zero bias, and without the
#: bias a Dense(gelu) ran as two int8 FullyConnected ops, one per GELU branch (OpenVINO 2026.4).
BIAS = {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.05}}


def encoder_block(x, i, heads, dim, mlp):
    """Post-norm transformer block: `LN(x + MHA(x))`, `LN(x + MLP(x))`, GELU MLP."""
    attention = layers.MultiHeadAttention(heads, dim // heads, bias_initializer=BIAS, name=f"attention{i}")(x, x)
    x = layers.LayerNormalization(epsilon=1e-6, beta_initializer=BIAS, name=f"norm{i}a")(x + attention)
    h = layers.Dense(mlp, activation="gelu", bias_initializer=BIAS, name=f"mlp{i}_up")(x)
    h = layers.Dense(dim, bias_initializer=BIAS, name=f"mlp{i}_down")(h)
    return layers.LayerNormalization(epsilon=1e-6, beta_initializer=BIAS, name=f"norm{i}b")(x + h)


def build_bert(vocab=1000, length=64, dim=128, blocks=2, heads=4, mlp=256, classes=2):
    """BERT-style encoder: token + position embeddings, encoder blocks, the first token's head."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    positions = keras.Input((length,), dtype="int32", name="positions")
    x = layers.Embedding(vocab, dim, name="token_embedding")(tokens)
    x = x + layers.Embedding(length, dim, name="position_embedding")(positions)
    for i in range(blocks):
        x = encoder_block(x, i, heads, dim, mlp)
    return keras.Model([tokens, positions], layers.Dense(classes, bias_initializer=BIAS, name="head")(x[:, 0, :]), name="bert")


def build_vit(size=32, channels=3, patch=4, dim=128, blocks=2, heads=4, mlp=256, classes=10):
    """ViT-style classifier: patch Conv2D, position embeddings, encoder blocks, mean pooling."""
    image = keras.Input((size, size, channels), name="image")
    count = (size // patch) ** 2
    positions = keras.Input((count,), dtype="int32", name="positions")
    x = layers.Conv2D(dim, patch, strides=patch, bias_initializer=BIAS, name="patches")(image)
    x = layers.Reshape((count, dim), name="tokens")(x)
    x = x + layers.Embedding(count, dim, name="position_embedding")(positions)
    for i in range(blocks):
        x = encoder_block(x, i, heads, dim, mlp)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model([image, positions], layers.Dense(classes, bias_initializer=BIAS, name="head")(x), name="vit")


def sample_inputs(model, count, seed=0):
    """`{input name: array}` of `count` generated samples (token ids, positions, images)."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        name, shape = tensor.name, (count, *tensor.shape[1:])
        if name == "positions":
            inputs[name] = np.tile(np.arange(shape[1], dtype="int32"), (count, 1))
        elif "int" in str(tensor.dtype):
            inputs[name] = rng.integers(0, 1000, shape).astype("int32")
        else:
            inputs[name] = rng.normal(size=shape).astype("float32")
    return inputs


def as_list(model, inputs):
    return [inputs[t.name] for t in model.inputs]


# ------------------------------------------------------------------------------ measurements
def int8_share(compiled, xml):
    """`(int8 ops, all ops, counts)` over the IR's Convolution/FullyConnected/MatMul ops in the runtime
    (MatMuls fused into the CPU plugin's attention kernel included, see `compute_op_precisions`)."""
    counts = compute_op_precisions(compiled, xml)
    total = sum(counts.values())
    int8 = sum(n for (_, precision), n in counts.items() if precision in ("u8", "i8"))
    return int8, total, counts


def bench_model(name, model, workdir, calib_count, rounds, iterations):
    """Int8 shares, agreement and latencies of one model's FP32, keras_compress and NNCF IRs."""
    calib = sample_inputs(model, calib_count)
    start = time.perf_counter()
    compressed, _ = kc.compress(model, "int8", dataset=as_list(model, calib), verbose=0)
    compress_s = time.perf_counter() - start
    fp32_xml = kc.export(model, workdir / f"{name}_fp32")
    kc_xml = kc.export(compressed, workdir / f"{name}_kc")
    nncf_xml = nncf_ptq(fp32_xml, calib, workdir / f"{name}_nncf.xml", "TRANSFORMER")
    one = {k: v[:1] for k, v in sample_inputs(model, 1, seed=1).items()}
    compiled = {}
    for label, xml in (("FP32", fp32_xml), ("keras_compress INT8", kc_xml), ("NNCF PTQ INT8", nncf_xml)):
        for hint in ("f32", "default"):
            compiled[f"{label} ({hint})"] = compile_ir(xml, hint)
    test = sample_inputs(model, 16, seed=2)
    expected = compressed.predict(as_list(model, test), verbose=0)
    got = np.concatenate(
        [compiled["keras_compress INT8 (f32)"]({k: v[i : i + 1] for k, v in test.items()})[0] for i in range(16)]
    )
    agreement = float(np.abs(got - expected).max() / (np.abs(expected).max() + 1e-12))
    times = benchmark_models(compiled, rounds=rounds, iterations=iterations, warmup=20, inputs={k: one for k in compiled})
    xmls = {"FP32": fp32_xml, "keras_compress INT8": kc_xml, "NNCF PTQ INT8": nncf_xml}
    shares = {label: int8_share(compiled[f"{label} (f32)"], xml) for label, xml in xmls.items()}
    result = {"model": name, "compress_s": compress_s, "agreement": agreement, "shares": {}, "latency": {}, "ratios": {}}
    for label, (int8, total, counts) in shares.items():
        result["shares"][label] = {"int8": int8, "total": total, "counts": {f"{t}:{p}": n for (t, p), n in counts.items()}}
    for key, values in times.items():
        result["latency"][key] = values["latency_ms"]
    for hint in ("f32", "default"):
        per_round = np.array(times[f"keras_compress INT8 ({hint})"]["rounds_ms"]) / np.array(
            times[f"NNCF PTQ INT8 ({hint})"]["rounds_ms"]
        )
        result["ratios"][hint] = [float(np.median(per_round)), float(per_round.min()), float(per_round.max())]
    xmls = {"FP32": fp32_xml, "kc": kc_xml, "NNCF": nncf_xml}
    result["avx2"] = runtime_figures_in_child(xmls, one, rounds, iterations, isa="AVX2")
    return result


# ------------------------------------------------------------------------------ digits ViT
def ir_accuracy(xml, inputs, y, precision, batch_size=64):
    """Top-1 accuracy of an IR on `{input name: array}` inputs."""
    compiled = compile_ir(xml, precision)
    predictions = [
        compiled({k: v[i : i + batch_size] for k, v in inputs.items()})[0].argmax(-1)
        for i in range(0, len(y), batch_size)
    ]
    return float(np.mean(np.concatenate(predictions) == y))


def digits_tokens(x):
    """8x8x1 digits images and their 16 position ids (2x2 patches)."""
    return [x, np.tile(np.arange(16, dtype="int32"), (len(x), 1))]


def digits_vit_accuracy(workdir, seeds, fp32_epochs, qat_epochs):
    """Test accuracy (IRs) of a small ViT on digits: FP32, keras_compress QAT INT8, NNCF PTQ INT8."""
    from keras_compress.demo import load_digits_split

    scores = {"FP32 IR (f32)": [], "NNCF PTQ INT8 IR (TRANSFORMER)": [], f"keras_compress QAT INT8 IR ({qat_epochs} epochs)": []}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        (x_train, y_train), (x_test, y_test) = load_digits_split(seed=seed)
        model = build_vit(size=8, channels=1, patch=2, dim=64, blocks=2, heads=4, mlp=128, classes=10)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        model.fit(digits_tokens(x_train), y_train, batch_size=64, epochs=fp32_epochs, verbose=0)
        fp32_xml = kc.export(model, workdir / f"vit{seed}_fp32")
        calib = dict(zip(("image", "positions"), digits_tokens(x_train[:300])))
        nncf_xml = nncf_ptq(fp32_xml, calib, workdir / f"vit{seed}_nncf.xml", "TRANSFORMER")
        compressed, ctrl = kc.compress(model, "int8", dataset=(digits_tokens(x_train), y_train), verbose=0)
        compressed.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
        compressed.fit(digits_tokens(x_train), y_train, batch_size=64, epochs=qat_epochs, verbose=0,
                       callbacks=ctrl.callbacks())  # fmt: skip
        kc_xml = kc.export(compressed, workdir / f"vit{seed}_kc")
        test = {"image": x_test, "positions": digits_tokens(x_test)[1]}
        for (label, values), xml in zip(scores.items(), (fp32_xml, nncf_xml, kc_xml)):
            values.append(ir_accuracy(xml, test, y_test, "f32" if xml is fp32_xml else "default"))
    return scores


# ------------------------------------------------------------------------------ report
def tables(results, scores):
    """The Markdown-ready rows: per model and IR, and the digits accuracies."""
    rows = []
    for r in results:
        for label in ("FP32", "keras_compress INT8", "NNCF PTQ INT8"):
            share = r["shares"][label]
            f32, default = r["latency"][f"{label} (f32)"], r["latency"][f"{label} (default)"]
            vs, avx2 = "", ""
            if label == "keras_compress INT8":
                vs = f"{ratio_text(r['ratios']['f32'])} / {ratio_text(r['ratios']['default'])}"
                avx2 = f"{ratio_text(r['avx2']['ratios']['f32'])}; {standalone_text(r['avx2'])}"
            rows.append([r["model"], label, f"{share['int8']}/{share['total']}", f"{f32:.3f}", f"{default:.3f}", vs,
                         avx2])  # fmt: skip
    fp32 = np.mean(next(iter(scores.values())))
    accuracy = [
        [label, f"{np.mean(v):.4f}", f"{np.min(v):.4f}..{np.max(v):.4f}",
         "" if label.startswith("FP32") else f"{100 * (np.mean(v) - fp32):+.2f}"]
        for label, v in scores.items()
    ]  # fmt: skip
    return rows, accuracy


LATENCY_HEADER = ["model", "IR", "u8/i8 MatMul+FC+Conv", "ms (f32 hint)", "ms (default)",
                  "keras_compress / NNCF, median (min..max of rounds): f32 / default",
                  "AVX2: keras_compress / NNCF; standalone FQ, Reorder (kc/NNCF)"]  # fmt: skip
ACCURACY_HEADER = ["IR", "mean accuracy", "min..max", "vs FP32 (points)"]


def run(quick=False, json_path=None):
    """Runs everything; returns the plain-text report (and writes the raw figures to `json_path`)."""
    calib, rounds, iterations, seeds, fp32_epochs, qat_epochs = (16, 7, 100, 3, 40, 3) if quick else (64, 15, 200, 3, 80, 5)
    workdir = Path(tempfile.mkdtemp(prefix="kc-transformers-"))
    results = []
    models = (
        ("BERT-style, 64 tokens, width 128", build_bert, {}, iterations),
        ("BERT-style, 256 tokens, width 512", build_bert, {"length": 256, "dim": 512, "heads": 8, "mlp": 2048},
         max(iterations // 10, 10)),
        ("ViT-style, 32x32, 64 patches", build_vit, {}, iterations),
    )
    for name, builder, sizes, count in models:
        keras.utils.set_random_seed(0)
        results.append(bench_model(name, builder(**sizes), workdir, calib, rounds, count))
    scores = digits_vit_accuracy(workdir, seeds, fp32_epochs, qat_epochs)
    rows, accuracy = tables(results, scores)
    if json_path:
        Path(json_path).write_text(json.dumps({"models": results, "digits": scores}, indent=1))
    lines = ["## Transformers: int8 share and latency, batch 1\n", format_table(LATENCY_HEADER, rows), ""]
    for r in results:
        lines.append(f"{r['model']}: kc.compress {r['compress_s']:.1f} s; IR vs Keras: max |diff| / max |output| = "
                     f"{r['agreement']:.3f}")  # fmt: skip
    lines += ["", f"## Digits ViT accuracy (load_digits test split, {seeds} seeds)\n", format_table(ACCURACY_HEADER, accuracy)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and epochs")
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    print(run(args.quick, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
