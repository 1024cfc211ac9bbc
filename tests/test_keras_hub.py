"""KerasHub models compressed as they are: classes and task API kept, int8 in OpenVINO, reload in a new process.

The containers KerasHub is made of are tested first with plain Keras layers of the same shape (a block
whose attention computes its matmuls with `keras.ops.einsum` and knows its output shape without calling
its sublayers); then tiny KerasHub tasks. Every model family: tests/test_keras_hub_families.py.
Tiny random configurations: nothing is downloaded.
"""

import json

import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import INT8, quantization_config, run_program
from keras_compress.compressed import OPERATIONS
from keras_compress.graph import iter_layers, layers_by_path

keras_hub = pytest.importorskip("keras_hub")

L = keras.layers


def token_batch(n=16, length=16, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(1, vocab, (n, length)).astype("int32"), "padding_mask": np.ones((n, length), "int32")}


def gpt2_lm():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=16
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def quantized_layers(model):
    """The distinct layers of `model` that quantize their weights (inside any input wrapper)."""
    found = {}
    for layer in layers_by_path(model).values():
        while isinstance(layer, kc.InputsWrapper):
            layer = layer.layer
        if isinstance(layer, kc.QuantizeWrapper):
            found[id(layer)] = layer
    return list(found.values())


def operation_quantizers(model):
    """The activation quantizers on the operands of the matmuls the containers compute themselves."""
    return [layer for path, layer in layers_by_path(model).items() if "/_compression_operations/" in path]


def reload_and_export(model, x, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    expected = model.predict(x, verbose=0)
    np.savez(tmp_path / "x.npz", **x)
    np.save(tmp_path / "expected.npy", expected)
    result = run_program("reload_and_export.py", path, tmp_path / "x.npz", tmp_path / "expected.npy", tmp_path / "ir",
                         "--module", "keras_hub")  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_compressed_gpt2_keeps_its_class_and_generates_what_its_forward_pass_chooses():
    model = gpt2_lm()
    x = token_batch()
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    assert type(compressed).__name__ == "GPT2CausalLM" and isinstance(compressed, keras_hub.models.GPT2CausalLM)
    assert not any(isinstance(layer, kc.CompressionLayer) for layer in iter_layers(model))  # the user's is untouched
    paths = layers_by_path(compressed)
    backbone = compressed.backbone.name  # "gpt2_backbone", or "gpt2_backbone_1" after another in this process
    # The tied-embedding LM head (with its input quantizer) and every projection and feed-forward layer.
    head = paths[f"{backbone}/token_embedding"]
    assert isinstance(head, kc.InputsWrapper) and isinstance(head.layer, kc.QuantizeWrapper)
    assert len(quantized_layers(compressed)) == 2 * 6 + 1
    # Both attention matmuls of each block have quantized inputs (`keras_compress.operations`): the key, the
    # scaled query and the value on the matmuls; the probabilities at the input of the dropout before theirs.
    assert len(operation_quantizers(compressed)) == 2 * 3
    dropout = paths[f"{backbone}/transformer_layer_0/_self_attention_layer/_dropout_layer"]
    assert isinstance(dropout, kc.InputsWrapper) and dropout.input_layers[0].quantizer.is_signed is False

    compressed.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       sampler="greedy")  # fmt: skip
    compressed.fit(x, x["token_ids"], epochs=1, batch_size=8, verbose=0, callbacks=ctrl.callbacks())
    prompt = np.array([[5, 6, 7] + [0] * 13], "int32")
    mask = np.array([[1, 1, 1] + [0] * 13], "int32")
    generated = compressed.generate({"token_ids": prompt, "padding_mask": mask}, max_length=16, stop_token_ids=None)
    tokens, padding = prompt.copy(), mask.copy()
    for position in range(3, 16):  # greedy decoding by the plain forward pass
        logits = compressed.predict({"token_ids": tokens, "padding_mask": padding}, verbose=0)
        tokens[0, position], padding[0, position] = int(np.argmax(logits[0, position - 1])), 1
    np.testing.assert_array_equal(generated["token_ids"], tokens)

    stripped = ctrl.strip()
    assert isinstance(stripped, keras_hub.models.GPT2CausalLM)
    got, expected = stripped.predict(x, verbose=0), compressed.predict(x, verbose=0)
    # The same model with its ranges as constants (and the overflow fix's 7-bit weight grid rescaled to 8
    # bits): equal but where a value on a rounding boundary of a quantizer goes the other way (one step),
    # which moves the logits of that token position only (2-6% of them here; a wrong weight or range, all).
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    moved = np.abs(got - expected).max(axis=-1) > 1e-4
    assert moved.mean() <= 0.25, moved.mean()


