"""Quantization-aware training: quantizers, the layers that hold them, placement, range init, mixed precision.

- `quantizers`: `QuantizerSpec` and `Quantizer` (range variables on a host layer, fake-quant ops);
- `fake_quantize`: `FakeQuantize`, the activation quantizer layer inserted into the graph;
- `quantize_wrapper`: `QuantizeWrapper`, which fake-quantizes a layer's weights;
- `placement`: where activation quantizers go (a pure function of the graph);
- `range_init`: `RangeCollector` (NNCF's range initializers);
- `precision`: mixed precision (HAWQ sensitivity, bit budget);
- `algorithm`: `QuantizationAlgorithm`, which ties them together.
"""

from keras_compress.quantization.algorithm import QuantizationAlgorithm
from keras_compress.quantization.fake_quantize import FakeQuantize
from keras_compress.quantization.quantize_wrapper import QuantizeWrapper
from keras_compress.quantization.quantizers import Quantizer, QuantizerSpec

__all__ = [
    "FakeQuantize",
    "QuantizationAlgorithm",
    "QuantizeWrapper",
    "Quantizer",
    "QuantizerSpec",
]
