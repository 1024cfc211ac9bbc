"""KerasHub models: compressed with their task API kept (generate, predict), saved and loaded.

The containers KerasHub is made of are tested first with plain Keras layers of the same shape (a block
whose attention computes its matmuls with `keras.ops.einsum` and knows its output shape without calling
its sublayers); then tiny KerasHub tasks. Every model family: tests/test_keras_hub_families.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_compress as kc  # noqa: E402
from helpers import quantization_config  # noqa: E402
from keras_compress.compressed import OPERATIONS  # noqa: E402
from keras_compress.graph import iter_layers  # noqa: E402

L = keras.layers


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
keras_hub = pytest.importorskip("keras_hub")


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
