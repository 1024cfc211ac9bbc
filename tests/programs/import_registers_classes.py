"""`import keras_compress` (the full import) registers every serializable class, for tests/test_cli.py.

Usage: import_registers_classes.py. Prints the registering modules that were not imported (a list) and whether
Keras finds `keras_compress>QuantizeWrapper`.
"""

import sys

import keras_compress

registering = ["keras_compress.pruning.wrapper", "keras_compress.quantization.quantize_wrapper",
               "keras_compress.quantization.fake_quantize", "keras_compress.sparsity.wrappers"]  # fmt: skip
print([m for m in registering if m not in sys.modules])

import keras  # noqa: E402 - after keras_compress: its import alone must register the classes

print(keras.saving.get_registered_object("keras_compress>QuantizeWrapper") is keras_compress.QuantizeWrapper)
