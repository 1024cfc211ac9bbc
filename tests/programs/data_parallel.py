"""A compressed model trained under `keras.distribution.DataParallel` on two JAX devices, and on one:
a child program of tests/test_backends.py.

`python data_parallel.py devices WORK` (with `XLA_FLAGS=--xla_force_host_platform_device_count=2` and
`KERAS_BACKEND=jax`, set before JAX starts): 8-bit QAT plus magnitude sparsity whose mask moves every
optimizer step (BatchNorm, range init and BN adaptation included) trains for N steps on both devices,
then again on one device from the same seed. Writes `WORK/data_parallel.json`: per variable, whether its
two replicas are equal, and how far the distributed run's outputs and variables are from the
single-device run's; and the single-device run's variables (`WORK/single.npz`).

`python data_parallel.py processes WORK INDEX PORT`, twice (INDEX 0 and 1): the multi-host recipe of
docs/backends.md on one machine, two processes of one CPU device each (`keras.distribution.initialize`,
collectives over gloo), each feeding its half of every global batch. Writes `WORK/process_<INDEX>.npz`:
the variables as that process holds them.
"""

import json
import sys
import time
from pathlib import Path

import jax
import keras
import numpy as np

import keras_compress as kc

L = keras.layers
GLOBAL_BATCH, STEPS, EPOCHS = 16, 4, 2
CONFIG = {"compression": [
    {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1,
     "params": {"sparsity_target": 0.6, "sparsity_target_epoch": 2, "update_per_optimizer_step": True},
     "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 32}}},
    {"algorithm": "quantization", "weights": {"per_channel": True},
     "initializer": {"range": {"num_init_samples": 32}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 32}}},
]}  # fmt: skip


def cnn():
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(3, name="fc")(x), name="cnn")


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 8, 8, 3)).astype("float32")
    return x, (np.arange(len(x)) % 3).astype("int32")


def train(distribution, x, y, batch_size=GLOBAL_BATCH, calibration=None):
    """Compresses and trains under `distribution` (None: one device); returns the model and its controller.

    Every process initializes from the same calibration data (`calibration`, default `x[:32]`): range
    init and BN adaptation run on each process, and the replicas must start equal.
    """
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    calibration = x[:32] if calibration is None else calibration
    compressed, ctrl = kc.compress(cnn(), CONFIG, dataset=calibration, verbose=0)
    compressed.compile(optimizer=keras.optimizers.SGD(0.05),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    compressed.fit(x, y, batch_size=batch_size, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=ctrl.callbacks())
    return compressed, ctrl


def devices(work):
    start = time.perf_counter()
    devices = jax.devices()
    x, y = data()

    distributed, ctrl = train(keras.distribution.DataParallel(devices=devices), x, y)
    replicas = {}
    for v in distributed.weights:
        shards = [np.asarray(shard.data) for shard in v.value.addressable_shards]
        replicas[v.path] = {"count": len(shards), "equal": all(np.array_equal(shards[0], s) for s in shards[1:]),
                            "sharding": str(v.value.sharding.spec)}  # fmt: skip
    out_distributed = np.asarray(distributed.predict(x, verbose=0))
    figures = {k: float(v) for k, v in ctrl.statistics().figures().items()}
    values_distributed = [np.asarray(v.value) for v in distributed.weights]

    single, single_ctrl = train(None, x, y)
    out_single = np.asarray(single.predict(x, verbose=0))
    values_single = [np.asarray(v.value) for v in single.weights]
    np.savez(work / "single.npz", *values_single)
    variable_differences = {
        v.path: float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
        for v, a, b in zip(single.weights, values_distributed, values_single)
    }
    results = {
        "devices": [str(d) for d in devices],
        "steps": EPOCHS * STEPS,
        "replicas": replicas,
        "progress": ctrl.progress(),
        "figures": figures,
        "single_figures": {k: float(v) for k, v in single_ctrl.statistics().figures().items()},
        "output_relative_difference": float(np.abs(out_distributed - out_single).max() / np.abs(out_single).max()),
        "variable_relative_differences": variable_differences,
        "seconds": time.perf_counter() - start,
    }
    (work / "data_parallel.json").write_text(json.dumps(results, indent=1))


def processes(work, index, port):
    """One of two processes: DataParallel over both, each process feeding its half of each global batch."""
    keras.distribution.initialize(job_addresses=f"127.0.0.1:{port}", num_processes=2, process_id=index)
    x, y = data()
    half = GLOBAL_BATCH // 2
    mine = np.concatenate([np.arange(s * GLOBAL_BATCH + index * half, s * GLOBAL_BATCH + (index + 1) * half)
                           for s in range(STEPS)])  # fmt: skip
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False  # each process passes its own shard
    model, _ = train(distribution, x[mine], y[mine], batch_size=half, calibration=x[:32])
    np.savez(work / f"process_{index}.npz", *[np.asarray(v.value.addressable_data(0)) for v in model.weights])


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        devices(Path(sys.argv[2]))
    else:  # with JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
        processes(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
