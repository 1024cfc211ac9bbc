"""INT8 speed and accuracy: keras_compress QAT vs FP32 vs NNCF post-training quantization.

For each model (keras.applications, weights=None, 224x224), in one process:
  - FP32 IR with INFERENCE_PRECISION_HINT=f32, and with the CPU plugin's default precision
    (bf16 on CPUs with AVX512-BF16);
  - keras_compress INT8 IR: `kc.compress(model, configs/int8.json, dataset=generated data)`,
    then `kc.export`;
  - NNCF post-training INT8 of the same FP32 IR (`nncf.quantize`, OpenVINO backend): what a
    Keras 3 user can do today without keras_compress.
Latency is the median of interleaved repeated runs at batch 1, with ratios against f32.
Also: QAT train-step time over FP32 train-step time, and on the digits CNN the test accuracy
of FP32, NNCF post-training INT8 and keras_compress QAT INT8 (after fine-tuning).

Usage:
    python benchmarks/int8_speed.py [--models ResNet50 MobileNetV2] [--quick]
Needs the `bench` extra (nncf) and the `demo` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import benchmark_models, compile_ir, runtime_precisions  # noqa: E402
from keras_compress.bn_adaptation import adapt_batchnorm  # noqa: E402
from keras_compress.statistics import format_table  # noqa: E402


def nncf_ptq(fp32_xml, samples, out_xml, model_type=None):
    """NNCF post-training quantization of an FP32 IR (OpenVINO backend).

    `samples`: an array of samples, or `{input name: array}` for a model with several inputs;
    `model_type`: None, or the name of an `nncf.ModelType` ("TRANSFORMER")."""
    import nncf
    import openvino as ov

    if isinstance(samples, dict):
        count = len(next(iter(samples.values())))
        items = [{name: array[i : i + 1] for name, array in samples.items()} for i in range(count)]
    else:
        items = [s[None] for s in samples]
    options = {} if model_type is None else {"model_type": getattr(nncf.ModelType, model_type)}
    model = ov.Core().read_model(str(fp32_xml))
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **options)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml


def realistic_biases(model, seed=0, stddev=0.05):
    """Gives every all-zero bias and normalization offset (`bias`, `beta`) small random values.

    A trained model has none at zero, and `weights=None` leaves all of them there: OpenVINO drops
    an all-zero bias, which changes what it fuses. Without its bias, a `Dense -> GELU` ran as two
    int8 FullyConnected ops, one per branch of the GELU's Erf formula (ConvNeXt's MLPs, OpenVINO
    2026.4), in the FP32 and both INT8 IRs alike.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for weight in layer.weights:
            name = weight.path.rsplit("/", 1)[-1]
            if name in ("bias", "beta") and not np.any(keras.ops.convert_to_numpy(weight)):
                weight.assign(rng.normal(0.0, stddev, weight.shape).astype("float32"))


#: Runtime-graph ops that a good INT8 placement leaves out: a FakeQuantize the CPU plugin could not fuse
#: into the op before it runs on its own (in f32 when it reads a float tensor), and a Reorder converts
#: layouts or precisions between two ops (see docs/quantization.md).
STANDALONE_OPS = ("FakeQuantize", "Reorder")


def standalone_ops(compiled):
    """`{"FakeQuantize": n, "Reorder": n}`: the standalone ops of a compiled model's runtime graph."""
    counts = dict.fromkeys(STANDALONE_OPS, 0)
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer_type = info["layerType"].astype(str) if "layerType" in info else ""
        if layer_type in counts:
            counts[layer_type] += 1
    return counts


def compute_isa(compiled):
    """The instruction sets named by the primitives of the runtime graph's Convolution/FullyConnected/MatMul
    ops (`avx512`, `amx`, `avx2`, ...): shows that `ONEDNN_MAX_CPU_ISA=AVX2` capped the plugin."""
    found = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul"):
            primitive = info["primitiveType"].astype(str).lower() if "primitiveType" in info else ""
            found |= {isa for isa in ("amx", "avx512", "avx2", "sse41") if isa in primitive}
    return sorted(found)


