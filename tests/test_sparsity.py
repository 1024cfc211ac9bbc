"""Magnitude, RB and movement sparsity: schedules, masks, accuracy on digits, export, saving."""


import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import trained_digits_cnn
from keras_compress.benchmark import compile_ir, runtime_precisions
from keras_compress.demo import load_digits_split
from keras_compress.schedules import (
    AdaptiveSchedule,
    ExponentialPruningSchedule,
    ExponentialSchedule,
    ExponentialWithBiasPruningSchedule,
    MultiStepSchedule,
    PolynomialSchedule,
)
from keras_compress.sparsity.functions import (
    block_expand,
    magnitude_masks,
    normed_abs_importance,
    sparsity_level,
    threshold_for_level,
)
from keras_compress.sparsity.wrappers import (
    MagnitudeSparsityWrapper,
    MovementSparsityWrapper,
    RBSparsityWrapper,
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ----------------------------------------------------------------------------- schedules
def test_polynomial_schedule_levels():
    concave = PolynomialSchedule(0.1, 0.5, target_epoch=4, power=2, concave=True)
    convex = PolynomialSchedule(0.1, 0.5, target_epoch=4, power=2, concave=False)
    assert concave(0) == pytest.approx(0.1)
    assert concave(2) == pytest.approx(0.1 + 0.4 * (1 - 0.5**2))
    assert convex(2) == pytest.approx(0.1 + 0.4 * 0.5**2)
    assert concave(4) == convex(4) == pytest.approx(0.5)
    assert concave(100) == pytest.approx(0.5)
    assert concave(1.5) < concave(2)  # fractional epochs (per-step updates)


def test_exponential_schedule_levels():
    s = ExponentialSchedule(0.0, 0.9, target_epoch=2)
    assert s(0) == 0.0
    assert s(1) == pytest.approx(1 - np.sqrt(0.1))
    assert s(2) == pytest.approx(0.9) and s(5) == pytest.approx(0.9)


def test_multistep_schedule_levels():
    s = MultiStepSchedule([5, 10], [0.1, 0.3, 0.6])
    assert [s(e) for e in (0, 4.9, 5, 9, 10, 50)] == [0.1, 0.1, 0.3, 0.3, 0.6, 0.6]
    with pytest.raises(ValueError, match="one more entry"):
        MultiStepSchedule([5], [0.1])


def test_adaptive_schedule_rises_only_when_the_level_is_reached():
    s = AdaptiveSchedule(0.1, 0.3, patience=2, step=0.1, eps=0.01)
    s.observe(0, 0.1)
    assert s(1) == pytest.approx(0.1)  # patience 2: not yet
    s.observe(1, 0.1)
    assert s(2) == pytest.approx(0.2)
    s.observe(2, 0.05)  # model lags behind: streak resets
    s.observe(3, 0.2)
    assert s(4) == pytest.approx(0.2)
    s.observe(4, 0.2)
    s.observe(5, 0.3)
    s.observe(6, 0.3)
    assert s(7) == pytest.approx(0.3)  # capped at the target


def test_pruning_schedules():
    s = ExponentialPruningSchedule(0.1, 0.5, pruning_steps=4, num_init_steps=2)
    assert s(0) == 0.0 and s(1) == 0.0
    assert s(2) == pytest.approx(0.1)
    assert s(6) == pytest.approx(0.5) and s(60) == pytest.approx(0.5)
    assert 0.1 < s(4) < 0.5
    b = ExponentialWithBiasPruningSchedule(0.1, 0.5, pruning_steps=4)
    assert b(0) == pytest.approx(0.1) and b(4) == pytest.approx(0.5)
    assert b(1) > s(3)  # fast start: most of the way early


# ----------------------------------------------------------------------------- pure functions
def test_magnitude_masks_global_and_local():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([10.0, 20.0, 30.0, 40.0])
    g = magnitude_masks([a, b], 0.5, "abs", "global")
    assert g[0].tolist() == [0, 0, 0, 0] and g[1].tolist() == [1, 1, 1, 1]
    loc = magnitude_masks([a, b], 0.5, "abs", "local")
    assert loc[0].tolist() == [0, 0, 1, 1] and loc[1].tolist() == [0, 0, 1, 1]
    # normed_abs makes layers of different scale comparable: global behaves like local here.
    n = magnitude_masks([a, b], 0.5, "normed_abs", "global")
    assert sparsity_level(n) == pytest.approx(0.5) and n[0].sum() == n[1].sum()
    np.testing.assert_allclose(normed_abs_importance(b), b / np.linalg.norm(b))


def test_threshold_and_block_expand():
    assert threshold_for_level(np.arange(10.0), 0.3) == 2.0
    assert threshold_for_level(np.arange(10.0), 0.0) == -np.inf
    assert block_expand(np.array([[1, 0], [0, 1]]), (3, 4)).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
    ]


