"""Subclassed models: compressed as they are, saved, loaded in a new process, exported to INT8."""

import json

import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import int8_counts, propagated_step, quantization_config, run_program
from keras_compress.benchmark import compile_ir, compute_op_precisions, runtime_precisions
from keras_compress.graph import iter_layers
from subclassed_models import (
    DigitsNet,
    TextEncoder,
    Unconfigurable,
    WithBackbone,
)


def _images(n=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 1)).astype("float32")


def _digits_net(seed=0):
    keras.utils.set_random_seed(seed)
    model = DigitsNet(width=8)
    model(_images(2))
    return model


def test_compress_leaves_the_subclassed_model_unchanged_and_wraps_every_conv_and_dense():
    model = _digits_net()
    before = [w.copy() for w in model.get_weights()]
    x = _images()
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    assert isinstance(compressed, kc.CompressedModel) and isinstance(compressed, DigitsNet)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert not any(isinstance(layer, (kc.QuantizeWrapper, kc.FakeQuantize)) for layer in iter_layers(model))
    stats = ctrl.statistics()
    assert stats.figures()["quantization/weight_quantizers"] == 4  # three convs and the classifier
    # Inputs of the three convs, of the average pooling and of the classifier.
    assert stats.figures()["quantization/activation_quantizers"] == 5
    assert stats.figures()["quantization/unsigned_activation_share"] == 1.0  # all after ReLU or images
    # 8-bit fake quantization changes the logits a little (a few percent), not more.
    reference, output = model.predict(x, verbose=0), compressed.predict(x, verbose=0)
    assert np.linalg.norm(output - reference) < 0.1 * np.linalg.norm(reference)
    assert compressed.blocks[0].filters == 8  # the user's attributes are reachable


@pytest.mark.openvino
def test_subclassed_cnn_trains_saves_loads_in_a_new_process_and_exports_int8(tmp_path):
    model = _digits_net()
    x, y = _images(64), np.arange(64) % 10
    # The overflow fix (the default; off in the helper) keeps the weights on a 7-bit grid, the grid the int8
    # kernels of CPUs without VNNI keep: only with it does the IR compute what Keras does on every x86 CPU.
    # Measured (the IR's distance to Keras in the propagated steps asserted below): with the fix 0.09 with the
    # kernels capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2); without it 15 there, and 1e-5 on AVX512-VNNI.
    config = quantization_config(bn_samples=32, overflow_fix="enable")
    compressed, ctrl = kc.compress(model, config, dataset=(x, y))
    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scales = [v for v in compressed.trainable_weights if v.name == "activation_scale"]
    before = [float(v.numpy()) for v in scales]
    compressed.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=ctrl.callbacks())
    assert any(abs(float(v.numpy()) - b) > 1e-6 for v, b in zip(scales, before)), "ranges are trained"
    path = tmp_path / "subclassed.keras"
    compressed.save(path)
    expected = compressed.predict(x[:8], verbose=0)
    np.save(tmp_path / "x.npy", x[:8])
    np.save(tmp_path / "expected.npy", expected)
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = run_program("subclassed_reload.py", path, "config.json", "x.npy", "expected.npy", cwd=tmp_path).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["type"] == "DigitsNet" and result["compressed"]
    assert result["same"] < 1e-5
    assert result["counts"] == {"Convolution:u8": 3, "FullyConnected:u8": 1}
    # Within one step of the classifier's input quantizer, propagated through the classifier.
    (quantizer,) = [layer for layer in iter_layers(compressed.head) if isinstance(layer, kc.FakeQuantize)]
    (dense,) = [layer for layer in iter_layers(compressed.head) if type(layer) is keras.layers.Dense]
    step = propagated_step(quantizer, dense.kernel)
    assert np.abs(np.asarray(result["ir"]) - expected).max() < step, step


def test_strip_of_a_subclassed_model_keeps_its_outputs_and_leaves_it_trainable():
    model = _digits_net()
    x = _images()
    config = {"compression": [quantization_config()["compression"], {"algorithm": "magnitude_sparsity",
                                                                      "sparsity_init": 0.5}]}  # fmt: skip
    compressed, ctrl = kc.compress(model, config, dataset=x)
    stripped = ctrl.strip()
    np.testing.assert_allclose(stripped.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-4)
    kinds = {type(layer).__name__ for layer in iter_layers(stripped)}
    assert "MagnitudeSparsityWrapper" not in kinds and "QuantizeWrapper" in kinds
    kernels = [layer.kernel.numpy() for layer in iter_layers(stripped) if isinstance(layer, (keras.layers.Conv2D,
                                                                                           keras.layers.Dense))]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.5, abs=0.01)  # the masks are folded into the weights
    assert any(isinstance(layer, kc.MagnitudeSparsityWrapper) for layer in iter_layers(compressed))


