"""Tests of the model transformer: reproduced layer calls, cloning, non-mutation, quantizer placement,
scopes, unsupported layers and models."""

import functools

import keras
import numpy as np
import pytest

import helpers
import keras_compress as kc
from keras_compress.compressible import COMPRESSIBLE_LAYERS, call_with_weights, compressible_spec
from keras_compress.graph import fresh_copy, iter_layers
from keras_compress.selection import matches_scope
from keras_compress.transform import transform_model
from keras_compress.wrapper import WeightsWrapper

L = keras.layers


# Range init on 16 samples unless a test says otherwise.
quantization_config = functools.partial(helpers.quantization_config, init_samples=16)
data = helpers.data
conv_bn_add_model = helpers.conv_bn_add_model


def as_list(outputs):
    return [np.asarray(o) for o in keras.tree.flatten(outputs)]


def assert_same_outputs(a, b, atol=1e-6, rtol=1e-6):
    a, b = as_list(a), as_list(b)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol * max(1.0, float(np.abs(u).max())))


def randomize_bn_statistics(model, seed=0):
    """Gives every BN layer non-trivial moving statistics, so that a lost weight copy shows."""
    rng = np.random.default_rng(seed)
    for layer in iter_layers(model):
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))


# ---------------------------------------------------------------------------------------------------
# Small models


def nested_model():
    """A Functional backbone used as a layer of another Functional model."""
    bi = keras.Input((16, 16, 3))
    bx = L.Conv2D(4, 3, name="bconv")(bi)
    bx = L.BatchNormalization(name="bbn")(bx)
    bx = L.ReLU(name="brelu")(bx)
    backbone = keras.Model(bi, bx, name="backbone")
    inp = keras.Input((16, 16, 3), name="img")
    x = backbone(inp)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, name="head")(x)
    return keras.Model(inp, out, name="outer")


def sequential_model():
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(4, 3, name="sconv"),
            L.BatchNormalization(name="sbn"),
            L.ReLU(),
            L.Flatten(),
            L.Dense(3, name="sdense"),
        ],
        name="seq",
    )


def shared_layer_model():
    """The same Dense called twice, on two different tensors; its outputs are concatenated."""
    inp = keras.Input((6,), name="vec")
    shared = L.Dense(6, activation="relu", name="shared")
    a = shared(inp)
    b = shared(L.Dense(6, name="pre")(inp))
    out = L.Concatenate(name="concat")([a, b])
    return keras.Model(inp, out, name="shared")


def shared_layer_add_model():
    """The same Dense called twice; its two outputs are added (each Add input gets its own quantizer:
    the sum is read in int8 by a Dense head)."""
    inp = keras.Input((6,), name="vec")
    shared = L.Dense(6, activation="relu", name="shared")
    out = L.Add(name="add")([shared(inp), shared(L.Dense(6, name="pre")(inp))])
    return keras.Model(inp, L.Dense(2, name="head")(out), name="shared_add")


def shared_layer_two_heads_model():
    """A siamese pair: a shared Dense on two inputs, each output read by the same Dense head."""
    a = keras.Input((8,), name="a")
    b = keras.Input((8,), name="b")
    shared = L.Dense(8, activation="relu", name="shared")
    head = L.Dense(2, name="head")
    return keras.Model([a, b], [head(shared(a)), head(shared(b))], name="siamese")


def two_in_two_out_model():
    a = keras.Input((16, 16, 3), name="image")
    b = keras.Input((5,), name="vector")
    x = L.Conv2D(4, 3, name="conv")(a)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    y = L.Dense(4, name="vec_dense")(b)
    z = L.Concatenate(name="concat")([x, y])
    out1 = L.Dense(2, name="out1")(z)
    out2 = L.Dense(1, name="out2")(y)
    return keras.Model([a, b], [out1, out2], name="two_by_two")


def mobilenet_v2_96():
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), classifier_activation=None)


