"""Tests of filter pruning: importance, masks, groups, FLOPs, wrapper, schedules, surgery, export."""

import json

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_compress as kc
from keras_compress.benchmark import compile_ir, runtime_precisions
from keras_compress.config import load_config
from keras_compress.export.strip import strip_model
from keras_compress.pruning import (
    FILTER_IMPORTANCE_FUNCTIONS,
    FilterPruningWrapper,
    analyze_channels,
    geometric_median_importance,
    l1_importance,
    l2_importance,
    remove_pruned_filters,
)
from keras_compress.pruning.flops import conv_flops, dense_flops, depthwise_flops, model_costs, total_cost
from keras_compress.pruning.masks import (
    find_global_count,
    find_uniform_level,
    global_order,
    keep_mask,
    masks_from_order,
    num_pruned_filters,
)
from keras_compress.schedules import ExponentialPruningSchedule
from keras_compress.wrapper import unwrap

SECTION_KEYS = ("ignored_scopes", "target_scopes", "validate_scopes")


def pruning_config(pruning_init=0.0, input_shape=None, bn_samples=0, **params):
    params.setdefault("schedule", "baseline")
    section = {key: params.pop(key) for key in SECTION_KEYS if key in params}
    config = {
        "compression": {
            "algorithm": "filter_pruning",
            "pruning_init": pruning_init,
            "params": params,
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples}},
            **section,
        }
    }
    if input_shape is not None:
        config["input_info"] = {"sample_size": [1, *input_shape]}
    return config


def data(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


def relative_error(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def kernel_of(model, name):
    return keras.ops.convert_to_numpy(unwrap(model.get_layer(name)).kernel)


def graph_model():
    """Add (b + c), a depthwise after it, Concatenate (e | f), a stride-2 conv, Flatten -> Dense."""
    x = keras.Input((8, 8, 3))
    a = L.ReLU()(L.BatchNormalization(name="a_bn")(L.Conv2D(16, 3, padding="same", name="a")(x)))
    b = L.BatchNormalization(name="b_bn")(L.Conv2D(16, 3, padding="same", name="b")(a))
    c = L.Conv2D(16, 1, name="c")(a)
    s = L.ReLU()(L.Add(name="add")([b, c]))
    d = L.BatchNormalization(name="d_bn")(L.DepthwiseConv2D(3, padding="same", name="d")(s))
    e = L.Conv2D(16, 1, name="e")(L.ReLU()(d))
    f = L.Conv2D(16, 1, name="f", activation="relu")(a)
    cat = L.Concatenate(name="cat")([L.ReLU()(e), f])
    g = L.Conv2D(16, 3, strides=2, name="g")(cat)
    out = L.Dense(4, name="out")(L.Dropout(0.1)(L.Flatten(name="flat")(L.ReLU()(g))))
    return keras.Model(x, out, name="graph")


def small_resnet(width=32):
    """A ResNet-style model: bottleneck blocks with projection shortcuts, GAP, Dense."""

    def block(x, filters, stride, name, project):
        y = L.ReLU()(L.BatchNormalization(name=f"{name}_1_bn")(
            L.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_1")(x)))
        y = L.ReLU()(L.BatchNormalization(name=f"{name}_2_bn")(
            L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2")(y)))
        y = L.BatchNormalization(name=f"{name}_3_bn")(L.Conv2D(2 * filters, 1, use_bias=False, name=f"{name}_3")(y))
        if project:
            x = L.BatchNormalization(name=f"{name}_0_bn")(
                L.Conv2D(2 * filters, 1, strides=stride, use_bias=False, name=f"{name}_0")(x))
        return L.ReLU()(L.Add(name=f"{name}_add")([x, y]))  # fmt: skip

    inputs = keras.Input((16, 16, 3))
    x = L.ReLU()(L.BatchNormalization(name="stem_bn")(L.Conv2D(width, 3, padding="same", name="stem")(inputs)))
    x = block(x, width, 1, "b1", True)
    x = block(x, width, 1, "b2", False)
    x = block(x, 2 * width, 2, "b3", True)
    return keras.Model(inputs, L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(x)), name="small_resnet")


def analysis_for(model, **params):
    """The pruning groups the algorithm sees in `model` compressed with `params` (nothing pruned)."""
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.0, **params))
    return ctrl.algorithm("filter_pruning").analysis(compressed)


def groups_by_source(analysis):
    return {tuple(g.sources): g for g in analysis.groups if g.sources}


def ir_weight_shapes(xml, op_type="Convolution"):
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return sorted(
        tuple(op.input_value(1).get_shape()) for op in model.get_ops() if op.get_type_name() == op_type
    )


def keras_conv_shapes(model):
    """(out, in, kh, kw) of every non-depthwise 2D convolution, as OpenVINO stores them."""
    shapes = []
    for layer in model.layers:
        base = unwrap(layer)
        if type(base) is L.Conv2D:
            kh, kw, cin, cout = base.kernel.shape
            shapes.append((cout, cin, kh, kw))
    return sorted(shapes)


# ---------------------------------------------------------------------------------------------------
# Importance and masks: pure functions


def test_importance_functions_on_a_small_kernel():
    kernel = np.zeros((1, 1, 2, 3))
    kernel[0, 0, :, 0] = [3.0, -4.0]
    kernel[0, 0, :, 1] = [1.0, 0.0]
    kernel[0, 0, :, 2] = [0.0, 2.0]
    np.testing.assert_allclose(l1_importance(kernel), [7.0, 1.0, 2.0])
    np.testing.assert_allclose(l2_importance(kernel), [5.0, 1.0, 2.0])
    d01, d02, d12 = np.sqrt(4 + 16), np.sqrt(9 + 36), np.sqrt(1 + 4)
    np.testing.assert_allclose(geometric_median_importance(kernel), [d01 + d02, d01 + d12, d02 + d12])
    np.testing.assert_allclose(l2_importance(np.moveaxis(kernel, -1, 0), axis=0), [5.0, 1.0, 2.0])
    assert set(FILTER_IMPORTANCE_FUNCTIONS) == {"L1", "L2", "geometric_median"}


def test_geometric_median_ranks_the_filter_in_the_middle_lowest():
    filters = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.1], [10.0, 10.0]]).T  # 4 filters of 2 values
    assert np.argmin(geometric_median_importance(filters)) == 2
    assert np.argmin(l2_importance(filters)) == 0


