"""Matmuls a layer computes itself: seen while its graph is recorded, given input layers at run time.

Attention written as a composite layer (KerasHub's Llama and Gemma attention, a user's block) calls
`keras.ops.einsum` / `keras.ops.matmul` between two activations in its own `call()`: no sublayer
shows those matmuls, yet OpenVINO runs them in int8 only when both inputs are quantized. While a
container's graph is recorded and while a compressed container runs, those two public functions are
replaced by versions that hand a call to the container that made it (the `self` of the calling
method): when recording, it becomes a node of the container's graph (role "matmul"); when running
compressed, the container's layers for that node's inputs (activation quantizers) are applied to the
operands. Calls from anywhere else, sublayers included, run unchanged.

`keras.ops.dot_product_attention` called by a container is computed as its two einsums, both
intercepted (`attention_by_einsums`).

`keras.layers.MultiHeadAttention` computes its matmuls with Keras' own internal ops: it (and a subclass
of it, KerasHub's `CachedMultiHeadAttention`) gets `attention_with_public_ops` as its
`_compute_attention` (the method Keras documents for overriding), the same computation with the public
ops; its projections, softmax and dropout are sublayers, compressed as any composite layer's.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import string
import threading

import keras
from keras import ops

__all__ = [
    "INTERCEPTED",
    "OperationNode",
    "applying",
    "attention_by_einsums",
    "attention_equations",
    "attention_with_public_ops",
    "has_private_attention",
    "intercepting",
]

#: The `keras.ops` functions whose calls between two activations a container's graph shows
#: (`dot_product_attention` as its two einsums: `attention_by_einsums`).
INTERCEPTED = ("einsum", "matmul", "dot_product_attention")

_lock = threading.Lock()
_active = [0]  # how many `intercepting` blocks are open (the replacements are installed while > 0)
_originals = {}
_handlers = {}  # id(layer) -> handler(name, original, operands, call)


class OperationNode:
    """A matmul between activations in a container's `call()`, as a node of its recorded graph."""

    #: What the node is to compression (`keras_compress.graph.node_role`).
    compression_role = "matmul"

    def __init__(self, name, index):
        self.name = name
        self.index = index  # the how-manieth intercepted call of the container's call it is
        self.weights = []


def _operands(name, args):
    """The positions in `args` of the two operands of an intercepted call."""
    return (1, 2) if name == "einsum" else (0, 1)


def _replacement(name):
    original = _originals[name]

    def call(*args, **kwargs):
        caller = inspect.currentframe().f_back
        owner = caller.f_locals.get("self") if caller is not None else None
        handler = _handlers.get(id(owner)) if owner is not None else None
        if name == "dot_product_attention":
            if handler is None or kwargs.get("flash_attention") or kwargs.get("attn_logits_soft_cap") is not None:
                return original(*args, **kwargs)
            return attention_by_einsums(functools.partial(_handled_einsum, handler), *args, **kwargs)
        positions = _operands(name, args)
        if handler is None or len(args) <= positions[1] or not all(_is_activation(args[p]) for p in positions):
            return original(*args, **kwargs)
        return handler(name, original, args, kwargs, positions)

    call.__wrapped__ = original
    return call


def _handled_einsum(handler, equation, a, b):
    """`keras.ops.einsum(equation, a, b)` as an intercepted call of the container `handler` is for."""
    args = (equation, a, b)
    if not (_is_activation(a) and _is_activation(b)):
        return _originals["einsum"](*args)
    return handler("einsum", _originals["einsum"], args, {}, (1, 2))