# ----------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits():
    model, (x_train, y_train), (x_test, y_test) = trained_digits_cnn()
    fp32 = model.evaluate(x_test, y_test, verbose=0)[1]
    return model, fp32, (x_train, y_train), (x_test, y_test)


def fine_tune(model, config, data, epochs, lr=1e-3):
    (x_train, y_train), (x_test, y_test) = data
    compressed, ctrl = kc.compress(model, config, dataset=x_train)
    compressed.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS, metrics=["accuracy"])
    history = compressed.fit(
        x_train, y_train, batch_size=64, epochs=epochs, verbose=0, callbacks=ctrl.callbacks()
    )
    return compressed, ctrl, history, compressed.evaluate(x_test, y_test, verbose=0)[1]


def magnitude_config(target=0.7, **params):
    return {
        "compression": {
            "algorithm": "magnitude_sparsity",
            "params": {
                "schedule": "polynomial", "sparsity_target": target, "sparsity_target_epoch": 5,
                "sparsity_freeze_epoch": 8, "power": 1, **params,
            },
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
        }
    }  # fmt: skip


def test_magnitude_sparsity_reaches_70_percent_within_one_point(digits):
    model, fp32, train, test = digits
    compressed, ctrl, history, acc = fine_tune(model, magnitude_config(0.7), (train, test), epochs=10)
    figures = ctrl.statistics().figures()
    assert figures["magnitude_sparsity/sparsity_level"] == pytest.approx(0.7, abs=0.005)
    assert acc >= fp32 - 0.01, (acc, fp32)
    # The level followed the schedule epoch by epoch and was logged every epoch.
    levels = history.history["compression/magnitude_sparsity/target_level"]
    assert len(levels) == 10
    np.testing.assert_allclose(levels[:6], [0.0, 0.14, 0.28, 0.42, 0.56, 0.7], atol=1e-6)
    # Every conv/dense is sparsified; strip folds the masks and removes the wrappers.
    stripped = ctrl.strip()
    assert not [l for l in stripped.layers if isinstance(l, kc.WeightsWrapper)]
    kernels = [l.kernel.numpy() for l in stripped.layers if hasattr(l, "kernel")]
    assert sparsity_level(kernels) == pytest.approx(0.7, abs=0.005)
    x = test[0][:64]
    np.testing.assert_allclose(stripped.predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-5)


def test_magnitude_sparsity_per_step_updates(digits):
    model, _, train, test = digits
    config = magnitude_config(0.5, update_per_optimizer_step=True)
    _, ctrl, _, _ = fine_tune(model, config, (train, test), epochs=1)
    algorithm = ctrl.algorithm("magnitude_sparsity")
    steps = int(np.ceil(len(train[0]) / 64))
    # The last update happened before the last step of epoch 0: level of epoch (steps-1)/steps.
    assert algorithm.level == pytest.approx(0.5 / 5 * (steps - 1) / steps, abs=1e-6)


def test_rb_sparsity_reaches_its_target_within_two_points(digits):
    model, fp32, train, test = digits
    config = {
        "compression": {
            "algorithm": "rb_sparsity",
            "params": {"schedule": "polynomial", "sparsity_target": 0.5, "sparsity_target_epoch": 5,
                       "sparsity_freeze_epoch": 20, "power": 1},
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
        }
    }  # fmt: skip
    compressed, ctrl, history, acc = fine_tune(model, config, (train, test), epochs=10)
    level = ctrl.statistics().figures()["rb_sparsity/sparsity_level"]
    assert abs(level - 0.5) <= 0.02, level
    assert acc >= fp32 - 0.02, (acc, fp32)
    compressed(test[0][:8], training=True)
    assert len(compressed.losses) == 4  # one sparsity loss term per sparsified layer in training
    compressed(test[0][:8], training=False)
    assert len(compressed.losses) == 0


def mlp_digits():
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(128, activation="relu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=40, verbose=0)
    return model, model.evaluate(x_test, y_test, verbose=0)[1], (x_train, y_train), (x_test, y_test)


@pytest.mark.parametrize("block", [False, True])
def test_movement_sparsity_reaches_50_percent_on_an_mlp(block):
    model, fp32, train, test = mlp_digits()
    structures = [{"mode": "block", "sparse_factors": [4, 4], "target_scopes": ["{re}dense.*"]}]
    config = {
        "compression": {
            "algorithm": "movement_sparsity",
            "params": {"warmup_start_epoch": 1, "warmup_end_epoch": 6,
                       "importance_regularization_factor": 0.01, "sparsity_target": 0.5},
            "sparse_structure_by_scopes": structures if block else [],
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}},
        }
    }  # fmt: skip
    compressed, ctrl, _, acc = fine_tune(model, config, (train, test), epochs=12)
    level = ctrl.statistics().figures()["movement_sparsity/sparsity_level"]
    assert level == pytest.approx(0.5, abs=0.02 if block else 0.005)
    assert acc >= fp32 - 0.01, (acc, fp32)
    wrappers = [l for l in compressed.layers if isinstance(l, MovementSparsityWrapper)]
    assert len(wrappers) == 3
    if block:  # masks are constant over 4x4 blocks
        kernel_mask = wrappers[0].inference_masks()["kernel"]
        blocks = kernel_mask.reshape(16, 4, 32, 4)
        assert np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3)))


