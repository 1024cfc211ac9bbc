"""Nothing lost between sessions: a compressed model saved to `.keras` loads in a new process, gets
its controller back from `kc.compress(loaded, config)`, continues its schedules from the saved
progress, trains and exports; schedules follow the controller's own step across `fit` calls and
recompiles; training without the controller's callbacks is warned about.
"""


import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import results_of, run_program
from keras_compress.schedules import PolynomialSchedule

ROOT = Path(__file__).resolve().parents[1]
L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
NO_BN = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}

#: One section per algorithm, with schedules short enough to move in a few epochs.
SECTIONS = {
    "quantization": {"algorithm": "quantization", "weights": {"per_channel": True},
                     "initializer": {"range": {"num_init_samples": 16}, **NO_BN}},
    "filter_pruning": {"algorithm": "filter_pruning", "pruning_init": 0.3,
                       "params": {"schedule": "exponential", "pruning_target": 0.7, "pruning_steps": 4},
                       "initializer": NO_BN},
    "magnitude_sparsity": {"algorithm": "magnitude_sparsity", "sparsity_init": 0.1,
                           "params": {"sparsity_target": 0.5, "sparsity_target_epoch": 4, "power": 1},
                           "initializer": NO_BN},
    "rb_sparsity": {"algorithm": "rb_sparsity", "sparsity_init": 0.1,
                    "params": {"schedule": "polynomial", "sparsity_target": 0.5, "sparsity_target_epoch": 4,
                               "power": 1}, "initializer": NO_BN},
    "movement_sparsity": {"algorithm": "movement_sparsity",
                          "params": {"warmup_start_epoch": 1, "warmup_end_epoch": 4,
                                     "importance_regularization_factor": 0.01}, "initializer": NO_BN},
}  # fmt: skip
#: Every algorithm alone, and combinations: every wrapper nested in another, all three kinds together.
COMBINATIONS = [
    ("quantization",), ("filter_pruning",), ("magnitude_sparsity",), ("rb_sparsity",), ("movement_sparsity",),
    ("movement_sparsity", "quantization"), ("filter_pruning", "magnitude_sparsity", "quantization"),
]  # fmt: skip


def config_of(names):
    return {"compression": [SECTIONS[name] for name in names]}