def attention_by_einsums(einsum, query, key, value, bias=None, mask=None, scale=None, is_causal=False, **unused):
    """`keras.ops.dot_product_attention` computed with `einsum(equation, a, b)` for its two matmuls.

    A container that calls `keras.ops.dot_product_attention` (KerasHub's ESM, and the attention of
    several families when flash attention is on) hides both matmuls in one op; while its graph is
    recorded and while its compressed copy runs, the call is computed as Keras' TensorFlow backend
    computes it (grouped key/value heads repeated, the scores scaled by `scale` or `1 / sqrt(head
    size)`, bias, boolean mask and causal mask, softmax in float32), its matmuls as two intercepted
    einsums with the query first (MatMul -> Softmax -> MatMul, the pattern OpenVINO fuses), so both
    get their operands quantized. Inputs `(batch, length, heads, head size)`.
    """
    query, key, value = (ops.convert_to_tensor(t) for t in (query, key, value))
    dtype = keras.backend.result_type(query.dtype, key.dtype, value.dtype)
    query, key, value = (ops.cast(t, dtype) for t in (query, key, value))
    heads, kv_heads = query.shape[2], key.shape[2]
    if heads is not None and kv_heads is not None and heads > kv_heads and heads % kv_heads == 0:
        key = ops.repeat(key, heads // kv_heads, axis=2)
        value = ops.repeat(value, heads // kv_heads, axis=2)
    logits_dtype = keras.backend.result_type(dtype, "float32")
    if scale is None:
        scale = 1.0 / math.sqrt(float(key.shape[-1]))
    logits = ops.cast(einsum("btnh,bsnh->bnts", query, key), logits_dtype)
    logits = ops.multiply(logits, ops.cast(scale, logits_dtype))
    if bias is not None:
        logits = ops.add(logits, ops.cast(bias, logits_dtype))
    if mask is not None or is_causal:
        keep = ops.ones_like(logits, dtype="bool")
        if mask is not None:
            keep = ops.logical_and(keep, ops.cast(mask, "bool"))
        if is_causal:
            ones = ops.ones((ops.shape(logits)[2], ops.shape(logits)[3]), dtype="int32")
            causal = ops.greater_equal(ops.cumsum(ones, axis=0), ops.cumsum(ones, axis=1))
            keep = ops.logical_and(keep, causal[None, None])
        large = (65500.0 if keras.backend.standardize_dtype(logits_dtype) == "float16" else 3.38953e38) * -0.7
        logits = ops.where(keep, logits, ops.cast(large, logits_dtype))
    probabilities = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), key.dtype)
    return einsum("bnts,bsnh->btnh", probabilities, value)


def _is_activation(x):
    return keras.ops.is_tensor(x) and not isinstance(x, keras.Variable)


def _modules():
    """The public `keras.ops` modules an intercepted function is called through."""
    return (keras.ops, keras.ops.numpy, keras.ops.nn)


@contextlib.contextmanager
def intercepting(layer, handler):
    """While open, the intercepted `keras.ops` calls made by `layer`'s own methods go to `handler`.

    Args:
        layer: the container.
        handler: `(name, original, args, kwargs, positions) -> result`, where `original` is the
            `keras.ops` function and `positions` the indices in `args` of its two operands.
    """
    with _lock:
        if _active[0] == 0:
            for name in INTERCEPTED:
                _originals[name] = getattr(keras.ops, name)
                replacement = _replacement(name)
                for module in _modules():  # `ops.einsum`, `ops.numpy.einsum`, `ops.nn.dot_product_attention`
                    if getattr(module, name, None) is _originals[name]:
                        setattr(module, name, replacement)
        _active[0] += 1
        previous = _handlers.get(id(layer))
        _handlers[id(layer)] = handler
    try:
        yield
    finally:
        with _lock:
            if previous is None:
                _handlers.pop(id(layer), None)
            else:
                _handlers[id(layer)] = previous
            _active[0] -= 1
            if _active[0] == 0:
                for name in INTERCEPTED:
                    original = _originals.pop(name)
                    for module in _modules():
                        if getattr(getattr(module, name, None), "__wrapped__", None) is original:
                            setattr(module, name, original)


def attention_equations(rank, attention_axes):
    """The two einsum equations of multi-head attention over projected tensors of rank `rank`.

    The same equations as Keras' MultiHeadAttention builds: the query-key product
    `(<batch>, <key attention dims>, heads, channels), (<batch>, <query attention dims>, heads,
    channels) -> (<batch>, heads, <query dims>, <key dims>)` and the combination of the
    probabilities with the values.

    Args:
        rank: rank of the projected query/key/value tensors (4 for `(B, T, heads, key_dim)`).
        attention_axes: the axes attention runs over (non-negative).

    Returns:
        `(dot_product_equation, combine_equation, scores_rank)`.

    Example:
        >>> attention_equations(4, (1,))
        ('aecd,abcd->acbe', 'acbe,aecd->abcd', 4)
    """
    letters = string.ascii_lowercase
    target = letters[:rank]
    batch_dims = [i for i in range(rank) if i not in attention_axes and i != rank - 1]
    offset = rank
    source = ""
    for i in range(rank):
        if i in batch_dims or i == rank - 1:
            source += target[i]
        else:
            source += letters[offset]
            offset += 1
    product = "".join(
        [target[i] for i in batch_dims] + [target[i] for i in attention_axes] + [source[i] for i in attention_axes]
    )
    return f"{source},{target}->{product}", f"{product},{source}->{target}", len(product)


