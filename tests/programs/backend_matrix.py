"""Every algorithm on the Keras backend of this process (`KERAS_BACKEND`): a child program of tests/test_backends.py.

`python backend_matrix.py train WORK`: for each scenario, compress a tiny model -> `fit` with the
controller's callbacks -> statistics in History -> save `WORK/<scenario>.keras`, with the inputs, the
outputs and the config next to it.
`python backend_matrix.py resume WORK` (a new process): load each file, check the outputs, get the
controller back with `kc.compress(loaded, config)`, train one more epoch (the schedules continue),
`kc.export` it to `WORK/ir/<scenario>.xml` and save the model and what `ctrl.strip()` computes next to
it; then the export's error behaviour on this backend.

Each phase writes `WORK/<phase>.json`: what the test asserts on.
"""

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

import keras_compress as kc

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
NO_BN = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}
RANGE = {"range": {"num_init_samples": 16}}


def cnn():
    """conv-bn-relu-conv-relu-gap-dense on 8x8x1: a layer for every algorithm."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = L.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(32, 3, padding="same", name="conv2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="fc")(x), name="cnn")


def transformer():
    """A post-norm transformer block on 8 tokens of 16 features, with an `x + attention(x)` residual."""
    inputs = keras.Input((8, 16), name="tokens")
    attended = L.MultiHeadAttention(2, 8, name="attention")(inputs, inputs)
    x = L.LayerNormalization(name="norm")(inputs + attended)
    x = L.Dense(32, activation="relu", bias_initializer=keras.initializers.Constant(0.01), name="up")(x)
    return keras.Model(inputs, L.Dense(4, name="head")(L.GlobalAveragePooling1D(name="pool")(x)), name="block")


QUANTIZATION = {"algorithm": "quantization", "weights": {"per_channel": True}, "initializer": {**RANGE, **NO_BN}}

#: scenario -> (model builder, config). Together they cover every algorithm, mixed precision (HAWQ: a
#: Hessian by double backprop on this backend), attention quantization and accuracy-aware training.
SCENARIOS = {
    "quantization_hawq": (cnn, {"compression": {**QUANTIZATION, "initializer": {
        **RANGE, **NO_BN, "precision": {"type": "hawq", "bits": [4, 8], "average_bits": 6, "iter_number": 2,
                                         "num_data_points": 8}}}}),
    "attention_quantization": (transformer, {"compression": QUANTIZATION}),
    "filter_pruning_quantization": (cnn, {"compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.25,
         "params": {"schedule": "exponential", "pruning_target": 0.5, "pruning_steps": 3},
         "initializer": NO_BN},
        QUANTIZATION]}),
    "magnitude_sparsity_accuracy_aware": (cnn, {
        "accuracy_aware_training": {"mode": "early_exit", "params": {
            "maximal_absolute_accuracy_degradation": 1.0, "maximal_total_epochs": 3, "uncompressed_model_accuracy": 0.25}},
        "compression": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.2,
                        "params": {"sparsity_target": 0.5, "sparsity_target_epoch": 3, "power": 1,
                                   "update_per_optimizer_step": True}, "initializer": NO_BN}}),
    "rb_sparsity": (cnn, {"compression": {
        "algorithm": "rb_sparsity", "sparsity_init": 0.1,
        "params": {"schedule": "polynomial", "sparsity_target": 0.5, "sparsity_target_epoch": 3, "power": 1},
        "initializer": NO_BN}}),
    "movement_sparsity": (cnn, {"compression": {
        "algorithm": "movement_sparsity",
        "params": {"warmup_start_epoch": 0, "warmup_end_epoch": 2, "importance_regularization_factor": 0.01},
        "initializer": NO_BN}}),
}
EPOCHS, BATCH = 2, 8


def data(builder, n=32):
    rng = np.random.default_rng(0)
    shape = (n, 8, 8, 1) if builder is cnn else (n, 8, 16)
    return rng.normal(size=shape).astype("float32"), (np.arange(n) % 4).astype("int32")


def validation(config, x, y):
    """Validation data for accuracy-aware training (its metric is `val_accuracy`), else None: every
    evaluation is one more function for JAX to compile."""
    return (x, y) if "accuracy_aware_training" in config else None


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def train(work):
    results = {"backend": keras.backend.backend(), "package": kc.__file__}
    for name, (builder, config) in SCENARIOS.items():
        start = time.perf_counter()
        keras.utils.set_random_seed(0)
        x, y = data(builder)
        compressed, ctrl = kc.compress(builder(), config, dataset=x, verbose=0)
        compressed.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS, metrics=["accuracy"])
        history = compressed.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=ctrl.callbacks(),
                                 validation_data=validation(config, x, y))
        outputs = numpy(compressed(x))
        compressed.save(work / f"{name}.keras")
        np.savez(work / f"{name}.npz", x=x, y=y, outputs=outputs)
        (work / f"{name}.json").write_text(json.dumps(config))
        results[name] = {
            "logged": sorted(k for k in history.history if k.startswith("compression/")),
            "loss": history.history["loss"],
            "progress": ctrl.progress(),
            "figures": {k: float(v) for k, v in ctrl.statistics().figures().items()},
            "seconds": time.perf_counter() - start,
        }
    return results


class ScriptDefined(L.Layer):
    """A layer class defined in the program being run (`__main__`), registered with Keras."""

    def call(self, x):
        return x


keras.saving.register_keras_serializable(package="backend_matrix")(ScriptDefined)


def export_errors(work):
    """kc.export's rules on this backend: targets are checked before any work; a class defined in
    `__main__` (which the TensorFlow helper process cannot import) is refused before anything is written."""
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    (work / "taken.xml").mkdir()
    errors = {}
    for key, fn in {
        "target": lambda: kc.export(model, work / "taken"),
        "main_class": lambda: kc.export(keras.Sequential([keras.Input((4,)), ScriptDefined(), L.Dense(2)]),
                                        work / "main_class"),
    }.items():
        try:
            fn()
            errors[key] = None
        except Exception as err:  # noqa: BLE001 - the test asserts the type and the message
            errors[key] = f"{type(err).__name__}: {err}"
    errors["left_behind"] = sorted(p.name for p in work.iterdir() if p.name.startswith(("main_class", ".kc-export")))
    return errors


def resume(work):
    results = {"backend": keras.backend.backend(), "package": kc.__file__}
    for name, (builder, _) in SCENARIOS.items():
        start = time.perf_counter()
        saved = np.load(work / f"{name}.npz")
        config = json.loads((work / f"{name}.json").read_text())
        loaded = keras.saving.load_model(work / f"{name}.keras")
        difference = float(np.abs(numpy(loaded(saved["x"])) - saved["outputs"]).max())
        model, ctrl = kc.compress(loaded, config)
        before = ctrl.progress()
        model.fit(saved["x"], saved["y"], batch_size=BATCH, epochs=1, verbose=0, callbacks=ctrl.callbacks(),
                  validation_data=validation(config, saved["x"], saved["y"]))
        export_start = time.perf_counter()
        xml = kc.export(model, work / "ir" / name)
        model.save(work / "ir" / f"{name}.keras")  # what was exported, for the TensorFlow export of the test
        np.save(work / "ir" / f"{name}.npy", numpy(ctrl.strip(model)(saved["x"])))  # strip on this backend
        results[name] = {
            "bound_to_loaded": model is loaded,
            "load_difference": difference,
            "progress_before": before,
            "progress_after": ctrl.progress(),
            "figures": {k: float(v) for k, v in ctrl.statistics().figures().items()},
            "xml": str(xml),
            "export_seconds": time.perf_counter() - export_start,
            "seconds": time.perf_counter() - start,
        }
    results["errors"] = export_errors(work)
    return results


if __name__ == "__main__":
    phase, work = sys.argv[1], Path(sys.argv[2])
    started = time.perf_counter()
    results = {"train": train, "resume": resume}[phase](work)
    results["total_seconds"] = time.perf_counter() - started
    (work / f"{phase}.json").write_text(json.dumps(results, indent=1))
