"""Loads a saved model in a new process after `import keras_compress` and prints the sum of |outputs|.

Usage: load_and_predict.py MODEL.keras INPUTS.npy. Prints one number.
"""

import sys

import keras
import numpy as np

import keras_compress  # noqa: F401 - registers the classes a compressed model is made of

model = keras.saving.load_model(sys.argv[1])
print(float(np.abs(model.predict(np.load(sys.argv[2]), verbose=0)).sum()))
