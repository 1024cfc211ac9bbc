"""One worker of tests/test_multi_worker.py: the MultiWorkerMirroredStrategy recipe of docs/reliability.md,
QAT + magnitude sparsity updated every step, in a custom training loop.

Usage: multi_worker.py INDEX PORT0 PORT1 (this worker's index in the cluster, the ports of both workers on
127.0.0.1). Prints `RESULTS {json}`: masks, ranges, weights, losses, levels, progress and figures. Exits with
status 75 (PORT_TAKEN) when its gRPC server cannot bind its port: another process took it after the test chose
it, and the test starts the cluster again on other ports.
"""

import json
import os
import sys

index, ports = int(sys.argv[1]), sys.argv[2:]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
    "task": {"type": "worker", "index": index},
})  # fmt: skip

import tensorflow as tf  # noqa: E402 - TF_CONFIG first

PORT_TAKEN = 75
try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # the first TF call of the program
except tf.errors.UnknownError as err:
    if "Could not start gRPC server" not in str(err):
        raise
    print(f"PORT TAKEN: 127.0.0.1:{ports[index]} ({err})", file=sys.stderr)
    sys.exit(PORT_TAKEN)

import keras  # noqa: E402 - after the strategy
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402

GLOBAL_BATCH, STEPS, EPOCHS = 16, 4, 2
L = keras.layers
rng = np.random.default_rng(0)  # the same data on every worker
x = rng.normal(size=(GLOBAL_BATCH * STEPS, 8, 8, 3)).astype("float32")
y = rng.integers(0, 3, len(x))
config = {"compression": [
    {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1,
     "params": {"sparsity_target": 0.6, "sparsity_target_epoch": 2, "update_per_optimizer_step": True},
     "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    {"algorithm": "quantization", "weights": {"per_channel": True},
     "initializer": {"range": {"num_init_samples": 32},
                     "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
]}  # fmt: skip

with strategy.scope():
    keras.utils.set_random_seed(0)  # the same weights on every worker
    inp = keras.Input((8, 8, 3), name="img")
    h = L.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = L.Flatten(name="flat")(h)
    model = keras.Model(inp, L.Dense(3, name="fc")(h))
    compressed, ctrl = kc.compress(model, config, dataset=x[:32])
    optimizer = keras.optimizers.SGD(0.05)
    optimizer.build(compressed.trainable_variables)

options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
dist = strategy.experimental_distribute_dataset(train_ds)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")


@tf.function
def train_step(x, y):
    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_sample = loss_fn(y, compressed(x, training=True))
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, compressed.trainable_variables)
        optimizer.apply(grads, compressed.trainable_variables)
        return loss

    return strategy.reduce("SUM", strategy.run(replica_step, args=(x, y)), axis=None)


losses, levels = [], []
ctrl.on_train_begin(steps_per_epoch=STEPS)
for epoch in range(EPOCHS):
    ctrl.on_epoch_begin(epoch)
    for xb, yb in dist:
        ctrl.on_train_batch_begin(int(optimizer.iterations.numpy()))
        losses.append(float(train_step(xb, yb)))
        levels.append(float(ctrl.algorithm("magnitude_sparsity").level))
    ctrl.on_epoch_end()
ctrl.on_train_end()


def values(keys):
    return {v.path: np.asarray(v).tolist() for v in compressed.weights if any(k in v.path for k in keys)}


print("RESULTS " + json.dumps({
    "masks": values(["_mask", "mask_level"]),
    "ranges": values(["scale", "input_low", "input_range"]),
    "weights": {v.path: np.asarray(v).tolist() for v in compressed.trainable_weights},
    "losses": losses, "levels": levels, "progress": ctrl.progress(),
    "figures": {k: float(v) for k, v in ctrl.statistics().figures().items()},
}), flush=True)  # fmt: skip
