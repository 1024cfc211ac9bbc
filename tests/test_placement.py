"""Where activation quantizers go: one quantizer per tensor, read by every consumer OpenVINO runs in int8.

The pure placement rules on small graphs, and the runtime graph OpenVINO's CPU plugin builds from a
ResNetV2-style pre-activation block (the pattern a per-consumer placement left in f32).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.graph import trace_graph  # noqa: E402
from keras_compress.quantization.placement import plan_activation_quantizers  # noqa: E402

L = keras.layers


def preactivation_model(size=16, width=16):
    """A stem convolution and two ResNetV2 blocks: `x + conv(relu(bn(conv(relu(bn(x))))))`, then a
    post-activation BN, ReLU, pooling and a Dense head."""
    inputs = keras.Input((size, size, 3), name="image")
    x = L.Conv2D(width, 3, padding="same", name="stem")(inputs)
    for i in range(2):
        h = L.ReLU(name=f"b{i}_relu1")(L.BatchNormalization(name=f"b{i}_preact")(x))
        h = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"b{i}_conv1")(h)
        h = L.ReLU(name=f"b{i}_relu2")(L.BatchNormalization(name=f"b{i}_bn")(h))
        h = L.Conv2D(width, 3, padding="same", name=f"b{i}_conv2")(h)
        x = L.Add(name=f"b{i}_add")([x, h])
    x = L.ReLU(name="post_relu")(L.BatchNormalization(name="post_bn")(x))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, name="head")(x), name="preactivation")


def plan_of(model):
    graph = trace_graph(model)
    weighted = {id(node.layer) for node in graph.calls if isinstance(node.layer, (L.Conv2D, L.Dense))}
    plan = plan_activation_quantizers(graph, weighted)
    calls = {node.name: node for node in graph.calls}

    def key(name, pos=0):
        return plan.edges.get((calls[name].index, pos))

    return plan, key


def test_a_residual_stream_has_one_quantizer_read_by_the_next_add_and_the_preactivation_batchnorm():
    plan, key = plan_of(preactivation_model())

    # The stem output feeds block 0's pre-activation BN and its residual Add: one quantizer, both read it.
    assert key("b0_preact") is not None and key("b0_preact") == key("b0_add", 0) == ("tensor", (0, 0))
    # Block 0's sum feeds block 1's pre-activation BN and Add; block 1's sum feeds the post-activation BN.
    assert key("b1_preact") == key("b1_add", 0) == ("tensor", (key("b1_preact")[1][0], 0))
    assert key("post_bn") is not None and plan.names[key("post_bn")] == "b1_add_quantizer"
    # A BN right after a convolution is folded into it: nothing between them.
    assert key("b0_bn") is None and key("b1_bn") is None
    # The ReLUs feed convolutions; the second conv's output feeds the Add.
    assert plan.names[key("b0_conv1")] == "b0_relu1_quantizer" and plan.names[key("b0_add", 1)] == "b0_conv2_quantizer"


def test_a_batchnorm_whose_result_is_not_read_in_int8_gets_no_quantizer():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    y = L.Activation("sigmoid", name="sigmoid")(L.BatchNormalization(name="bn")(L.Add(name="add")([x, x])))
    plan, key = plan_of(keras.Model(inputs, y))
    assert key("bn") is None and key("add", 0) is None


def inception_model():
    """Two Inception-style concatenations; the second reads the first through a MaxPool (InceptionV3's
    reduction block), and the first one's result is also read by convolutions and average pooling."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    a = L.Conv2D(8, 1, activation="relu", name="a")(x)
    b = L.Conv2D(8, 3, padding="same", activation="relu", name="b")(x)
    mixed0 = L.Concatenate(name="mixed0")([a, b])
    c = L.Conv2D(8, 3, strides=2, activation="relu", name="c")(mixed0)
    pool = L.MaxPooling2D(3, strides=2, name="pool")(mixed0)
    mixed1 = L.Concatenate(name="mixed1")([c, pool])
    d = L.Conv2D(8, 1, activation="relu", name="d")(mixed1)
    e = L.Conv2D(8, 1, activation="relu", name="e")(L.AveragePooling2D(3, 1, "same", name="avg")(mixed1))
    y = L.GlobalAveragePooling2D(name="gap")(L.Concatenate(name="mixed2")([d, e]))
    return keras.Model(inputs, L.Dense(4, name="head")(y), name="inception")


