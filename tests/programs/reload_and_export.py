"""Child program: loads a saved compressed model in a new process, checks it, exports it.

Usage: reload_and_export.py MODEL.keras INPUTS.npz EXPECTED.npy OUT_DIR [--config CONFIG.json] [--module M ...]

INPUTS.npz holds the input batch: one array `x`, or one array per input of a model with named inputs.

Imports keras_compress and the modules that register the model's classes (as a user's program does),
loads the model with `keras.saving.load_model`, compares its predictions on INPUTS with EXPECTED,
binds a controller when a config is given, exports an OpenVINO IR and compiles it. Prints one JSON
line: the loaded class, the largest prediction difference, the controller's progress, the runtime
precisions of every Convolution / FullyConnected / MatMul, and the IR's outputs' largest difference.
"""

import argparse
import importlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import compile_ir, compute_op_precisions  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("expected")
    parser.add_argument("out")
    parser.add_argument("--config")
    parser.add_argument("--module", action="append", default=[])
    args = parser.parse_args(argv)
    for module in args.module:
        importlib.import_module(module)
    model = keras.saving.load_model(args.model)
    arrays, expected = np.load(args.inputs), np.load(args.expected)
    x = arrays["x"] if list(arrays.keys()) == ["x"] else dict(arrays)
    result = {"type": type(model).__name__, "compressed_class": isinstance(model, kc.CompressedLayer)}
    result["same"] = float(np.abs(model.predict(x, verbose=0) - expected).max())
    if args.config:
        bound, ctrl = kc.compress(model, args.config)
        result["bound"] = bound is model
        result["progress"] = ctrl.progress()
    xml = kc.export(model, os.path.join(args.out, "model"))
    compiled = compile_ir(xml, "f32")
    counts = compute_op_precisions(compiled, xml)
    result["precisions"] = {f"{kind}:{precision}": n for (kind, precision), n in counts.items()}
    ir_inputs = {port.get_any_name(): x[port.get_any_name()] for port in compiled.inputs} if isinstance(x, dict) else x
    result["ir_error"] = float(np.abs(compiled(ir_inputs)[0] - expected).max())
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
