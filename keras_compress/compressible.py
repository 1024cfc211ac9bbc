"""Which Keras layers have compressible weights, and how to call them with replaced weights.

Wrappers (quantization, pruning, sparsity) transform a layer's weights and then run the
layer's own computation with the transformed tensors. Keras layers read their weights
from attributes inside `call`, so each supported class gets a small function here that
reproduces its `call` with public `keras.ops` and explicit weight tensors.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "LAMBDA_REASON",
    "CompressibleLayerSpec",
    "COMPRESSIBLE_LAYERS",
    "UNCOMPRESSED_BY_DESIGN",
    "uncompressed_by_design",
    "compressible_spec",
    "contracted_first",
    "call_with_weights",
    "register_compressible",
    "weight_channel_axes",
]


def _bias_add(layer, outputs, bias, channels):
    if bias is None:
        return outputs
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        rank = len(outputs.shape) - 2
        return ops.add(outputs, ops.reshape(bias, (1, channels) + (1,) * rank))
    # Channels last: the bias broadcasts as it is. No reshape op, so OpenVINO folds the bias
    # into the INT8 convolution's dequantization (a Reshape here stayed in its runtime graph).
    return ops.add(outputs, bias)


def _activate(layer, outputs):
    return layer.activation(outputs) if layer.activation is not None else outputs


def _convolve(op, layer, inputs, kernels, bias, channels, padding=None, **kwargs):
    """`op(inputs, *kernels, ...)` with the layer's strides, padding and dilation, then bias and activation."""
    outputs = op(
        inputs,
        *kernels,
        strides=layer.strides,
        padding=padding or layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
        **kwargs,
    )
    return _activate(layer, _bias_add(layer, outputs, bias, channels))


def _conv(layer, inputs, w):
    padding = layer.padding
    if padding == "causal":
        left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
        if layer.data_format == "channels_last":
            inputs = ops.pad(inputs, [[0, 0], [left, 0], [0, 0]])
        else:
            inputs = ops.pad(inputs, [[0, 0], [0, 0], [left, 0]])
        padding = "valid"
    return _convolve(ops.conv, layer, inputs, [w["kernel"]], w.get("bias"), layer.filters, padding)


def _depthwise_conv(layer, inputs, w):
    channels = w["kernel"].shape[-2] * w["kernel"].shape[-1]
    return _convolve(ops.depthwise_conv, layer, inputs, [w["kernel"]], w.get("bias"), channels)


def _separable_conv(layer, inputs, w, between=None):
    kernels = [w["depthwise_kernel"], w["pointwise_kernel"]]
    channels = kernels[1].shape[-1]
    if between is None:
        return _convolve(ops.separable_conv, layer, inputs, kernels, w.get("bias"), channels)
    # The depthwise and the pointwise convolution as two ops with `between` applied in the middle
    # (an activation quantizer, so that OpenVINO runs the pointwise convolution in int8 too).
    depthwise = ops.depthwise_conv(
        inputs, kernels[0], strides=layer.strides, padding=layer.padding,
        dilation_rate=layer.dilation_rate, data_format=layer.data_format,
    )  # fmt: skip
    outputs = ops.conv(between(depthwise), kernels[1], strides=1, padding="valid", data_format=layer.data_format)
    return _activate(layer, _bias_add(layer, outputs, w.get("bias"), channels))


def _conv_transpose(layer, inputs, w):
    return _convolve(
        ops.conv_transpose, layer, inputs, [w["kernel"]], w.get("bias"), w["kernel"].shape[-2],
        output_padding=layer.output_padding,
    )  # fmt: skip


def _dense(layer, inputs, w):
    outputs = ops.matmul(inputs, w["kernel"])
    if w.get("bias") is not None:
        outputs = ops.add(outputs, w["bias"])
    return _activate(layer, outputs)


def contracted_first(equation):
    """The same einsum with the kernel's contracted axes first, and the kernel transposition it needs.

    OpenVINO's CPU plugin turns an Einsum into a FullyConnected by transposing and reshaping the
    kernel to `(contracted, output units)`; when that takes a transposition of an int8 kernel whose
    dequantization scale varies along the output units (one range per unit), it runs the projection
    in f32 (OpenVINO 2026.4: Gemma's query/key/value projections, `"btd,ndh->btnh"`, ran f32 with
    per-unit scales and i8 only with one scale per tensor). Transposing the dequantized kernel in the
    graph (`"btd,dnh->btnh"` on `transpose(kernel, (1, 0, 2))`) runs them in i8: the same
    computation, the same weights.

    Args:
        equation: an EinsumDense equation `"<input>,<kernel>-><output>"`.

    Returns:
        `(equation, perm)`: `perm` is None when the kernel's contracted axes already come first
        (or the kernel term has an ellipsis), and `equation` then is the one given.

    Example:
        >>> contracted_first("btd,ndh->btnh")
        ('btd,dnh->btnh', (1, 0, 2))
        >>> contracted_first("abc,cde->abde")
        ('abc,cde->abde', None)
    """
    inputs, output = equation.replace(" ", "").split("->")
    source, kernel = inputs.split(",")
    if "." in kernel:
        return equation, None
    order = sorted(range(len(kernel)), key=lambda i: kernel[i] in output)  # stable: contracted first
    if order == list(range(len(kernel))):
        return equation, None
    return f"{source},{''.join(kernel[i] for i in order)}->{output}", tuple(order)