def test_num_pruned_filters_keeps_a_multiple_of_eight_rounded_up():
    assert num_pruned_filters(64, 0.5) == 32
    assert num_pruned_filters(64, 0.45) == 24  # keeps 35.2 -> 40
    assert num_pruned_filters(64, 0.0) == 0
    assert num_pruned_filters(8, 0.9) == 0
    assert num_pruned_filters(64, 0.999) == 56
    assert num_pruned_filters(10, 0.5, multiple_of=1) == 5


def test_keep_mask_prunes_the_least_important():
    np.testing.assert_array_equal(keep_mask(np.array([0.3, 0.1, 0.2, 0.4]), 2), [True, False, False, True])
    assert keep_mask(np.arange(4.0), 0).all()


def test_global_order_respects_the_quota_and_keeps_one_filter():
    order = global_order([np.array([0.1, 0.2, 0.3, 0.4]), np.array([5.0, 6.0])], quota=0.5)
    assert order == [(0, 0), (0, 1), (1, 0)]
    masks = masks_from_order([4, 2], order, 3)
    np.testing.assert_array_equal(masks[0], [False, False, True, True])
    np.testing.assert_array_equal(masks[1], [False, True])


def test_searches_find_the_smallest_level_and_count():
    level, reached = find_uniform_level(lambda p: p, 0.3)
    assert reached and abs(level - 0.3) < 1e-6
    assert find_uniform_level(lambda p: p / 2, 0.9) == (0.99, False)
    assert find_global_count(lambda k: k / 10, 0.35, 10) == (4, True)
    assert find_global_count(lambda k: k / 100, 0.5, 10) == (10, False)


# ---------------------------------------------------------------------------------------------------
# FLOPs and parameters


