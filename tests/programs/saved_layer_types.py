"""Loads a saved model in a new process after `import keras_compress`, for tests/test_cli.py.

Usage: saved_layer_types.py MODEL.keras. Prints the sorted class names of the model's layers.
"""

import sys

import keras

import keras_compress  # noqa: F401 - registers the classes a compressed model is made of

model = keras.saving.load_model(sys.argv[1])
print(sorted({type(layer).__name__ for layer in model.layers}))
