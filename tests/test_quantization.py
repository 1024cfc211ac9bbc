"""Tests of quantization: range formulas, fake-quant grids and gradients, range init, calibration data,
overflow fix, serialization, statistics and BatchNorm adaptation."""

import copy
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_compress as kc
from helpers import conv_bn_add_model, data, quantization_config
from keras_compress import calibration
from keras_compress.calibration import (
    activation_bytes_per_sample,
    iterate_batches,
    run_batches,
    split_batch,
)
from keras_compress.quantization.quantizers import (
    Quantizer,
    QuantizerSpec,
    asymmetric_range,
    fake_quantize,
    symmetric_range,
)
from keras_compress.quantization.range_init import RANGE_TYPES, RangeCollector

L = keras.layers


def activation_quantizers(model):
    return [layer for layer in model.layers if isinstance(layer, kc.FakeQuantize)]


def weight_wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, kc.QuantizeWrapper)]


def built_quantizer(spec, weight_shape=None):
    host = keras.layers.Layer()
    quantizer = Quantizer(spec)
    quantizer.build(host, name="q", weight_shape=weight_shape)
    return quantizer


def numpy_range(low_high):
    return tuple(np.asarray(v, "float64") for v in low_high)


# ---------------------------------------------------------------------------------------------------
# Range formulas and fake-quant grids


@pytest.mark.parametrize(
    "signed,bits,narrow,expected_low",
    [
        (1.0, 8, False, -2.0 * 128 / 127),
        (1.0, 8, True, -2.0),
        (0.0, 8, False, 0.0),
        (0.0, 8, True, 0.0),
        (1.0, 4, False, -2.0 * 8 / 7),
        (1.0, 7, True, -2.0),
    ],
)
def test_symmetric_range(signed, bits, narrow, expected_low):
    low, high = numpy_range(symmetric_range(2.0, signed, bits, narrow))
    np.testing.assert_allclose(low, expected_low, rtol=1e-6)
    np.testing.assert_allclose(high, 2.0, rtol=1e-6)


