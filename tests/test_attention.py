"""MultiHeadAttention: a composite layer whose projections are compressed and whose two matmuls are
computed with public ops (and quantized where OpenVINO runs them in int8); saved, loaded, stripped, exported."""

import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import int8_counts, propagated_step, quantization_config, run_program
from keras_compress.benchmark import compile_ir, compute_op_precisions, runtime_precisions
from keras_compress.compressed import compressed_class
from keras_compress.graph import iter_layers, layers_by_path
from keras_compress.operations import attention_equations

L = keras.layers


def float_copy(mha):
    """A layer like `mha` of its compressed class (its attention computed with the public ops), no quantizer."""
    return compressed_class(L.MultiHeadAttention)(**mha.get_config())


def test_attention_equations_are_keras_ones():
    assert attention_equations(4, (1,)) == ("aecd,abcd->acbe", "acbe,aecd->abcd", 4)
    # Attention over two axes of a (B, H, W, heads, dim) tensor: scores (B, heads, H, W, H', W').
    assert attention_equations(5, (1, 2)) == ("afgde,abcde->adbcfg", "adbcfg,afgde->abcde", 6)


@pytest.mark.parametrize(
    "case",
    ["self", "cross_with_key", "attention_mask", "causal", "keras_mask", "keras_mask_dropout", "two_attention_axes",
     "scores"],
)  # fmt: skip
def test_the_public_ops_attention_computes_what_multi_head_attention_computes(case):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # With dropout (inactive at inference) Keras takes another path, which treats a fully masked query
    # row differently (padding tokens, `keras_mask` cases).
    dropout = 0.1 if case == "keras_mask_dropout" else 0.0
    mha = L.MultiHeadAttention(2, 4, dropout=dropout, attention_axes=(1, 2) if case == "two_attention_axes" else None)
    shape = (2, 3, 4, 6) if case == "two_attention_axes" else (2, 5, 6)
    x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=(2, 7, 6)).astype("float32")
    kwargs, args = {}, (x, x)
    if case == "cross_with_key":
        args = (x, y, rng.normal(size=(2, 7, 6)).astype("float32"))
    elif case == "attention_mask":
        kwargs["attention_mask"] = rng.uniform(size=(2, 5, 5)) > 0.3
    elif case == "causal":
        kwargs["use_causal_mask"] = True
    elif case == "scores":
        kwargs["return_attention_scores"] = True
    wrapper = float_copy(mha)
    if case.startswith("keras_mask"):  # masks carried by the tensors, from an Embedding with mask_zero
        ids = keras.Input((5,), dtype="int32")
        embedded = L.Embedding(10, 6, mask_zero=True)(ids)
        build = lambda layer: keras.Model(ids, layer(embedded, embedded))  # noqa: E731
        reference, model = build(mha), build(wrapper)
        model.set_weights(reference.get_weights())
        tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]], "int32")
        expected, got = reference(tokens), model(tokens)
    else:
        expected = mha(*args, **kwargs)
        wrapper(*args, **kwargs)
        wrapper.set_weights(mha.get_weights())
        got = wrapper(*args, **kwargs)
    for e, g in zip(keras.tree.flatten(expected), keras.tree.flatten(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=2e-6)


def attention_model():
    """A post-norm transformer block with an `x + attention(x)` residual and a Dense head."""
    inputs = keras.Input((16, 32), name="tokens")
    attended = L.MultiHeadAttention(4, 8, name="attention")(inputs, inputs)
    x = L.LayerNormalization(name="norm")(inputs + attended)
    # A trained model's bias: OpenVINO drops an all-zero bias, and then ran Dense(gelu) as two FullyConnected.
    x = L.Dense(64, activation="gelu", bias_initializer=keras.initializers.Constant(0.01), name="up")(x)
    return keras.Model(inputs, L.Dense(4, name="head")(L.GlobalAveragePooling1D(name="pool")(x)), name="block")


@pytest.mark.openvino
def test_multi_head_attention_is_quantized_and_runs_int8_in_openvino(tmp_path):
    keras.utils.set_random_seed(0)
    model = attention_model()
    x = np.random.default_rng(0).normal(size=(32, 16, 32)).astype("float32")
    # The overflow fix (the default; off in the helper): the int8 kernels of CPUs without VNNI keep 7 bits of
    # each weight, so only with it does the IR compute what Keras does on every x86 CPU (see the end).
    compressed, ctrl = kc.compress(model, quantization_config(overflow_fix="enable"), dataset=x)
    attention = compressed.get_layer("attention")
    assert isinstance(attention, L.MultiHeadAttention) and isinstance(attention, kc.CompressedLayer)
    paths = layers_by_path(compressed)
    projections = {name: paths[f"attention/_{name}_dense"] for name in ("query", "key", "value", "output")}
    kernels = {}
    for name, layer in projections.items():
        inner = layer.layer if isinstance(layer, kc.InputsWrapper) else layer
        assert isinstance(inner, kc.QuantizeWrapper), (name, layer)
        kernels[name] = tuple(inner.quantizers["kernel"].variables["scale"].shape)
    # The kernels have one range per output unit: (C, heads, key_dim) for q/k/v, (heads, key_dim, C) for output.
    assert kernels == {"query": (1, 4, 8), "key": (1, 4, 8), "value": (1, 4, 8), "output": (1, 1, 32)}
    # The inputs of the projections and of both matmuls: the query and key (Q K^T, the key signed), the
    # probabilities (unsigned: a softmax) and the values (P V, signed).
    operations = {p.rsplit("/", 1)[1]: layer for p, layer in paths.items() if "/_compression_operations/" in p}
    assert sorted(operations) == ["0_0", "0_1", "1_0", "1_1"]
    assert operations["0_1"].quantizer.is_signed and operations["1_1"].quantizer.is_signed
    assert not operations["1_0"].quantizer.is_signed
    # The residual add, normalized before it is read, stays in float.
    graph_quantizers = {layer.name for layer in compressed.layers if isinstance(layer, kc.FakeQuantize)}
    assert graph_quantizers == {"norm_quantizer", "up_quantizer", "pool_quantizer"}
    figures = ctrl.statistics().figures()
    assert figures["quantization/weight_quantizers"] == 4 + 2  # four projections, two Dense
    # The logits of this random block move by about 11% (the quantizer of the pooled features alone makes
    # 10 of them; with the activation quantizers off it is 0.9%): a lost weight or a wrong matmul is 100%.
    reference, output = model.predict(x, verbose=0), compressed.predict(x, verbose=0)
    assert np.linalg.norm(output - reference) < 0.2 * np.linalg.norm(reference)

    xml = kc.export(compressed, tmp_path / "block")
    compiled = compile_ir(xml, "f32")
    counts = compute_op_precisions(compiled, xml)
    # Four projections and two Dense layers, and both attention matmuls (fused into OpenVINO's MHA kernel), in
    # int8: u8 or i8 by the CPU (on AVX512-VNNI both matmuls run i8, on AVX2 P V runs u8).
    assert int8_counts(counts) == {("FullyConnected", "int8"): 6, ("MatMul", "int8"): 2}, counts
    # Without the fused kernel the two attention matmuls are plain MatMul ops, in int8 as well.
    import openvino as ov

    plain = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "SNIPPETS_MODE": "DISABLE"})
    assert int8_counts(runtime_precisions(plain, ("MatMul",))) == {("MatMul", "int8"): 2}
    got = compiled(x[:8])[0]
    expected = compressed.predict(x[:8], verbose=0)
    # Within one step of the head's input quantizer, propagated through the head (measured before the attention
    # became a composite layer: 0.12 of it on AVX512-VNNI/AMX, 0.06 with the kernels capped at AVX2; without the
    # overflow fix 3.7 there).
    step = propagated_step(compressed.get_layer("pool_quantizer"), compressed.get_layer("head").layer.kernel)
    assert np.abs(got - expected).max() < step, (np.abs(got - expected).max(), step)