def runtime_figures(xmls, inputs, rounds, iterations, warmup=5, hints=("f32", "default")):
    """Latency, runtime int8 share and standalone ops of the FP32, keras_compress and NNCF IRs.

    Args:
        xmls: `{"FP32": path, "kc": path, "NNCF": path}`.
        inputs: one sample batch (array, or `{input name: array}`) fed to every model.
        rounds, iterations, warmup: `benchmark_models` arguments (interleaved rounds).
        hints: the precision hints to compile with ("f32": INFERENCE_PRECISION_HINT=f32, "default").

    Returns:
        A JSON-ready dict: `latency_ms` per "<IR> (<hint>)", `ratios` `{hint: [median, min, max]}` of the
        kc / NNCF latency over rounds, `standalone` and `int8` (`[u8/i8 ops, all]`, Conv/FC/MatMul) per IR
        for the last hint, and `isa`, the instruction sets of the int8 primitives.
    """
    from keras_compress.benchmark import compute_op_precisions

    compiled = {f"{label} ({hint})": compile_ir(xml, hint) for label, xml in xmls.items() for hint in hints}
    times = benchmark_models(compiled, rounds=rounds, iterations=iterations, warmup=warmup,
                             inputs={k: inputs for k in compiled})  # fmt: skip
    result = {"latency_ms": {k: v["latency_ms"] for k, v in times.items()}, "ratios": {}, "standalone": {}, "int8": {}}
    for hint in hints:
        ratio = np.array(times[f"kc ({hint})"]["rounds_ms"]) / np.array(times[f"NNCF ({hint})"]["rounds_ms"])
        result["ratios"][hint] = [float(np.median(ratio)), float(ratio.min()), float(ratio.max())]
    for label, xml in xmls.items():
        model = compiled[f"{label} ({hints[-1]})"]
        result["standalone"][label] = standalone_ops(model)
        counts = compute_op_precisions(model, xml)
        result["int8"][label] = [sum(n for (_, p), n in counts.items() if p in ("u8", "i8")), sum(counts.values())]
    result["isa"] = compute_isa(compiled[f"kc ({hints[-1]})"])
    return result


