"""Composite layers (layers that hold layers) at any depth, Keras wrapper layers, layers whose config
round trip is broken, and custom layers that opt in: compressed, saved, reloaded, exported."""

import json

import composite_models as cm
import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import INT8, quantization_config, run_program
from keras_compress.graph import iter_layers, layers_by_path


def tokens(n=32, maxlen=16, vocab=64, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (n, maxlen)).astype("int32")


def features(n=32, width=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, width)).astype("float32")


def min_max_config(**section):
    """8-bit quantization with min/max range init (the ranges cover the calibration data)."""
    config = quantization_config(**section)
    config["compression"]["initializer"]["range"]["type"] = "min_max"
    return config


def wrapped(model, cls=kc.QuantizeWrapper):
    return {path for path, layer in layers_by_path(model).items() if _holds(layer, cls)}


def _holds(layer, cls):
    while True:
        if isinstance(layer, cls):
            return True
        if not isinstance(layer, keras.layers.Wrapper):
            return False
        layer = layer.layer


def reload_and_export(model, x, tmp_path, config=None):
    """Saves `model`, loads it in a new process (with the test classes registered), exports it."""
    path = tmp_path / "model.keras"
    model.save(path)
    expected = model.predict(x, verbose=0)
    np.savez(tmp_path / "x.npz", **(x if isinstance(x, dict) else {"x": x}))
    np.save(tmp_path / "expected.npy", expected)
    args = [path, tmp_path / "x.npz", tmp_path / "expected.npy", tmp_path / "ir", "--module", "composite_models"]
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
        args += ["--config", tmp_path / "config.json"]
    result = run_program("reload_and_export.py", *args)
    return json.loads(result.stdout.strip().splitlines()[-1]), expected


@pytest.mark.openvino
def test_keras_io_transformer_runs_every_matmul_in_int8_and_reloads_in_a_new_process(tmp_path):
    keras.utils.set_random_seed(0)
    model = cm.text_classifier()
    x, y = tokens(64), np.arange(64) % 3
    before = [w.copy() for w in model.get_weights()]
    # The overflow fix, as the packaged configs have it: without it an AVX2-only CPU saturates the int8 sums
    # (IR vs Keras 0.16 there, exact on AVX512-VNNI).
    config = quantization_config(overflow_fix="enable")
    compressed, ctrl = kc.compress(model, config, dataset=x)
    # The blocks keep their classes; their Dense layers and the attention are compressed inside them.
    block = compressed.layers[2]
    assert isinstance(block, cm.TransformerBlock) and isinstance(block, kc.CompressedLayer)
    assert isinstance(block.att, keras.layers.MultiHeadAttention) and isinstance(block.att, kc.CompressedLayer)
    projections = {f"transformer_block/att/_{name}_dense" for name in ("query", "key", "value", "output")}
    assert wrapped(compressed) == {"transformer_block/ffn/ffn_up", "transformer_block/ffn/ffn_down", "hidden",
                                   "logits", *projections}  # fmt: skip
    skipped = ctrl.statistics().skipped()
    assert not [k for k in skipped if k in ("transformer_block", "token_and_position_embedding")], skipped
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the user's model is untouched
    assert not any(isinstance(layer, kc.CompressionLayer) for layer in iter_layers(model))

    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    compressed.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=ctrl.callbacks())
    result, expected = reload_and_export(compressed, x[:8], tmp_path, config)
    assert result["type"] == "Functional" and result["same"] < 1e-5
    assert result["bound"] and result["progress"]["epochs"] == 1
    counts = result["precisions"]
    assert sum(counts.values()) == 10 and all(key.split(":")[1] in INT8 for key in counts), counts
    assert result["ir_error"] < 0.05 * np.abs(expected).max() + 0.05


@pytest.mark.parametrize("build", [cm.stage_functional, cm.stage_sequential, cm.StageNet], ids=["functional",
                                                                                                "sequential",
                                                                                                "subclassed"])
def test_composite_layers_two_deep_are_compressed_inside(build):
    keras.utils.set_random_seed(0)
    model = build()
    x = features()
    model(x[:2])
    reference = model.predict(x, verbose=0)
    compressed, ctrl = kc.compress(model, min_max_config(), dataset=x)
    paths = wrapped(compressed)
    # Depth 2: the dict-held Dense layers of each MLPBlock in the Stage's list; depth 1: the Stage's Sequential.
    inner = {p for p in paths if "/blocks/" in p and "/mlp/" in p}
    assert len(inner) == 4, paths
    assert any("/head/" in p for p in paths), paths
    assert len(paths) == 7  # and the stem and classifier
    output = compressed.predict(x, verbose=0)
    assert np.linalg.norm(output - reference) < 0.1 * np.linalg.norm(reference)
    # Every Dense reads a quantized input: an input quantizer on the stem, one per block Dense inside.
    quantizers = [layer for layer in iter_layers(compressed) if isinstance(layer, kc.FakeQuantize)]
    assert len(quantizers) >= 7


