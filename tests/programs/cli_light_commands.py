"""The light commands of `keras-compress`, run as the console script runs them, for tests/test_cli.py.

Usage: cli_light_commands.py CONFIG.json. Runs `--help`, `--version`, `demo --help`, `benchmark --help`, `schema`,
`configs`, `validate int8` and `validate CONFIG.json` through `keras_compress_launcher.main`, then prints one JSON
line: each command's exit status and output, the heavy modules that were imported, and whether the light-import
variable was left set.
"""

import contextlib
import io
import json
import os
import sys

import keras_compress_launcher

outputs = {}
for argv in (["--help"], ["--version"], ["demo", "--help"], ["benchmark", "--help"], ["schema"], ["configs"],
             ["validate", "int8"], ["validate", sys.argv[1]]):  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = keras_compress_launcher.main(argv)
        except SystemExit as exit:
            status = exit.code
    outputs[" ".join(argv)] = (status, out.getvalue())
heavy = sorted(m for m in ("tensorflow", "keras", "numpy", "openvino") if m in sys.modules)
print(json.dumps({"outputs": outputs, "heavy": heavy, "light": "KERAS_COMPRESS_LIGHT_IMPORT" in os.environ}))