RUNTIME_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {here!r})
{preamble}
from int8_speed import runtime_figures
data = np.load({inputs!r})
inputs = {{k: data[k] for k in data.files}}
inputs = inputs["x"] if list(inputs) == ["x"] else inputs
print("RESULT " + json.dumps(runtime_figures({xmls!r}, inputs, {rounds}, {iterations}, hints={hints!r})))
"""


#: In a capped child, every CPU compile starts from the choices the plugin makes by itself on an AVX2 CPU
#: (tests/avx2_openvino.py, which the test runs use too): f32 by default, and no on-the-fly quantization of
#: the float inputs of a FullyConnected with int8 weights (NNCF leaves some; with the real CPU's choice the
#: capped plugin finds no inner-product kernel for them). Settings the caller passes win.
AVX2_PREAMBLE = f"""
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent / "tests")!r})
import avx2_openvino
avx2_openvino.install()
"""


def runtime_figures_in_child(xmls, inputs, rounds, iterations, isa=None):
    """`runtime_figures` in a fresh process; `isa="AVX2"` caps OpenVINO's CPU plugin to AVX2 kernels there
    (`ONEDNN_MAX_CPU_ISA`, read when the plugin loads, so it takes a process of its own).

    Capped, the models are compiled with the f32 hint only: an AVX2 CPU's default precision is f32, while
    the capped plugin still picks bf16 by default on this CPU and fails to compile an FP32 IR's pooling
    ("Supported primitive descriptors list is empty", OpenVINO 2026.4)."""
    import json
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "inputs.npz")
        np.savez(path, **(inputs if isinstance(inputs, dict) else {"x": inputs}))
        env = dict(os.environ, **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
        code = RUNTIME_CHILD.format(here=str(Path(__file__).resolve().parent), inputs=path,
                                    xmls={k: str(v) for k, v in xmls.items()}, rounds=rounds, iterations=iterations,
                                    hints=("f32",) if isa else ("f32", "default"),
                                    preamble=AVX2_PREAMBLE if isa else "")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    lines = [line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"runtime measurement failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def ratio_text(ratio):
    """`[median, min, max]` as "0.97 (0.91..1.04)"."""
    return f"{ratio[0]:.2f} ({ratio[1]:.2f}..{ratio[2]:.2f})"


def standalone_text(figures):
    """kc's and NNCF's standalone FakeQuantize / Reorder counts as "FQ 0/0, Reorder 2/2" (kc/NNCF)."""
    kc, nncf = figures["standalone"]["kc"], figures["standalone"]["NNCF"]
    return f"FQ {kc['FakeQuantize']}/{nncf['FakeQuantize']}, Reorder {kc['Reorder']}/{nncf['Reorder']}"


def precision_summary(compiled):
    counts = runtime_precisions(compiled)
    return ", ".join(f"{t[:4]} {p}:{n}" for (t, p), n in sorted(counts.items()))


def train_step_ratio(model, compressed, batch, steps=6):
    """Median train-step time of the compressed model over that of the FP32 model (interleaved steps)."""
    x, y = batch
    times = {"fp32": [], "qat": []}
    models = {"fp32": model, "qat": compressed}
    for m in models.values():
        m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.train_on_batch(x, y)  # trace
    for _ in range(steps):
        for name, m in models.items():
            start = time.perf_counter()
            m.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    times = {name: float(np.median(t)) for name, t in times.items()}
    return times["qat"] / times["fp32"], times


def bench_application(name, workdir, num_calib, rounds, train_batch):
    rng = np.random.default_rng(0)
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
    calib = rng.uniform(-1, 1, (num_calib, 224, 224, 3)).astype("float32")
    # A trained model's BatchNorm statistics are never the initial mean 0 / variance 1, which
    # fold into all-zero conv biases that OpenVINO drops (one post-op less per convolution for
    # whichever IR keeps them). Estimate them on the calibration data, as training would, so
    # both INT8 IRs start from the same realistic FP32 model. Biases likewise (`realistic_biases`).
    realistic_biases(model)
    adapt_batchnorm(model, np.array_split(calib, max(1, num_calib // 8)), num_calib, verbose=0)
    config = kc.load_config(resources.files("keras_compress") / "configs" / "int8.json")
    config.compression[0].initializer.range.num_init_samples = num_calib
    config.compression[0].initializer.batchnorm_adaptation.num_bn_adaptation_samples = num_calib
    start = time.perf_counter()
    compressed, ctrl = kc.compress(model, config, dataset=calib, verbose=0)
    compress_s = time.perf_counter() - start
    fp32_xml = kc.export(model, workdir / f"{name}_fp32")
    int8_xml = kc.export(compressed, workdir / f"{name}_kc_int8")
    nncf_xml = nncf_ptq(fp32_xml, calib, workdir / f"{name}_nncf_int8.xml")
    xmls = {"FP32": fp32_xml, "kc": int8_xml, "NNCF": nncf_xml}
    figures = runtime_figures(xmls, calib[:1], rounds, iterations=20)
    avx2 = runtime_figures_in_child(xmls, calib[:1], rounds, iterations=20, isa="AVX2")
    ms = figures["latency_ms"]
    base, default = ms["FP32 (f32)"], ms["FP32 (default)"]
    labels = {"FP32": "FP32", "kc": "keras_compress INT8", "NNCF": "NNCF PTQ INT8"}
    rows = []
    for label, xml in xmls.items():
        for hint in ("f32", "default") if label == "FP32" else ("default",):
            compiled = compile_ir(xml, hint)
            latency = ms[f"{label} ({hint})"]
            ratio = "" if label != "kc" else (
                f"{ratio_text(figures['ratios']['f32'])} / {ratio_text(figures['ratios']['default'])} / "
                f"{ratio_text(avx2['ratios']['f32'])}"
            )  # fmt: skip
            standalone = figures["standalone"][label]
            rows.append([
                name, f"{labels[label]} ({hint})" if label == "FP32" else labels[label], f"{latency:.2f}",
                f"{base / latency:.2f}x", f"{default / latency:.2f}x", precision_summary(compiled),
                f"{standalone['FakeQuantize']}, {standalone['Reorder']}", ratio,
            ])  # fmt: skip
    ratio, times = train_step_ratio(
        model, compressed,
        (rng.uniform(-1, 1, (train_batch, 224, 224, 3)).astype("float32"),
         rng.integers(0, 1000, (train_batch,))),
    )  # fmt: skip
    extra = (
        f"{name}: kc.compress {compress_s:.1f} s; AVX2-capped standalone FakeQuantize/Reorder (kc/NNCF): "
        f"{standalone_text(avx2)}; QAT train step / FP32 train step (batch {train_batch}): "
        f"{ratio:.2f}x ({times['qat'] * 1000:.0f} ms / {times['fp32'] * 1000:.0f} ms)"
    )
    return rows, extra


#: Columns of `bench_application`'s rows.
HEADER = ["model", "IR", "latency ms", "vs FP32 f32", "vs FP32 default", "runtime precision",
          "standalone FQ, Reorder", "kc / NNCF: f32 hint / default / AVX2"]  # fmt: skip


def digits_accuracy(workdir, epochs, seeds, config="int8.json"):
    """Digits CNN IR test accuracy: FP32 vs NNCF PTQ INT8 vs keras_compress QAT INT8.

    keras_compress fine-tunes with `configs/int8.json` (8-bit QAT only, as for ResNet50 and
    MobileNetV2 above), so the comparison is quantization against quantization.

    One test split has 360 images (0.28 points each), so each figure is the mean over
    `seeds` different splits and initializations.
    """
    from keras_compress.demo import build_digits_cnn, evaluate_ir, load_digits_split

    scores = {"FP32 IR (f32)": [], "NNCF PTQ INT8 IR": [], f"keras_compress QAT INT8 IR ({epochs} epochs)": []}
    config = resources.files("keras_compress") / "configs" / config
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        (x_train, y_train), (x_test, y_test) = load_digits_split(seed=seed)
        model = build_digits_cnn()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=64, epochs=30, verbose=0)
        fp32_xml = kc.export(model, workdir / f"digits{seed}_fp32")
        nncf_xml = nncf_ptq(fp32_xml, x_train[:300], workdir / f"digits{seed}_nncf_int8.xml")
        compressed, _ = kc.compress(model, config, dataset=(x_train, y_train))
        compressed.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
        compressed.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
        kc_xml = kc.export(compressed, workdir / f"digits{seed}_kc_int8")
        for (label, values), xml in zip(scores.items(), (fp32_xml, nncf_xml, kc_xml)):
            values.append(evaluate_ir(xml, x_test, y_test, "f32" if xml is fp32_xml else "default"))
    fp32 = np.mean(scores["FP32 IR (f32)"])
    return [
        [label, f"{np.mean(v):.4f}", f"{np.min(v):.4f}..{np.max(v):.4f}",
         "" if label.startswith("FP32") else f"{100 * (np.mean(v) - fp32):+.2f}"]
        for label, v in scores.items()
    ]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50", "MobileNetV2"])
    parser.add_argument("--calib", type=int, default=64, help="calibration samples")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4, help="QAT epochs on digits")
    parser.add_argument("--seeds", type=int, default=5, help="digits splits/initializations")
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.calib, args.rounds, args.train_batch, args.seeds = 16, 3, 4, 2
    workdir = Path(tempfile.mkdtemp(prefix="kc-int8-bench-"))
    rows, notes = [], []
    for name in args.models:
        r, note = bench_application(name, workdir, args.calib, args.rounds, args.train_batch)
        rows += r
        notes.append(note)
    print("## INT8 latency, batch 1 (median of interleaved runs)\n")
    print(format_table(HEADER, rows))
    print()
    for note in notes:
        print(note)
    print(f"\n## Digits CNN accuracy (load_digits test split, mean of {args.seeds} seeds)\n")
    rows = digits_accuracy(workdir, args.epochs, args.seeds)
    print(format_table(["IR", "mean accuracy", "min..max", "vs FP32 (points)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
