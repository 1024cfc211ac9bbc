"""MirroredStrategy over two logical CPUs against OneDeviceStrategy, for tests/test_reliability.py: the same
seeded model and data, compressed (QAT; magnitude sparsity updated every step) and trained with `fit` under each.

Usage: mirrored.py. Prints `RESULTS {json}`: per config and strategy, the variables after `kc.compress` and after
`fit`, the replicas and their spread, outputs, losses, levels and figures.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402 - after the logical devices are set, before anything else runs
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402

L = keras.layers
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
y = rng.integers(0, 3, 64)
CONFIGS = {
    "qat": {"compression": {"algorithm": "quantization", "weights": {"per_channel": True},
            "initializer": {"range": {"num_init_samples": 32},
                            "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}},
    "sparsity": {"compression": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1,
                 "params": {"sparsity_target": 0.6, "sparsity_target_epoch": 2, "update_per_optimizer_step": True},
                 "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}},
}  # fmt: skip


def model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    h = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = L.Flatten(name="flat")(h)
    return keras.Model(inp, L.Dense(3, name="fc")(h))


class Levels(keras.callbacks.Callback):
    def __init__(self, ctrl):
        super().__init__()
        self.ctrl, self.levels = ctrl, []

    def on_train_batch_end(self, batch, logs=None):
        algorithm = self.ctrl.algorithm("magnitude_sparsity")
        if algorithm is not None:
            self.levels.append(float(algorithm.level))


def run(config, strategy):
    with strategy.scope():
        compressed, ctrl = kc.compress(model(), config, dataset=x[:32])
        initial = {v.path: np.asarray(v).tolist() for v in compressed.weights}
        compressed.compile(optimizer=keras.optimizers.SGD(0.05),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    levels = Levels(ctrl)
    history = compressed.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                             callbacks=[*ctrl.callbacks(), levels])
    replicas, spread = 1, 0.0
    for v in compressed.weights:
        local = [np.asarray(t) for t in strategy.experimental_local_results(v.value)]
        replicas = max(replicas, len(local))
        spread = max([spread] + [float(np.max(np.abs(t - local[0]))) for t in local])
    return {
        "replicas": replicas, "replica_spread": spread, "initial": initial,
        "final": {v.path: np.asarray(v).tolist() for v in compressed.weights},
        "outputs": np.asarray(compressed(x[:16])).tolist(), "loss": history.history["loss"],
        "levels": levels.levels, "figures": {k: float(v) for k, v in ctrl.statistics().figures().items()},
    }  # fmt: skip


# One strategy object for both runs: a second MirroredStrategy in the same process reuses the
# collective instance keys of the first and its all-reduce fails with a shape mismatch.
one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {}
for name, config in CONFIGS.items():
    results[name] = {"one_device": run(config, one_device), "mirrored": run(config, mirrored)}
print("RESULTS " + json.dumps(results))
