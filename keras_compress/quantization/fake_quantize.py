"""FakeQuantize: the activation quantizer layer inserted into the model graph."""

from __future__ import annotations

import keras

from keras_compress.base_layer import CompressionLayer
from keras_compress.quantization.quantizers import Quantizer, QuantizerSpec

__all__ = ["FakeQuantize"]


@keras.saving.register_keras_serializable(package="keras_compress")
class FakeQuantize(CompressionLayer, keras.layers.Layer):
    """Per-tensor fake quantization of activations with a learned range.

    One instance may be called on several tensors (the inputs of an `Add` or `Concatenate`):
    they then share one range, which lets OpenVINO run the element-wise op on integers.

    Args:
        mode: "symmetric" or "asymmetric".
        bits: bit width, 2 to 8.
        signed: force signedness (True/False) or None to decide it at range init.
        narrow_range: use 2**bits - 1 levels.
        frozen_range: a trained quantizer's range as constants (`Quantizer.frozen()`): the layer of
            an inference model (`strip`), with no variables.
        **kwargs: base layer arguments.

    Example:
        >>> fq = FakeQuantize(bits=8, signed=False)
        >>> y = fq(keras.ops.ones((2, 3)))
        >>> tuple(y.shape)
        (2, 3)
    """

    #: What the layer is to the graph analysis (`keras_compress.graph.node_role`): one value from one
    #: value, so pruning passes channels through it.
    compression_role = "activation"

    def __init__(self, mode="symmetric", bits=8, signed=None, narrow_range=False, frozen_range=None, **kwargs):
        super().__init__(**kwargs)
        # Element-wise: a mask on the input (`Embedding(mask_zero=True)`, the masked softmax of
        # KerasHub's attention) is the output's mask, as for Keras' own activation layers.
        self.supports_masking = True
        self.frozen_range = frozen_range
        self.quantizer = Quantizer(
            QuantizerSpec(mode=mode, bits=bits, signed=signed, narrow_range=narrow_range)
        )
        # Range-init and BN-adaptation hooks (not serialized): a callable that receives the
        # input in eager mode, and a switch that makes the layer pass its input through.
        self.observer = None
        self.enabled = True

    @property
    def spec(self):
        return self.quantizer.spec

    def build(self, input_shape=None):
        self.quantizer.build(self, name="activation", constants=self.frozen_range)
        self.built = True

    def strip(self):
        """The same quantizer with its range as constants: no variables in an inference model.

        Every quantizer holds two variables; the exported SavedModel stores each twice, and
        OpenVINO's TensorFlow frontend crashed (SIGSEGV, OpenVINO 2026.4) reading a SavedModel
        whose variable index outgrew one 256 KiB block, about 2,400 variables: NASNetMobile with
        8-bit quantizers had 2,604. With constant ranges its SavedModel has the FP32 model's 1,126.
        """
        if self.frozen_range is not None:
            return self
        config = {**self.get_config(), "frozen_range": self.quantizer.frozen()}
        stripped = FakeQuantize.from_config(config)
        stripped.build()
        return stripped

    def call(self, inputs):
        if self.observer is not None:
            self.observer(inputs)
        if not self.enabled:
            return inputs
        return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        spec = self.spec
        config = {
            "mode": spec.mode,
            "bits": spec.bits,
            "signed": spec.signed,
            "narrow_range": spec.narrow_range,
            "frozen_range": self.frozen_range,
        }
        return {**super().get_config(), **config}
