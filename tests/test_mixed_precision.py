"""Mixed-precision quantization: per-layer bit widths by sensitivity, manual bits, export."""


import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import trained_digits_cnn
from keras_compress.benchmark import compile_ir, runtime_precisions
from keras_compress.demo import build_digits_cnn
from keras_compress.quantization.precision import assign_bitwidths, quantization_error

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def qconfig(bits=8, precision=None, num_init_samples=256):
    initializer = {
        "range": {"num_init_samples": num_init_samples},
        "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
    }
    if precision is not None:
        initializer["precision"] = precision
    return {
        "compression": {
            "algorithm": "quantization",
            "overflow_fix": "disable",
            "weights": {"per_channel": True, "bits": bits},
            "initializer": initializer,
        }
    }


def weight_bits(model):
    return {
        layer.name: layer.quantizers["kernel"].spec.bits
        for layer in model.layers
        if isinstance(layer, kc.QuantizeWrapper)
    }


def test_assign_bitwidths_meets_the_budget_and_prefers_insensitive_layers():
    sensitivity = {n: {4: s, 8: 0.0} for n, s in {"a": 5.0, "b": 1.0, "c": 3.0, "d": 0.1}.items()}
    sizes = {"a": 100, "b": 100, "c": 100, "d": 100}
    chosen = assign_bitwidths(sensitivity, sizes, [4, 8], 6.0)
    assert chosen == {"a": 8, "b": 4, "c": 8, "d": 4}
    chosen = assign_bitwidths(sensitivity, sizes, [4, 8], 4.0)
    assert set(chosen.values()) == {4}
    # Size matters: lowering a big layer saves more bits per unit of sensitivity.
    chosen = assign_bitwidths(sensitivity, {"a": 1000, "b": 10, "c": 10, "d": 10}, [4, 8], 6.0)
    assert chosen["a"] == 4


