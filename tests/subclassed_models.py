"""Subclassed Keras models the way users write them, for the subclassed-model tests.

They are registered with `keras.saving.register_keras_serializable`, as Keras requires for loading
a subclassed model; a subprocess loading a saved model imports this module first.
"""

import keras
from keras import layers

PACKAGE = "kc_tests"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvBlock(layers.Layer):
    """Conv -> BatchNorm -> ReLU."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = layers.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn = layers.BatchNormalization(momentum=0.9)
        self.relu = layers.ReLU()

    def call(self, x, training=None):
        return self.relu(self.bn(self.conv(x), training=training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DigitsNet(keras.Model):
    """The demo's digits CNN (`keras_compress.demo.build_digits_cnn`) written as a subclass."""

    def __init__(self, width=32, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.blocks = [ConvBlock(width), ConvBlock(width * 2), ConvBlock(width * 2)]
        self.pool = layers.MaxPooling2D()
        self.gap = layers.GlobalAveragePooling2D()
        self.head = layers.Dense(10)

    def call(self, x, training=None):
        for i, block in enumerate(self.blocks):
            x = block(x, training=training)
            if i == 1:
                x = self.pool(x)
        return self.head(self.gap(x))

    def get_config(self):
        return {**super().get_config(), "width": self.width}


@keras.saving.register_keras_serializable(package=PACKAGE)
class EncoderBlock(layers.Layer):
    """A transformer encoder block: `x + attention(x)`, LayerNorm, GELU MLP, `x + mlp(x)`, LayerNorm."""

    def __init__(self, dim, heads, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads = dim, heads
        self.attention = layers.MultiHeadAttention(heads, dim // heads)
        self.norm1 = layers.LayerNormalization()
        self.mlp = {"up": layers.Dense(dim * 2, activation="gelu"), "down": layers.Dense(dim)}
        self.norm2 = layers.LayerNormalization()

    def call(self, x):
        x = self.norm1(x + self.attention(x, x))
        return self.norm2(x + self.mlp["down"](self.mlp["up"](x)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TextEncoder(keras.Model):
    """Token + position embeddings, encoder blocks in a loop over a list, mean pooling, a classifier."""

    def __init__(self, vocab=100, length=16, dim=32, heads=4, depth=2, classes=2, **kwargs):
        super().__init__(**kwargs)
        self.settings = dict(vocab=vocab, length=length, dim=dim, heads=heads, depth=depth, classes=classes)
        self.tokens = layers.Embedding(vocab, dim)
        self.positions = layers.Embedding(length, dim)
        self.encoder = [EncoderBlock(dim, heads) for _ in range(depth)]
        self.pool = layers.GlobalAveragePooling1D()
        self.classifier = layers.Dense(classes)

    def call(self, ids):
        x = self.tokens(ids) + self.positions(keras.ops.arange(self.settings["length"]))
        for block in self.encoder:
            x = block(x)
        return self.classifier(self.pool(x))

    def get_config(self):
        return {**super().get_config(), **self.settings}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WithBackbone(keras.Model):
    """A subclassed head on a Functional backbone (a common transfer-learning shape)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        inputs = keras.Input((8, 8, 1))
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="bb_conv1")(inputs)
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="bb_conv2")(x)
        self.backbone = keras.Model(inputs, x, name="backbone")
        self.gap = layers.GlobalAveragePooling2D()
        self.head = layers.Dense(10)

    def call(self, x):
        return self.head(self.gap(self.backbone(x)))


class Unconfigurable(keras.Model):
    """A subclass whose constructor needs an argument its `get_config` does not give back."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = layers.Dense(units)

    def call(self, x):
        return self.dense(x)