def test_flops_and_params_of_a_small_model_by_hand():
    x = keras.Input((10, 10, 3))
    y = L.Conv2D(8, 3, padding="same", name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.DepthwiseConv2D(3, padding="valid", name="dw")(y)
    y = L.Flatten()(y)
    model = keras.Model(x, L.Dense(5, name="fc")(y))
    costs = model_costs(analyze_channels(model))
    assert costs["conv"] == (conv_flops(100, 9, 3, 8), 9 * 3 * 8 + 8)
    assert costs["bn"] == (0, 4 * 8)
    assert costs["dw"] == (depthwise_flops(64, 9, 8), 9 * 8 + 8)
    assert costs["fc"] == (dense_flops(1, 8 * 8 * 8, 5), 512 * 5 + 5)
    assert total_cost(costs)[1] == model.count_params()
    assert conv_flops(100, 9, 3, 8) == 2 * 100 * 9 * 3 * 8


def test_pruned_flops_and_params_follow_the_kept_channels():
    model = graph_model()
    analysis = analyze_channels(model)
    groups = groups_by_source(analysis)
    kept = {groups[("e",)].index: 8, groups[("b", "c")].index: 4}
    costs = model_costs(analysis, kept)
    assert costs["e"][1] == 1 * 4 * 8 + 8  # 1x1 conv: 4 kept inputs (b + c), 8 kept filters
    assert costs["d"][1] == 9 * 4 + 4
    assert costs["g"][1] == 9 * (8 + 16) * 16 + 16  # input: e's 8 kept + f's 16
    assert total_cost(model_costs(analysis))[1] == model.count_params()


# ---------------------------------------------------------------------------------------------------
# Pruning groups on hand-built graphs


def test_add_joins_groups_concatenate_splits_them_depthwise_follows():
    analysis = analyze_channels(graph_model())
    groups = groups_by_source(analysis)
    assert set(groups) == {("a",), ("b", "c"), ("e",), ("f",), ("g",)}
    uses = {u.name: u for u in analysis.uses}
    add_group = groups[("b", "c")].index
    assert [analysis.space_group[s] for s, _ in uses["d"].inputs.parts] == [add_group]
    assert [analysis.space_group[s] for s, _ in uses["d_bn"].inputs.parts] == [add_group]
    g_parts = [(analysis.space_group[s], n) for s, n in uses["g"].inputs.parts]
    assert g_parts == [(groups[("e",)].index, 16), (groups[("f",)].index, 16)]
    assert uses["out"].inputs.spatial == 9 and uses["out"].inputs.size == 144
    assert all(g.prunable for g in groups.values())  # with no config, every convolution may be pruned
    assert analysis.skipped == {}


def test_first_and_downsample_convs_follow_the_config():
    model = graph_model()
    default = analysis_for(model)
    assert {tuple(g.sources) for g in default.prunable_groups} == {("b", "c"), ("e",), ("f",)}
    assert "prune_first_conv" in default.skipped["a"]
    assert "prune_downsample_convs" in default.skipped["g"]
    everything = analysis_for(model, prune_first_conv=True, prune_downsample_convs=True)
    assert {tuple(g.sources) for g in everything.prunable_groups} == {("a",), ("b", "c"), ("e",), ("f",), ("g",)}
    scoped = analysis_for(model, prune_first_conv=True, ignored_scopes=["{re}[ab]"])
    assert {tuple(g.sources) for g in scoped.prunable_groups} == {("e",), ("f",)}
    assert scoped.skipped["a"] == "excluded by scopes"
    assert "'b' is not pruned" in scoped.skipped["c"]  # c is joined by Add with the ignored b


def test_an_add_with_an_unpruned_branch_blocks_the_whole_group():
    x = keras.Input((8, 8, 16))
    y = L.Conv2D(16, 3, padding="same", name="conv")(x)
    y = L.Add()([x, y])  # joined with the model input
    model = keras.Model(x, L.Conv2D(4, 1, name="head")(y))
    analysis = analyze_channels(model)
    assert analysis.prunable_groups == []
    assert analysis.skipped["conv"] == "model input"


@keras.saving.register_keras_serializable(package="test_pruning")
class Scale(L.Layer):
    def call(self, x):
        return 2.0 * x


@pytest.mark.parametrize(
    "blocker, reason",
    [
        (lambda y: L.Reshape((8, 8, 4, 4))(y), "feeds Reshape"),
        (lambda y: Scale(name="custom")(y), "feeds Scale 'custom'"),
        (lambda y: L.Softmax()(y), "feeds Softmax"),
        (lambda y: L.LayerNormalization()(y), "feeds LayerNormalization"),
    ],
)
def test_layers_that_cannot_be_sliced_leave_the_group_alone_with_a_reason(blocker, reason):
    x = keras.Input((8, 8, 3))
    stem = L.Conv2D(16, 3, padding="same", name="stem")(x)
    y = L.Conv2D(16, 3, padding="same", name="conv")(stem)
    y = blocker(L.BatchNormalization()(y))
    model = keras.Model(x, L.Dense(2)(L.Flatten()(y)))
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.5, prune_first_conv=True))
    skipped = ctrl.statistics().skipped()
    assert reason in skipped["conv"]
    assert "filter_pruning" in skipped["conv"]
    mask = compressed.get_layer("stem").filter_mask
    assert keras.ops.convert_to_numpy(mask).sum() == 8  # the stem still prunes
    assert "stem" not in skipped


