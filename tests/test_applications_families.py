"""Every keras.applications family: the smallest model of each, at its smallest input size, through
quantization, filter pruning and sparsity (one subprocess for all of them)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


#: The smallest model of every keras.applications family (benchmarks/coverage.py checks that each is the
#: one with the fewest parameters) and its smallest input size with `weights=None`.
SMALLEST = {
    "convnext": ("ConvNeXtTiny", 32), "densenet": ("DenseNet121", 32), "efficientnet": ("EfficientNetB0", 32),
    "efficientnet_v2": ("EfficientNetV2B0", 32), "inception_resnet_v2": ("InceptionResNetV2", 75),
    "inception_v3": ("InceptionV3", 75), "mobilenet": ("MobileNet", 32), "mobilenet_v2": ("MobileNetV2", 32),
    "mobilenet_v3": ("MobileNetV3Small", 32), "nasnet": ("NASNetMobile", 32), "resnet": ("ResNet50", 32),
    "resnet_v2": ("ResNet50V2", 32), "vgg16": ("VGG16", 32), "vgg19": ("VGG19", 32),
    "xception": ("Xception", 71),
}  # fmt: skip
#: Families exported and checked in OpenVINO here (the others in benchmarks/coverage.py): keras.ops in the
#: graph (MobileNetV3's hard-swish, ConvNeXt's residuals), LayerNormalization and Dense on feature maps
#: (ConvNeXt), separable convolutions (Xception).
EXPORTED = ("MobileNetV3Small", "ConvNeXtTiny", "Xception")
#: The families whose smallest model filter pruning leaves above 90% of its FLOPs, each group listed with the
#: reason: separable convolutions (NASNet, Xception) and grouped convolutions (ConvNeXt) take no pruned inputs.
HARDLY_PRUNED = ["ConvNeXtTiny", "NASNetMobile", "Xception"]

APPLICATIONS_CHILD = """
import json, os, sys, tempfile
import numpy as np, keras
import keras_compress as kc
from keras_compress.benchmark import compile_ir, compute_op_precisions
from keras_compress.export.strip import strip_model
config = {"compression": {"algorithm": "quantization", "weights": {"per_channel": True},
          "initializer": {"range": {"num_init_samples": 1}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 1}}}}
prune_and_sparsify = {"compression": [
    {"algorithm": "filter_pruning", "pruning_init": 0.5, "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5}]}
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
workdir = tempfile.mkdtemp()

def layer_diff(compressed, stripped):
    # Layer by layer, on generated inputs: the whole model's output is no check, since a float
    # difference of 1e-6 (a baked weight against its fake-quant at run time) that lands on a rounding
    # boundary moves an activation one step, which a random deep network amplifies (DenseNet121: 65%).
    rng, worst = np.random.default_rng(1), 0.0
    inference = {layer.name: layer for layer in stripped.layers}
    assert [layer.name for layer in compressed.layers] == list(inference)
    for layer in compressed.layers[1:]:
        if isinstance(layer.input, (list, tuple)):
            continue  # merges have no weights
        t = rng.normal(size=(1, *layer.input.shape[1:])).astype("float32")
        a, b = np.asarray(layer(t)), np.asarray(inference[layer.name](t))
        worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)))
    return worst
