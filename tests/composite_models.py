"""Composite layers the way Keras users write them, for the composite-layer tests.

The keras.io example "Text classification with Transformer" (`TokenAndPositionEmbedding`,
`TransformerBlock`), blocks nested two deep in lists, dicts and a Sequential, a layer whose config
round trip is broken, and layers that do their own math with their own weights (one opting in).
Registered, as Keras requires to load them; a child process imports this module first.
"""

import keras
from keras import layers, ops

PACKAGE = "kc_composite_tests"


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerBlock(layers.Layer):
    """keras.io: MultiHeadAttention, a Sequential feed-forward network, LayerNorms and Dropouts."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu", name="ffn_up"), layers.Dense(embed_dim, name="ffn_down")]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs, training=False):
        attn_output = self.dropout1(self.att(inputs, inputs), training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.dropout2(self.ffn(out1), training=training)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        config = {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "ff_dim": self.ff_dim, "rate": self.rate}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenAndPositionEmbedding(layers.Layer):
    """keras.io: token and position embeddings, added."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        positions = ops.arange(start=0, stop=ops.shape(x)[-1], step=1)
        return self.token_emb(x) + self.pos_emb(positions)

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen, "vocab_size": self.vocab_size, "embed_dim": self.embed_dim}


def text_classifier(maxlen=16, vocab_size=64, embed_dim=16, num_heads=2, ff_dim=16, classes=3):
    """The keras.io model: embeddings, one transformer block, pooling, two Dense layers."""
    inputs = layers.Input(shape=(maxlen,), dtype="int32")
    x = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)(inputs)
    x = TransformerBlock(embed_dim, num_heads, ff_dim)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x))


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLPBlock(layers.Layer):
    """Depth 2: a residual MLP whose two Dense layers are held in a dict."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.mlp = {"up": layers.Dense(width * 2, activation="relu"), "down": layers.Dense(width)}

    def call(self, x):
        return x + self.mlp["down"](self.mlp["up"](x))

    def get_config(self):
        return {**super().get_config(), "width": self.width}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Stage(layers.Layer):
    """Depth 1: a list of `MLPBlock`s, then a Sequential (normalization and a projection)."""

    def __init__(self, width, depth=2, **kwargs):
        super().__init__(**kwargs)
        self.width, self.depth = width, depth
        self.blocks = [MLPBlock(width) for _ in range(depth)]
        self.head = keras.Sequential([layers.LayerNormalization(), layers.Dense(width, activation="relu")])

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "depth": self.depth}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StageNet(keras.Model):
    """A subclassed model made of a Dense stem, a `Stage` and a classifier."""

    def __init__(self, width=16, classes=4, **kwargs):
        super().__init__(**kwargs)
        self.width, self.classes = width, classes
        self.stem = layers.Dense(width, activation="relu")
        self.stage = Stage(width)
        self.classifier = layers.Dense(classes)

    def call(self, x):
        return self.classifier(self.stage(self.stem(x)))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "classes": self.classes}


def stage_functional(width=16, features=12, classes=4):
    inputs = keras.Input((features,))
    x = layers.Dense(width, activation="relu")(inputs)
    return keras.Model(inputs, layers.Dense(classes)(Stage(width)(x)))


def stage_sequential(width=16, features=12, classes=4):
    return keras.Sequential([keras.Input((features,)), layers.Dense(width, activation="relu"), Stage(width),
                             layers.Dense(classes)])  # fmt: skip


@keras.saving.register_keras_serializable(package=PACKAGE)
class Patches(layers.Layer):
    """Patch embedding whose config round trip is broken, as KerasHub 0.32's `ViTPatchingAndEmbedding`:
    `get_config()` returns `num_patches`, which `__init__` rejects."""

    def __init__(self, patch_size, dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.dim = patch_size, dim
        self.conv = layers.Conv2D(dim, patch_size, strides=patch_size)
        self.num_patches = None

    def build(self, input_shape):
        self.num_patches = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
        self.position = self.add_weight(shape=(self.num_patches, self.dim), initializer="random_normal")
        self.conv.build(input_shape)

    def call(self, images):
        x = self.conv(images)
        return ops.reshape(x, (-1, self.num_patches, self.dim)) + self.position

    def get_config(self):
        config = {"patch_size": self.patch_size, "dim": self.dim, "num_patches": self.num_patches}
        return {**super().get_config(), **config}


def patch_classifier(size=16, patch_size=4, dim=16, classes=3):
    inputs = keras.Input((size, size, 3))
    x = Patches(patch_size, dim)(inputs)
    x = layers.Dense(dim, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(classes)(layers.GlobalAveragePooling1D()(x)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class OwnDense(layers.Layer):
    """A Dense layer written by hand: its own weights, its own matmul."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros")

    def call(self, x):
        return ops.matmul(x, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class OptInDense(OwnDense):
    """`OwnDense` opted in to compression: it says which weights can be compressed (and their output
    channel axis), and computes with the weights it is given."""

    def compressible_weights(self):
        return {"kernel": -1}

    def call_with_weights(self, x, weights):
        return ops.matmul(x, weights["kernel"]) + self.bias

    def call(self, x):
        return self.call_with_weights(x, {"kernel": self.kernel})


def own_math_model(opt_in, features=12, classes=4):
    inputs = keras.Input((features,))
    dense = OptInDense if opt_in else OwnDense
    x = layers.ReLU()(dense(16, name="own")(inputs))
    return keras.Model(inputs, layers.Dense(classes, name="head")(x))


def time_distributed_model(frames=3, size=8, classes=4):
    """`TimeDistributed(Conv2D)` over frames, then an LSTM and a Dense classifier."""
    inputs = keras.Input((frames, size, size, 1))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu"), name="frames")(inputs)
    x = layers.TimeDistributed(layers.Flatten())(x)
    x = layers.LSTM(8, name="lstm")(x)
    return keras.Model(inputs, layers.Dense(classes, name="head")(x))
