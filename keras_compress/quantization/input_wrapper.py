"""InputQuantizeWrapper: quantizes a layer's inputs where the model has no graph to insert quantizers in."""

from __future__ import annotations

import keras

from keras_compress.quantization.fake_quantize import FakeQuantize

__all__ = ["InputQuantizeWrapper"]


def _num_inputs(input_shape):
    """How many tensors a layer receives, from the shape(s) Keras passes to `build`."""
    if isinstance(input_shape, dict):
        return len(input_shape)
    if isinstance(input_shape, (list, tuple)) and input_shape and all(
        isinstance(s, (list, tuple)) or s is None for s in input_shape
    ) and any(isinstance(s, (list, tuple)) for s in input_shape):
        return len(input_shape)
    return 1


@keras.saving.register_keras_serializable(package="keras_compress")
class InputQuantizeWrapper(keras.layers.Wrapper):
    """Fake-quantizes the input tensor(s) of a layer, then calls it.

    In a Functional model activation quantizers are layers on the graph's edges, placed by
    `placement.plan_activation_quantizers`; a subclassed model has no graph, so the layers that
    would get input quantizers (weight-quantized layers, merges, average pooling) carry their own:
    one `FakeQuantize` per input tensor, or one for all of them with `unified` (Concatenate).

    Args:
        layer: the layer whose inputs to quantize (possibly a `QuantizeWrapper`).
        quantizer: `FakeQuantize` arguments (`mode`, `bits`, `signed`).
        unified: one quantizer (one range) for all input tensors.
        frozen_ranges: one `Quantizer.frozen()` per input quantizer: constant ranges, no variables
            (the wrapper of an inference model, see `strip`).
        **kwargs: base layer arguments.

    Example:
        >>> wrapped = InputQuantizeWrapper(keras.layers.Dense(4), {"bits": 8})
        >>> tuple(wrapped(keras.ops.ones((2, 3))).shape)
        (2, 4)
    """

    def __init__(self, layer, quantizer=None, unified=False, frozen_ranges=None, **kwargs):
        kwargs.setdefault("name", f"{layer.name}_inputs")
        super().__init__(layer, **kwargs)
        self.quantizer = dict(quantizer or {})
        self.unified = bool(unified)
        self.frozen_ranges = None if frozen_ranges is None else list(frozen_ranges)
        self.input_quantizers = []

    def build(self, input_shape=None):
        count = 1 if self.unified else _num_inputs(input_shape)
        if self.frozen_ranges is not None:
            count = len(self.frozen_ranges)
        base = self.layer.name
        self.input_quantizers = [
            FakeQuantize(
                **self.quantizer,
                frozen_range=None if self.frozen_ranges is None else self.frozen_ranges[i],
                name=f"{base}_input_quantizer" + (f"_{i}" if count > 1 else ""),
            )
            for i in range(count)
        ]
        for quantizer in self.input_quantizers:
            quantizer.build()
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, *args, **kwargs):
        flat = keras.tree.flatten(inputs)
        quantized = [
            self.input_quantizers[0 if self.unified else i](x) if "float" in str(x.dtype) else x
            for i, x in enumerate(flat)
        ]
        return self.layer(keras.tree.pack_sequence_as(inputs, quantized), *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def strip(self):
        """The wrapper of an inference model around its stripped layer: the input quantizers stay (they
        are the INT8 recipe), with their ranges frozen into constants."""
        inner = self.layer.strip() if hasattr(self.layer, "strip") else self.layer
        if inner is self.layer and self.frozen_ranges is not None:
            return self
        frozen = self.frozen_ranges or [q.quantizer.frozen() for q in self.input_quantizers]
        new = InputQuantizeWrapper(inner, self.quantizer, self.unified, frozen_ranges=frozen, name=self.name)
        new.build()
        return new

    def get_config(self):
        return {
            **super().get_config(),
            "quantizer": self.quantizer,
            "unified": self.unified,
            "frozen_ranges": self.frozen_ranges,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = config.copy()
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)