def test_symmetric_range_uses_the_magnitude_of_the_scale_per_channel():
    low, high = numpy_range(symmetric_range(np.array([-1.0, 0.5, 3.0]), 1.0, 8, True))
    np.testing.assert_allclose(high, [1.0, 0.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(low, [-1.0, -0.5, -3.0], rtol=1e-6)


def test_asymmetric_range():
    low, high = numpy_range(asymmetric_range(np.array([-1.0, 0.5]), np.array([4.0, -2.0])))
    np.testing.assert_allclose(low, [-1.0, 0.5])
    np.testing.assert_allclose(high, [3.0, 2.5], rtol=1e-6)


def _grid_codes(x, scale, signed, bits, narrow):
    """Fake-quantizes x and returns the outputs divided by the expected step."""
    low, high = symmetric_range(scale, 1.0 if signed else 0.0, bits, narrow)
    y = np.asarray(fake_quantize(x, low, high, bits, narrow), "float64")
    step = scale / (2 ** (bits - 1) - 1) if signed else scale / (2**bits - 1)
    return y, y / step


@pytest.mark.parametrize(
    "signed,bits,narrow,code_min,code_max",
    [(True, 8, False, -128, 127), (True, 8, True, -127, 127), (False, 8, False, 0, 255), (True, 4, False, -8, 7),
     (False, 4, False, 0, 15)],
)  # fmt: skip
def test_fake_quantize_outputs_lie_on_the_grid_and_clamp(signed, bits, narrow, code_min, code_max):
    scale = 1.5
    x = np.linspace(-4.0, 4.0, 2001, dtype="float32")

    y, codes = _grid_codes(x, scale, signed, bits, narrow)

    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert codes.round().min() == code_min and codes.round().max() == code_max
    assert len(np.unique(codes.round())) == code_max - code_min + 1
    low = scale * code_min / (2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    np.testing.assert_allclose(y[x > scale + 0.01], scale, rtol=1e-5)  # clamped above
    np.testing.assert_allclose(y[x < low - 0.01], low, rtol=1e-5, atol=1e-6)  # clamped below
    inside = (x > low) & (x < scale)
    step = (scale - low) / (code_max - code_min)
    assert np.abs(y[inside] - x[inside]).max() <= step / 2 + 1e-5  # round to nearest


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(0.05, 50.0),
    bits=st.integers(2, 8),
    signed=st.booleans(),
    values=st.lists(st.floats(-100.0, 100.0, width=32), min_size=1, max_size=20),
)
def test_fake_quantize_grid_property(scale, bits, signed, values):
    x = np.array(values, "float32")
    y, codes = _grid_codes(x, scale, signed, bits, False)
    np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)
    levels = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert np.all(codes.round() <= levels) and np.all(codes.round() >= (-(levels + 1) if signed else 0))


@pytest.mark.parametrize("axis", [-1, -2])
def test_per_channel_quantization_uses_each_channels_own_range(axis):
    scales = np.array([0.5, 1.0, 4.0], "float32")
    shape = (4, 3, 2) if axis == -2 else (4, 2, 3)
    quantizer = built_quantizer(
        QuantizerSpec(bits=8, signed=True, per_channel=True, axis=axis, narrow_range=True), shape
    )
    quantizer.set_range(-scales, scales)
    x = np.random.default_rng(1).uniform(-6.0, 6.0, shape).astype("float32")

    y = np.asarray(quantizer(x), "float64")

    for channel, scale in enumerate(scales):
        xc = np.take(x, channel, axis=axis)
        yc = np.take(y, channel, axis=axis)
        codes = yc * 127 / scale
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        np.testing.assert_allclose(np.abs(yc).max(), scale, rtol=1e-5)  # every channel has clipped values
        np.testing.assert_allclose(yc[np.abs(xc) <= scale], xc[np.abs(xc) <= scale], atol=scale / 254 + 1e-6)
        np.testing.assert_allclose(yc[xc > scale], scale, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Gradients


def test_gradient_passes_straight_through_inside_the_range_and_reaches_the_scale():
    quantizer = built_quantizer(QuantizerSpec(bits=8, signed=True))
    quantizer.set_range(-1.0, 1.0)
    x = tf.constant([-3.0, -0.5, 0.2, 0.7, 2.0, 5.0])
    weights = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    scale = quantizer.variables["scale"]

    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(quantizer(x) * weights)
    dx, dscale = tape.gradient(loss, [x, scale])

    np.testing.assert_allclose(dx.numpy(), [0.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    # high = scale: +1 per value clipped above; low = -scale * 128/127: -128/127 per value clipped below.
    np.testing.assert_allclose(float(dscale), (5.0 + 6.0) - 1.0 * 128 / 127, rtol=1e-5)


def test_scale_gets_no_gradient_when_nothing_is_clipped():
    quantizer = built_quantizer(QuantizerSpec(bits=8, signed=False))
    quantizer.set_range(0.0, 2.0)
    scale = quantizer.variables["scale"]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizer(tf.constant([0.1, 0.5, 1.9])))
    assert float(tape.gradient(loss, scale)) == 0.0


def test_per_channel_weight_scale_gets_an_lsq_gradient():
    """Per-channel symmetric weights run as s * fq(x / s): the scale gradient is the quantization
    error inside the range and +1 / -1 (narrow range) for values clipped above / below."""
    dense = L.Dense(2, use_bias=False)
    spec = QuantizerSpec(bits=8, signed=True, per_channel=True, axis=-1, narrow_range=True)
    wrapper = kc.QuantizeWrapper(dense, {"kernel": spec})
    wrapper.build((None, 2))
    kernel = np.array([[0.7, 0.3], [-2.0, 0.15]], "float32")
    dense.kernel.assign(kernel)
    wrapper.quantizers["kernel"].set_range([-1.0, -0.5], [1.0, 0.5])  # clips -2.0 in channel 0 only
    scale = wrapper.quantizers["kernel"].variables["scale"]

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wrapper(tf.constant([[1.0, 1.0]])))
    dscale, dkernel = tape.gradient(loss, [scale, dense.kernel])

    u = kernel / np.array([1.0, 0.5])
    error = np.floor(u * 127 + 0.5) / 127 - u
    expected = [error[0, 0] - 1.0, error[0, 1] + error[1, 1]]
    np.testing.assert_allclose(np.reshape(dscale.numpy(), -1), expected, atol=1e-5)
    assert abs(expected[1]) > 1e-3
    np.testing.assert_allclose(dkernel.numpy(), [[1.0, 1.0], [0.0, 1.0]])  # straight through, 0 when clipped


@pytest.mark.parametrize("axis,shape", [(-1, (3, 3, 2, 4)), (-2, (3, 3, 4, 2))])
@pytest.mark.parametrize("half_range", [False, True])
def test_per_channel_symmetric_quantizer_matches_the_per_channel_op(axis, shape, half_range):
    spec = QuantizerSpec(bits=8, signed=True, per_channel=True, axis=axis, narrow_range=True, half_range=half_range)
    quantizer = built_quantizer(spec, shape)
    scales = np.array([0.05, 0.3, 1.0, 2.5], "float32")
    quantizer.set_range(-scales, scales)
    x = np.random.default_rng(3).uniform(-3.0, 3.0, shape).astype("float32")

    low, high = (keras.ops.reshape(v, (-1,)) for v in quantizer.range())
    reference = keras.quantizers.fake_quant_with_min_max_vars(
        x, low, high, num_bits=spec.train_bits, narrow_range=True, axis=axis
    )

    out = np.asarray(quantizer(x))
    np.testing.assert_allclose(out, np.asarray(reference), atol=1e-6, rtol=1e-5)
    levels = 2 ** (spec.train_bits - 1) - 1
    codes = np.moveaxis(out, axis, -1) / scales * levels
    np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)
    assert np.abs(np.round(codes)).max() == levels


# ---------------------------------------------------------------------------------------------------
# Quantizer.set_range


@pytest.mark.parametrize(
    "low,high",
    [(0.0, 0.0), (5.0, 5.0), (-3.0, -3.0), (np.nan, np.nan), (-np.inf, np.inf), (np.nan, 2.0),
     (np.array([0.0, np.nan, -1.0]), np.array([0.0, np.inf, 1.0]))],
    ids=["zeros", "constant_positive", "constant_negative", "nan", "inf", "nan_low", "per_channel"],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_set_range_with_degenerate_statistics_gives_a_valid_range(low, high, mode):
    per_channel = np.ndim(low) > 0
    spec = QuantizerSpec(mode=mode, bits=8, per_channel=per_channel, axis=-1 if per_channel else None)
    quantizer = built_quantizer(spec, (2, 3) if per_channel else None)

    quantizer.set_range(low, high)

    for name, variable in quantizer.variables.items():
        assert np.all(np.isfinite(np.asarray(variable))), name
    q_low, q_high = numpy_range(quantizer.range())
    assert np.all(q_high - q_low > 0)
    x = np.array([[-1.0, 0.0, 2.0]] * 2, "float32")
    assert np.all(np.isfinite(np.asarray(quantizer(x))))


@pytest.mark.parametrize(
    "forced,low,high,signed,scale",
    [
        (None, -1.0, 2.0, True, 2.0),
        (None, 0.5, 2.0, False, 2.0),
        (None, -3.0, 1.0, True, 3.0),
        (None, -3.0, -3.0, True, 3.0),
        (None, 5.0, 5.0, False, 5.0),
        (True, 0.0, 2.0, True, 2.0),
        (False, -1.0, 2.0, False, 2.0),
    ],
)
def test_set_range_decides_signedness_from_data_unless_forced(forced, low, high, signed, scale):
    quantizer = built_quantizer(QuantizerSpec(bits=8, signed=forced))
    quantizer.set_range(low, high)
    assert quantizer.is_signed is signed
    np.testing.assert_allclose(float(quantizer.variables["scale"]), scale, rtol=1e-6)
    q_low, _ = numpy_range(quantizer.range())
    assert (q_low < 0) == signed


def test_asymmetric_set_range_keeps_zero_inside():
    quantizer = built_quantizer(QuantizerSpec(mode="asymmetric", bits=8))
    quantizer.set_range(1.0, 3.0)  # zero must be representable: low is clipped to 0
    np.testing.assert_allclose(numpy_range(quantizer.range()), (0.0, 3.0), atol=1e-6)
    quantizer.set_range(-1.0, 3.0)
    np.testing.assert_allclose(numpy_range(quantizer.range()), (-1.0, 3.0), atol=1e-6)
    assert quantizer.is_signed is None


# ---------------------------------------------------------------------------------------------------
# Overflow fix


def _half_range_dense(mode, inputs=2000, units=6, seed=0):
    rng = np.random.default_rng(seed)
    dense = L.Dense(units)
    spec = QuantizerSpec(mode=mode, bits=8, signed=True, per_channel=True, axis=-1,
                         narrow_range=mode == "symmetric", half_range=True)  # fmt: skip
    wrapper = kc.QuantizeWrapper(dense, {"kernel": spec})
    wrapper.build((None, inputs))
    dense.kernel.assign(rng.uniform(-1.0, 1.0, (inputs, units)) * rng.uniform(0.1, 2.0, units))
    dense.bias.assign(rng.normal(size=units))
    wrapper.initialize_ranges_from_weights()
    return wrapper, rng.normal(size=(5, inputs)).astype("float32") / np.sqrt(inputs)


def test_half_range_weights_train_on_7_bits():
    wrapper, _ = _half_range_dense("symmetric")
    quantizer = wrapper.quantizers["kernel"]
    assert quantizer.spec.train_bits == 7
    kernel = np.asarray(wrapper.effective_weights()["kernel"], "float64")
    scales = np.asarray(quantizer.variables["scale"], "float64")
    codes = kernel / (scales / 63)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert np.abs(np.round(codes)).max() == 63


def test_overflow_fix_keeps_outputs_and_widens_the_quantizer():
    wrapper, x = _half_range_dense("symmetric")
    before = np.asarray(wrapper(x))
    scale_before = np.asarray(wrapper.quantizers["kernel"].variables["scale"], "float64")

    wrapper.apply_overflow_fix()

    quantizer = wrapper.quantizers["kernel"]
    np.testing.assert_allclose(np.asarray(wrapper(x)), before, rtol=1e-5, atol=1e-5)
    assert quantizer.spec.half_range is False and quantizer.spec.train_bits == 8
    scale = np.asarray(quantizer.variables["scale"], "float64")
    np.testing.assert_allclose(scale, scale_before * 127 / 63, rtol=1e-5)
    kernel = np.asarray(wrapper.layer.kernel, "float64")  # the quantized values are baked in
    codes = kernel / (scale / 127)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    for channel in range(kernel.shape[1]):
        values = np.unique(np.round(codes[:, channel]))
        assert len(values) <= 2**7 - 1 and np.abs(values).max() <= 63
        assert len(np.unique(np.abs(values))) <= 2**6
    wrapper.apply_overflow_fix()  # a second call changes nothing
    np.testing.assert_allclose(np.asarray(wrapper(x)), before, rtol=1e-5, atol=1e-5)


def test_full_width_weights_would_use_more_than_127_values():
    """The distinct-value bound above is tight enough to notice a missing half range."""
    wrapper, _ = _half_range_dense("symmetric")
    quantizer = wrapper.quantizers["kernel"]
    full = Quantizer(QuantizerSpec(bits=8, signed=True, per_channel=True, axis=-1, narrow_range=True))
    full.variables = quantizer.variables
    kernel = np.asarray(full(wrapper.layer.kernel))
    assert min(len(np.unique(kernel[:, c])) for c in range(kernel.shape[1])) > 2**7 - 1


def test_overflow_fix_keeps_outputs_of_asymmetric_weights():
    wrapper, x = _half_range_dense("asymmetric")
    before = np.asarray(wrapper(x))
    wrapper.apply_overflow_fix()
    assert wrapper.quantizers["kernel"].spec.train_bits == 8
    np.testing.assert_allclose(np.asarray(wrapper(x)), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overflow_fix,target_device,half",
    [("enable", "ANY", {"conv1", "conv2", "fc"}), ("enable", "CPU", {"conv1", "conv2", "fc"}),
     ("first_layer_only", "ANY", {"conv1"}), ("disable", "ANY", set()), ("enable", "GPU", set())],
)  # fmt: skip
def test_overflow_fix_config_selects_half_range_weights(overflow_fix, target_device, half):
    config = {**quantization_config(overflow_fix=overflow_fix), "target_device": target_device}
    compressed, ctrl = kc.compress(conv_bn_add_model(), config)
    got = {w.name for w in weight_wrappers(compressed) if w.quantizers["kernel"].spec.half_range}
    assert got == half
    rows = ctrl.statistics().sections["quantization"]["weights"][1]
    assert {r[0] for r in rows if r[5] == "half"} == half


# ---------------------------------------------------------------------------------------------------
# Range init statistics

ROWS = np.array([[-1, 0, 2, 5], [-3, 1, 1, 1], [0, 4, 6, 2]], "float32")
# Values sorted: -3 -1 0 0 1 1 1 2 2 4 5 6; median 1, median absolute deviation 1.
EXPECTED_RANGES = {
    "min_max": (-3.0, 6.0),
    "mean_min_max": ((-1 - 3 + 0) / 3, (5 + 1 + 6) / 3),
    "mixed_min_max": (-3.0, (5 + 1 + 6) / 3),
    "threesigma": (1 - 3 * 1, 1 + 3 * 1),
    "percentile": (0.0, 2.5),  # 25th / 75th percentile of all values (linear interpolation)
    "mean_percentile": ((-0.25 + 0.0 + 1.5) / 3, (2.75 + 1.0 + 4.5) / 3),  # per-row percentiles, averaged
}


def test_expected_ranges_cover_every_range_type():
    assert set(EXPECTED_RANGES) == set(RANGE_TYPES)


@pytest.mark.parametrize("range_type", sorted(EXPECTED_RANGES))
def test_range_collector_on_a_hand_made_batch(range_type):
    collector = RangeCollector(range_type, min_percentile=25, max_percentile=75)
    collector.update(ROWS[:2])  # two batches: statistics accumulate across updates
    collector.update(ROWS[2:])
    np.testing.assert_allclose(collector.result(), EXPECTED_RANGES[range_type], rtol=1e-6)
    assert collector.num_samples == 3


@pytest.mark.parametrize("range_type", sorted(EXPECTED_RANGES))
def test_range_collector_ignores_nan_and_inf(range_type):
    extra = np.array([[np.nan], [np.inf], [-np.inf]], "float32")
    collector = RangeCollector(range_type, min_percentile=25, max_percentile=75)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        collector.update(np.concatenate([ROWS, extra], axis=1))
    np.testing.assert_allclose(collector.result(), EXPECTED_RANGES[range_type], rtol=1e-6)


def test_range_collector_treats_feature_maps_per_sample():
    x = np.zeros((2, 3, 3, 2), "float32")
    x[0, 1, 1, 0], x[1, 2, 0, 1] = 4.0, 2.0
    x[1, 0, 0, 0] = -1.0
    collector = RangeCollector("mean_min_max")
    collector.update(x)
    assert collector.result() == (-0.5, 3.0)


@pytest.mark.parametrize("range_type", sorted(EXPECTED_RANGES))
def test_range_collector_without_finite_values_gives_zero_range(range_type):
    assert RangeCollector(range_type).result() == (0.0, 0.0)
    collector = RangeCollector(range_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "All-NaN slice"
        collector.update(np.array([[np.nan, np.inf], [-np.inf, np.nan]], "float32"))
    assert collector.result() == (0.0, 0.0)


def test_range_collector_skips_an_empty_batch():
    collector = RangeCollector("min_max")
    collector.update(np.zeros((0, 4), "float32"))
    assert collector.result() == (0.0, 0.0)


def test_range_collector_rejects_an_unknown_type():
    with pytest.raises(ValueError, match="`range_type` must be one of"):
        RangeCollector("minmax")


# ---------------------------------------------------------------------------------------------------
# Calibration data


def _shapes(batches):
    return [keras.tree.map_structure(lambda a: tuple(np.shape(a)), b) for b in batches]


def test_iterate_batches_on_a_dataset_of_x_y():
    x, y = data((25, 3)), np.arange(25)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    batches = list(iterate_batches(dataset))
    assert _shapes(batches) == [(10, 3), (10, 3), (5, 3)]
    np.testing.assert_array_equal(np.concatenate(batches), x)


def test_iterate_batches_on_an_x_y_tuple_and_a_bare_array():
    x, y = data((70, 3)), np.arange(70)
    for source in ((x, y), x, (tf.constant(x), tf.constant(y))):
        batches = list(iterate_batches(source, batch_size=32))
        assert _shapes(batches) == [(32, 3), (32, 3), (6, 3)]
        np.testing.assert_array_equal(np.concatenate(batches), x)


def test_iterate_batches_on_a_bare_tensor():
    x = data((70, 3))
    batches = list(iterate_batches(tf.constant(x), batch_size=32))
    assert _shapes(batches) == [(32, 3), (32, 3), (6, 3)]


def test_iterate_batches_on_a_list_of_two_arrays():
    a, b = data((40, 3)), data((40, 2), seed=1)
    batches = list(iterate_batches([a, b], batch_size=16))
    assert _shapes(batches) == [[(16, 3), (16, 2)], [(16, 3), (16, 2)], [(8, 3), (8, 2)]]
    np.testing.assert_array_equal(np.concatenate([batch[1] for batch in batches]), b)


def test_iterate_batches_on_a_generator_of_x_y():
    def generator():
        for i in range(3):
            yield data((8, 3), seed=i), np.zeros(8)

    batches = list(iterate_batches(generator()))
    assert _shapes(batches) == [(8, 3)] * 3
    assert all(isinstance(b, np.ndarray) for b in batches)
    np.testing.assert_array_equal(batches[2], data((8, 3), seed=2))


def test_iterate_batches_rejects_a_non_iterable():
    with pytest.raises(ValueError, match="`dataset` must be"):
        list(iterate_batches(42))


def test_two_input_model_calibrates_each_input_quantizer_on_its_own_input():
    a_in, b_in = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = L.Dense(1, name="fc")(L.Concatenate(name="concat")([L.Dense(4, name="da")(a_in), L.Dense(4, name="db")(b_in)]))
    model = keras.Model([a_in, b_in], out)
    a, b = data((40, 3)), 5.0 + np.abs(data((40, 2), seed=1))

    compressed, _ = kc.compress(model, quantization_config(init_samples=40), dataset=[a, b])

    qa, qb = compressed.get_layer("a_quantizer").quantizer, compressed.get_layer("b_quantizer").quantizer
    np.testing.assert_allclose(float(qa.variables["scale"]), max(-a.min(), a.max(axis=1).mean()), rtol=1e-5)
    np.testing.assert_allclose(float(qb.variables["scale"]), b.max(axis=1).mean(), rtol=1e-5)
    assert qa.is_signed and not qb.is_signed


def test_range_init_uses_the_configured_number_of_samples():
    model = conv_bn_add_model()
    x = data((64, 16, 16, 3))
    x[32:] *= 10.0  # the second batch would widen the input range

    compressed, _ = kc.compress(model, quantization_config(init_samples=32), dataset=x)

    scale = float(compressed.get_layer("img_quantizer").quantizer.variables["scale"])
    first = x[:32].reshape(32, -1)
    np.testing.assert_allclose(scale, max(-first.min(), first.max(axis=1).mean()), rtol=1e-5)


def test_fake_quantize_passes_the_mask_of_its_input_through():
    # An element-wise layer: the mask of `Embedding(mask_zero=True)` (or of KerasHub's masked softmax)
    # reaches the layers after the quantizer, and Keras does not warn that it is destroyed.
    fq = kc.FakeQuantize(bits=8, signed=True)
    x, mask = keras.ops.ones((2, 3, 4)), keras.ops.convert_to_tensor([[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fq.compute_mask(x, mask)), keras.ops.convert_to_numpy(mask))
    embedding, quantizer, lstm = L.Embedding(20, 4, mask_zero=True), kc.FakeQuantize(bits=8, signed=True), L.LSTM(3)

    def model(length):
        inputs = keras.Input((length,), dtype="int32")
        return keras.Model(inputs, lstm(quantizer(embedding(inputs))))

    ids = np.array([[3, 4, 5, 0, 0, 0], [3, 4, 5, 6, 7, 0]], "int32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        padded = model(6)(ids)
    assert not [w for w in caught if "destroy the mask" in str(w.message)]
    # The LSTM skips the padding: the padded line gives what the line without its padding gives.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(padded[:1]),
                               keras.ops.convert_to_numpy(model(3)(ids[:1, :3])), atol=1e-6)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Serialization


def test_fake_quantize_round_trips_through_its_config():
    layer = kc.FakeQuantize(mode="asymmetric", bits=4, signed=None, narrow_range=True, name="fq")
    config = layer.get_config()

    clone = kc.FakeQuantize.from_config(copy.deepcopy(config))
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))

    for other in (clone, revived):
        assert type(other) is kc.FakeQuantize
        assert other.get_config() == config
        assert (other.spec.mode, other.spec.bits, other.spec.signed, other.spec.narrow_range) == (
            "asymmetric", 4, None, True
        )  # fmt: skip


def _quantize_wrapper():
    conv = L.Conv2D(4, 3, name="qconv")
    specs = {"kernel": QuantizerSpec(bits=6, signed=True, per_channel=True, axis=-1, narrow_range=True,
                                     half_range=False)}  # fmt: skip
    wrapper = kc.QuantizeWrapper(conv, specs, name="qconv")
    x = data((2, 6, 6, 3))
    wrapper(x)
    wrapper.quantizers["kernel"].set_range(-np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.1, 0.2, 0.3, 0.4]))
    return wrapper, x