for name, size in json.loads(sys.argv[1]):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype("float32")
    compressed, ctrl = kc.compress(model, config, dataset=x, verbose=0)
    compressed.compile(optimizer="sgd", loss=loss, run_eagerly=True)  # one step: tracing would cost more
    history = compressed.fit(x, np.zeros(1), epochs=1, verbose=0, callbacks=ctrl.callbacks())
    stripped = strip_model(compressed)
    result = {
        "model": name, "loss": history.history["loss"][-1], "skipped": ctrl.statistics().skipped(),
        "weight_quantizers": ctrl.statistics().figures()["quantization/weight_quantizers"],
        "variables": [len(model.variables), len(compressed.variables), len(stripped.variables)],
        "strip_diff": layer_diff(compressed, stripped),
    }
    pruned, pruning_ctrl = kc.compress(model, prune_and_sparsify, dataset=x, verbose=0)
    pruned.compile(optimizer="sgd", loss=loss, run_eagerly=True)
    pruning_history = pruned.fit(x, np.zeros(1), epochs=1, verbose=0, callbacks=pruning_ctrl.callbacks())
    figures = pruning_ctrl.statistics().figures()
    result["pruning"] = {"loss": pruning_history.history["loss"][-1], "flops_ratio": figures["filter_pruning/flops_ratio"],
                         "sparsity": figures["magnitude_sparsity/sparsity_level"],
                         "left": sorted({r.split(": ", 1)[1] for r in pruning_ctrl.statistics().skipped().values()})}
    if name in sys.argv[2].split(","):
        compressed.save(f"{workdir}/{name}.keras")
        xml = kc.export(keras.saving.load_model(f"{workdir}/{name}.keras"), f"{workdir}/{name}")
        result["runtime"] = {f"{t}:{p}": n for (t, p), n in compute_op_precisions(compile_ir(xml, "f32"), xml).items()}
    print("RESULT " + json.dumps(result), flush=True)
    keras.backend.clear_session()
"""


def application_families():
    """The families of keras.applications: the modules that define its model constructors."""
    return {fn.__module__.rsplit(".", 1)[-1] for name, fn in vars(keras.applications).items()
            if callable(fn) and name[:1].isupper()}  # fmt: skip


def test_every_family_is_listed():
    assert application_families() == set(SMALLEST)


@pytest.mark.slow
def test_the_smallest_model_of_every_family_compresses_trains_strips_and_exports(tmp_path):
    """kc.compress -> one fit step -> strip for every family; .keras save/load -> kc.export -> every
    Convolution, FullyConnected and MatMul in u8/i8 for the families in EXPORTED; filter pruning and
    sparsity -> one fit step for every family."""
    models = sorted(set(SMALLEST.values()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TF_CPP_MIN_LOG_LEVEL": "3",
           "CI": "true"}  # fmt: skip  (CI: no OpenVINO telemetry, 2-4 s per converter process)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(APPLICATIONS_CHILD), json.dumps(models), ",".join(EXPORTED)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = {r["model"]: r for r in (json.loads(line[7:]) for line in result.stdout.splitlines()
                                      if line.startswith("RESULT "))}  # fmt: skip
    assert set(results) == {name for name, _ in models}
    for name, r in results.items():
        assert np.isfinite(r["loss"]), name
        assert r["weight_quantizers"] > 0, name
        # Only ConvNeXt's LayerScale (a per-channel multiply with a weight) is left as it is.
        assert all("LayerScale" in reason for reason in r["skipped"].values()), (name, r["skipped"])
        fp32, compressed, stripped = r["variables"]
        # Quantizers hold ranges; the inference model holds them as constants: exactly the FP32 variables
        # (OpenVINO's converter crashed on NASNetMobile's SavedModel with its 2,604 variables).
        assert compressed > fp32 and stripped == fp32, (name, r["variables"])
        # Every stripped layer computes what it did, up to a rounding flip in the quantizer between the parts
        # of a separable convolution (NASNetMobile: 1.5e-3 of the output range; a wrong range or weight moves
        # whole outputs by far more).
        assert r["strip_diff"] < 1e-2, (name, r["strip_diff"])
        # Filter pruning (half the filters of every prunable group) and 50% magnitude sparsity, one step.
        pruning = r["pruning"]
        assert np.isfinite(pruning["loss"]) and abs(pruning["sparsity"] - 0.5) < 0.01, (name, pruning)
        assert pruning["flops_ratio"] < 0.9 or pruning["left"], (name, pruning)  # pruned, or says why not
    hardly_pruned = sorted(name for name, r in results.items() if r["pruning"]["flops_ratio"] >= 0.9)
    assert hardly_pruned == HARDLY_PRUNED, {name: results[name]["pruning"] for name in hardly_pruned}
    for name in EXPORTED:
        runtime = results[name]["runtime"]
        assert all(key.endswith((":u8", ":i8")) for key in runtime), (name, runtime)
