"""Small builders shared by the test modules (pytest puts this folder on sys.path)."""

import numpy as np


def quantization_config(bn_samples=0, init_samples=32, **section):
    """A config with one quantization section: per-channel weights, no overflow fix, and the
    given numbers of BN-adaptation and range-init samples; `section` adds or replaces keys."""
    q = {
        "algorithm": "quantization",
        "weights": {"per_channel": True},
        "overflow_fix": "disable",
        "initializer": {
            "range": {"num_init_samples": init_samples},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples},
        },
    }
    q.update(section)
    return {"compression": q}


def data(shape, seed=0):
    """Standard-normal float32 data of `shape`."""
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def conv_bn_add_model():
    """Conv-BN-ReLU-ZeroPadding-MaxPool-Conv-BN-Add-ReLU-GAP-Dense on 16x16x3."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    r1 = L.ReLU(name="relu1")(x)
    x = L.ZeroPadding2D(1, name="pad")(r1)
    x = L.MaxPooling2D(3, strides=1, name="pool")(x)
    x = L.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Add(name="add")([x, r1])
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(4, name="fc")(x)
    return keras.Model(inp, out, name="conv_bn_add")


def trained_digits_cnn(epochs=30, seed=0):
    """The demo's digits CNN trained from `seed` (Adam 1e-3, batch 64), compiled with accuracy.

    Returns:
        `model, (x_train, y_train), (x_test, y_test)`.
    """
    import keras

    from keras_compress.demo import build_digits_cnn, load_digits_split

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    model = build_digits_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    return model, (x_train, y_train), (x_test, y_test)