def test_quantize_wrapper_round_trips_through_its_config():
    wrapper, x = _quantize_wrapper()
    config = wrapper.get_config()

    for other in (
        kc.QuantizeWrapper.from_config(copy.deepcopy(config)),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapper)),
    ):
        assert type(other) is kc.QuantizeWrapper and type(other.layer) is L.Conv2D
        assert other.quantizers["kernel"].spec == wrapper.quantizers["kernel"].spec
        other(x)
        other.set_weights(wrapper.get_weights())
        assert other.get_config() == config
        np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(wrapper(x)))


def test_quantize_wrapper_from_config_leaves_its_argument_alone():
    wrapper, _ = _quantize_wrapper()
    config = wrapper.get_config()
    kept = copy.deepcopy(config)
    kc.QuantizeWrapper.from_config(config)
    assert config == kept


def _trained_setup(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, name="fc")(x)
    model = keras.Model(inp, out)
    x = data((32, 8, 8, 3), seed)
    y = np.random.default_rng(seed).integers(0, 3, 32)
    return model, x, y


def test_compressed_model_saves_and_loads_without_custom_objects(tmp_path):
    model, x, y = _trained_setup()
    compressed, _ = kc.compress(model, quantization_config(), dataset=(x, y))
    path = str(tmp_path / "compressed.keras")

    compressed.save(path)
    loaded = keras.saving.load_model(path)

    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(compressed(x)))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in compressed.layers]
    assert len(loaded.weights) == len(compressed.weights)
    for a, b in zip(loaded.weights, compressed.weights):
        assert a.name == b.name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    signs = {q.name: q.quantizer.is_signed for q in activation_quantizers(loaded)}
    assert signs == {"img_quantizer": True, "relu1_quantizer": False, "gap_quantizer": False}
    assert loaded.get_layer("conv1").quantizers["kernel"].spec.per_channel