def test_quantized_attention_trains_saves_loads_in_a_new_process_and_strips(tmp_path):
    keras.utils.set_random_seed(0)
    model = attention_model()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 16, 32)).astype("float32"), rng.integers(0, 4, 32)
    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    attention = compressed.get_layer("attention")
    scales = [v for v in attention.trainable_weights if v.name.endswith("_scale")]
    before = [np.array(v) for v in scales]
    compressed.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=ctrl.callbacks())
    # four kernels; the inputs of the projections (the query and the shared value/key input: one each per
    # projection), Q, K, P, V and the input of the output projection
    assert len(scales) >= 4 + 7, len(scales)
    assert sum(not np.allclose(b, np.array(v)) for b, v in zip(before, scales)) >= 6  # the ranges are trained
    path = tmp_path / "block.keras"
    compressed.save(path)
    expected = compressed.predict(x[:4], verbose=0)
    np.save(tmp_path / "x.npy", x[:4])
    result = run_program("load_and_predict.py", path, tmp_path / "x.npy")
    assert float(result.stdout.split()[-1]) == pytest.approx(float(np.abs(expected).sum()), rel=1e-5)
    # Loaded, saved again and loaded: the record of the loaded model still says how the attention layer,
    # which makes its projections in build(), was built (without it the second load found plain ones).
    loaded = keras.saving.load_model(path)
    loaded.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras")
    assert isinstance(again.get_layer("attention")._query_dense, kc.InputsWrapper)
    np.testing.assert_allclose(again.predict(x[:4], verbose=0), expected, atol=1e-5)

    stripped = ctrl.strip()
    np.testing.assert_allclose(stripped.predict(x[:4], verbose=0), expected, atol=1e-5)
    # An inference model: ranges are constants, not variables (OpenVINO's converter crashed on SavedModels
    # with too many variables); it has exactly the FP32 model's variables.
    assert len(stripped.variables) == len(model.variables)
    frozen = [layer for layer in iter_layers(stripped) if isinstance(layer, kc.QuantizeWrapper)]
    assert len(frozen) == 6 and all(layer.frozen_ranges is not None for layer in frozen)