def test_model_output_and_nested_models_are_left_alone():
    inner_in = keras.Input((8, 8, 16))
    inner = keras.Model(inner_in, L.Conv2D(16, 1, name="inner_conv")(L.Conv2D(16, 1, name="inner_a")(inner_in)), name="inner")
    x = keras.Input((8, 8, 3))
    y = L.Conv2D(16, 3, padding="same", name="outer")(x)
    model = keras.Model(x, [inner(L.Conv2D(16, 1, name="before")(y)), y])
    analysis = analyze_channels(model)
    assert {tuple(g.sources) for g in analysis.prunable_groups} == {("inner/inner_a",)}
    assert "model output" in analysis.skipped["outer"]
    assert "nested model" in analysis.skipped["before"]


# ---------------------------------------------------------------------------------------------------
# FilterPruningWrapper


def test_wrapper_masks_filters_bias_and_input_channels():
    conv = L.Conv2D(4, 1, bias_initializer="ones")
    wrapped = FilterPruningWrapper(conv)
    x = data((2, 3, 3, 3))
    full = keras.ops.convert_to_numpy(wrapped(x))
    wrapped.filter_mask.assign([1.0, 0.0, 1.0, 1.0])
    wrapped.input_mask.assign([1.0, 1.0, 0.0])
    y = keras.ops.convert_to_numpy(wrapped(x))
    np.testing.assert_array_equal(y[..., 1], 0.0)
    x_without = x.copy()
    x_without[..., 2] = 123.0  # a masked input channel does not matter
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapped(x_without)), y, rtol=1e-6)
    assert not np.allclose(full[..., 0], y[..., 0])


def test_wrapper_round_trips_through_its_config_and_strip_folds_the_masks():
    wrapped = FilterPruningWrapper(L.Dense(3, name="fc"), name="fc")
    x = data((2, 4))
    wrapped(x)
    wrapped.filter_mask.assign([1.0, 0.0, 1.0])
    config = wrapped.get_config()
    clone = FilterPruningWrapper.from_config(json.loads(json.dumps(config)))
    assert isinstance(clone.layer, L.Dense) and clone.name == "fc"
    expected = keras.ops.convert_to_numpy(wrapped(x))
    plain = wrapped.strip()
    assert isinstance(plain, L.Dense)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="kinds"):
        FilterPruningWrapper(L.DepthwiseConv2D(3))


