"""The `keras-compress` console script's entry point: starts the command line without TensorFlow.

`import keras_compress` imports TensorFlow and Keras, because it registers the package's
Keras-serializable classes (a saved model must load after it). The command line does not need
them for `--help`, `--version`, `schema`, `configs` or `validate`, and TensorFlow alone takes
seconds to import. This module lives outside the package because the package's `__init__` runs
before any module inside it: it asks for the package's light import (the environment variable
`keras_compress.LIGHT_IMPORT_ENV`, set only while `keras_compress.cli` is imported), and the
commands that need TensorFlow import it themselves (see `keras_compress/cli.py`).

`python -m keras_compress_launcher ...` is the same as `keras-compress ...`.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]

#: The same name as `keras_compress.LIGHT_IMPORT_ENV` (it cannot be read from there before the import).
LIGHT_IMPORT_ENV = "KERAS_COMPRESS_LIGHT_IMPORT"


def main(argv: list[str] | None = None) -> int:
    """Imports `keras_compress.cli` with the light import and runs it; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    previous = os.environ.get(LIGHT_IMPORT_ENV)
    os.environ[LIGHT_IMPORT_ENV] = "1"
    try:
        from keras_compress import cli
    finally:
        if previous is None:
            del os.environ[LIGHT_IMPORT_ENV]
        else:
            os.environ[LIGHT_IMPORT_ENV] = previous
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