def test_quantization_error_shrinks_with_bits():
    w = np.random.default_rng(0).normal(size=(3, 3, 8, 16))
    errors = [quantization_error(w, b) for b in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_manual_bitwidth_per_scope_sets_exactly_the_bits_asked():
    model = build_digits_cnn()
    precision = {"type": "manual", "bitwidth_per_scope": [[4, "conv2"], [6, "{re}conv[13]"], [2, "logits"]]}
    compressed, _ = kc.compress(model, qconfig(8, precision))
    assert weight_bits(compressed) == {"conv1": 6, "conv2": 4, "conv3": 6, "logits": 2}


def sensitive_model():
    inputs = keras.Input((16,))
    a = keras.layers.Dense(16, name="sensitive")(inputs)
    a = keras.layers.Rescaling(100.0)(a)  # errors in this layer are amplified 100x
    b = keras.layers.Dense(16, name="plain")(inputs)
    return keras.Model(inputs, keras.layers.Concatenate()([a, b]))


@pytest.mark.parametrize("criterion", ["hessian", "loss_perturbation"])
def test_the_deliberately_sensitive_layer_gets_the_higher_bit_width(criterion):
    keras.utils.set_random_seed(0)
    model = sensitive_model()
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    precision = {"type": "hawq", "bits": [4, 8], "average_bits": 6, "criterion": criterion, "iter_number": 20}
    compressed, ctrl = kc.compress(model, qconfig(8, precision, 64), dataset=x)
    assert weight_bits(compressed) == {"sensitive": 8, "plain": 4}
    stats = ctrl.statistics().sections["quantization"]
    rows = {r[0]: r for r in stats["mixed precision"][1]}
    assert rows["sensitive/kernel"][2] > 10 * rows["plain/kernel"][2]
    assert stats["figures"]["weighted_weight_bits"] == pytest.approx(6.0)
    assert stats["figures"]["bits_budget"] == pytest.approx(6.0)


#: Accuracy differences smaller than this many test images are noise (one image is 1/360 of the
#: digits test set): accuracy comparisons allow this margin.
MARGIN_IMAGES = 4


@pytest.mark.slow
@pytest.mark.openvino
def test_mixed_precision_on_digits_between_uniform_4_and_8_bits(tmp_path):
    model, (x_train, y_train), (x_test, y_test) = trained_digits_cnn()
    margin = MARGIN_IMAGES / len(y_test)
    fp32 = model.predict(x_test, verbose=0)

    def fine_tuned(config):
        keras.utils.set_random_seed(1)
        compressed, ctrl = kc.compress(model, config, dataset=(x_train, y_train))
        # How far the outputs move from FP32 right after compression, over every test image: a
        # continuous measure, not a count of images that flip.
        distortion = float(np.mean(np.square(compressed.predict(x_test, verbose=0) - fp32)))
        compressed.compile(optimizer=keras.optimizers.Adam(1e-4), loss=LOSS, metrics=["accuracy"])
        compressed.fit(x_train, y_train, batch_size=64, epochs=3, verbose=0)
        return compressed, ctrl, distortion, compressed.evaluate(x_test, y_test, verbose=0)[1]

    _, _, d8, acc8 = fine_tuned(qconfig(8))
    _, _, d4, acc4 = fine_tuned(qconfig(4))
    precision = {"type": "hawq", "bits": [4, 8], "average_bits": 6, "iter_number": 50}
    mixed, ctrl, d_mixed, acc_mixed = fine_tuned(qconfig(8, precision))
    figures = ctrl.statistics().figures()
    assert figures["quantization/weighted_weight_bits"] <= 6.0
    assert set(weight_bits(mixed).values()) == {4, 8}
    # Between uniform 8 and 4 bits: in output distortion clearly, in accuracy within a few images.
    assert d8 < d_mixed < d4, (d8, d_mixed, d4)
    assert acc_mixed >= acc4 - margin, (acc_mixed, acc4, acc8)
    assert acc_mixed >= acc8 - 0.01 - margin, (acc_mixed, acc4, acc8)

    # The IR holds 16-level FakeQuantize (or int4-range weights) and matches the Keras model.
    xml = kc.export(mixed, tmp_path / "mixed")
    compiled = compile_ir(xml, "f32")
    got = compiled(x_test)[0]
    expected = mixed.predict(x_test, verbose=0)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.99
    counts = runtime_precisions(compiled)
    assert sum(counts.values()) == 4


def activation_bits(model):
    return {layer.name: layer.spec.bits for layer in model.layers if isinstance(layer, kc.FakeQuantize)}


def test_bitwidth_per_scope_output_suffix_sets_the_activation_quantizer_bits(caplog):
    model = build_digits_cnn()
    precision = {"type": "manual", "bitwidth_per_scope": [[4, "conv2|WEIGHT"], [6, "relu1|OUTPUT"],
                                                          [5, "image|OUTPUT"], [3, "conv1|OUTPUT"]]}  # fmt: skip
    with caplog.at_level("WARNING", logger="keras_compress"):
        compressed, _ = kc.compress(model, qconfig(8, precision))
    assert weight_bits(compressed) == {"conv1": 8, "conv2": 4, "conv3": 8, "logits": 8}
    bits = activation_bits(compressed)
    assert (bits.pop("image_quantizer"), bits.pop("relu1_quantizer")) == (5, 6)
    assert set(bits.values()) == {8}
    # conv1's output goes to BatchNormalization unquantized: the entry that sets nothing is named.
    assert "1 entry set the bits of no quantizer of model 'digits_cnn': [3, 'conv1|OUTPUT']" in caplog.text


def test_nncf_pytorch_scopes_are_resolved_by_module_path():
    """A Keras model whose layers carry the PyTorch module paths (as a port of a torchvision model would)
    takes NNCF's PyTorch manual mixed-precision scopes."""
    inputs = keras.Input((8, 8, 3), name="x")
    h = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Conv2D(8, 3, name="layer1.0.conv1")(h)
    h = keras.layers.Conv2D(8, 1, name="layer1_0_conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="avgpool")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(h))
    precision = {"type": "manual", "bitwidth_per_scope": [
        [4, "ResNet/NNCFConv2d[conv1]/conv2d_0|WEIGHT"],
        [6, "ResNet/Sequential[layer1]/Bottleneck[0]/NNCFConv2d[conv1]/conv2d_0|WEIGHT"],
        [2, "ResNet/Sequential[layer1]/Bottleneck[0]/NNCFConv2d[conv2]/conv2d_0|WEIGHT"],
        [5, "ResNet/NNCFLinear[fc]/linear_0|WEIGHT"],
        [7, "/nncf_model_input_0|OUTPUT"],
        [3, "ResNet/ReLU[relu]/relu__0|OUTPUT"],
    ]}  # fmt: skip
    with pytest.warns(kc.ConfigWarning, match="6 scope\\(s\\) are NNCF PyTorch names"):
        config = kc.load_config(qconfig(8, precision))
    compressed, _ = kc.compress(model, config)
    assert weight_bits(compressed) == {"conv1": 4, "layer1.0.conv1": 6, "layer1_0_conv2": 2, "fc": 5}
    bits = activation_bits(compressed)
    assert bits["x_quantizer"] == 7 and bits["relu_quantizer"] == 3