def test_training_continues_on_a_loaded_model_and_learns_the_ranges(tmp_path):
    model, x, y = _trained_setup()
    compressed, _ = kc.compress(model, quantization_config(), dataset=(x, y))
    path = str(tmp_path / "compressed.keras")
    compressed.save(path)
    loaded = keras.saving.load_model(path)
    scales = {v.path: np.array(v) for v in loaded.trainable_weights if v.name.endswith("_scale")}
    assert len(scales) == 5  # 3 activation + 2 per-channel weight quantizers, all trainable

    loaded.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    history = loaded.fit(x, y, epochs=2, batch_size=8, verbose=0)

    assert np.all(np.isfinite(history.history["loss"]))
    changed = {p for v in loaded.trainable_weights if (p := v.path) in scales
               and np.abs(np.asarray(v) - scales[p]).max() > 1e-3}  # fmt: skip
    assert any("relu1_quantizer" in p or "gap_quantizer" in p for p in changed)
    assert any("kernel_scale" in p for p in changed)


# ---------------------------------------------------------------------------------------------------
# Statistics after QAT compression


def test_statistics_count_weight_quantizers_and_per_channel_share():
    model = conv_bn_add_model()
    x = data((16, 16, 16, 3))

    _, per_channel = kc.compress(model, quantization_config(init_samples=16), dataset=x)
    _, per_tensor = kc.compress(model, quantization_config(init_samples=16, weights={"per_channel": False}),
                                dataset=x)  # fmt: skip

    figures = per_channel.statistics().figures()
    assert figures["quantization/weight_quantizers"] == 3  # conv1, conv2, fc
    assert figures["quantization/activation_quantizers"] == 5
    assert figures["quantization/per_channel_share"] == 1.0
    assert figures["quantization/mean_weight_bits"] == 8.0
    assert per_tensor.statistics().figures()["quantization/per_channel_share"] == 0.0
    assert "conv1" in str(per_channel.statistics())