def small_model():
    """conv-bn-relu-conv-relu-gap-dense-dense: something for every algorithm (movement takes Dense)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(32, 3, padding="same", name="conv2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inp, L.Dense(3, name="fc")(x), name="small")


def data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), np.arange(n) % 3


# ---------------------------------------------------------------------------------------------------
# A new process (tests/programs/resume.py): load with safe_mode=True, bind the controller, continue, export


@pytest.mark.slow
def test_every_algorithm_reloads_in_a_new_process_and_continues_its_schedule(tmp_path):
    x, y = data()
    jobs, expected = {}, {}
    for names in COMBINATIONS:
        name = "+".join(names)
        config = config_of(names)
        compressed, ctrl = kc.compress(small_model(), config, dataset=x)
        compressed.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
        compressed.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=ctrl.callbacks())
        compressed.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", np.asarray(compressed(x)))
        jobs[name] = config
        expected[name] = ctrl.statistics().figures()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))

    result = run_program("resume.py", tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    results = results_of(result.stdout)
    assert Path(results.pop("package")).is_relative_to(ROOT)  # the child ran this tree's package

    steps = 32 // 8
    for name, got in results.items():
        assert got["bound_to_loaded"], name
        assert got["max_output_difference"] < 1e-5, name
        assert got["progress_before"] == {"epochs": 2, "steps": 2 * steps}, name
        assert got["progress_after"] == {"epochs": 3, "steps": 3 * steps}, name
        assert np.isfinite(got["loss"]).all() and got["ir"], name
        figures = got["figures"]
        # The third epoch is the schedule's epoch 2, not a restart at epoch 0.
        if "magnitude_sparsity" in name:
            level = PolynomialSchedule(0.1, 0.5, 4, power=1)(2)
            assert figures["magnitude_sparsity/target_level"] == pytest.approx(level), name
            assert figures["magnitude_sparsity/sparsity_level"] == pytest.approx(level, abs=0.01), name
        if "rb_sparsity" in name:
            assert figures["rb_sparsity/target_level"] == pytest.approx(0.3), name
        if "filter_pruning" in name:
            before = expected[name]["filter_pruning/pruning_level"]  # the level of epoch 1
            assert figures["filter_pruning/pruning_level"] > before + 0.05, name
            assert figures["filter_pruning/pruned_filters"] > expected[name]["filter_pruning/pruned_filters"], name
        if name == "quantization":
            assert figures == pytest.approx(expected[name]), name


# ---------------------------------------------------------------------------------------------------
# kc.compress on a compressed model


def magnitude_config(per_step=False, target_epoch=4):
    section = dict(SECTIONS["magnitude_sparsity"])
    section["params"] = {**section["params"], "sparsity_target_epoch": target_epoch,
                         "update_per_optimizer_step": per_step}  # fmt: skip
    return {"compression": section}


def level(ctrl):
    return ctrl.statistics().figures()["magnitude_sparsity/target_level"]


def test_compress_of_a_compressed_model_returns_it_with_a_controller_that_continues():
    x, y = data()
    config = magnitude_config()
    compressed, ctrl = kc.compress(small_model(), config)
    compressed.compile(optimizer="sgd", loss=LOSS)
    compressed.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=ctrl.callbacks())
    weights = [w.copy() for w in compressed.get_weights()]

    again, ctrl2 = kc.compress(compressed, config, dataset=x)
    assert again is compressed  # not cloned, not re-initialized
    for a, b in zip(weights, again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert ctrl2.progress() == ctrl.progress() == {"epochs": 2, "steps": 8}
    assert level(ctrl2) == pytest.approx(level(ctrl))
    again.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl2.callbacks())
    assert level(ctrl2) == pytest.approx(PolynomialSchedule(0.1, 0.5, 4, power=1)(2))


def test_stripped_qat_model_gets_a_controller_and_trains():
    x, y = data()
    config = config_of(["quantization"])
    compressed, ctrl = kc.compress(small_model(), config, dataset=x)
    stripped = ctrl.strip()
    again, ctrl2 = kc.compress(stripped, config)
    assert again is stripped
    again.compile(optimizer="sgd", loss=LOSS)
    history = again.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl2.callbacks())
    assert np.isfinite(history.history["loss"]).all()
    assert ctrl2.statistics().figures()["quantization/weight_quantizers"] == 4


@pytest.mark.parametrize(
    "model_has,config_asks",
    [(["quantization"], ["magnitude_sparsity", "quantization"]), (["magnitude_sparsity", "quantization"],
     ["quantization"])],
    ids=["adds_an_algorithm", "drops_an_algorithm"],
)  # fmt: skip
def test_compressing_twice_with_other_algorithms_says_what_to_do(model_has, config_asks):
    compressed, _ = kc.compress(small_model(), config_of(model_has))
    weights = [w.copy() for w in compressed.get_weights()]
    with pytest.raises(ValueError, match=r"continues an already-compressed model only with the config it was "
                                         r"compressed with .*compress the original, uncompressed model"):
        kc.compress(compressed, config_of(config_asks))
    for a, b in zip(weights, compressed.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------
# Schedules follow the controller's progress


def test_second_fit_continues_the_epoch_schedule():
    x, y = data()
    compressed, ctrl = kc.compress(small_model(), magnitude_config())
    compressed.compile(optimizer="sgd", loss=LOSS)
    levels = []
    for _ in range(3):
        compressed.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl.callbacks())
        levels.append(level(ctrl))
    schedule = PolynomialSchedule(0.1, 0.5, 4, power=1)
    assert levels == pytest.approx([schedule(0), schedule(1), schedule(2)])


def test_per_step_schedule_follows_the_global_step_after_a_recompile():
    x, y = data()
    compressed, ctrl = kc.compress(small_model(), magnitude_config(per_step=True, target_epoch=2))
    compressed.compile(optimizer="sgd", loss=LOSS)
    compressed.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl.callbacks())
    compressed.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS)  # a new optimizer, at step 0
    compressed.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl.callbacks())
    assert int(compressed.optimizer.iterations) == 4
    assert ctrl.progress() == {"epochs": 2, "steps": 8}
    # The last step was global step 7 of 4 per epoch: the level of epoch 7/4, not 3/4.
    assert level(ctrl) == pytest.approx(PolynomialSchedule(0.1, 0.5, 2, power=1)(7 / 4))


def test_per_step_schedule_with_steps_per_execution_counts_every_optimizer_step():
    x, y = data()
    compressed, ctrl = kc.compress(small_model(), magnitude_config(per_step=True, target_epoch=2))
    compressed.compile(optimizer="sgd", loss=LOSS, steps_per_execution=2)  # one callback per 2 steps
    levels = []
    record = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: levels.append(level(ctrl)))
    compressed.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[*ctrl.callbacks(), record])
    schedule = PolynomialSchedule(0.1, 0.5, 2, power=1)
    assert levels == pytest.approx([schedule(step / 4) for step in (0, 2, 4, 6)])
    assert ctrl.progress() == {"epochs": 2, "steps": 8}


# ---------------------------------------------------------------------------------------------------
# fit without the controller's callbacks


def warnings_about_callbacks(caplog):
    return [r for r in caplog.records if "without the controller's callbacks" in r.getMessage()]


def test_fit_without_callbacks_warns_once(caplog):
    x, y = data()
    compressed, ctrl = kc.compress(small_model(), magnitude_config())
    compressed.compile(optimizer="sgd", loss=LOSS)
    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed.fit(x, y, batch_size=8, epochs=2, verbose=0)
        compressed.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert len(warnings_about_callbacks(caplog)) == 1
    assert "ctrl.callbacks()" in warnings_about_callbacks(caplog)[0].getMessage()
    assert ctrl.progress() == {"epochs": 0, "steps": 0} and level(ctrl) == pytest.approx(0.1)


@pytest.mark.parametrize("names,callbacks", [(["magnitude_sparsity"], True), (["quantization"], False)],
                         ids=["with_callbacks", "qat_has_no_schedule"])  # fmt: skip
def test_no_warning_when_the_schedule_is_driven_or_there_is_none(names, callbacks, caplog):
    x, y = data()
    with caplog.at_level(logging.WARNING, logger="keras_compress"):
        compressed, ctrl = kc.compress(small_model(), config_of(names), dataset=x)
        compressed.compile(optimizer="sgd", loss=LOSS)
        compressed.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl.callbacks() if callbacks else None)
        compressed.evaluate(x, y, verbose=0)
        compressed.predict(x, verbose=0)
    assert warnings_about_callbacks(caplog) == []