@pytest.mark.openvino
def test_sparsity_with_int8_exports_zeros_and_runs_int8(digits, tmp_path):
    import openvino as ov

    model, fp32, train, test = digits
    config = magnitude_config(0.7)
    config["compression"] = [
        config["compression"],
        {"algorithm": "quantization", "weights": {"per_channel": True}, "overflow_fix": "disable",
         "initializer": {"range": {"num_init_samples": 256},
                         "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    ]  # fmt: skip
    compressed, ctrl, _, acc = fine_tune(model, config, (train, test), epochs=8, lr=5e-4)
    assert acc >= fp32 - 0.015
    # Masks inside, quantizers outside.
    outer = [l for l in compressed.layers if isinstance(l, kc.QuantizeWrapper)]
    assert len(outer) == 4 and all(isinstance(l.layer, MagnitudeSparsityWrapper) for l in outer)
    xml = kc.export(compressed, tmp_path / "sparse_int8")
    counts = runtime_precisions(compile_ir(xml))
    assert {p for _, p in counts} <= {"u8", "i8"} and sum(counts.values()) == 4
    weights = [
        op.get_data() for op in ov.Core().read_model(str(xml)).get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
    ]  # fmt: skip
    assert len(weights) == 4
    assert sparsity_level(weights) >= 0.7


@pytest.mark.parametrize("wrapper_cls", [MagnitudeSparsityWrapper, RBSparsityWrapper, MovementSparsityWrapper])
def test_keras_round_trip_keeps_masks_and_scores(wrapper_cls, tmp_path):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    wrapper = wrapper_cls(keras.layers.Dense(5, name="d"))
    model = keras.Model(inputs, wrapper(inputs))
    rng = np.random.default_rng(0)
    if wrapper_cls is MagnitudeSparsityWrapper:
        wrapper.masks["kernel"].assign((rng.uniform(size=(6, 5)) > 0.5).astype("float32"))
    elif wrapper_cls is RBSparsityWrapper:
        wrapper.logits["kernel"].assign(rng.normal(size=(6, 5)).astype("float32"))
    else:
        wrapper.scores["kernel"].assign(rng.normal(size=(6, 5)).astype("float32"))
        wrapper.threshold.assign(0.0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    restored = wrapper_cls.from_config(wrapper.get_config())
    assert restored.get_config() == wrapper.get_config()


def test_unsupported_layer_is_listed_and_left_alone():
    class Custom(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 3))

        def call(self, x):
            return keras.ops.matmul(x, self.w)

    inputs = keras.Input((4,))
    x = Custom(name="custom")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    compressed, ctrl = kc.compress(model, magnitude_config(0.5))
    skipped = ctrl.statistics().skipped()
    assert skipped["custom"].startswith("magnitude_sparsity: layer type Custom computes with weights of its own")
    assert isinstance(compressed.get_layer("head"), MagnitudeSparsityWrapper)
    assert type(compressed.get_layer("custom")).__name__ == "Custom"


@pytest.mark.parametrize("mode", ["global", "local"])
def test_statistics_with_filter_pruning_count_only_the_weights_that_survive_export(mode):
    """Pruned filters are removed at export: their zeros are not sparsity of the exported model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    no_bn = {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}
    config = {"compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.5, "params": {"pruning_target": 0.5}, "initializer": no_bn},
        {"algorithm": "magnitude_sparsity", "sparsity_init": 0.4,
         "params": {"sparsity_target": 0.5, "sparsity_level_setting_mode": mode}, "initializer": no_bn},
    ]}  # fmt: skip
    compressed, ctrl = kc.compress(model, config)
    figures = ctrl.statistics().figures()
    assert figures["filter_pruning/pruned_filters"] == 16
    stripped = ctrl.strip()  # what kc.export writes: pruned filters removed, masks folded in
    kernels = [layer.kernel.numpy() for layer in stripped.layers if hasattr(layer, "kernel")]
    assert [k.shape[-1] for k in kernels] == [8, 16, 16, 3]
    exported = sparsity_level(kernels)  # sparsity sparsifies kernels
    assert figures["magnitude_sparsity/sparsity_level"] == pytest.approx(exported, abs=1e-9)
    assert exported == pytest.approx(0.4, abs=0.01)  # the level asked, on what is exported
