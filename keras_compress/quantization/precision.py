"""Mixed precision: per-layer weight bit widths chosen by sensitivity under a bit budget.

HAWQ's idea on Keras: a layer's sensitivity to quantization at `b` bits is
`trace(H_l) / n_l * ||Q_b(W_l) - W_l||^2`, with the Hessian trace estimated by Hutchinson's
method (`E[v^T H v]` over Rademacher vectors `v`, Hessian-vector products by double backprop on
any backend: `keras_compress.backend.hessian_vector_product`). The loss is the squared distance of the outputs to the FP32 model's outputs on the calibration
data, whose Hessian at the FP32 weights is the Gauss-Newton matrix: no labels needed. The
cheaper `loss_perturbation` criterion measures that loss directly with one layer at a time
quantized at each bit width. The assignment greedily lowers the bits of the layers whose
sensitivity grows least per saved bit until the parameter-weighted mean weight bit width meets
the budget.
"""

from __future__ import annotations

import numpy as np

from keras_compress import backend
from keras_compress.quantization.quantizers import reduction_axes

__all__ = [
    "quantization_error",
    "hutchinson_traces",
    "loss_perturbations",
    "assign_bitwidths",
]


def quantization_error(w, bits, axis=-1):
    """`||Q_b(w) - w||^2` for symmetric narrow-range per-channel quantization (channels on `axis`, an
    int or a tuple of axes).

    Example:
        >>> round(quantization_error(np.array([[1.0, 0.5]]), 2, axis=0), 4)
        0.25
    """
    w = np.asarray(w, "float64")
    reduce = reduction_axes(axis, w.ndim)
    scale = np.max(np.abs(w), axis=reduce, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    levels = 2 ** (bits - 1) - 1
    q = np.round(np.clip(w / scale, -1, 1) * levels) / levels * scale
    return float(np.sum((q - w) ** 2))


def _output_distance(model, x, targets):
    import keras

    outputs = keras.tree.flatten(model(x, training=False))
    return sum(keras.ops.mean(keras.ops.square(o - t)) for o, t in zip(outputs, targets))


def hutchinson_traces(model, kernels, batches, iter_number=200, tolerance=1e-4, seed=0):
    """Average Hessian trace per parameter of each kernel, by Hutchinson's method.

    Args:
        model: the FP32 Keras model.
        kernels: {name: variable} of the weights to measure (variables of `model`).
        batches: list of input batches.
        iter_number: maximum number of Rademacher samples per batch.
        tolerance: stop when the relative change of the total trace estimate is below it.
        seed: random seed.

    Returns:
        {name: trace / number of parameters}.
    """
    import keras

    rng = np.random.default_rng(seed)
    names = list(kernels)
    variables = [kernels[n] for n in names]
    sums = np.zeros(len(names))
    count = 0
    for x in batches:
        targets = [keras.ops.stop_gradient(t) for t in keras.tree.flatten(model(x, training=False))]
        hvp = backend.hessian_vector_product(lambda: _output_distance(model, x, targets), variables)  # noqa: B023
        previous = None
        for _ in range(max(int(iter_number), 1)):
            vs = [rng.choice([-1.0, 1.0], size=v.shape).astype("float32") for v in variables]
            sums += [float(np.sum(v * hv)) for v, hv in zip(vs, hvp(vs))]
            count += 1
            total = sums.sum() / count
            if previous is not None and abs(total - previous) <= tolerance * max(abs(previous), 1e-12):
                break
            previous = total
    sizes = np.array([int(np.prod(v.shape)) for v in variables])
    return {n: float(s / count / size) for n, s, size in zip(names, sums, sizes)}


def loss_perturbations(model, kernels, batches, bits_options, axes):
    """Output-distance loss with one kernel at a time quantized at each bit width.

    Returns:
        {name: {bits: loss}}.
    """
    import keras

    x = batches[0]
    targets = [keras.ops.stop_gradient(t) for t in keras.tree.flatten(model(x, training=False))]
    result = {}
    for name, var in kernels.items():
        original = keras.ops.convert_to_numpy(var)
        result[name] = {}
        for bits in bits_options:
            reduce = reduction_axes(axes[name], original.ndim)
            scale = np.max(np.abs(original), axis=reduce, keepdims=True)
            scale = np.where(scale > 0, scale, 1.0)
            levels = 2 ** (bits - 1) - 1
            var.assign(np.round(np.clip(original / scale, -1, 1) * levels) / levels * scale)
            result[name][bits] = float(_output_distance(model, x, targets))
        var.assign(original)
    return result


def assign_bitwidths(sensitivity, sizes, bits_options, average_bits):
    """Chooses a bit width per layer so the parameter-weighted mean is at most `average_bits`.

    Starts with every layer at the widest option and repeatedly lowers the layer whose
    sensitivity grows least per saved bit (times parameters).

    Args:
        sensitivity: {name: {bits: sensitivity}} (lower is better).
        sizes: {name: number of parameters}.
        bits_options: candidate bit widths.
        average_bits: budget for the weighted mean bit width.

    Returns:
        {name: bits}.

    Example:
        >>> s = {"a": {4: 10.0, 8: 0.0}, "b": {4: 1.0, 8: 0.0}}
        >>> assign_bitwidths(s, {"a": 100, "b": 100}, [4, 8], 6)
        {'a': 8, 'b': 4}
    """
    options = sorted(set(bits_options))
    chosen = {name: options[-1] for name in sensitivity}
    total = float(sum(sizes.values())) or 1.0

    def mean_bits():
        return sum(chosen[n] * sizes[n] for n in chosen) / total

    while mean_bits() > average_bits + 1e-9:
        best, best_cost = None, None
        for name, bits in chosen.items():
            index = options.index(bits)
            if index == 0:
                continue
            lower = options[index - 1]
            cost = (sensitivity[name][lower] - sensitivity[name][bits]) / ((bits - lower) * sizes[name])
            if best_cost is None or cost < best_cost:
                best, best_cost = (name, lower), cost
        if best is None:
            break
        chosen[best[0]] = best[1]
    return chosen