def test_pruned_model_saves_and_loads_without_custom_objects_and_exports_smaller(tmp_path):
    model = graph_model()
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.5))
    x = data((4, 8, 8, 3))
    path = tmp_path / "pruned.keras"
    compressed.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), compressed.predict(x, verbose=0), rtol=1e-6)
    for a, b in zip(loaded.weights, compressed.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # What kc.export does once it calls remove_pruned_filters: from the wrappers alone.
    small = remove_pruned_filters(strip_model(loaded))
    assert small.count_params() == ctrl.statistics().figures()["filter_pruning/params"]
    assert small.count_params() < model.count_params()
    assert relative_error(small.predict(x, verbose=0), compressed.predict(x, verbose=0)) < 1e-5
    before = remove_pruned_filters(loaded)  # before the per-layer strip: folds the masks on a copy
    assert before.count_params() == small.count_params()
    assert any(isinstance(layer, FilterPruningWrapper) for layer in loaded.layers)


# ---------------------------------------------------------------------------------------------------
# Surgery


@pytest.mark.parametrize("importance", ["L1", "L2", "geometric_median"])
def test_surgery_removes_filters_and_keeps_the_outputs(importance):
    keras.utils.set_random_seed(1)
    model = graph_model()
    config = pruning_config(
        pruning_target=0.5, prune_first_conv=True, prune_downsample_convs=True, filter_importance=importance
    )
    compressed, ctrl = kc.compress(model, config)
    x = data((8, 8, 8, 3))
    masked = compressed.predict(x, verbose=0)
    small = ctrl.strip()
    assert relative_error(small.predict(x, verbose=0), masked) < 1e-4

    # Add group: b and c lose the same filters; d (depthwise) and its BN follow them.
    mask_b = keras.ops.convert_to_numpy(compressed.get_layer("b").filter_mask)
    np.testing.assert_array_equal(mask_b, keras.ops.convert_to_numpy(compressed.get_layer("c").filter_mask))
    kept = np.flatnonzero(mask_b)
    kept_a = np.flatnonzero(keras.ops.convert_to_numpy(compressed.get_layer("a").filter_mask))
    assert len(kept) == len(kept_a) == 8
    np.testing.assert_array_equal(kernel_of(small, "b"), kernel_of(compressed, "b")[:, :, kept_a][..., kept])
    np.testing.assert_array_equal(kernel_of(small, "c"), kernel_of(compressed, "c")[:, :, kept_a][..., kept])
    np.testing.assert_array_equal(kernel_of(small, "d"), kernel_of(compressed, "d")[:, :, kept])
    assert small.get_layer("d_bn").gamma.shape == (8,)
    # Concatenate: g reads e's kept channels, then f's, each part pruned on its own.
    kept_e = np.flatnonzero(keras.ops.convert_to_numpy(compressed.get_layer("e").filter_mask))
    kept_f = np.flatnonzero(keras.ops.convert_to_numpy(compressed.get_layer("f").filter_mask))
    rows = np.concatenate([kept_e, 16 + kept_f])
    g_kept = np.flatnonzero(keras.ops.convert_to_numpy(compressed.get_layer("g").filter_mask))
    np.testing.assert_array_equal(kernel_of(small, "g"), kernel_of(compressed, "g")[:, :, rows][..., g_kept])
    # Flatten -> Dense: every position's rows of the pruned channels are gone.
    assert kernel_of(small, "out").shape == (9 * len(g_kept), 4)
    figures = ctrl.statistics().figures()
    assert small.count_params() == figures["filter_pruning/params"]
    assert figures["filter_pruning/full_params"] == model.count_params()


@pytest.mark.parametrize("name", ["pruning.json", "pruning_int8.json"])
def test_packaged_pruning_configs_compress_a_model(name):
    from importlib import resources

    config = load_config(resources.files("keras_compress") / "configs" / name)
    config.input_info = None
    compressed, ctrl = kc.compress(small_resnet(), config)
    figures = ctrl.statistics().figures()
    assert 0.0 < figures["filter_pruning/pruning_level"] < 0.5


def test_nothing_pruned_gives_the_model_back():
    model = graph_model()
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.0))
    stripped = strip_model(compressed)
    assert remove_pruned_filters(stripped) is stripped
    assert ctrl.strip().count_params() == model.count_params()


def test_surgery_works_on_a_sequential_model():
    model = keras.Sequential([
        keras.Input((6, 6, 2)), L.Conv2D(16, 3, name="c1"), L.ReLU(), L.Conv2D(16, 3, name="c2"),
        L.BatchNormalization(), L.GlobalMaxPooling2D(), L.Dense(3, name="fc"),
    ])  # fmt: skip
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.5, prune_first_conv=True))
    x = data((4, 6, 6, 2))
    small = ctrl.strip()
    assert relative_error(small.predict(x, verbose=0), compressed.predict(x, verbose=0)) < 1e-5
    assert unwrap(small.get_layer("c2")).kernel.shape == (3, 3, 8, 8)
    assert unwrap(small.get_layer("fc")).kernel.shape == (8, 3)