def test_strip_and_sparsity_work_inside_composites():
    keras.utils.set_random_seed(0)
    model = cm.stage_functional()
    x = features()
    config = {"compression": [quantization_config()["compression"],
                              {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5}]}  # fmt: skip
    compressed, ctrl = kc.compress(model, config, dataset=x)
    assert len(wrapped(compressed, kc.MagnitudeSparsityWrapper)) == 7
    stripped = ctrl.strip()
    np.testing.assert_allclose(stripped.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-4)
    assert not any(isinstance(layer, kc.MagnitudeSparsityWrapper) for layer in iter_layers(stripped))
    kernels = [layer.kernel.numpy() for layer in iter_layers(stripped) if isinstance(layer, keras.layers.Dense)]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.5, abs=0.01)


@pytest.mark.openvino
def test_time_distributed_conv_is_quantized_with_its_input(tmp_path):
    keras.utils.set_random_seed(0)
    model = cm.time_distributed_model()
    x = np.random.default_rng(0).uniform(0, 1, (16, 3, 8, 8, 1)).astype("float32")
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    frames = compressed.get_layer("frames")
    assert isinstance(frames, keras.layers.TimeDistributed)
    assert isinstance(frames.layer, kc.InputsWrapper) and isinstance(frames.layer.layer, kc.QuantizeWrapper)
    assert ctrl.statistics().skipped()["lstm"].startswith("quantization: layer type LSTM")
    result, _ = reload_and_export(compressed, x[:4], tmp_path)
    assert result["same"] < 1e-5
    assert result["precisions"].get("Convolution:u8", 0) + result["precisions"].get("Convolution:i8", 0) >= 1


@pytest.mark.openvino
def test_a_layer_whose_config_round_trip_fails_is_copied_compressed_and_exported(tmp_path):
    keras.utils.set_random_seed(0)
    model = cm.patch_classifier()
    patches = model.layers[1]
    with pytest.raises(TypeError):
        type(patches).from_config(patches.get_config())  # the round trip is broken
    x = np.random.default_rng(0).uniform(0, 1, (16, 16, 16, 3)).astype("float32")
    fp32 = kc.export(model, tmp_path / "fp32" / "model")  # Keras can export it, so can kc.export
    assert fp32.exists()
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    copy = compressed.layers[1]
    assert copy.position is not patches.position and isinstance(copy.conv, kc.InputsWrapper)
    np.testing.assert_array_equal(copy.position.numpy(), patches.position.numpy())
    xml = kc.export(compressed, tmp_path / "int8" / "model")
    from keras_compress.benchmark import compile_ir, compute_op_precisions

    counts = compute_op_precisions(compile_ir(xml, "f32"), xml)
    assert counts and all(precision in INT8 for (_, precision) in counts), counts


@pytest.mark.openvino
def test_a_custom_layer_with_its_own_math_runs_in_float_unless_it_opts_in(tmp_path):
    keras.utils.set_random_seed(0)
    x = features()
    plain, ctrl = kc.compress(cm.own_math_model(opt_in=False), quantization_config(), dataset=x)
    assert isinstance(plain.get_layer("own"), cm.OwnDense)
    assert "compressible_weights()" in ctrl.statistics().skipped()["own"]

    model = cm.own_math_model(opt_in=True)
    compressed, ctrl = kc.compress(model, min_max_config(), dataset=x)
    own = compressed.get_layer("own")
    assert isinstance(own, kc.QuantizeWrapper) and isinstance(own.layer, cm.OptInDense)
    assert own.quantizers["kernel"].spec.per_channel and own.quantizers["kernel"].spec.axis == -1
    reference = model.predict(x, verbose=0)
    assert np.linalg.norm(compressed.predict(x, verbose=0) - reference) < 0.05 * np.linalg.norm(reference)
    result, _ = reload_and_export(compressed, x[:8], tmp_path)
    assert result["same"] < 1e-5
    assert sum(n for k, n in result["precisions"].items() if k.split(":")[1] in INT8) == 2, result["precisions"]