def resnet50_224():
    return keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classifier_activation=None)


def mobilenet_v2_224():
    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classifier_activation=None)


def inputs_for(model, n=4, seed=0):
    shapes = [tuple(t.shape[1:]) for t in keras.tree.flatten(model.inputs)]
    arrays = [data((n, *s), seed + i) for i, s in enumerate(shapes)]
    return arrays[0] if len(arrays) == 1 else arrays


SMALL_MODELS = {
    "functional": conv_bn_add_model,
    "nested": nested_model,
    "sequential": sequential_model,
    "shared_layer": shared_layer_model,
    "two_in_two_out": two_in_two_out_model,
}
SMALL = pytest.mark.parametrize("build", list(SMALL_MODELS.values()), ids=list(SMALL_MODELS))
# Models with shared layers are cloned exactly.
CLONE_MODELS = {**SMALL_MODELS, "shared_layer_add": shared_layer_add_model, "siamese": shared_layer_two_heads_model}
CLONE = pytest.mark.parametrize("build", list(CLONE_MODELS.values()), ids=list(CLONE_MODELS))
APPLICATIONS = pytest.mark.parametrize(
    "build",
    [
        pytest.param(mobilenet_v2_96, id="mobilenet_v2_96"),
        pytest.param(resnet50_224, id="resnet50_224", marks=pytest.mark.slow),
        pytest.param(mobilenet_v2_224, id="mobilenet_v2_224", marks=pytest.mark.slow),
    ],
)


# ---------------------------------------------------------------------------------------------------
# call_with_weights reproduces each supported layer class


LAYER_CASES = [
    ("conv1d_causal_dilated", L.Conv1D, dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2), (2, 11, 3)),
    ("conv1d_strided", L.Conv1D, dict(filters=4, kernel_size=3, strides=2, activation="relu"), (2, 11, 3)),
    ("conv2d_dilated", L.Conv2D, dict(filters=4, kernel_size=3, dilation_rate=2, padding="same"), (2, 9, 9, 3)),
    ("conv3d_strided", L.Conv3D, dict(filters=4, kernel_size=2, strides=2), (2, 6, 6, 6, 3)),
    ("depthwise1d", L.DepthwiseConv1D, dict(kernel_size=3, depth_multiplier=2), (2, 10, 3)),
    ("depthwise2d", L.DepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2, strides=2, padding="same"),
     (2, 9, 9, 3)),
    ("separable1d", L.SeparableConv1D, dict(filters=4, kernel_size=3, depth_multiplier=2), (2, 10, 3)),
    ("separable2d", L.SeparableConv2D, dict(filters=4, kernel_size=3, padding="same", activation="tanh"),
     (2, 9, 9, 3)),
    ("conv1d_transpose", L.Conv1DTranspose, dict(filters=4, kernel_size=3, strides=2), (2, 10, 3)),
    ("conv2d_transpose", L.Conv2DTranspose, dict(filters=4, kernel_size=3, strides=2, padding="same"), (2, 5, 5, 3)),
    ("conv3d_transpose", L.Conv3DTranspose, dict(filters=4, kernel_size=2, strides=2), (2, 3, 3, 3, 3)),
    ("dense_3d_input", L.Dense, dict(units=5, activation="sigmoid"), (2, 7, 3)),
    ("einsum_dense_bias", L.EinsumDense, dict(equation="abc,cd->abd", output_shape=(None, 5), bias_axes="d"),
     (2, 7, 3)),
    ("embedding", L.Embedding, dict(input_dim=10, output_dim=4), None),
    ("reversible_embedding", L.ReversibleEmbedding, dict(input_dim=10, output_dim=4), None),
]  # fmt: skip


@pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])
def test_a_reversible_embedding_is_reproduced_as_a_language_model_head(tie_weights):
    layer = L.ReversibleEmbedding(10, 4, tie_weights=tie_weights, logit_soft_cap=5.0)
    layer(np.zeros((2, 3), "int32"))
    for w in layer.weights:
        w.assign(np.random.default_rng(0).normal(size=w.shape).astype("float32"))
    x = data((2, 3, 4))
    expected = np.asarray(layer(x, reverse=True))
    np.testing.assert_allclose(np.asarray(call_with_weights(layer, x, {}, None, reverse=True)), expected, rtol=1e-5)
    wrapper = WeightsWrapper(layer)
    np.testing.assert_allclose(np.asarray(wrapper(x, reverse=True)), expected, rtol=1e-5)
    assert compressible_spec(layer).channel_axes == {"embeddings": 0, **({} if tie_weights else {"reverse_embeddings": -1})}


def _layer_and_input(cls, kwargs, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, size=(2, 6)).astype("int32") if shape is None else data(shape, seed)
    layer = cls(**kwargs)
    layer(x)
    for w in layer.weights:  # non-zero biases, so that a lost bias shows
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return layer, x


def test_layer_cases_cover_every_compressible_class():
    # MultiHeadAttention is called by its own wrapper (tests/test_attention.py), not `call_with_weights`.
    callable_classes = {cls for cls, spec in COMPRESSIBLE_LAYERS.items() if spec.call is not None}
    assert {cls for _, cls, _, _ in LAYER_CASES} == callable_classes == set(COMPRESSIBLE_LAYERS) - {L.MultiHeadAttention}