def test_surgery_on_conv1d_conv3d_and_a_dense_only_model():
    for conv, pool, shape in [(L.Conv1D, L.GlobalAveragePooling1D, (12, 4)), (L.Conv3D, L.MaxPooling3D, (4, 4, 4, 2))]:
        x = keras.Input(shape)
        y = conv(16, 3, padding="same", name="c1")(x)
        y = conv(32, 1, name="c2", activation="relu")(L.BatchNormalization()(y))
        y = pool()(conv(8, 1, name="c3")(y))
        model = keras.Model(x, L.Dense(2)(L.Flatten()(y)))
        compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.5, prune_first_conv=True))
        inputs = data((3, *shape))
        small = ctrl.strip()
        assert relative_error(np.asarray(small(inputs)), np.asarray(compressed(inputs))) < 1e-5
        assert unwrap(small.get_layer("c2")).kernel.shape[-2:] == (8, 16)
    dense = keras.Sequential([keras.Input((5,)), L.Dense(16, activation="relu"), L.Dense(3)])
    compressed, ctrl = kc.compress(dense, pruning_config(pruning_target=0.5))
    assert ctrl.statistics().figures()["filter_pruning/pruned_filters"] == 0
    assert ctrl.strip().count_params() == dense.count_params()


# ---------------------------------------------------------------------------------------------------
# Levels, FLOPs targets, schedules


def test_flops_target_finds_the_uniform_level_and_all_weights_ranks_globally():
    model = small_resnet()
    for all_weights in (False, True):
        _, ctrl = kc.compress(model, pruning_config(pruning_flops_target=0.5, all_weights=all_weights))
        figures = ctrl.statistics().figures()
        assert figures["filter_pruning/flops_ratio"] <= 0.5 + 1e-9
        if not all_weights:
            assert 0.0 < figures["filter_pruning/filter_level"] < 0.99
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.4, all_weights=True))
    algorithm = ctrl.algorithm("filter_pruning")
    groups = algorithm.analysis(compressed).prunable_groups
    masks = algorithm.current_masks(compressed)
    pruned = sum(int((~masks[g.index]).sum()) for g in groups)
    assert pruned == int(0.4 * sum(g.channels for g in groups))  # 40% of the groups' filters, anywhere
    assert len({int((~masks[g.index]).sum()) for g in groups}) > 1


def test_schedules_drive_levels_through_the_callbacks_in_fit():
    model = small_resnet(16)
    x, y = data((32, 16, 16, 3)), np.random.default_rng(0).integers(0, 10, 32)
    config = pruning_config(pruning_init=0.1, schedule="exponential", pruning_target=0.5, pruning_steps=2)
    compressed, ctrl = kc.compress(model, config)
    compressed.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = compressed.fit(x, y, epochs=4, batch_size=16, callbacks=ctrl.callbacks(), verbose=0).history
    schedule = ExponentialPruningSchedule(0.1, 0.5, pruning_steps=2)
    np.testing.assert_allclose(history["compression/filter_pruning/pruning_level"], [schedule(e) for e in range(4)])
    pruned = history["compression/filter_pruning/pruned_filters"]
    assert pruned[0] < pruned[1] < pruned[2] == pruned[3]
    assert ctrl.progress()["epochs"] == 4 and ctrl.algorithm("filter_pruning").epoch == 3

    baseline, ctrl = kc.compress(model, pruning_config(schedule="baseline", num_init_steps=2, pruning_target=0.5))
    baseline.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = baseline.fit(x, y, epochs=3, batch_size=16, callbacks=ctrl.callbacks(), verbose=0).history
    assert history["compression/filter_pruning/pruning_level"] == [0.0, 0.0, 0.5]