def _einsum_dense(layer, inputs, w):
    equation, perm = contracted_first(layer.equation)
    kernel = w["kernel"] if perm is None else ops.transpose(w["kernel"], perm)
    outputs = ops.einsum(equation, inputs, kernel)
    if w.get("bias") is not None:
        outputs = ops.add(outputs, w["bias"])
    return _activate(layer, outputs)


def _embedding(layer, inputs, w):
    if inputs.dtype not in ("int32", "int64"):
        inputs = ops.cast(inputs, "int32")
    return ops.cast(ops.take(w["embeddings"], inputs, axis=0), layer.compute_dtype)


def _reversible_embedding(layer, inputs, w, reverse=False):
    """KerasHub's `ReversibleEmbedding`: a lookup, or with `reverse=True` the logits of the language
    model head (a matmul with the transposed embeddings, or with `reverse_embeddings` when untied)."""
    if not reverse:
        return _embedding(layer, inputs, w)
    kernel = ops.transpose(w["embeddings"]) if layer.tie_weights else w["reverse_embeddings"]
    if layer.reverse_dtype is not None:
        inputs, kernel = ops.cast(inputs, layer.reverse_dtype), ops.cast(kernel, layer.reverse_dtype)
    logits = ops.matmul(inputs, kernel)
    if layer.logit_soft_cap is not None:
        logits = ops.multiply(ops.tanh(ops.divide(logits, layer.logit_soft_cap)), layer.logit_soft_cap)
    return logits


def _declared_call(layer, inputs, w, *args, **kwargs):
    """A layer that opts in computes with the weights it is given (`call_with_weights`)."""
    return layer.call_with_weights(inputs, w, *args, **kwargs)


class CompressibleLayerSpec:
    """How one Keras layer class exposes its compressible weights.

    Args:
        weights: names of the weight attributes that compression may transform
            (the main weights: kernels, embeddings).
        channel_axes: for each weight, the axis that indexes output channels
            (per-channel quantization axis, filter-pruning axis).
        call: function `(layer, inputs, weights_dict) -> outputs` that reproduces
            the layer's `call` with the given weight tensors.
        kind: "conv", "depthwise", "separable", "conv_transpose", "dense",
            "einsum_dense", "embedding", "reversible_embedding" (a lookup whose transpose is a
            language model head) or "custom" (a layer that opts in, see `compressible_spec`).
    """

    def __init__(self, layer_class, weights, channel_axes, call, kind):
        self.layer_class = layer_class
        self.weights = tuple(weights)
        self.channel_axes = dict(zip(weights, channel_axes))
        self.call = call
        self.kind = kind


L = keras.layers
_SPECS = [
    *(CompressibleLayerSpec(c, ["kernel"], [-1], _conv, "conv") for c in (L.Conv1D, L.Conv2D, L.Conv3D)),
    *(
        CompressibleLayerSpec(c, ["kernel"], [-2], _depthwise_conv, "depthwise")
        for c in (L.DepthwiseConv1D, L.DepthwiseConv2D)
    ),
    *(
        CompressibleLayerSpec(
            c, ["depthwise_kernel", "pointwise_kernel"], [-2, -1], _separable_conv, "separable"
        )
        for c in (L.SeparableConv1D, L.SeparableConv2D)
    ),
    *(
        CompressibleLayerSpec(c, ["kernel"], [-2], _conv_transpose, "conv_transpose")
        for c in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    ),
    CompressibleLayerSpec(L.Dense, ["kernel"], [-1], _dense, "dense"),
    CompressibleLayerSpec(L.EinsumDense, ["kernel"], [-1], _einsum_dense, "einsum_dense"),
    CompressibleLayerSpec(L.Embedding, ["embeddings"], [-1], _embedding, "embedding"),
]
del L

#: Keras layers with weights that compression leaves alone by design: not listed as "skipped".
UNCOMPRESSED_BY_DESIGN = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
    keras.layers.Rescaling,
)