def test_every_attention_variant_is_compressed_as_a_composite_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 8))
    gated = L.MultiHeadAttention(2, 4, use_gate=True, name="gated")(inputs, inputs)
    model = keras.Model(inputs, L.Dense(2, name="head")(gated))
    x = np.random.default_rng(0).normal(size=(8, 4, 8)).astype("float32")
    # min_max ranges: with the default (mixed_min_max: the mean of 8 per-sample maxima) the probabilities
    # and the gated values are clipped, and a random 2-head layer's outputs move by 10% or more.
    initializer = {"range": {"type": "min_max", "num_init_samples": 32}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}
    compressed, ctrl = kc.compress(model, quantization_config(initializer=initializer), dataset=x)
    assert ctrl.statistics().skipped() == {}
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == 5 + 1  # gate, q, k, v, output; head
    reference = model.predict(x, verbose=0)
    assert np.linalg.norm(compressed.predict(x, verbose=0) - reference) < 0.1 * np.linalg.norm(reference)


def test_sparsity_reaches_the_attention_projections_and_pruning_lists_them():
    model = attention_model()
    x = np.random.default_rng(0).normal(size=(8, 16, 32)).astype("float32")
    config = {"compression": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5}}
    compressed, ctrl = kc.compress(model, config, dataset=x)
    stripped = ctrl.strip()
    kernels = [keras.ops.convert_to_numpy(getattr(stripped.get_layer("attention"), f"{name}_dense").kernel)
               for name in ("query", "key", "value", "output")]  # fmt: skip
    # One threshold over all the weights (global mode): the projections hold about their share of the
    # zeros (0.44-0.46 with the other layers' scales; none if attention were left dense).
    assert sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels) >= 0.4
    assert all(np.mean(k == 0) > 0.3 for k in kernels)
    _, ctrl = kc.compress(model, {"compression": {"algorithm": "filter_pruning"}}, dataset=x)
    skipped = ctrl.statistics().skipped()
    assert {key: skipped[key] for key in skipped if key.startswith("attention/")} == {
        f"attention/{name}": "filter_pruning: einsum_dense layers are not pruned (only convolution filters are)"
        for name in ("query", "key", "value", "attention_output")
    }