@pytest.mark.slow
@pytest.mark.openvino
def test_a_compressed_gpt2_reloads_in_a_new_process_and_runs_every_matmul_in_int8(tmp_path):
    model = gpt2_lm()
    x = token_batch()
    compressed, _ = kc.compress(model, "int8", dataset=x, verbose=0)
    result = reload_and_export(compressed, {k: v[:4] for k, v in x.items()}, tmp_path)
    assert result["type"] == "GPT2CausalLM" and result["same"] < 1e-5
    counts = result["precisions"]
    # 2 blocks x (4 projections + 2 feed-forward + 2 attention matmuls) + the LM head.
    assert sum(counts.values()) == 17 and all(key.split(":")[1] in INT8 for key in counts), counts


def test_grouped_query_attention_matmuls_are_quantized():
    keras.utils.set_random_seed(0)
    model = keras_hub.models.Llama3Backbone(vocabulary_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=2,
                                            hidden_dim=32, intermediate_dim=64)  # fmt: skip
    x = token_batch()
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    assert isinstance(compressed, keras_hub.models.Llama3Backbone)
    # The query-key and probability-value einsums of the grouped-query attention: both inputs quantized.
    assert len(operation_quantizers(compressed)) == 4
    # query, key, value, output; gate, intermediate and output feed-forward; the tied LM head
    assert len(quantized_layers(compressed)) == 8
    reference = model.predict(x, verbose=0)
    assert np.linalg.norm(compressed.predict(x, verbose=0) - reference) < 0.1 * np.linalg.norm(reference)


def test_a_compressed_bert_classifier_predicts_and_strips_to_its_class():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
                                             intermediate_dim=64, max_sequence_length=16)  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    x = {**token_batch(), "segment_ids": np.zeros((16, 16), "int32")}
    compressed, ctrl = kc.compress(model, "int8", dataset=x, verbose=0)
    assert isinstance(compressed, keras_hub.models.BertTextClassifier)
    assert compressed.predict(x, verbose=0).shape == (16, 3)
    assert isinstance(ctrl.strip(), keras_hub.models.BertTextClassifier)


