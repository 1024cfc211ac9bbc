"""Uniform quantizers: pure range functions plus a thin class that owns range variables.

All fake quantization goes through `keras.quantizers.fake_quant_with_min_max_vars`, which on
the TensorFlow backend emits `FakeQuantWithMinMaxVars[PerChannel]` ops: OpenVINO maps them to
`FakeQuantize` and runs the surrounding Convolution/MatMul in INT8.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

__all__ = [
    "QuantizerSpec",
    "Quantizer",
    "symmetric_range",
    "asymmetric_range",
    "fake_quantize",
    "reduction_axes",
]

_EPS = 1e-7


@dataclasses.dataclass
class QuantizerSpec:
    """What one quantizer does.

    Args:
        mode: "symmetric" (a learned scale; range [-scale, scale] or [0, scale]) or
            "asymmetric" (a learned low and range).
        bits: bit width, 2 to 8.
        signed: True or False to force signedness, None to decide it from data at range init.
        per_channel: one range per channel along `axis` instead of one per tensor.
        axis: the channel axis, or a tuple of axes (per-channel only): an EinsumDense kernel
            `(C, heads, key_dim)` has one range per output unit, on axes (1, 2).
        narrow_range: use 2**bits - 1 levels (symmetric weights: -127..127 for 8 bits).
        half_range: quantize to bits - 1 during training (NNCF's overflow fix for CPUs without
            VNNI); `apply_overflow_fix` turns it into a full-width quantizer with the same grid.
    """

    mode: str = "symmetric"
    bits: int = 8
    signed: bool | None = None
    per_channel: bool = False
    axis: int | None = None
    narrow_range: bool = False
    half_range: bool = False

    def __post_init__(self):
        if self.mode not in ("symmetric", "asymmetric"):
            raise ValueError(
                f"`mode` must be 'symmetric' or 'asymmetric'. Received: mode={self.mode!r}"
            )
        if not 2 <= int(self.bits) <= 8:
            raise ValueError(f"`bits` must be between 2 and 8. Received: bits={self.bits}")
        if self.per_channel and self.axis is None:
            raise ValueError("A per-channel quantizer needs `axis`. Received: axis=None")
        if isinstance(self.axis, (list, tuple)):
            self.axis = int(self.axis[0]) if len(self.axis) == 1 else tuple(int(a) for a in self.axis)
            if isinstance(self.axis, tuple) and self.mode != "symmetric":
                raise ValueError(
                    "Several channel axes need a symmetric quantizer (TensorFlow's per-channel "
                    f"fake-quant op takes one axis). Received: mode={self.mode!r}, axis={self.axis}"
                )

    @property
    def train_bits(self):
        """Bits used by the fake-quant op during training."""
        return self.bits - 1 if self.half_range else self.bits

    def to_config(self):
        config = dataclasses.asdict(self)
        if isinstance(self.axis, tuple):
            config["axis"] = list(self.axis)
        return config


def reduction_axes(axis, ndim):
    """The axes a per-channel statistic reduces over: all but the channel `axis` (an int or a tuple).

    Example:
        >>> reduction_axes((1, 2), 3), reduction_axes(-1, 4)
        ((0,), (0, 1, 2))
    """
    channels = {a % ndim for a in (axis if isinstance(axis, (list, tuple)) else (axis,))}
    return tuple(i for i in range(ndim) if i not in channels)


def symmetric_range(scale, signed, bits, narrow_range):
    """Range of a symmetric quantizer.

    Signed ranges hold zero exactly: with 2**bits levels the low end is
    `-scale * 2**(bits-1) / (2**(bits-1) - 1)` (int8: -128..127 steps of scale/127); with
    narrow range it is `-scale` (-127..127).

    Args:
        scale: positive scale (tensor, per-channel or scalar).
        signed: 1.0 for signed, 0.0 for unsigned (tensor or float).
        bits: bit width.
        narrow_range: whether the quantizer uses 2**bits - 1 levels.

    Returns:
        (low, high) tensors.

    Example:
        >>> low, high = symmetric_range(1.0, 1.0, 8, False)
        >>> round(float(low), 4), float(high)
        (-1.0079, 1.0)
    """
    half = 2 ** (bits - 1)
    ratio = 1.0 if narrow_range else half / (half - 1)
    scale = ops.abs(ops.convert_to_tensor(scale, "float32")) + _EPS
    return -scale * ratio * signed, scale


def asymmetric_range(input_low, input_range):
    """Range `[input_low, input_low + |input_range|]` of an asymmetric quantizer."""
    input_low = ops.convert_to_tensor(input_low, "float32")
    return input_low, input_low + ops.abs(ops.convert_to_tensor(input_range, "float32")) + _EPS


def fake_quantize(x, low, high, bits, narrow_range=False, axis=None):
    """Quantizes and dequantizes `x` onto the uniform grid of `[low, high]`.

    Gradients pass straight through to `x` inside the range and reach `low` and `high`.
    """
    last = len(x.shape) - 1
    if axis is not None and axis % len(x.shape) != last:
        # Keras' per-channel fake quantization on JAX and PyTorch broadcasts the range against the last
        # axis only; on TensorFlow it swaps the axes itself, as here (the same graph).
        moved = fake_quantize(ops.swapaxes(x, axis, last), low, high, bits, narrow_range, last)
        return ops.swapaxes(moved, last, axis)
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, low, high, num_bits=bits, narrow_range=narrow_range, axis=axis
    )


def _scaled_fake_quantize_tf(x, scale, low, high, bits, narrow_range):
    """`fq(x / scale) * scale` on the TensorFlow backend, with its gradient written out.

    The gradient TensorFlow derives for `fq(x * (1 / s)) * s` makes 11 passes over the weight (two
    broadcasting products and their reductions on each side of the fake-quant gradient); this one
    makes 7: the fake-quant gradient gives `dx = g * inside`, and the LSQ-style scale gradient
    `sum(g * (fq - inside * x / s))` is `sum(g * fq) - sum(dx * x / s)` over the non-channel axes.
    Measured on this 2-core CPU (forward and backward, TensorFlow 2.21): 10.2 ms instead of 33.2 ms
    for a 1x1x1024x2048 kernel, 3.3 ms instead of 5.0 ms for 3x3x256x256; on a 3x3x64x64 kernel
    1.0 ms instead of 0.6 ms (per-op overhead; ResNet50's weights are mostly in large kernels).
    """
    import tensorflow as tf

    dtype = x.dtype
    x = tf.cast(x, "float32")
    axes = [i for i, size in enumerate(scale.shape) if size == 1]

    @tf.custom_gradient
    def scaled(x, scale):
        scaled_x = x * tf.math.reciprocal(scale)
        quantized = tf.quantization.fake_quant_with_min_max_vars(
            scaled_x, low, high, num_bits=bits, narrow_range=narrow_range
        )

        def grad(upstream):
            dx, _, _ = tf.quantization.fake_quant_with_min_max_vars_gradient(
                upstream, scaled_x, low, high, num_bits=bits, narrow_range=narrow_range
            )
            dscale = tf.reduce_sum(upstream * quantized, axes, keepdims=True) - tf.reduce_sum(
                dx * scaled_x, axes, keepdims=True
            )
            return dx, dscale

        return quantized * scale, grad

    return tf.cast(scaled(x, scale), dtype)


class Quantizer:
    """A quantizer whose range lives in variables of a host layer.

    Args:
        spec: the `QuantizerSpec`.

    Example:
        >>> layer = keras.layers.Layer()
        >>> q = Quantizer(QuantizerSpec(bits=8, signed=True))
        >>> q.build(layer, name="act")
        >>> q.set_range(-2.0, 2.0)
        >>> float(q(np.array([0.3], "float32"))[0]) == round(0.3 * 127 / 2) * 2 / 127
        True
    """

    def __init__(self, spec: QuantizerSpec):
        self.spec = spec
        self.variables = {}
        self.is_frozen = False

    def frozen(self):
        """The current range as plain values (`{variable: list}`), for `build(constants=...)`."""
        return {key: np.asarray(keras.ops.convert_to_numpy(value), "float32").tolist() for key, value in self.variables.items()}

    def build(self, layer, name, weight_shape=None, constants=None):
        """Creates the range variables on `layer` (or holds `constants` instead).

        Per-channel ranges have the weight's rank with the channels on `spec.axis` (for example
        `(1, 1, 1, C)` for a Conv2D kernel): they broadcast against the weight with no reshape
        op, so the exported graph holds plain constants that OpenVINO folds.

        Args:
            layer: the host layer of the variables.
            name: prefix of the variable names.
            weight_shape: the quantized weight's shape (per-channel quantizers).
            constants: `frozen()` of a trained quantizer: the range is then a constant of the
                graph, with no variable (an inference model, see `strip_model`).
        """
        if constants is not None:
            self.variables = {key: np.asarray(value, "float32") for key, value in constants.items()}
            self.is_frozen = True
            return
        shape = ()
        if self.spec.per_channel:
            reduced = reduction_axes(self.spec.axis, len(weight_shape))
            shape = tuple(1 if i in reduced else int(d) for i, d in enumerate(weight_shape))
        add = lambda n, value, trainable=True: layer.add_weight(  # noqa: E731
            name=f"{name}_{n}",
            shape=shape if n != "signed" else (),
            initializer=keras.initializers.Constant(value),
            trainable=trainable,
        )
        if self.spec.mode == "symmetric":
            self.variables["scale"] = add("scale", 1.0)
            self.variables["signed"] = add("signed", 0.0 if self.spec.signed is False else 1.0, False)
        else:
            self.variables["input_low"] = add("input_low", 0.0)
            self.variables["input_range"] = add("input_range", 1.0)

    def range(self):
        """The (low, high) tensors of the current range."""
        v = self.variables
        if self.spec.mode == "symmetric":
            return symmetric_range(v["scale"], v["signed"], self.spec.train_bits, self.spec.narrow_range)
        return asymmetric_range(v["input_low"], v["input_range"])

    def __call__(self, x):
        spec = self.spec
        if spec.per_channel and spec.mode == "symmetric":
            return self._per_channel_symmetric(x)
        low, high = self.range()
        if not spec.per_channel:
            return fake_quantize(x, low, high, spec.train_bits, spec.narrow_range)
        low, high = ops.reshape(low, (-1,)), ops.reshape(high, (-1,))
        return fake_quantize(x, low, high, spec.train_bits, spec.narrow_range, spec.axis)

    def _per_channel_symmetric(self, x):
        """Per-channel symmetric fake quantization as `s * fq(x / s)` with a per-tensor op.

        The same grid as the per-channel op (k * s / levels per channel), but TensorFlow's
        per-channel fake-quant kernel is about 15x slower than the per-tensor one on CPU, which
        made QAT train steps 2x slower than FP32 on ResNet50. The scale gradient is LSQ-like
        (quantization error inside the range, +-1 outside). In the exported graph `x / s` folds
        into a constant, so OpenVINO still sees FakeQuantize on a Constant and stores int8.
        """
        spec = self.spec
        low, high = symmetric_range(1.0, self.variables["signed"], spec.train_bits, spec.narrow_range)
        scale = ops.abs(self.variables["scale"]) + _EPS
        if keras.backend.backend() == "tensorflow" and not self.is_frozen:
            return _scaled_fake_quantize_tf(x, scale, low, high, spec.train_bits, spec.narrow_range)
        # Multiplying by the reciprocal (computed on the small scale tensor) instead of dividing
        # the whole weight: the gradient of a division costs several more passes over the weight.
        return fake_quantize(x * ops.reciprocal(scale), low, high, spec.train_bits, spec.narrow_range) * scale

    @property
    def is_signed(self):
        if self.spec.mode == "asymmetric":
            return None
        return bool(keras.ops.convert_to_numpy(self.variables["signed"]) > 0.5)

    def set_range_from_weights(self, w):
        """Sets the range to the min/max of weight array `w`: per channel (over `spec.axis`) or per tensor."""
        if self.spec.per_channel:
            reduce = reduction_axes(self.spec.axis, w.ndim)
            self.set_range(w.min(axis=reduce, keepdims=True), w.max(axis=reduce, keepdims=True))
        else:
            self.set_range(w.min(), w.max())

    def set_range(self, low, high):
        """Sets the range from observed statistics (scalars or per-channel arrays).

        Symmetric quantizers decide their signedness from `low` when `spec.signed` is None
        (unsigned when nothing below zero was seen) and take `scale = max(|low|, |high|)`.
        Degenerate statistics (constant or all-zero data, NaN) still give a valid range.
        """
        low = np.nan_to_num(np.asarray(low, "float32"), nan=0.0, posinf=0.0, neginf=0.0)
        high = np.nan_to_num(np.asarray(high, "float32"), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
        if self.spec.mode == "symmetric":
            signed = bool(np.any(low < 0)) if self.spec.signed is None else self.spec.signed
            scale = np.maximum(np.abs(low), high) if signed else high
            scale = np.maximum(scale, 1e-4)
            self._assign("scale", scale)
            self._assign("signed", 1.0 if signed else 0.0)
        else:
            rng = np.maximum(high - low, 1e-4)
            self._assign("input_low", low)
            self._assign("input_range", rng)

    def _assign(self, name, values):
        """Assigns per-channel values given as `[C]` (or a scalar) to a range variable."""
        if self.is_frozen:
            raise ValueError("A frozen quantizer (of a stripped, inference model) has a constant range. "
                             f"Received: a new value for its {name!r}")
        var = self.variables[name]
        values = np.asarray(values, "float32")
        if values.size == int(np.prod(var.shape)):
            var.assign(values.reshape(var.shape))
        else:
            var.assign(np.broadcast_to(values, var.shape))

    def apply_overflow_fix(self):
        """Turns a half-range quantizer into a full-width one with the same grid.

        Call after replacing the weights by their quantized values: a (b-1)-bit grid over
        [-s, s] has steps of s / (2**(b-2) - 1); the b-bit grid with the same step spans
        [-s * (2**(b-1) - 1) / (2**(b-2) - 1), ...], so the exported weights are unchanged.
        """
        if not self.spec.half_range:
            return
        b = self.spec.bits
        if self.spec.mode == "symmetric":
            factor = (2 ** (b - 1) - 1) / (2 ** (b - 2) - 1)
            self.variables["scale"].assign(self.variables["scale"] * factor)
        else:  # same low and step: the range grows with the number of levels
            levels_half = 2 ** (b - 1) - (1 if self.spec.narrow_range else 0)
            levels_full = 2**b - (1 if self.spec.narrow_range else 0)
            factor = (levels_full - 1) / (levels_half - 1)
            self.variables["input_range"].assign(self.variables["input_range"] * factor)
        self.spec = dataclasses.replace(self.spec, half_range=False)