@pytest.mark.parametrize("algorithm", ["magnitude_sparsity", "rb_sparsity", "movement_sparsity"])
def test_sparsity_works_on_a_subclassed_model(algorithm):
    model = _digits_net()
    x, y = _images(64), np.arange(64) % 10
    section = {"algorithm": algorithm, "sparsity_init": 0.3, "params": {"sparsity_target": 0.6,
                                                                        "sparsity_target_epoch": 2}}
    if algorithm == "movement_sparsity":
        section = {"algorithm": algorithm, "params": {"warmup_start_epoch": 0, "warmup_end_epoch": 2,
                                                      "importance_regularization_factor": 0.01, "sparsity_target": 0.5}}
    compressed, ctrl = kc.compress(model, {"compression": section}, dataset=x)
    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    compressed.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=ctrl.callbacks())
    stats = ctrl.statistics()
    layers = stats.sections[algorithm]["layers"][1]
    expected_layers = 1 if algorithm == "movement_sparsity" else 4  # movement: Dense only
    assert len(layers) == expected_layers
    if algorithm == "magnitude_sparsity":
        assert stats.figures()["magnitude_sparsity/sparsity_level"] == pytest.approx(0.6, abs=0.02)
    elif algorithm == "movement_sparsity":
        assert stats.figures()["movement_sparsity/sparsity_level"] == pytest.approx(0.5, abs=0.05)
    else:
        assert stats.figures()["rb_sparsity/target_level"] == pytest.approx(0.6, abs=0.01)


def test_mixed_precision_assigns_bits_to_a_subclassed_model():
    model = _digits_net()
    x = _images(32)
    config = quantization_config()
    config["compression"]["initializer"]["precision"] = {
        "type": "hawq", "bits": [4, 8], "average_bits": 6, "num_data_points": 16, "iter_number": 4,
    }  # fmt: skip
    compressed, ctrl = kc.compress(model, config, dataset=x)
    rows = ctrl.statistics().sections["quantization"]["mixed precision"][1]
    assert len(rows) == 4
    assert {row[3] for row in rows} <= {4, 8} and 4 in {row[3] for row in rows}
    assert rows[0][0].startswith("blocks/")  # paths of the user's attributes
    assert ctrl.statistics().figures()["quantization/weighted_weight_bits"] <= 6.0 + 1e-6


def test_filter_pruning_refuses_a_subclassed_model_with_what_to_do():
    model = _digits_net()
    with pytest.raises(ValueError, match="Functional API") as err:
        kc.compress(model, {"compression": {"algorithm": "filter_pruning"}}, dataset=_images(4))
    assert "subclassed" in str(err.value) and "DigitsNet" in str(err.value)


def test_a_subclass_that_cannot_be_copied_gets_a_clear_error():
    model = Unconfigurable(3)
    model(np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="get_config"):
        kc.compress(model, quantization_config(), dataset=np.zeros((4, 2), "float32"))


def test_a_functional_backbone_inside_a_subclass_is_compressed_with_its_graph():
    model = WithBackbone()
    x = _images(16)
    model(x)
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    names = [layer.name for layer in compressed.backbone.layers]
    assert "bb_conv1_quantizer" in names  # a graph quantizer between the two convolutions
    assert isinstance(compressed.backbone.get_layer("bb_conv2"), kc.QuantizeWrapper)
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == 3


@pytest.mark.openvino
def test_subclassed_transformer_is_quantized_with_its_attention_and_runs_int8(tmp_path):
    keras.utils.set_random_seed(0)
    model = TextEncoder()
    ids = np.random.default_rng(0).integers(0, 100, (16, 16))
    model(ids)
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=ids)
    wrapped = [layer for layer in iter_layers(compressed) if isinstance(layer, kc.QuantizeWrapper)]
    # Per block: two MLP Dense layers (held in a dict) and the attention's four projections; the classifier.
    assert len(wrapped) == 2 * (2 + 4) + 1
    # The attention is a composite layer of its compressed class, its matmul inputs quantized.
    assert all(isinstance(compressed.encoder[i].attention, kc.CompressedLayer) for i in range(2))
    assert all(len(vars(compressed.encoder[i].attention)["_compression_operations"]) == 4 for i in range(2))
    skipped = ctrl.statistics().skipped()
    assert sum(reason.endswith("embedding weights are not quantized") for reason in skipped.values()) == 2
    assert len(skipped) == 2
    reference, output = model.predict(ids, verbose=0), compressed.predict(ids, verbose=0)
    assert np.linalg.norm(output - reference) < 0.1 * np.linalg.norm(reference)
    xml = kc.export(compressed, tmp_path / "encoder")
    counts = compute_op_precisions(compile_ir(xml, "f32"), xml)
    # Per block: four projections, two MLP Dense layers, two attention matmuls; and the classifier. (With
    # its all-zero initial bias, OpenVINO runs each Dense(gelu) as two FullyConnected ops: 15, not 13.) All in
    # int8: u8 or i8 by the CPU (on AVX2 the probabilities x values MatMul runs u8, on AVX512-VNNI i8).
    assert int8_counts(counts) == {("FullyConnected", "int8"): 15, ("MatMul", "int8"): 4}, counts


@pytest.mark.openvino
def test_an_unregistered_subclass_is_compressed_and_exported_with_a_warning(tmp_path, caplog):
    class Plain(keras.Model):  # not registered: Keras cannot load it from a file, but nothing else needs it
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, activation="relu")
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(keras.ops.mean(self.conv(x), axis=(1, 2)))

    model = Plain()
    x = _images(8)
    model(x)
    with caplog.at_level("WARNING", logger="keras_compress"):
        compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    assert "Plain is not registered" in caplog.text
    xml = kc.export(compressed, tmp_path / "plain")
    counts = runtime_precisions(compile_ir(xml))
    assert counts == {("Convolution", "u8"): 1, ("FullyConnected", "u8"): 1}
