"""AttentionQuantizeWrapper: MultiHeadAttention with its projections and attention matmuls quantized.

`keras.layers.MultiHeadAttention` hides four EinsumDense projections and two matmuls inside its
`call`. The wrapper runs the same computation with public `keras.ops` (the layer's own sublayers
through `call_with_weights`, the attention equations rebuilt from its config) and puts quantizers
where OpenVINO's CPU plugin needs them to run every one of those six ops in int8:

- the query/key/value/output kernels: per-channel symmetric, one range per output unit (per
  head and unit of the `(C, heads, key_dim)` kernels, see `weight_channel_axes`);
- the inputs of the projections (the layer's query, value and key inputs) and of the output
  projection (the attention context);
- both inputs of the two attention matmuls: the scaled query and the key (`Q K^T`), the softmax
  output and the value (`P V`). The second input of each matmul is signed (OpenVINO's rule, see
  `placement.py`); the softmax output is unsigned, so `P V` runs u8 x i8.

Measured on a BERT-style encoder (2 blocks, 64 tokens, width 128; OpenVINO 2026.4, batch 1, this
2-core machine): NNCF's post-training `model_type=TRANSFORMER` preset leaves `P V` (and, on
Keras' dot-product-attention path, `Q K^T` too) in bf16/f32; with this placement all 19
MatMul/FullyConnected ops ran u8/i8 (see benchmarks/transformers.py for the latency).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from keras_compress.base_layer import CompressionLayer
from keras_compress.compressible import attention_reason, call_with_weights, weight_channel_axes
from keras_compress.operations import attention_equations
from keras_compress.quantization.fake_quantize import FakeQuantize
from keras_compress.quantization.quantizers import Quantizer, QuantizerSpec

__all__ = ["AttentionQuantizeWrapper", "PROJECTIONS", "attention_equations", "projection_layers"]

#: The projections of a MultiHeadAttention layer, by the names the wrapper gives their kernels.
PROJECTIONS = ("query", "key", "value", "output")


def projection_layers(layer):
    """`{name: EinsumDense}` of a built MultiHeadAttention layer (its public properties)."""
    return {
        "query": layer.query_dense,
        "key": layer.key_dense,
        "value": layer.value_dense,
        "output": layer.output_dense,
    }


#: The activation quantizers inside the wrapper: `(name, forced sign)`. None lets range init decide.
_ACTIVATIONS = (
    ("query_input", None),
    ("value_input", None),
    ("key_input", None),
    ("query", True),  # the scaled query: the second input of Q K^T must be signed
    ("key", True),
    ("probabilities", None),  # the softmax output: unsigned after range init
    ("value", True),  # the second input of P V
    ("context", None),  # the input of the output projection
)


@keras.saving.register_keras_serializable(package="keras_compress")
class AttentionQuantizeWrapper(CompressionLayer, keras.layers.Wrapper):
    """Quantization-aware MultiHeadAttention: quantized projections and attention matmuls.

    Computes what the wrapped `keras.layers.MultiHeadAttention` computes (the same sublayers and
    weights, the same masks), with fake quantization of the four projection kernels and of the
    inputs of all six matmuls. It quantizes its own inputs, so a graph puts no activation
    quantizer in front of it (`placement.SELF_QUANTIZED_ROLES`).

    Args:
        layer: a `keras.layers.MultiHeadAttention` (not a subclass; no `use_gate`, no
            `sliding_window`).
        weight_quantizers: `{projection: QuantizerSpec or its config}` for "query", "key", "value"
            and "output". A per-channel spec without `axis` gets one range per output unit of the
            kernel.
        activation_quantizer: `FakeQuantize` arguments (`mode`, `bits`, `signed`) of the activation
            quantizers, or None to quantize only the weights.
        frozen_ranges: `{"weights": {projection: Quantizer.frozen()}, "activations": {name: ...}}`:
            constant ranges, no variables (the wrapper of an inference model, see `strip`).
        **kwargs: base layer arguments.

    Example:
        >>> spec = {"bits": 8, "per_channel": True, "narrow_range": True}
        >>> wrapper = AttentionQuantizeWrapper(
        ...     keras.layers.MultiHeadAttention(2, 4), {p: spec for p in PROJECTIONS}, {"bits": 8})
        >>> x = keras.ops.ones((1, 3, 8))
        >>> tuple(wrapper(x, x).shape)
        (1, 3, 8)
    """

    #: What the layer is to the graph analysis (`keras_compress.graph.node_role`).
    compression_role = "attention"

    def __init__(self, layer, weight_quantizers, activation_quantizer=None, frozen_ranges=None, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        if not isinstance(layer, keras.layers.MultiHeadAttention):
            raise ValueError(
                f"`layer` must be a keras.layers.MultiHeadAttention. Received: layer={type(layer).__name__}"
            )
        reason = attention_reason(layer)
        if reason is not None:
            raise ValueError(f"`layer` must be a MultiHeadAttention the wrapper reproduces. Received: {reason}")
        unknown = set(weight_quantizers) - set(PROJECTIONS)
        if unknown:
            raise ValueError(
                f"`weight_quantizers` keys must be projections {list(PROJECTIONS)}. Received: {sorted(unknown)}"
            )
        self.weight_specs = {
            name: spec.to_config() if isinstance(spec, QuantizerSpec) else dict(spec)
            for name, spec in weight_quantizers.items()
        }
        self.activation_quantizer = None if activation_quantizer is None else dict(activation_quantizer)
        self.frozen_ranges = frozen_ranges
        self.quantizers = {}
        self.supports_masking = True

    # ----------------------------------------------------------------- build
    def build(self, query_shape, value_shape, key_shape=None):
        self.build_shapes = (query_shape, value_shape, key_shape)
        if not self.layer.built:
            self.layer.build(query_shape, value_shape, key_shape)
        projections = projection_layers(self.layer)
        for name, config in self.weight_specs.items():
            config = dict(config)
            if config.get("per_channel") and config.get("axis") is None:
                config["axis"] = weight_channel_axes(projections[name], "kernel")
            quantizer = Quantizer(QuantizerSpec(**config))
            constants = None if self.frozen_ranges is None else self.frozen_ranges["weights"][name]
            quantizer.build(self, name=f"{name}_kernel", weight_shape=projections[name].kernel.shape, constants=constants)
            self.quantizers[name] = quantizer
        config = self.layer.get_config()
        self.key_dim = int(config["key_dim"])
        rank = len(query_shape) + 1
        axes = config.get("attention_axes")
        axes = tuple(range(1, rank - 2)) if axes is None else tuple(a if a >= 0 else rank - 1 + a for a in axes)
        self.attention_axes = axes
        self.dot_equation, self.combine_equation, scores_rank = attention_equations(rank, axes)
        # One attention axis (`(B, T, heads, key_dim)` tensors): the query first, in the layout of
        # `keras.ops.dot_product_attention`. TensorFlow then emits MatMul(transpose_b) -> Softmax ->
        # MatMul, which OpenVINO's CPU plugin fuses into one int8 MHA kernel (see the module doc).
        self.query_first = rank == 4 and axes == (1,)
        if self.query_first:
            self.dot_equation, self.combine_equation = "btnh,bsnh->bnts", "bnts,bsnh->btnh"
        self.softmax = keras.layers.Softmax(axis=tuple(range(scores_rank - len(axes), scores_rank)))
        self.dropout = keras.layers.Dropout(config.get("dropout", 0.0), seed=config.get("seed"))
        self.activation_quantizers = {}
        if self.activation_quantizer is not None:
            for name, sign in _ACTIVATIONS:
                if name == "key_input" and key_shape is None:
                    continue  # the key is the value
                settings = dict(self.activation_quantizer)
                if sign is not None and settings.get("signed") is None:
                    settings["signed"] = sign
                if self.frozen_ranges is not None:
                    settings["frozen_range"] = self.frozen_ranges["activations"][name]
                fq = FakeQuantize(**settings, name=f"{self.name}_{name}_quantizer")
                fq.build()
                self.activation_quantizers[name] = fq
        self.built = True
        if self.frozen_ranges is not None:
            return
        # Layers with no build() of their own around this one build it by tracing its call in a
        # graph; the weight ranges are set from the weights' values outside of it.
        with tf.init_scope():
            self.initialize_ranges_from_weights()

    def _quantize(self, name, x):
        fq = self.activation_quantizers.get(name)
        return x if fq is None else fq(x)

    # ----------------------------------------------------------------- weights
    def quantized_weights(self):
        """`{projection: kernel variable}` of the kernels the weight quantizers act on."""
        return {name: layer.kernel for name, layer in projection_layers(self.layer).items() if name in self.quantizers}

    def initialize_ranges_from_weights(self):
        """Sets each kernel quantizer's range to the per-channel min/max of the current kernel."""
        for name, kernel in self.quantized_weights().items():
            self.quantizers[name].set_range_from_weights(ops.convert_to_numpy(kernel))

    def apply_overflow_fix(self):
        """Bakes half-range quantized kernels into the kernels and widens their quantizers (see
        `QuantizeWrapper.apply_overflow_fix`)."""
        for name, kernel in self.quantized_weights().items():
            quantizer = self.quantizers[name]
            if quantizer.spec.half_range:
                kernel.assign(quantizer(kernel))
                quantizer.apply_overflow_fix()

    def strip(self):
        """The wrapper of an inference model: the overflow fix applied and every range frozen into a
        constant (the fake-quant ops stay: they are the INT8 recipe; see `FakeQuantize.strip`)."""
        if self.frozen_ranges is not None:
            return self
        self.apply_overflow_fix()
        frozen = {
            "weights": {name: q.frozen() for name, q in self.quantizers.items()},
            "activations": {name: fq.quantizer.frozen() for name, fq in self.activation_quantizers.items()},
        }
        specs = {name: q.spec.to_config() for name, q in self.quantizers.items()}
        new = AttentionQuantizeWrapper(
            self.layer, specs, self.activation_quantizer, frozen_ranges=frozen, name=self.name
        )
        new.build(*self.build_shapes)
        return new

    # ----------------------------------------------------------------- call
    def _project(self, name, x):
        layer = projection_layers(self.layer)[name]
        quantizer = self.quantizers.get(name)
        kernel = layer.kernel if quantizer is None else quantizer(layer.kernel)
        return call_with_weights(layer, x, {"kernel": kernel})

    def _attention_mask(self, query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask):
        """The boolean `(B, T, S)` mask MultiHeadAttention computes from its masks (or None)."""
        auto = None
        if query_mask is not None:
            auto = ops.expand_dims(ops.cast(query_mask, "bool"), -1)
        for mask in (value_mask, key_mask):
            if mask is not None:
                mask = ops.expand_dims(ops.cast(mask, "bool"), -2)
                auto = mask if auto is None else ops.logical_and(auto, mask)
        if use_causal_mask:
            ones = ops.ones((1, ops.shape(query)[1], ops.shape(value)[1]), dtype="int32")
            causal = ops.greater_equal(ops.cumsum(ones, axis=-2), ops.cumsum(ones, axis=-1))
            auto = causal if auto is None else ops.logical_and(auto, causal)
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
            return attention_mask if auto is None else ops.logical_and(attention_mask, auto)
        return auto

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if key is None:
            key, key_mask = value, None
            key_input = self._quantize("value_input", value)
            value_input = key_input
        else:
            value_input = self._quantize("value_input", value)
            key_input = self._quantize("key_input" if "key_input" in self.activation_quantizers else "value_input", key)
        mask = self._attention_mask(query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask)
        q = self._project("query", self._quantize("query_input", query))
        k = self._project("key", key_input)
        v = self._project("value", value_input)
        q = ops.multiply(q, ops.cast(1.0 / math.sqrt(float(self.key_dim)), q.dtype))
        k, q = self._quantize("key", k), self._quantize("query", q)
        scores = ops.einsum(self.dot_equation, q, k) if self.query_first else ops.einsum(self.dot_equation, k, q)
        if mask is not None:
            expand = -len(self.attention_axes) * 2 - 1
            for _ in range(len(scores.shape) - len(mask.shape)):
                mask = ops.expand_dims(mask, axis=expand)
            scores = ops.where(mask, scores, ops.cast(-1e9, scores.dtype))
        probabilities = self.softmax(scores)
        if mask is not None and self.dropout.rate > 0:
            # MultiHeadAttention with dropout uses its masked softmax, which zeroes a query row that sees
            # no key; without dropout, `ops.dot_product_attention`, which spreads it evenly.
            probabilities = ops.multiply(probabilities, ops.cast(mask, probabilities.dtype))
        dropped = self.dropout(probabilities, training=training)
        context = ops.einsum(self.combine_equation, self._quantize("probabilities", dropped), self._quantize("value", v))
        output = self._project("output", self._quantize("context", context))
        if return_attention_scores:
            return output, probabilities
        return output

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return self.layer.compute_output_shape(query_shape, value_shape, key_shape)

    # ----------------------------------------------------------------- config
    def get_config(self):
        specs = {name: q.spec.to_config() for name, q in self.quantizers.items()} or self.weight_specs
        config = {
            "weight_quantizers": specs,
            "activation_quantizer": self.activation_quantizer,
            "frozen_ranges": self.frozen_ranges,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = config.copy()
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)

