"""Subclassed vs Functional: the same network written both ways, compressed with QAT, compared.

The digits CNN of the demo (`keras_compress.demo.build_digits_cnn`) and the same layers written as a
`keras.Model` subclass (`DigitsNet`: blocks held in a list, a loop in `call`). For each seed, the
Functional model is trained in FP32, the subclass gets the same weights, both are compressed with
`configs/int8.json` and fine-tuned with the same batches; then both INT8 IRs are exported and their
batch-1 latencies are measured in interleaved rounds in one process, with the runtime precision of
every Convolution / FullyConnected / MatMul op.

A subclassed transformer encoder (MultiHeadAttention blocks in a loop over a list) is compressed and
exported too, for the int8 share of its MatMul / FullyConnected ops.

Usage:
    python benchmarks/subclassed.py [--quick] [--json out.json]
Needs the `demo` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, compute_op_precisions  # noqa: E402
from keras_compress.demo import build_digits_cnn, evaluate_ir, load_digits_split  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402

# The subclassed models of the tests (registered, so that the compressed ones save and load).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from subclassed_models import DigitsNet, TextEncoder  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def copy_weights(functional, subclass):
    """The Functional digits CNN's weights into the subclass, layer by layer."""
    for i, block in enumerate(subclass.blocks, start=1):
        block.conv.set_weights(functional.get_layer(f"conv{i}").get_weights())
        block.bn.set_weights(functional.get_layer(f"bn{i}").get_weights())
    subclass.head.set_weights(functional.get_layer("logits").get_weights())


def int8_share(xml):
    """`(int8 ops, ops, counts)` over the IR's Convolution/FullyConnected/MatMul ops in the runtime
    (the MatMuls fused into OpenVINO's attention kernel included)."""
    counts = compute_op_precisions(compile_ir(xml), xml)
    total = sum(counts.values())
    low = sum(n for (_, p), n in counts.items() if p in ("u8", "i8"))
    return low, total, counts


def digits_run(seed, epochs, qat_epochs, out):
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=seed)
    keras.utils.set_random_seed(seed)
    functional = build_digits_cnn()
    functional.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, metrics=["accuracy"])
    functional.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    subclass = DigitsNet()
    subclass(x_train[:1])
    copy_weights(functional, subclass)
    fp32 = functional.evaluate(x_test, y_test, verbose=0)[1]
    same = np.abs(subclass.predict(x_test, verbose=0) - functional.predict(x_test, verbose=0)).max()
    assert same < 1e-4, f"the subclass does not compute what the Functional model does ({same})"
    row = {"seed": seed, "fp32": fp32}
    for name, model in (("functional", functional), ("subclass", subclass)):
        compressed, ctrl = kc.compress(model, "int8", dataset=(x_train, y_train), verbose=0)
        compressed.compile(optimizer=keras.optimizers.Adam(5e-4), loss=LOSS, metrics=["accuracy"])
        keras.utils.set_random_seed(seed + 1)  # the same batches for both
        compressed.fit(x_train, y_train, batch_size=64, epochs=qat_epochs, verbose=0, callbacks=ctrl.callbacks())
        row[f"{name}_qat"] = compressed.evaluate(x_test, y_test, verbose=0)[1]
        xml = kc.export(compressed, out / f"{name}_{seed}" / "model")
        row[f"{name}_ir"] = evaluate_ir(xml, x_test, y_test, precision="default")
        row[f"{name}_xml"] = str(xml)
    return row


def transformer_run(out):
    keras.utils.set_random_seed(0)
    model = TextEncoder(vocab=1000, length=64, dim=128)
    ids = np.random.default_rng(0).integers(0, 1000, (64, 64))
    model(ids[:1])
    compressed, ctrl = kc.compress(model, "int8", dataset=ids, verbose=0)
    xml = kc.export(compressed, out / "encoder" / "model")
    low, total, counts = int8_share(xml)
    return {"int8_ops": low, "ops": total, "counts": {f"{t}:{p}": n for (t, p), n in counts.items()},
            "skipped": ctrl.statistics().skipped()}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds and fewer epochs instead of 5 seeds")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    seeds = range(3) if args.quick else range(5)
    epochs, qat_epochs = (20, 3) if args.quick else (30, 5)
    results = {"digits": [], "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for seed in seeds:
            results["digits"].append(digits_run(seed, epochs, qat_epochs, out))
        first = results["digits"][0]
        compiled = {name: compile_ir(first[f"{name}_xml"]) for name in ("functional", "subclass")}
        latency = benchmark_models(compiled, batch_size=1, rounds=15, iterations=50)
        results["latency_ms"] = {name: latency[name]["latency_ms"] for name in compiled}
        results["int8"] = {name: int8_share(first[f"{name}_xml"])[:2] for name in compiled}
        results["transformer"] = transformer_run(out)
    rows = [[r["seed"], f"{r['fp32']:.4f}", f"{r['functional_qat']:.4f}", f"{r['subclass_qat']:.4f}",
             f"{r['functional_ir']:.4f}", f"{r['subclass_ir']:.4f}"] for r in results["digits"]]  # fmt: skip
    mean = {k: float(np.mean([r[k] for r in results["digits"]])) for k in
            ("fp32", "functional_qat", "subclass_qat", "functional_ir", "subclass_ir")}  # fmt: skip
    rows.append(["mean", *(f"{mean[k]:.4f}" for k in mean)])
    results["mean"] = mean
    print(f"Digits CNN, {len(seeds)} splits of load_digits ({epochs} FP32 epochs, {qat_epochs} QAT epochs, int8.json)")
    print(format_table(["seed", "FP32", "QAT Functional", "QAT subclass", "INT8 IR Functional",
                        "INT8 IR subclass"], rows))  # fmt: skip
    gap = 100 * (mean["subclass_qat"] - mean["functional_qat"])
    print(f"QAT accuracy, subclass - Functional: {gap:+.2f} points (mean over {len(seeds)} splits)")
    lat = results["latency_ms"]
    print(f"INT8 IR batch-1 latency: Functional {lat['functional']:.4f} ms, subclass {lat['subclass']:.4f} ms, "
          f"ratio subclass/Functional {lat['subclass'] / lat['functional']:.3f}")
    for name, (low, total) in results["int8"].items():
        print(f"{name}: {low}/{total} Convolution/FullyConnected/MatMul ops run u8/i8")
    t = results["transformer"]
    print(f"Subclassed transformer encoder (2 MultiHeadAttention blocks in a list): {t['int8_ops']}/{t['ops']} "
          f"MatMul/FullyConnected ops run u8/i8 ({100 * t['int8_ops'] / max(t['ops'], 1):.0f}%) {t['counts']}")
    if t["skipped"]:
        print(f"  left uncompressed: {t['skipped']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