def uncompressed_by_design(layer):
    """Whether `layer` has weights but nothing an algorithm compresses, so it is not listed as skipped.

    Keras' normalization layers, and any layer whose weights are all vectors or scalars: the gain of
    an RMS norm (KerasHub writes one per family), a per-channel scale, clipping bounds. Weight
    quantization, sparsity and pruning act on kernels (a weight with two axes or more), as NNCF's
    and Keras' own quantization do; a layer with a kernel of its own is listed, with how to opt it in.

    Example:
        >>> uncompressed_by_design(keras.layers.LayerNormalization()), uncompressed_by_design(keras.layers.Dense(2))
        (True, False)
    """
    if isinstance(layer, UNCOMPRESSED_BY_DESIGN):
        return True
    weights = getattr(layer, "weights", None) or []
    return compressible_spec(layer) is None and bool(weights) and all(len(w.shape) <= 1 for w in weights)


#: Supported layer class -> its spec. Subclasses that keep the parent's `call` are supported too.
COMPRESSIBLE_LAYERS = {spec.layer_class: spec for spec in _SPECS}


def _reversible_weights(layer):
    """The embeddings, quantized per vocabulary row (the output units of the head); an untied head's own kernel."""
    return {"embeddings": 0, **({} if layer.tie_weights else {"reverse_embeddings": -1})}

#: Layers of other libraries, by their public import path, with what `register_compressible` takes:
#: registered on first use when that library has been imported (keras_compress does not import it).
_LIBRARY_LAYERS = {
    # KerasHub's own before Keras 3.12 had one (since then a subclass of Keras').
    "keras_hub.layers.ReversibleEmbedding": (_reversible_weights, _reversible_embedding, "reversible_embedding"),
}


def register_compressible(layer_class, weights, call, kind="custom"):
    """Makes a layer class compressible: its weights are quantized, sparsified, ... by every algorithm.

    For a class you cannot change (a library's). A class of your own can instead define the two
    methods of the opt-in protocol (see `compressible_spec`).

    Args:
        layer_class: the Keras layer class (its subclasses that keep its `call` are included).
        weights: `{weight attribute: output-channel axis}` of the weights to compress, or a function of
            a layer returning it (when it depends on the layer's config); the axis indexes what a
            per-channel quantizer keeps one range for (the output units).
        call: `(layer, inputs, weights, *args, **kwargs) -> outputs`: the layer's computation with
            `weights` (a dict of tensors) in place of its own; other arguments are the call's.
        kind: "custom", or a built-in kind whose rules the layer follows (see `CompressibleLayerSpec`).

    Example:
        ```python
        kc.register_compressible(MyDense, {"kernel": -1},
                                 lambda layer, x, w: keras.ops.matmul(x, w["kernel"]) + layer.bias)
        ```
    """
    COMPRESSIBLE_LAYERS[layer_class] = _DynamicSpec(layer_class, weights, call, kind)


class _DynamicSpec(CompressibleLayerSpec):
    """A spec whose weights may depend on the layer (`register_compressible`, the opt-in protocol)."""

    def __init__(self, layer_class, weights, call, kind):
        self.layer_class, self.call, self.kind = layer_class, call, kind
        self._weights = weights
        self.weights, self.channel_axes = (), {}

    def of(self, layer):
        weights = self._weights(layer) if callable(self._weights) else self._weights
        spec = CompressibleLayerSpec(self.layer_class, list(weights), list(weights.values()), self.call, self.kind)
        return spec


if hasattr(keras.layers, "ReversibleEmbedding"):
    register_compressible(keras.layers.ReversibleEmbedding, _reversible_weights, _reversible_embedding,
                          "reversible_embedding")  # fmt: skip


def _register_library_layers():
    import sys

    for path, (weights, call, kind) in list(_LIBRARY_LAYERS.items()):
        module, name = path.rsplit(".", 1)
        if module.split(".")[0] in sys.modules:
            layer_class = getattr(__import__(module, fromlist=[name]), name)
            # Not when it is a subclass of a registered class that keeps its `call` (already covered).
            if not any(issubclass(layer_class, known) and layer_class.call is known.call for known in COMPRESSIBLE_LAYERS):
                register_compressible(layer_class, weights, call, kind)
            del _LIBRARY_LAYERS[path]