@pytest.mark.openvino
def test_gemma_query_key_value_projections_run_in_int8(tmp_path):
    # Gemma's projections are EinsumDense "btd,ndh->btnh": the contracted axis is the kernel's second.
    # OpenVINO ran them in f32 while the kernel kept that layout (one scale per output unit); they are
    # computed on the transposed kernel, "btd,dnh->btnh" (`compressible.contracted_first`).
    from keras_compress.benchmark import compile_ir, compute_op_precisions

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(vocabulary_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=1,
                                              hidden_dim=32, intermediate_dim=64, head_dim=8)  # fmt: skip
    model = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    x = token_batch()
    compressed, _ = kc.compress(model, "int8", dataset=x, verbose=0)
    assert isinstance(compressed, keras_hub.models.GemmaCausalLM)
    # query, key, value, output; gate, gate 2 and output feed-forward; the tied LM head
    assert len(quantized_layers(compressed)) == 8
    expected = compressed.predict(x, verbose=0)
    reference = model.predict(x, verbose=0)
    assert np.linalg.norm(expected - reference) < 0.1 * np.linalg.norm(reference)
    xml = kc.export(compressed, tmp_path / "gemma")
    compiled = compile_ir(xml, "f32")
    counts = compute_op_precisions(compiled, xml)
    # 7 projections + the LM head (FullyConnected) and the two attention matmuls
    assert sum(counts.values()) == 10 and all(precision in INT8 for _, precision in counts), counts
    got = compiled(x)[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


@keras.saving.register_keras_serializable(package="tests")
class EinsumAttention(L.Layer):
    """Single-head attention written as KerasHub writes its blocks: projections as sublayers, the two
    matmuls with `keras.ops.einsum`, dropout on the probabilities, and a `compute_output_shape` (so a
    Functional model calls it symbolically without calling its sublayers, as MultiHeadAttention)."""

    def __init__(self, dim, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.dropout = dim, dropout
        self.query, self.key, self.value = L.Dense(dim, name="query"), L.Dense(dim, name="key"), L.Dense(dim, name="value")
        self.dropout_layer = L.Dropout(dropout)

    def build(self, input_shape):
        for layer in (self.query, self.key, self.value):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        scores = keras.ops.einsum("btd,bsd->bts", self.query(x), self.key(x)) / float(self.dim) ** 0.5
        probabilities = self.dropout_layer(keras.ops.softmax(scores, axis=-1), training=training)
        return keras.ops.einsum("bts,bsd->btd", probabilities, self.value(x))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "dropout": self.dropout}


def attention_model():
    inputs = keras.Input((6, 8))
    x = EinsumAttention(8, name="attention")(L.Dense(8, name="embed")(inputs))
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def quantizer_ranges(model):
    """`{name: [variable values]}` of every activation quantizer of `model`."""
    return {layer.name: [np.asarray(v) for v in layer.variables]
            for layer in iter_layers(model) if isinstance(layer, kc.FakeQuantize)}  # fmt: skip


def test_the_quantizers_of_a_blocks_own_matmuls_save_and_load_with_their_ranges(tmp_path):
    """The quantizers of the einsums' operands (held by the block) and of the probabilities (around the
    dropout, which the loaded model has not called) load built, with the ranges range init gave them."""
    keras.utils.set_random_seed(0)
    model = attention_model()
    x = np.random.default_rng(0).normal(size=(16, 6, 8)).astype("float32")
    compressed, _ = kc.compress(model, quantization_config(init_samples=16), dataset=x)
    ranges = quantizer_ranges(compressed)
    # Both operands of both einsums are quantized: query, key and value by the block, the probabilities
    # by the wrapper around the dropout that reads them.
    attention = compressed.get_layer("attention")
    assert sorted(vars(attention)[OPERATIONS]) == ["0_0", "0_1", "1_1"]
    assert isinstance(attention.dropout_layer, kc.InputsWrapper)
    compressed.save(tmp_path / "attention.keras")
    loaded = keras.saving.load_model(tmp_path / "attention.keras")
    attention = loaded.get_layer("attention")
    assert sorted(vars(attention)[OPERATIONS]) == ["0_0", "0_1", "1_1"]
    assert isinstance(attention.dropout_layer, kc.InputsWrapper)
    loaded_ranges = quantizer_ranges(loaded)
    assert set(loaded_ranges) == set(ranges)
    for name, values in ranges.items():
        assert all(np.array_equal(a, b) for a, b in zip(values, loaded_ranges[name])), name
    np.testing.assert_allclose(loaded.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-6)


@keras.saving.register_keras_serializable(package="tests")
class Rotate(L.Layer):
    """Applies rotary position embeddings to all but the first tokens, as KerasHub's DINOv3 layers are
    called: a tuple of tensors and an int among the keyword arguments."""

    def call(self, x, position_embeddings=None, num_prefix_tokens=0):
        cos, sin = position_embeddings
        rotated = x[:, num_prefix_tokens:] * cos + keras.ops.flip(x[:, num_prefix_tokens:], axis=-1) * sin
        return keras.ops.concatenate([x[:, :num_prefix_tokens], rotated], axis=1)


@keras.saving.register_keras_serializable(package="tests")
class Encoder(L.Layer):
    """Blocks held in `self.layers`, as KerasHub's DINOV2Encoder holds them (a name a model has too)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.layers = [L.Dense(8, activation="relu", name="up"), L.Dense(8, name="down")]

    def call(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_layers_called_with_tensors_and_other_values_among_their_keywords_compress():
    keras.utils.set_random_seed(0)
    tokens, cos, sin = keras.Input((5, 8)), keras.Input((4, 8)), keras.Input((4, 8))
    x = Rotate(name="rotate")(L.Dense(8, name="embed")(tokens), position_embeddings=(cos, sin), num_prefix_tokens=1)
    model = keras.Model([tokens, cos, sin], L.Dense(2, name="head")(x))
    data = [np.random.default_rng(i).normal(size=shape).astype("float32") for i, shape in enumerate([(4, 5, 8), (4, 4, 8), (4, 4, 8)])]
    compressed, _ = kc.compress(model, quantization_config(init_samples=4), dataset=data)
    assert isinstance(compressed.get_layer("head"), kc.QuantizeWrapper)
    reference = model.predict(data, verbose=0)
    assert np.abs(compressed.predict(data, verbose=0) - reference).max() < 0.1 * np.abs(reference).max()
    # A wrapper that quantizes the inputs of such a layer is called as the layer is.
    wrapped = kc.InputsWrapper(Rotate(), {0: L.Identity()})
    np.testing.assert_allclose(
        wrapped(data[0], position_embeddings=(data[1], data[2]), num_prefix_tokens=1),
        Rotate()(data[0], position_embeddings=(data[1], data[2]), num_prefix_tokens=1),
    )


def test_the_blocks_a_layer_holds_in_an_attribute_named_layers_are_compressed():
    inputs = keras.Input((6, 8))
    model = keras.Model(inputs, Encoder(name="encoder")(inputs))
    x = np.random.default_rng(0).normal(size=(8, 6, 8)).astype("float32")
    compressed, ctrl = kc.compress(model, quantization_config(init_samples=8), dataset=x)
    assert [type(layer).__name__ for layer in compressed.get_layer("encoder").layers] == ["InputsWrapper"] * 2
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == 2


# ---------------------------------------------------------------------------- KerasHub models
def tiny_resnet():
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=(32, 32, 3),
    )  # fmt: skip


def test_a_compressed_backbones_pyramid_outputs_are_tensors_of_its_own_graph():
    """The feature maps KerasHub's vision backbones expose (`pyramid_outputs`, what DeepLabV3, RetinaNet
    and SegFormer are built on) are the compressed graph's tensors, not the original's."""
    keras.utils.set_random_seed(0)
    backbone = tiny_resnet()
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    compressed, _ = kc.compress(backbone, quantization_config(init_samples=2), dataset=x)
    features = keras.Model(compressed.inputs, compressed.pyramid_outputs)
    expected = keras.Model(backbone.inputs, backbone.pyramid_outputs)(x)
    got = features(x)
    assert sorted(got) == ["P2", "P3"]
    for key in got:  # 8-bit: close to the float feature maps
        assert np.abs(np.asarray(got[key]) - np.asarray(expected[key])).max() < 0.1 * np.abs(np.asarray(expected[key])).max()


def test_a_layer_whose_config_cannot_be_serialized_is_wrapped_and_saved(tmp_path):
    """A Keras Identity made with a DTypePolicy object (as KerasHub's DepthAnything makes it) has no
    config; the record of its wrapper does not need one, and the model saves."""

    @keras.saving.register_keras_serializable(package="tests")
    class Head(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.resize = L.Identity(dtype=self.dtype_policy, name="resize")
            self.dense = L.Dense(4, name="dense")

        def call(self, x):
            return self.dense(self.resize(x))

    inputs = keras.Input((6,))
    model = keras.Model(inputs, Head(name="head")(L.Dense(6, activation="relu", name="stem")(inputs)))
    with pytest.raises(NotImplementedError):
        model.get_layer("head").resize.get_config()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    compressed, _ = kc.compress(model, quantization_config(init_samples=8), dataset=x)
    compressed.save(tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-6)


@keras.saving.register_keras_serializable(package="tests")
class FusedAttention(L.Layer):
    """Attention as KerasHub's ESM and DINOv3 write it: projections as sublayers, both matmuls inside
    one `keras.ops.dot_product_attention` (here through `keras.ops.nn`), with a boolean mask."""

    def __init__(self, heads=2, head_dim=4, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_dim = heads, head_dim
        self.query, self.key, self.value = (L.Dense(heads * head_dim, name=n) for n in ("query", "key", "value"))

    def build(self, input_shape):
        for layer in (self.query, self.key, self.value):
            layer.build(input_shape)
        self.built = True

    def call(self, x):
        b, t = keras.ops.shape(x)[0], keras.ops.shape(x)[1]
        q, k, v = (keras.ops.reshape(layer(x), (b, t, self.heads, self.head_dim)) for layer in (self.query, self.key, self.value))
        mask = keras.ops.ones((1, 1, t, t), dtype="bool")
        out = keras.ops.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
        return keras.ops.reshape(out, (b, t, self.heads * self.head_dim))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.heads * self.head_dim)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "head_dim": self.head_dim}


def test_a_blocks_dot_product_attention_gets_both_matmuls_quantized_and_saves(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 8))
    model = keras.Model(inputs, L.Dense(3, name="head")(FusedAttention(name="attention")(L.Dense(8, name="embed")(inputs))))
    x = np.random.default_rng(0).normal(size=(16, 6, 8)).astype("float32")
    reference = model.predict(x, verbose=0)
    compressed, _ = kc.compress(model, quantization_config(init_samples=16), dataset=x)
    # Computed as two einsums: the query and key of the first, the probabilities and values of the second.
    attention = compressed.get_layer("attention")
    assert sorted(vars(attention)[OPERATIONS]) == ["0_0", "0_1", "1_0", "1_1"]
    assert vars(attention)[OPERATIONS]["1_0"].quantizer.is_signed is False  # softmax output
    got = compressed.predict(x, verbose=0)
    assert np.abs(got - reference).max() < 0.1 * np.abs(reference).max()
    # Outside a compressed block the op is Keras' own again.
    assert keras.ops.nn.dot_product_attention.__module__.startswith("keras")
    compressed.save(tmp_path / "fused.keras")
    loaded = keras.saving.load_model(tmp_path / "fused.keras")
    assert sorted(vars(loaded.get_layer("attention"))[OPERATIONS]) == ["0_0", "0_1", "1_0", "1_1"]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), got, atol=1e-6)


def test_a_backbone_loads_on_the_shapes_it_was_compressed_with(tmp_path):
    """A backbone whose inputs have free lengths but whose position embedding holds 8 positions: the
    loaded model is run once to build it, on a batch of the calibration data's shapes (not 16 tokens)."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=8)  # fmt: skip
    x = {**token_batch(n=4, length=8), "segment_ids": np.zeros((4, 8), "int32")}
    compressed, _ = kc.compress(backbone, quantization_config(init_samples=4), dataset=x)
    compressed.save(tmp_path / "bert.keras")
    loaded = keras.saving.load_model(tmp_path / "bert.keras")
    assert isinstance(loaded, keras_hub.models.BertBackbone)
    expected, got = compressed.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)