def attention_with_public_ops(
    self,
    query,
    key,
    value,
    attention_mask=None,
    training=None,
    return_attention_scores=False,
    use_causal_mask=False,
):
    """`MultiHeadAttention._compute_attention` written with the public `keras.ops`.

    What Keras computes on every path, up to float rounding: the projected query scaled by
    `1 / sqrt(key_dim)`, the scores, Keras' masked softmax (a query row that sees no key: zero where
    Keras takes its masked-softmax path, spread evenly where it takes `dot_product_attention`), the
    layer's dropout, and the probabilities times the values. With one attention axis the query comes
    first (`btnh,bsnh->bnts`): TensorFlow then emits MatMul -> Softmax -> MatMul, which OpenVINO's CPU
    plugin fuses into one int8 attention kernel; its two matmuls are intercepted (the module doc).
    """
    rank = len(query.shape)
    axes = self.attention_axes
    axes = tuple(range(1, rank - 2)) if axes is None else tuple(a % rank for a in axes)
    dot_equation, combine_equation, scores_rank = attention_equations(rank, axes)
    query_first = rank == 4 and axes == (1,)
    if query_first:
        dot_equation, combine_equation = "btnh,bsnh->bnts", "bnts,bsnh->btnh"
    query = ops.multiply(query, ops.cast(1.0 / math.sqrt(float(self.key_dim)), query.dtype))
    scores = ops.einsum(dot_equation, query, key) if query_first else ops.einsum(dot_equation, key, query)
    if attention_mask is None and use_causal_mask:
        ones = ops.ones((ops.shape(query)[1], ops.shape(key)[1]), dtype="int32")
        attention_mask = ops.expand_dims(ops.greater_equal(ops.cumsum(ones, axis=0), ops.cumsum(ones, axis=1)), 0)
    norm_axes = tuple(range(scores_rank - len(axes), scores_rank))
    mask = None
    if attention_mask is not None:
        mask = ops.cast(attention_mask, scores.dtype)
        for _ in range(len(scores.shape) - len(mask.shape)):
            mask = ops.expand_dims(mask, axis=-len(axes) * 2 - 1)
        scores = ops.add(scores, ops.multiply(ops.subtract(1.0, mask), ops.cast(-1e9, scores.dtype)))
    if len(norm_axes) == 1:  # one Softmax op
        probabilities = ops.softmax(scores, axis=norm_axes[0])
    else:
        probabilities = ops.exp(ops.subtract(scores, ops.logsumexp(scores, axis=norm_axes, keepdims=True)))
    masked_softmax_path = self.dropout > 0 or return_attention_scores or rank != 4
    if mask is not None and masked_softmax_path:
        probabilities = ops.multiply(probabilities, mask)
    dropped = self._dropout_layer(probabilities, training=training) if self.dropout > 0 else probabilities
    return ops.einsum(combine_equation, dropped, value), probabilities


def has_private_attention(cls):
    """Whether layer class `cls` is Keras' MultiHeadAttention or a subclass that keeps its
    `_compute_attention` (whose matmuls use Keras' internal ops: it gets `attention_with_public_ops`)."""
    mha = keras.layers.MultiHeadAttention
    return issubclass(cls, mha) and getattr(cls, "_compute_attention", None) is mha._compute_attention


@contextlib.contextmanager
def applying(layer, operation_layers):
    """While open, the k-th intercepted call made by `layer`'s own methods has its operands passed
    through `operation_layers["<k>_<operand>"]` (operand 0 or 1) when there is one.

    Args:
        layer: the container.
        operation_layers: `{"k_i": layer}`.
    """
    count = [0]

    def handler(name, original, args, kwargs, positions):
        index = count[0]
        count[0] += 1
        args = list(args)
        for operand, position in enumerate(positions):
            inner = operation_layers.get(f"{index}_{operand}")
            if inner is not None:
                args[position] = inner(args[position])
        return original(*args, **kwargs)

    with intercepting(layer, handler):
        yield