def test_activation_bits_are_configurable():
    model = conv_bn_add_model()
    x = data((16, 16, 16, 3))

    compressed, ctrl = kc.compress(model, quantization_config(init_samples=16, activations={"bits": 4}), dataset=x)

    quantizers = activation_quantizers(compressed)
    assert len(quantizers) == 5 and all(q.spec.bits == 4 for q in quantizers)
    assert all(w.quantizers["kernel"].spec.bits == 8 for w in weight_wrappers(compressed))
    out = np.asarray(compressed.get_layer("img_quantizer")(x))
    assert len(np.unique(out)) <= 2**4
    assert [row[1] for row in ctrl.statistics().sections["quantization"]["activations"][1]] == [4] * 5


def test_weight_bits_are_configurable():
    compressed, ctrl = kc.compress(conv_bn_add_model(), quantization_config(weights={"bits": 4, "per_channel": True}))
    kernel = np.asarray(compressed.get_layer("conv1").effective_weights()["kernel"])
    for channel in range(kernel.shape[-1]):
        assert len(np.unique(kernel[..., channel])) <= 2**4 - 1  # narrow range: -7..7
    assert ctrl.statistics().figures()["quantization/mean_weight_bits"] == 4.0


def test_mixed_preset_gives_asymmetric_activation_quantizers():
    model = conv_bn_add_model()
    x = data((16, 16, 16, 3))

    compressed, ctrl = kc.compress(model, quantization_config(init_samples=16, preset="mixed"), dataset=x)

    quantizers = activation_quantizers(compressed)
    assert len(quantizers) == 5
    assert all(q.spec.mode == "asymmetric" and q.quantizer.is_signed is None for q in quantizers)
    assert all(w.quantizers["kernel"].spec.mode == "symmetric" for w in weight_wrappers(compressed))
    low, high = numpy_range(compressed.get_layer("img_quantizer").quantizer.range())
    flat = x.reshape(16, -1)
    np.testing.assert_allclose(low, flat.min(), rtol=1e-5)  # mixed_min_max: min of all, mean of maxima
    np.testing.assert_allclose(high, flat.max(axis=1).mean(), rtol=1e-5)
    relu_low, _ = numpy_range(compressed.get_layer("relu1_quantizer").quantizer.range())
    assert relu_low == 0.0
    assert ctrl.statistics().figures()["quantization/unsigned_activation_share"] == 0.0