def test_a_resumed_schedule_keeps_the_masks_it_already_has(tmp_path):
    model = small_resnet(16)
    config = pruning_config(schedule="exponential", pruning_target=0.5, pruning_steps=4)
    compressed, ctrl = kc.compress(model, config)
    ctrl.on_epoch_begin(2)
    masks = [keras.ops.convert_to_numpy(v) for v in compressed.weights if "mask" in v.name]
    compressed.save(tmp_path / "pruned.keras")

    again, ctrl2 = kc.compress(keras.saving.load_model(tmp_path / "pruned.keras"), config)  # resume
    assert ctrl2.algorithm("filter_pruning").level == pytest.approx(ctrl.algorithm("filter_pruning").level)
    kernel = unwrap(again.get_layer("b1_2")).kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel)[..., ::-1])  # would change the ranking
    ctrl2.on_epoch_begin(2)
    for v, m in zip([v for v in again.weights if "mask" in v.name], masks):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), m)


# ---------------------------------------------------------------------------------------------------
# Pruning with quantization


def pruning_int8_config(samples, pruning_steps=15):
    """The shape of NNCF's resnet50_imagenet_pruning_geometric_median_int8.json."""
    return {
        "compression": [
            {"algorithm": "filter_pruning", "pruning_init": 0.1,
             "params": {"schedule": "exponential", "pruning_target": 0.4, "pruning_steps": pruning_steps,
                        "filter_importance": "geometric_median"}},
            {"algorithm": "quantization",
             "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": samples},
                             "range": {"num_init_samples": samples}},
             "weights": {"per_channel": False}},
        ]
    }  # fmt: skip


def check_pruned_int8(model, compressed, x, tmp_path):
    """The pruned INT8 model: equal to the masked one after strip, smaller IR, INT8 in OpenVINO."""
    stripped_with_masks = strip_model(compressed)  # quantizers in place, masks folded, filters removed
    small = remove_pruned_filters(stripped_with_masks)  # nothing left to remove: the same model
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(stripped_with_masks(x)), rtol=1e-4, atol=1e-5)
    assert keras_conv_shapes(small) != keras_conv_shapes(model)
    xml = kc.export(small, tmp_path / "pruned_int8")
    assert ir_weight_shapes(xml) == keras_conv_shapes(small)
    counts = runtime_precisions(compile_ir(xml))
    assert {p for _, p in counts} <= {"u8", "i8"}, counts
    return counts


@pytest.mark.openvino
def test_pruning_and_quantization_fit_export_and_run_int8(tmp_path):
    keras.utils.set_random_seed(0)
    model = small_resnet()
    x, y = data((32, 16, 16, 3)), np.random.default_rng(0).integers(0, 10, 32)
    compressed, ctrl = kc.compress(model, pruning_int8_config(16, pruning_steps=2), dataset=x)
    assert isinstance(compressed.get_layer("b1_2"), kc.QuantizeWrapper)
    assert isinstance(compressed.get_layer("b1_2").layer, FilterPruningWrapper)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    compressed.compile(optimizer="adam", loss=loss, run_eagerly=True)  # two tiny epochs: no tracing
    compressed.fit(x, y, epochs=2, batch_size=16, callbacks=ctrl.callbacks(), verbose=0)
    assert ctrl.statistics().figures()["filter_pruning/pruned_filters"] > 0
    counts = check_pruned_int8(model, compressed, x, tmp_path)
    assert counts[("Convolution", "u8")] + counts[("Convolution", "i8")] == 12


