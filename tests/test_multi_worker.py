"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1, through the custom-loop recipe
of docs/reliability.md: both workers end with the same masks, quantizer ranges, weights and losses.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_compress.schedules import PolynomialSchedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: One worker: the recipe of docs/reliability.md ("MultiWorkerMirroredStrategy"), QAT + magnitude
#: sparsity updated every step. argv: worker index, the two ports.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    index, ports = int(sys.argv[1]), sys.argv[2:]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    })
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # the first TF call of the program
    import keras
    import numpy as np
    import keras_compress as kc

    GLOBAL_BATCH, STEPS, EPOCHS = 16, 4, 2
    L = keras.layers
    rng = np.random.default_rng(0)                            # the same data on every worker
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, len(x))
    config = {"compression": [
        {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1,
         "params": {"sparsity_target": 0.6, "sparsity_target_epoch": 2, "update_per_optimizer_step": True},
         "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
        {"algorithm": "quantization", "weights": {"per_channel": True},
         "initializer": {"range": {"num_init_samples": 32},
                         "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    ]}

    with strategy.scope():
        keras.utils.set_random_seed(0)                        # the same weights on every worker
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
    ctrl.on_train_end()

    def values(keys):
        return {v.path: np.asarray(v).tolist() for v in compressed.weights if any(k in v.path for k in keys)}

    print("RESULTS " + json.dumps({
        "masks": values(["_mask", "mask_level"]),
        "ranges": values(["scale", "input_low", "input_range"]),
        "weights": {v.path: np.asarray(v).tolist() for v in compressed.trainable_weights},
        "losses": losses, "levels": levels, "progress": ctrl.progress(),
        "figures": {k: float(v) for k, v in ctrl.statistics().figures().items()},
    }), flush=True)
    """
)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def workers():
    ports = [str(p) for p in free_ports(2)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    processes = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(i), *ports], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        for i in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=300)
            outputs.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for code, out, err in outputs:
        assert code == 0, err[-4000:]
        results.append(json.loads(next(li for li in out.splitlines() if li.startswith("RESULTS "))[8:]))
    return results


@pytest.mark.slow
def test_two_workers_end_with_the_same_masks_ranges_and_weights(workers):
    first, second = workers
    assert first["progress"] == second["progress"] == {"epochs": 2, "steps": 8}
    # The per-step schedule moved on both workers alike, step by step (4 steps per epoch).
    schedule = PolynomialSchedule(0.1, 0.6, 2)
    assert first["levels"] == second["levels"] == pytest.approx([schedule(step / 4) for step in range(8)])
    assert first["masks"].keys() == second["masks"].keys() and first["masks"]
    for key in first["masks"]:
        np.testing.assert_array_equal(first["masks"][key], second["masks"][key], err_msg=key)
    assert first["ranges"].keys() == second["ranges"].keys() and first["ranges"]
    for key in first["ranges"]:
        np.testing.assert_array_equal(first["ranges"][key], second["ranges"][key], err_msg=key)
    for key in first["weights"]:
        np.testing.assert_allclose(first["weights"][key], second["weights"][key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(first["losses"], second["losses"], rtol=1e-6)
    assert first["figures"] == pytest.approx(second["figures"])
    assert first["figures"]["magnitude_sparsity/sparsity_level"] == pytest.approx(schedule(7 / 4), abs=0.01)