def test_a_concatenation_of_quantized_inputs_is_read_as_it_is_and_nested_ones_share_its_quantizer():
    plan, key = plan_of(inception_model())

    # Consumers of a concatenation read it as it is: it is on the grid of its inputs' shared quantizer.
    assert key("c") is None and key("pool") is None and key("d") is None and key("avg") is None
    assert key("gap") is None
    # mixed1 reads mixed0 through the MaxPool: one shared quantizer for the inputs of both.
    assert key("mixed0", 0) == key("mixed0", 1) == key("mixed1", 0)
    assert key("mixed1", 1) is None
    assert key("mixed2", 0) == key("mixed2", 1) != key("mixed0", 0)
    # No quantizer key is left without an edge, and every key has a name.
    assert set(plan.edges.values()) == set(plan.names)


def densenet_model():
    """DenseNet's stem and first block: `ReLU -> ZeroPadding -> MaxPool`, whose result is read by the
    block's pre-activation BN and by the concatenation that appends the block's output to it."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, name="stem")(inputs)))
    x = L.MaxPooling2D(3, strides=2, name="pool")(L.ZeroPadding2D(name="pad")(x))
    h = L.ReLU(name="relu")(L.BatchNormalization(name="preact")(x))
    h = L.Conv2D(4, 3, padding="same", name="conv")(h)
    x = L.Concatenate(name="concat")([x, h])
    y = L.GlobalAveragePooling2D(name="gap")(L.ReLU(name="post_relu")(L.BatchNormalization(name="post_bn")(x)))
    return keras.Model(inputs, L.Dense(4, name="head")(y), name="densenet")


def test_a_tensor_read_by_a_concatenation_is_quantized_above_the_pooling_before_it():
    plan, key = plan_of(densenet_model())

    # One quantizer on the stem ReLU's output, read by the padding (the pooling then runs on int8, as
    # with NNCF): the concatenation's inputs share it, and neither the pre-activation BN nor the
    # concatenation's first input needs a quantizer of its own. Measured on DenseNet121 (this 2-core VNNI CPU): a
    # quantizer on the pooling's result left it in f32, with a standalone f32 FakeQuantize, and the INT8
    # IR 1.05-1.09x NNCF PTQ's latency (f32 hint); with it above, the same runtime graph as NNCF's.
    assert key("pad") is not None and key("pad") == key("concat", 1) == ("merge", key("concat", 1)[1])
    assert key("preact") is None and key("concat", 0) is None and key("pool") is None
    assert set(plan.edges.values()) == set(plan.names)


@pytest.mark.slow  # compress, export and compile: about 10 s, 27 s on a busy machine
def test_preactivation_block_runs_int8_with_no_float_fake_quantize_in_the_runtime_graph(tmp_path):
    """OpenVINO's runtime graph of a compressed pre-activation model: every Convolution and FullyConnected
    runs u8/i8, and every FakeQuantize left standing between them reads and writes integers (an f32 one
    comes with Reorders; only the model input's quantizer reads a float tensor)."""
    keras.utils.set_random_seed(0)
    model = preactivation_model()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype("float32")
    config = {"compression": {"algorithm": "quantization", "weights": {"per_channel": True},
                              "initializer": {"range": {"num_init_samples": 16},
                                              "batchnorm_adaptation": {"num_bn_adaptation_samples": 16}}}}  # fmt: skip
    compressed, _ = kc.compress(model, config, dataset=x, verbose=0)
    xml = kc.export(compressed, tmp_path / "preactivation")

    from keras_compress.benchmark import compile_ir

    def describe(op):
        info = op.get_rt_info()
        return info["layerType"].astype(str), info["runtimePrecision"].astype(str)

    ops = compile_ir(xml, "f32").get_runtime_model().get_ops()
    compute = [describe(op)[1] for op in ops if describe(op)[0] in ("Convolution", "FullyConnected")]
    assert len(compute) == 6 and set(compute) <= {"u8", "i8"}, compute
    between = [describe(op)[1] for op in ops
               if describe(op)[0] == "FakeQuantize" and describe(op.input_value(0).get_node())[0] != "Input"]  # fmt: skip
    assert between and set(between) <= {"u8", "i8"}, between