def compressible_spec(layer):
    """Returns the `CompressibleLayerSpec` of `layer`, or None when it is not supported.

    A subclass of a supported class counts only when it does not override `call`
    (its computation would otherwise differ from what the wrapper reproduces).

    A layer of the user's that does its own math with its own weights opts in with two methods:
    `compressible_weights()` returns `{weight attribute: output-channel axis}`, and
    `call_with_weights(inputs, weights, *args, **kwargs)` computes the layer's output with the given
    weight tensors (its `call` then is `return self.call_with_weights(inputs, {"kernel": self.kernel})`).
    Its weights are then quantized per output channel, sparsified and mixed-precision'ed like a
    Dense layer's (filter pruning leaves it: its channel layout is its own).
    """
    if callable(getattr(type(layer), "compressible_weights", None)) and callable(
        getattr(type(layer), "call_with_weights", None)
    ):
        weights = layer.compressible_weights()
        return CompressibleLayerSpec(type(layer), list(weights), list(weights.values()), _declared_call, "custom")
    if _LIBRARY_LAYERS:
        _register_library_layers()
    for cls in type(layer).__mro__:
        spec = COMPRESSIBLE_LAYERS.get(cls)
        if spec is not None:
            if type(layer).call is not cls.call:
                return None
            return spec.of(layer) if isinstance(spec, _DynamicSpec) else spec
    return None


def weight_channel_axes(layer, attr):
    """The output-channel axes of one weight of `layer`: an int, or a tuple of axes.

    Most kernels have one output-channel axis (`CompressibleLayerSpec.channel_axes`). An EinsumDense
    kernel has one per letter of its equation's kernel term that reaches the output: the query
    projection of MultiHeadAttention, `"abc,cde->abde"`, has a `(C, heads, key_dim)` kernel with
    output channels on axes (1, 2). OpenVINO's CPU plugin refused (could not compile) such a kernel
    quantized per channel on one of the two axes; with one range per (head, unit) pair it runs the
    projection as an int8 FullyConnected (OpenVINO 2026.4).

    Example:
        >>> layer = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 4, 8))
        >>> weight_channel_axes(layer, "kernel")
        (1, 2)
    """
    spec = compressible_spec(layer)
    if spec is not None and spec.kind == "einsum_dense" and attr == "kernel":
        inputs, output = layer.equation.replace(" ", "").split("->")
        kernel = inputs.split(",")[1]
        if "." not in kernel:
            axes = tuple(i for i, letter in enumerate(kernel) if letter in output)
            if axes:
                return axes[0] if len(axes) == 1 else axes
    return spec.channel_axes[attr]


#: Why a Lambda layer is listed in `ctrl.statistics().skipped()` (it has no weights to compress,
#: but its Python function may compute what the user meant to compress).
LAMBDA_REASON = "Lambda layer: its Python function is left as it is (not quantized or sparsified)"


def unsupported_reason(layer):
    """Why a layer with weights cannot be compressed, or None when it can."""
    spec = compressible_spec(layer)
    if spec is not None:
        if getattr(layer, "lora_enabled", False):
            return "LoRA-enabled layers are not supported"
        if getattr(layer, "quantization_mode", None):
            return f"already quantized by Keras (mode {layer.quantization_mode!r})"
        return None
    for cls in type(layer).__mro__:
        if cls in COMPRESSIBLE_LAYERS:
            return f"subclass of {cls.__name__} that overrides call()"
    if is_own_math(layer):
        return (
            f"layer type {type(layer).__name__} computes with weights of its own: it runs in float "
            "(opt it in with `compressible_weights()` and `call_with_weights()`, see docs/custom_layers.md)"
        )
    return f"layer type {type(layer).__name__} is not supported"


def is_own_math(layer):
    """Whether a layer not of Keras' own does its math with weights it created (`add_weight`)."""
    module = type(layer).__module__ or ""
    return bool(layer.weights) and not (module == "keras" or module.startswith("keras."))


def call_with_weights(layer, inputs, weights, hooks=None, *args, **kwargs):
    """Runs `layer`'s computation on `inputs` with `weights` replacing its own.

    Args:
        layer: a built layer of a supported class.
        inputs: the layer's input tensor.
        weights: dict from weight attribute name ("kernel", "bias", ...) to tensor.
            Missing entries are read from the layer.
        hooks: optional functions applied to intermediate tensors of the computation, by name:
            `"between"` for a separable convolution (on the depthwise output, before the
            pointwise convolution). Other kinds of layers have no intermediate tensor.
        *args, **kwargs: the call's other arguments (`reverse=True` of a reversible embedding).

    Returns:
        The layer's output tensor.
    """
    spec = compressible_spec(layer)
    full = {name: getattr(layer, name) for name in spec.weights}
    if spec.kind != "custom":
        full["bias"] = getattr(layer, "bias", None)
    full.update(weights)
    if hooks and spec.kind == "separable":
        return spec.call(layer, inputs, full, **hooks)
    return spec.call(layer, inputs, full, *args, **kwargs)
