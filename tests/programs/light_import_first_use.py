"""After the light import (`KERAS_COMPRESS_LIGHT_IMPORT=1`), the public names of keras_compress load on first
use, for tests/test_cli.py.

Usage: light_import_first_use.py. Prints three words: whether `kc.compress` imported the registering modules and
TensorFlow, and whether it is callable.
"""

import os
import sys

os.environ["KERAS_COMPRESS_LIGHT_IMPORT"] = "1"

import keras_compress as kc  # noqa: E402 - after the light-import variable
from keras_compress import load_config  # noqa: E402

assert load_config("int8") and "tensorflow" not in sys.modules and "compress" in dir(kc)
compress = kc.compress  # imports the controller, and with it every registering module
print("keras_compress.pruning.wrapper" in sys.modules, "tensorflow" in sys.modules, callable(compress))
