"""The `keras-compress demo`: digits CNN -> filter pruning + QAT -> OpenVINO IR, one results table.

Runs on `sklearn.datasets.load_digits` (1,797 real 8x8 digit images that ship with
scikit-learn), so it needs no download.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
from keras import layers

from keras_compress.benchmark import benchmark_models, compile_ir
from keras_compress.config import load_config
from keras_compress.controller import compress
from keras_compress.export import export
from keras_compress.statistics import format_table

__all__ = ["load_digits_split", "build_digits_cnn", "evaluate_ir", "run_demo", "DEMO_CONFIG"]

logger = logging.getLogger("keras_compress")

#: The demo's compression config: the packaged config of that name (`keras_compress/configs/demo.json`).
DEMO_CONFIG = "demo"


def load_digits_split(test_size=0.2, seed=0):
    """`load_digits` as `(x_train, y_train), (x_test, y_test)`: images (N, 8, 8, 1) in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError(
            "The demo needs scikit-learn for its dataset: pip install 'keras-compress[demo]'"
        ) from err
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)


def build_digits_cnn(width=32):
    """A small CNN for 8x8 digits (BatchNorm momentum 0.9: small data, see docs/training.md)."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = inputs
    for i, filters in enumerate((width, width * 2, width * 2)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        if i == 1:
            x = layers.MaxPooling2D(name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def evaluate_ir(xml, x, y, precision="f32", batch_size=64):
    """Top-1 accuracy of an OpenVINO IR on (x, y)."""
    compiled = compile_ir(xml, precision)
    predictions = [compiled(x[i : i + batch_size])[0].argmax(-1) for i in range(0, len(x), batch_size)]
    return float(np.mean(np.concatenate(predictions) == y))


def _ir_size(xml):
    xml = Path(xml)
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def run_demo(output="keras_compress_demo", epochs=None, fp32_epochs=30, verbose=0, seed=0):
    """Trains an FP32 digits CNN, compresses it, fine-tunes, exports FP32 and INT8 IRs.

    The compression is the packaged `demo` config: filter pruning to half the FLOPs plus 8-bit QAT.

    Prints one table (accuracy of the FP32 Keras model, the compressed Keras model and both
    IRs; IR sizes; batch-1 latency and batch-64 throughput of both IRs; speedups) and returns
    the figures as a dict.

    Args:
        output: directory for `fp32.xml` and `int8.xml`.
        epochs: fine-tuning epochs of the compressed model (default 8).
        fp32_epochs: training epochs of the FP32 model.
        verbose: Keras verbosity of training and of `kc.compress` (0: only the table is printed).
        seed: random seed.
    """
    keras.utils.set_random_seed(seed)
    epochs = 8 if epochs is None else epochs
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=fp32_epochs, verbose=verbose)
    fp32_acc = model.evaluate(x_test, y_test, verbose=0)[1]

    config = load_config(DEMO_CONFIG)
    compressed, ctrl = compress(model, config, dataset=(x_train, y_train), verbose=verbose)
    compressed.compile(optimizer=keras.optimizers.Adam(5e-4), loss=loss, metrics=["accuracy"])
    init_acc = compressed.evaluate(x_test, y_test, verbose=0)[1]
    compressed.fit(
        x_train, y_train, batch_size=64, epochs=epochs, callbacks=ctrl.callbacks(), verbose=verbose
    )
    qat_acc = compressed.evaluate(x_test, y_test, verbose=0)[1]

    out = Path(output)
    fp32_xml = export(model, out / "fp32")
    int8_xml = export(compressed, out / "int8")
    fp32_ir_acc = evaluate_ir(fp32_xml, x_test, y_test, "f32")
    int8_ir_acc = evaluate_ir(int8_xml, x_test, y_test)

    latency = benchmark_models(
        {"fp32": compile_ir(fp32_xml, "f32"), "int8": compile_ir(int8_xml)}, batch_size=1
    )
    throughput = benchmark_models(
        {"fp32": compile_ir(fp32_xml, "f32"), "int8": compile_ir(int8_xml)},
        batch_size=64,
        rounds=5,
        iterations=10,
    )
    results = {
        "fp32_keras_accuracy": fp32_acc,
        "compressed_keras_accuracy_init": init_acc,
        "compressed_keras_accuracy": qat_acc,
        "fp32_ir_accuracy": fp32_ir_acc,
        "int8_ir_accuracy": int8_ir_acc,
        "fp32_ir_bytes": _ir_size(fp32_xml),
        "int8_ir_bytes": _ir_size(int8_xml),
        "fp32_latency_ms": latency["fp32"]["latency_ms"],
        "int8_latency_ms": latency["int8"]["latency_ms"],
        "fp32_throughput": throughput["fp32"]["throughput"],
        "int8_throughput": throughput["int8"]["throughput"],
        "fp32_xml": str(fp32_xml),
        "int8_xml": str(int8_xml),
    }
    rows = [
        ["FP32 Keras", f"{fp32_acc:.4f}", "", "", ""],
        ["compressed Keras (after init)", f"{init_acc:.4f}", "", "", ""],
        [f"compressed Keras (after {epochs} epochs)", f"{qat_acc:.4f}", "", "", ""],
        [
            "FP32 IR (f32)",
            f"{fp32_ir_acc:.4f}",
            f"{results['fp32_ir_bytes'] / 1024:.1f}",
            f"{results['fp32_latency_ms']:.3f}",
            f"{results['fp32_throughput']:.0f}",
        ],
        [
            "INT8 IR",
            f"{int8_ir_acc:.4f}",
            f"{results['int8_ir_bytes'] / 1024:.1f}",
            f"{results['int8_latency_ms']:.3f}",
            f"{results['int8_throughput']:.0f}",
        ],
    ]
    print()
    print(f"keras_compress demo: load_digits ({len(x_train)} train / {len(x_test)} test images)")
    print(
        format_table(
            ["model", "test accuracy", "IR KiB", "latency ms (b=1)", "throughput /s (b=64)"],
            rows,
        )
    )
    print(
        f"INT8 vs FP32 IR: accuracy {100 * (int8_ir_acc - fp32_ir_acc):+.2f} points, "
        f"size {results['fp32_ir_bytes'] / results['int8_ir_bytes']:.2f}x smaller, "
        f"latency {results['fp32_latency_ms'] / results['int8_latency_ms']:.2f}x, "
        f"throughput {results['int8_throughput'] / results['fp32_throughput']:.2f}x"
    )
    figures = ctrl.statistics().figures()
    if "filter_pruning/flops_ratio" in figures:
        results["flops_ratio"] = figures["filter_pruning/flops_ratio"]
        results["params_ratio"] = figures["filter_pruning/params_ratio"]
        print(
            f"Filter pruning kept {100 * results['flops_ratio']:.0f}% of the FLOPs and "
            f"{100 * results['params_ratio']:.0f}% of the parameters (filters removed in the IR)"
        )
    print(f"IRs written to {fp32_xml} and {int8_xml}")
    return results
