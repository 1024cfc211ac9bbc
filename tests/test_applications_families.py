"""Every keras.applications family: the smallest model of each, at its smallest input size, through
quantization, filter pruning and sparsity (one subprocess for all of them)."""

import json

import keras
import numpy as np
import pytest

from helpers import run_program

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
#: The families whose smallest model filter pruning leaves above 90% of its FLOPs, and the reason their skipped
#: layers must give: separable convolutions (NASNet, Xception) and grouped convolutions (ConvNeXt) take no
#: pruned inputs.
HARDLY_PRUNED = {
    "ConvNeXtTiny": "grouped convolution (groups=",
    "NASNetMobile": "separable layers are not pruned",
    "Xception": "separable layers are not pruned",
}

def application_families():
    """The families of keras.applications: the modules that define its model constructors."""
    return {fn.__module__.rsplit(".", 1)[-1] for name, fn in vars(keras.applications).items()
            if callable(fn) and name[:1].isupper()}  # fmt: skip


def test_every_family_is_listed():
    assert application_families() == set(SMALLEST)


@pytest.mark.slow
@pytest.mark.openvino
def test_the_smallest_model_of_every_family_compresses_trains_strips_and_exports(tmp_path):
    """kc.compress -> one fit step -> strip for every family; .keras save/load -> kc.export -> every
    Convolution, FullyConnected and MatMul in u8/i8 for the families in EXPORTED; filter pruning and
    sparsity -> one fit step for every family."""
    models = sorted(set(SMALLEST.values()))
    # CI=true: no OpenVINO telemetry (2-4 s per converter process).
    result = run_program("applications_families.py", json.dumps(models), ",".join(EXPORTED), env={"CI": "true"},
                         timeout=1800)  # fmt: skip
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
        if name in HARDLY_PRUNED:  # says why not, with the reason of its family
            assert any(reason.startswith(HARDLY_PRUNED[name]) for reason in pruning["left"]), (name, pruning)
        else:
            assert pruning["flops_ratio"] < 0.9, (name, pruning)
    hardly_pruned = sorted(name for name, r in results.items() if r["pruning"]["flops_ratio"] >= 0.9)
    assert hardly_pruned == sorted(HARDLY_PRUNED), {name: results[name]["pruning"] for name in hardly_pruned}
    for name in EXPORTED:
        runtime = results[name]["runtime"]
        assert all(key.endswith((":u8", ":i8")) for key in runtime), (name, runtime)