@pytest.mark.parametrize("cls,kwargs,shape", [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_call_with_weights_reproduces_the_layer_call(cls, kwargs, shape):
    layer, x = _layer_and_input(cls, kwargs, shape)
    expected = np.asarray(layer(x))

    np.testing.assert_allclose(np.asarray(call_with_weights(layer, x, {})), expected, rtol=1e-5, atol=1e-5)

    wrapper = WeightsWrapper(fresh_copy(layer))
    wrapper.build(x.shape)
    wrapper.layer.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(wrapper(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,kwargs,shape", [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_call_with_weights_uses_the_given_weights(cls, kwargs, shape):
    layer, x = _layer_and_input(cls, kwargs, shape)
    spec = compressible_spec(layer)
    doubled = {name: getattr(layer, name) * 2.0 for name in spec.weights}
    reference = fresh_copy(layer)
    reference(x)
    reference.set_weights(layer.get_weights())
    for name in spec.weights:
        getattr(reference, name).assign(getattr(layer, name) * 2.0)

    out = np.asarray(call_with_weights(layer, x, doubled))

    np.testing.assert_allclose(out, np.asarray(reference(x)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, np.asarray(layer(x)), atol=1e-3)


def test_weights_wrapper_rejects_an_unsupported_layer():
    with pytest.raises(ValueError, match="compressible Keras layer.*Received: layer=LayerNormalization"):
        WeightsWrapper(L.LayerNormalization())


# ---------------------------------------------------------------------------------------------------
# kc.compress never mutates the input model


def _snapshot(model):
    layers = [id(layer) for layer in iter_layers(model)]
    return model.get_config(), [np.array(w) for w in model.get_weights()], [v.path for v in model.weights], layers


def _assert_unchanged(model, snapshot):
    config, weights, paths, layers = snapshot
    assert [id(layer) for layer in iter_layers(model)] == layers
    assert model.get_config() == config
    now = model.get_weights()
    assert len(now) == len(weights)
    for before, after in zip(weights, now):
        np.testing.assert_array_equal(before, after)
    assert [v.path for v in model.weights] == paths


def _check_compress_leaves_model_unchanged(model):
    randomize_bn_statistics(model)
    snapshot = _snapshot(model)
    x = inputs_for(model, n=4)
    expected = as_list(model(x))

    compressed, _ = kc.compress(model, quantization_config(bn_samples=4, init_samples=4), dataset=x)
    for v in compressed.weights:  # training the clone must not reach the original either
        v.assign(np.zeros(v.shape, v.dtype))

    _assert_unchanged(model, snapshot)
    assert_same_outputs(model(x), expected, atol=0, rtol=0)


@SMALL
def test_compress_does_not_mutate_small_models(build):
    _check_compress_leaves_model_unchanged(build())


@APPLICATIONS
def test_compress_does_not_mutate_keras_applications(build):
    _check_compress_leaves_model_unchanged(build())


# ---------------------------------------------------------------------------------------------------
# With compression off the clone computes the same function with its own weights


def _check_clone_is_equal_and_independent(model):
    randomize_bn_statistics(model)
    x = inputs_for(model)
    expected = as_list(model(x))

    clone, ctrl = kc.compress(model, {"compression": []})

    assert clone is not model
    assert_same_outputs(clone(x), expected, atol=1e-6)
    assert not any(isinstance(layer, WeightsWrapper) for layer in iter_layers(clone))
    original_ids = {id(v) for v in model.weights}
    assert len(clone.weights) == len(model.weights)
    assert not any(id(v) in original_ids for v in clone.weights)
    assert ctrl.statistics().figures() == {}

    kernel = next(v for v in clone.weights if v.path.endswith("kernel"))
    saved = np.array(kernel)
    kernel.assign(saved + 1.0)
    assert_same_outputs(model(x), expected, atol=0, rtol=0)
    assert not np.allclose(as_list(clone(x))[0], expected[0], atol=1e-4)
    kernel.assign(saved)
    # Training mode (batch statistics, dropout off here) also matches; it updates BN statistics, so last.
    assert_same_outputs(clone(x, training=True), model(x, training=True), atol=1e-5)


@CLONE
def test_compression_off_clones_small_models_exactly(build):
    _check_clone_is_equal_and_independent(build())


@pytest.mark.slow
def test_compression_off_clones_resnet50_exactly():
    _check_clone_is_equal_and_independent(resnet50_224())


def _wrap_every_compressible_layer(original, fresh, path):
    return WeightsWrapper(fresh) if compressible_spec(original) is not None else fresh


def _check_identity_wrappers_keep_outputs(model):
    randomize_bn_statistics(model)
    x = inputs_for(model)
    expected = as_list(model(x))
    compressible = [layer for layer in iter_layers(model) if compressible_spec(layer) is not None]

    new = transform_model(model, wrap=_wrap_every_compressible_layer)

    wrappers = [layer for layer in iter_layers(new, wrappers=False) if isinstance(layer, WeightsWrapper)]
    assert len(wrappers) == len(compressible) > 0
    assert {layer.name for layer in wrappers} == {layer.name for layer in compressible}
    assert_same_outputs(new(x), expected, atol=1e-5, rtol=1e-5)


@CLONE
def test_identity_wrappers_keep_the_outputs_of_small_models(build):
    _check_identity_wrappers_keep_outputs(build())


@APPLICATIONS
def test_identity_wrappers_keep_the_outputs_of_keras_applications(build):
    _check_identity_wrappers_keep_outputs(build())


def test_shared_layer_stays_shared_in_the_clone():
    model = shared_layer_model()
    x = data((4, 6))
    compressed, _ = kc.compress(model, quantization_config(), dataset=x)
    shared = [layer for layer in compressed.layers if layer.name == "shared"]
    assert len(shared) == 1 and isinstance(shared[0], kc.QuantizeWrapper)
    assert len(inbound(compressed)["shared"]) == 2
    assert sum(isinstance(layer, kc.QuantizeWrapper) for layer in compressed.layers) == 2  # shared, pre
    off, _ = kc.compress(model, {"compression": []})
    assert_same_outputs(off(x), model(x))




@pytest.mark.parametrize("build", [shared_layer_add_model, shared_layer_two_heads_model], ids=["add", "two_heads"])
def test_shared_layer_whose_two_outputs_need_quantizers_compresses(build):
    model = build()

    compressed, _ = kc.compress(model, quantization_config())

    quantizers = [layer for layer in compressed.layers if isinstance(layer, kc.FakeQuantize)]
    shared_output_quantizers = [q for q in quantizers if q.name.startswith("shared")]
    assert len(shared_output_quantizers) == 2
    assert len({q.name for q in quantizers}) == len(quantizers)


# ---------------------------------------------------------------------------------------------------
# Quantizer placement


def _history(obj):
    """Producer layer names of the tensors in a serialized call (args/kwargs), in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]["keras_history"][0]]
        return [n for v in obj.values() for n in _history(v)]
    if isinstance(obj, (list, tuple)):
        if len(obj) == 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
            return [obj[0]]
        return [n for v in obj for n in _history(v)]
    return []


def inbound(model):
    """{layer name: [[producer names of call 1], [.. of call 2], ...]} from the model's config."""
    return {
        layer["name"]: [_history(node.get("args", [])) + _history(node.get("kwargs", {}))
                        for node in layer["inbound_nodes"]]
        for layer in model.get_config()["layers"]
    }  # fmt: skip


def layer_types(model):
    return {layer.name: type(layer) for layer in model.layers}


def _check_common_placement(compressed):
    types = layer_types(compressed)
    graph = inbound(compressed)
    assert {name for name, t in types.items() if t is kc.QuantizeWrapper} == {"conv1", "conv2", "fc"}
    # Model input -> quantizer -> conv1; every conv feeds its BN directly.
    assert graph["img_quantizer"] == [["img"]] and graph["conv1"] == [["img_quantizer"]]
    assert graph["bn1"] == [["conv1"]] and graph["bn2"] == [["conv2"]]
    for name, t in types.items():
        if t is L.BatchNormalization:
            assert all(types[p] is kc.QuantizeWrapper for call in graph[name] for p in call)
    # The quantizer of conv2's input moved above MaxPool and ZeroPadding to the ReLU output.
    assert graph["relu1_quantizer"] == [["relu1"]]
    assert graph["pad"] == [["relu1_quantizer"]] and graph["pool"] == [["pad"]] and graph["conv2"] == [["pool"]]
    # Pooling input and Dense input.
    assert graph["relu2_quantizer"] == [["relu2"]] and graph["gap"] == [["relu2_quantizer"]]
    assert graph["gap_quantizer"] == [["gap"]] and graph["fc"] == [["gap_quantizer"]]
    return types, graph


def test_quantizer_placement_on_a_conv_bn_add_model():
    compressed, _ = kc.compress(conv_bn_add_model(), quantization_config(), dataset=data((32, 16, 16, 3)))

    types, graph = _check_common_placement(compressed)
    # Each Add input gets its tensor's per-tensor quantizer; relu1's is shared with the padding branch.
    assert graph["bn2_quantizer"] == [["bn2"]]
    assert graph["add"] == [["bn2_quantizer", "relu1_quantizer"]]
    assert {name for name, t in types.items() if t is kc.FakeQuantize} == {
        "img_quantizer", "relu1_quantizer", "bn2_quantizer", "relu2_quantizer", "gap_quantizer"
    }  # fmt: skip


def test_unified_scale_ops_make_the_add_inputs_share_one_quantizer():
    config = quantization_config(activations={"unified_scale_ops": [["add"]]})

    compressed, _ = kc.compress(conv_bn_add_model(), config, dataset=data((32, 16, 16, 3)))

    types, graph = _check_common_placement(compressed)
    # Both Add inputs go through one FakeQuantize layer, called twice (call 0: bn2, call 1: relu1).
    assert graph["add_inputs_quantizer"] == [["bn2"], ["relu1"]]
    assert graph["add"] == [["add_inputs_quantizer", "add_inputs_quantizer"]]
    add_args = [a for a in compressed.get_config()["layers"] if a["name"] == "add"][0]["inbound_nodes"][0]["args"]
    assert [t["config"]["keras_history"][1] for t in add_args[0]] == [0, 1]
    assert {name for name, t in types.items() if t is kc.FakeQuantize} == {
        "img_quantizer", "relu1_quantizer", "add_inputs_quantizer", "relu2_quantizer", "gap_quantizer"
    }  # fmt: skip
    assert compressed.get_layer("add_inputs_quantizer").quantizer.is_signed


def test_range_init_makes_relu_quantizers_unsigned_and_the_add_quantizer_signed():
    model = conv_bn_add_model()
    x = data((32, 16, 16, 3))

    compressed, ctrl = kc.compress(model, quantization_config(init_samples=32), dataset=x)

    signed = {layer.name: layer.quantizer.is_signed for layer in compressed.layers
              if isinstance(layer, kc.FakeQuantize)}  # fmt: skip
    assert signed == {
        "img_quantizer": True,
        "relu1_quantizer": False,
        "bn2_quantizer": True,  # the Add input from the BN branch
        "relu2_quantizer": False,
        "gap_quantizer": False,
    }
    assert ctrl.statistics().figures()["quantization/unsigned_activation_share"] == pytest.approx(3 / 5)
    # The input quantizer's scale is the mixed_min_max range of the data: max(|min|, mean of sample maxima).
    expected = max(abs(x.min()), x.reshape(32, -1).max(axis=1).mean())
    scale = compressed.get_layer("img_quantizer").quantizer.variables["scale"]
    np.testing.assert_allclose(np.asarray(scale), expected, rtol=1e-5)
    # An unsigned quantizer has low = 0.
    low, high = compressed.get_layer("relu1_quantizer").quantizer.range()
    assert float(low) == 0.0 and float(high) > 0.0


def test_without_dataset_activation_quantizers_keep_signed_defaults():
    compressed, _ = kc.compress(conv_bn_add_model(), quantization_config())
    quantizers = [layer for layer in compressed.layers if isinstance(layer, kc.FakeQuantize)]
    assert len(quantizers) == 5
    for layer in quantizers:
        assert float(np.asarray(layer.quantizer.variables["scale"])) == 1.0
        assert layer.quantizer.is_signed


def test_quantize_inputs_false_leaves_the_model_input_unquantized():
    model = conv_bn_add_model()

    compressed, _ = kc.compress(model, quantization_config(quantize_inputs=False), dataset=data((8, 16, 16, 3)))

    graph = inbound(compressed)
    consumers_of_input = [name for name, calls in graph.items() if any("img" in c for c in calls)]
    assert consumers_of_input == ["conv1"]
    assert sum(t is kc.FakeQuantize for t in layer_types(compressed).values()) == 4
    assert "img_quantizer" not in graph


def test_two_input_model_quantizes_each_input_and_unifies_the_concat_inputs():
    compressed, _ = kc.compress(two_in_two_out_model(), quantization_config())
    graph = inbound(compressed)
    assert graph["conv"] == [["image_quantizer"]] and graph["image_quantizer"] == [["image"]]
    assert graph["vec_dense"] == [["vector_quantizer"]] and graph["vector_quantizer"] == [["vector"]]
    assert graph["concat"] == [["concat_inputs_quantizer", "concat_inputs_quantizer"]]
    assert graph["concat_inputs_quantizer"] == [["gap"], ["vec_dense"]]
    assert graph["gap"] == [["conv_quantizer"]] and graph["conv_quantizer"] == [["conv"]]  # pooling input
    # The concatenation of quantized inputs is on their shared grid: `out1` reads it as it is. `vec_dense`'s
    # output has one quantizer (the concatenation's), which `out2` reads too: one quantizer per tensor.
    assert graph["out1"] == [["concat"]] and graph["out2"] == [["concat_inputs_quantizer"]]
    out2_args = [a for a in compressed.get_config()["layers"] if a["name"] == "out2"][0]["inbound_nodes"][0]["args"]
    assert out2_args[0]["config"]["keras_history"][1] == 1  # the quantizer's call on vec_dense
    assert sum(t is kc.FakeQuantize for t in layer_types(compressed).values()) == 4
    assert len(compressed.outputs) == 2


# ---------------------------------------------------------------------------------------------------
# Scopes


@pytest.mark.parametrize(
    "section,weight_quantized,skipped",
    [
        ({"ignored_scopes": ["conv2"]}, {"conv1", "fc"}, {"conv2"}),
        ({"ignored_scopes": ["{re}conv.*"]}, {"fc"}, {"conv1", "conv2"}),
        ({"ignored_scopes": ["{re}conv"]}, {"conv1", "conv2", "fc"}, set()),  # a regex must match the whole name
        ({"target_scopes": ["conv1", "fc"]}, {"conv1", "fc"}, {"conv2"}),
        ({"target_scopes": ["{re}conv\\d"]}, {"conv1", "conv2"}, {"fc"}),
        ({"weights": {"per_channel": True, "ignored_scopes": ["fc"]}}, {"conv1", "conv2"}, {"fc"}),
    ],
    ids=["ignored_exact", "ignored_regex", "regex_fullmatch", "target_exact", "target_regex", "weights_group"],
)
def test_scopes_select_the_quantized_layers(section, weight_quantized, skipped):
    compressed, ctrl = kc.compress(conv_bn_add_model(), quantization_config(**section))

    assert {n for n, t in layer_types(compressed).items() if t is kc.QuantizeWrapper} == weight_quantized
    assert ctrl.statistics().sections["quantization"]["skipped"] == {n: "excluded by scopes" for n in skipped}
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == len(weight_quantized)


def test_an_ignored_conv_gets_no_input_quantizer():
    compressed, _ = kc.compress(conv_bn_add_model(), quantization_config(ignored_scopes=["conv2"]))
    graph = inbound(compressed)
    assert graph["pad"] == [["relu1"]] and graph["conv2"] == [["pool"]]
    assert graph["relu1_quantizer"] == [["relu1"]] and graph["add"] == [["bn2_quantizer", "relu1_quantizer"]]


def test_activation_scopes_only_remove_activation_quantizers():
    compressed, _ = kc.compress(
        conv_bn_add_model(), quantization_config(activations={"ignored_scopes": ["add"]})
    )
    graph = inbound(compressed)
    assert graph["add"] == [["bn2", "relu1"]]
    assert {n for n, t in layer_types(compressed).items() if t is kc.QuantizeWrapper} == {"conv1", "conv2", "fc"}


def test_matches_scope():
    assert matches_scope("conv2_block1_1_conv", ["{re}conv2_.*"])
    assert not matches_scope("conv2_block1_1_conv", ["{re}block1"])
    assert matches_scope(["head", "outer/head"], ["outer/head"])
    assert not matches_scope("conv1", ["conv"])


# ---------------------------------------------------------------------------------------------------
# Layers and models that are not supported


class ChannelScale(keras.layers.Layer):
    """A custom layer with a vector weight: nothing to compress, like a norm's gain."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


class ChannelMix(keras.layers.Layer):
    """A custom layer that multiplies by a kernel of its own (and does not opt in)."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], input_shape[-1]), initializer="identity")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)


class DoubledConv2D(keras.layers.Conv2D):
    """A Conv2D subclass with its own call."""

    def call(self, inputs):
        return super().call(inputs) * 2.0


class PlainConv2D(keras.layers.Conv2D):
    """A Conv2D subclass that keeps Conv2D.call."""


def test_custom_layers_are_left_as_they_are_and_listed_as_skipped():
    inp = keras.Input((8, 8, 3), name="img")
    x = DoubledConv2D(4, 3, name="doubled")(inp)
    x = ChannelScale(name="scale")(x)
    x = ChannelMix(name="mix")(x)
    x = PlainConv2D(4, 3, name="plain")(x)
    x = L.Flatten(name="flatten")(x)
    out = L.Dense(2, name="fc")(x)
    model = keras.Model(inp, out)
    model.get_layer("scale").scale.assign([0.5, -1.0, 2.0, 3.0])
    x = data((4, 8, 8, 3))

    compressed, ctrl = kc.compress(model, quantization_config(), dataset=x)
    off, _ = kc.compress(model, {"compression": []})

    types = layer_types(compressed)
    assert types["doubled"] is DoubledConv2D and types["scale"] is ChannelScale and types["mix"] is ChannelMix
    assert types["plain"] is kc.QuantizeWrapper and types["fc"] is kc.QuantizeWrapper
    # A layer whose weights are all vectors has nothing to compress (as a norm's gain): not listed.
    assert ctrl.statistics().sections["quantization"]["skipped"] == {
        "doubled": "subclass of Conv2D that overrides call()",
        "mix": "layer type ChannelMix computes with weights of its own: it runs in float (opt it in with "
        "`compressible_weights()` and `call_with_weights()`, see docs/custom_layers.md)",
    }
    np.testing.assert_array_equal(np.asarray(compressed.get_layer("scale").scale), [0.5, -1.0, 2.0, 3.0])
    assert_same_outputs(off(x), model(x), atol=1e-6)


def test_a_nested_model_is_not_listed_as_skipped():
    compressed, ctrl = kc.compress(nested_model(), quantization_config())
    assert isinstance(compressed.get_layer("backbone").get_layer("bconv"), kc.QuantizeWrapper)
    assert ctrl.statistics().sections["quantization"]["skipped"] == {}


def test_nested_model_layers_are_quantized_inside_the_nested_clone():
    compressed, ctrl = kc.compress(nested_model(), quantization_config(), dataset=data((8, 16, 16, 3)))
    inner = compressed.get_layer("backbone")
    assert isinstance(inner, keras.Model)
    assert isinstance(inner.get_layer("bconv"), kc.QuantizeWrapper)
    assert isinstance(compressed.get_layer("head"), kc.QuantizeWrapper)
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == 2
    assert inbound(inner)["bbn"] == [["bconv"]]


def test_a_subclass_that_from_config_cannot_rebuild_is_rejected_with_advice():
    class Subclassed(keras.Model):
        def __init__(self):  # no **kwargs: `from_config` cannot pass `name`, `trainable`, `dtype`
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 4), "float32"))

    with pytest.raises(ValueError, match=r"works on a copy of a subclassed model") as err:
        kc.compress(model, quantization_config())
    assert "That failed for Subclassed: TypeError" in str(err.value)
    assert "take `**kwargs`" in str(err.value) and "get_config()" in str(err.value)


def test_unbuilt_sequential_needs_an_input_shape():
    model = keras.Sequential([L.Dense(4, name="d1"), L.Dense(2, name="d2")])
    with pytest.raises(ValueError, match="has no input shape.*input_info.sample_size"):
        kc.compress(model, quantization_config())


def test_unbuilt_sequential_compresses_with_input_info_and_stays_unbuilt():
    model = keras.Sequential([L.Dense(4, name="d1"), L.Dense(2, name="d2")])
    config_before = model.get_config()
    config = {**quantization_config(), "input_info": {"sample_size": [1, 5]}}

    compressed, ctrl = kc.compress(model, config, dataset=data((8, 5)))

    assert not model.built and model.weights == [] and model.get_config() == config_before
    assert compressed.input_shape == (None, 5)
    assert np.asarray(compressed(data((3, 5)))).shape == (3, 2)
    assert ctrl.statistics().figures()["quantization/weight_quantizers"] == 2