def test_concatenate_parts_stay_prunable_behind_a_shared_fake_quantizer():
    model = graph_model()
    x = data((16, 8, 8, 3))
    config = {"compression": [
        pruning_config(pruning_target=0.5)["compression"],
        {"algorithm": "quantization",
         "initializer": {"range": {"num_init_samples": 16}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    ]}  # fmt: skip
    compressed, ctrl = kc.compress(model, config, dataset=x)
    shared = [layer for layer in compressed.layers if isinstance(layer, kc.FakeQuantize) and "cat" in layer.name]
    assert shared  # one quantizer for both Concatenate inputs
    analysis = ctrl.algorithm("filter_pruning").analysis(compressed)
    assert {tuple(g.sources) for g in analysis.prunable_groups} == {("b", "c"), ("e",), ("f",)}
    small = ctrl.strip()
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(strip_model(compressed)(x)), rtol=1e-4, atol=1e-5)
    assert unwrap(small.get_layer("g")).kernel.shape[2] == 16


def test_per_channel_weight_quantizer_ranges_are_sliced_with_the_filters():
    model = small_resnet()
    x = data((16, 16, 16, 3))
    compressed, ctrl = kc.compress(model, {"compression": [
        pruning_config(pruning_target=0.5)["compression"],
        {"algorithm": "quantization", "weights": {"per_channel": True},
         "initializer": {"range": {"num_init_samples": 16}, "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    ]}, dataset=x)  # fmt: skip
    small = ctrl.strip()
    scale = small.get_layer("b1_2").quantizers["kernel"].variables["scale"]
    assert tuple(scale.shape) == (1, 1, 1, 16)
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(strip_model(compressed)(x)), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# End to end (slow)


@pytest.mark.slow
def test_digits_cnn_at_half_the_flops_keeps_accuracy_within_one_point():
    from keras_compress.demo import build_digits_cnn, load_digits_split

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = build_digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=20, verbose=0)
    fp32 = model.evaluate(x_test, y_test, verbose=0)[1]

    config = pruning_config(schedule="exponential", pruning_flops_target=0.5, pruning_steps=3, bn_samples=512)
    compressed, ctrl = kc.compress(model, config, dataset=(x_train, y_train))
    compressed.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    compressed.fit(x_train, y_train, batch_size=64, epochs=8, callbacks=ctrl.callbacks(), verbose=0)
    small = ctrl.strip()
    small.compile(loss=loss, metrics=["accuracy"])
    pruned = small.evaluate(x_test, y_test, verbose=0)[1]
    figures = ctrl.statistics().figures()
    assert figures["filter_pruning/flops_ratio"] <= 0.5
    assert small.count_params() == figures["filter_pruning/params"] < 0.5 * model.count_params()
    assert pruned >= fp32 - 0.01, (pruned, fp32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2"])
def test_applications_at_half_the_filters_shrink_and_keep_their_outputs(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
    compressed, ctrl = kc.compress(model, pruning_config(pruning_target=0.5))
    x = data((2, 224, 224, 3))
    small = ctrl.strip()
    assert relative_error(np.asarray(small(x)), np.asarray(compressed(x))) < 1e-4

    figures = ctrl.statistics().figures()
    assert figures["filter_pruning/full_params"] == model.count_params()
    assert small.count_params() == figures["filter_pruning/params"] < 0.6 * model.count_params()
    small_flops = total_cost(model_costs(analyze_channels(small)))[0]
    assert small_flops == figures["filter_pruning/flops"] < 0.5 * figures["filter_pruning/full_flops"]
    if name == "ResNet50":
        return  # its IR shapes are checked by test_resnet50_pruning_int8_fits_exports_and_runs_int8

    xml = kc.export(small, tmp_path / name)
    assert ir_weight_shapes(xml) == keras_conv_shapes(small)
    depthwise = sorted(unwrap(l).kernel.shape[2] for l in small.layers if isinstance(l, L.DepthwiseConv2D))
    assert sorted(s[0] for s in ir_weight_shapes(xml, "GroupConvolution")) == depthwise


@pytest.mark.slow
@pytest.mark.openvino
def test_resnet50_pruning_int8_fits_exports_and_runs_int8(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    x, y = data((4, 224, 224, 3)), np.random.default_rng(0).integers(0, 1000, 4)
    compressed, ctrl = kc.compress(model, pruning_int8_config(4), dataset=x)
    compressed.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       run_eagerly=True)  # one step: cheaper than tracing the train step
    compressed.fit(x[:2], y[:2], epochs=1, batch_size=2, callbacks=ctrl.callbacks(), verbose=0)
    figures = ctrl.statistics().figures()
    assert figures["filter_pruning/pruning_level"] == pytest.approx(0.1)
    assert figures["filter_pruning/pruned_filters"] > 0
    counts = check_pruned_int8(model, compressed, x[:2], tmp_path)
    assert counts[("Convolution", "u8")] + counts[("Convolution", "i8")] == 53
    assert counts[("FullyConnected", "u8")] + counts[("FullyConnected", "i8")] == 1
