"""TensorFlow imported the way the CLI imports it (`cli._import_tensorflow`), after the light import, for
tests/test_cli.py, which checks that nothing reaches stderr.

Usage: cli_imports_tensorflow.py. Exits with status 0 when TensorFlow was imported and ran.
"""

import os
import sys

os.environ["KERAS_COMPRESS_LIGHT_IMPORT"] = "1"  # as the launcher does

from keras_compress import cli  # noqa: E402 - after the light-import variable

assert "tensorflow" not in sys.modules
cli._import_tensorflow()

import tensorflow as tf  # noqa: E402 - imported by the CLI above

tf.constant(1.0) + 1.0
assert "tensorflow" in sys.modules