def test_bits_outside_2_to_8_are_rejected_by_config_loading():
    with pytest.raises(kc.ConfigError, match="compression.weights.bits") as err:
        kc.load_config(quantization_config(weights={"bits": 12}))
    assert "Received: bits=12" in str(err.value)
    with pytest.raises(kc.ConfigError, match="compression.activations.bits"):
        kc.compress(conv_bn_add_model(), quantization_config(activations={"bits": 1}))


# ---------------------------------------------------------------------------------------------------
# BatchNorm adaptation


def _badly_trained_bn_model():
    """A conv-BN model whose moving statistics are far from the data's after one training step."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(momentum=0.99, name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(3, name="fc")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 8, 8, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5]).astype("float32")
    y = rng.integers(0, 3, 64)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    return model, x, y


def test_bn_adaptation_sets_moving_statistics_to_the_data_statistics():
    model, x, y = _badly_trained_bn_model()
    old_mean = np.array(model.get_layer("bn1").moving_mean)

    compressed, _ = kc.compress(model, quantization_config(bn_samples=64), dataset=(x, y))

    # BN adaptation sees the conv outputs with quantized weights, batch by batch (32 + 32 samples),
    # and averages the batch statistics.
    conv = np.asarray(compressed.get_layer("conv1")(x), "float64")
    batches = [conv[:32], conv[32:]]
    expected_mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    expected_var = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    bn = compressed.get_layer("bn1")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), expected_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), expected_var, rtol=1e-3)
    assert np.abs(expected_mean - old_mean).max() > 0.5  # it really was wrong before
    np.testing.assert_allclose(np.asarray(bn.moving_variance), conv.var(axis=(0, 1, 2)), rtol=0.05)
    assert bn.momentum == 0.99 and bn.trainable  # restored


def test_calibration_batches_too_large_for_the_memory_budget_run_as_sub_batches():
    model, x, y = _badly_trained_bn_model()
    per_sample = activation_bytes_per_sample(model)
    # float32 outputs: the input 8x8x3, conv1, bn1 and relu1 8x8x4 each, gap 4 and fc 3
    assert per_sample == 4 * (8 * 8 * 3 + 3 * 8 * 8 * 4 + 4 + 3)
    calls = []
    model.call = (lambda call: lambda *a, **k: calls.append(len(a[0])) or call(*a, **k))(model.call)

    seen = run_batches(model, iterate_batches(x, 32), 40, memory_budget=10 * per_sample, verbose=0)

    assert calls == [10, 10, 10, 2, 10]  # batch 32 -> 10+10+10+2; batch 2 stops at 42 >= 40
    assert seen == 42
    assert [len(b["a"]) for b in split_batch({"a": x[:5], "b": x[:5]}, 2)] == [2, 2, 1]


def test_range_init_and_bn_adaptation_split_large_batches_with_the_same_ranges(monkeypatch):
    """Per-sample range statistics do not depend on how a batch is split; BN adaptation averages
    the statistics of each sub-batch, so a split changes them only by the batch-to-batch spread."""
    model, x, y = _badly_trained_bn_model()
    config = quantization_config(bn_samples=64, init_samples=64)
    whole, _ = kc.compress(model, config, dataset=(x, y))
    per_sample = activation_bytes_per_sample(whole)
    monkeypatch.setattr(calibration, "EAGER_ACTIVATION_BUDGET", 8 * per_sample)

    split, _ = kc.compress(model, config, dataset=(x, y))

    for name in ("img_quantizer", "relu1_quantizer", "gap_quantizer"):
        a, b = whole.get_layer(name).quantizer.variables, split.get_layer(name).quantizer.variables
        # the input range is exact; later ones see BN statistics from smaller batches
        rtol = 1e-6 if name == "img_quantizer" else 0.1
        np.testing.assert_allclose(float(a["scale"]), float(b["scale"]), rtol=rtol)
    # BN adaptation stepped on sub-batches of 8: its variance is the mean of their variances
    conv = np.asarray(split.get_layer("conv1")(x), "float64")
    var_of = lambda size: np.mean([conv[i : i + size].var(axis=(0, 1, 2)) for i in range(0, 64, size)], axis=0)  # noqa: E731
    np.testing.assert_allclose(np.asarray(split.get_layer("bn1").moving_variance), var_of(8), rtol=1e-3)
    assert np.abs(var_of(8) / var_of(32) - 1).max() > 3e-3  # distinguishable from unsplit batches


def test_bn_adaptation_with_zero_samples_keeps_the_statistics():
    model, x, y = _badly_trained_bn_model()
    original = model.get_layer("bn1")

    compressed, _ = kc.compress(model, quantization_config(bn_samples=0), dataset=(x, y))

    bn = compressed.get_layer("bn1")
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), np.asarray(original.moving_mean))
    np.testing.assert_array_equal(np.asarray(bn.moving_variance), np.asarray(original.moving_variance))


def test_scope_overrides_set_bits_per_scope():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="first")(inputs)
    x = keras.layers.ReLU(name="act")(x)
    x = keras.layers.Conv2D(4, 3, name="second")(x)
    model = keras.Model(inputs, x)
    config = {
        "compression": {
            "algorithm": "quantization",
            "overflow_fix": "disable",
            "scope_overrides": {
                "weights": {"{re}sec.*": {"bits": 4, "per_channel": True}},
                "activations": {"act": {"bits": 6}},
            },
        }
    }
    compressed, ctrl = kc.compress(model, config)
    wrappers = {l.name: l for l in compressed.layers if isinstance(l, kc.QuantizeWrapper)}
    assert wrappers["second"].quantizers["kernel"].spec.bits == 4
    assert wrappers["second"].quantizers["kernel"].spec.per_channel
    assert wrappers["first"].quantizers["kernel"].spec.bits == 8
    assert not wrappers["first"].quantizers["kernel"].spec.per_channel
    fqs = {l.name: l.spec.bits for l in compressed.layers if isinstance(l, kc.FakeQuantize)}
    assert fqs["act_quantizer"] == 6
    assert [b for n, b in fqs.items() if n != "act_quantizer"] == [8]
    with pytest.raises(ValueError, match="no keras_compress layers"):
        ctrl.strip(model)
