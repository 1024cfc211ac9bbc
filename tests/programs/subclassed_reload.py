"""A subclassed compressed model in a new session, for tests/test_subclassed.py: loaded with `safe_mode=True`,
its controller bound, exported to OpenVINO and run there.

Usage: subclassed_reload.py MODEL.keras CONFIG.json INPUTS.npy EXPECTED.npy, in a scratch folder (the IR is written
to `ir/model.xml` there). Prints one JSON line: the loaded model's type, its largest output difference from
EXPECTED, whether it is a `kc.CompressedModel`, the runtime precisions of the IR and the IR's outputs (a list).
"""

import json
import sys

import keras
import numpy as np

import keras_compress as kc
import subclassed_models  # noqa: F401 - the user's registered classes
from keras_compress.benchmark import compile_ir, runtime_precisions

path, config, inputs, expected = sys.argv[1:5]
model = keras.saving.load_model(path, safe_mode=True)
x, expected = np.load(inputs), np.load(expected)
same = float(np.abs(model.predict(x, verbose=0) - expected).max())
bound, ctrl = kc.compress(model, config)  # the controller of the loaded model
assert bound is model and ctrl.progress()["epochs"] == 1, ctrl.progress()
xml = kc.export(model, "ir/model")
compiled = compile_ir(xml)
ir = compiled(x)[0]
counts = {f"{t}:{p}": n for (t, p), n in runtime_precisions(compiled).items()}
print(json.dumps({"type": type(model).__name__, "compressed": isinstance(model, kc.CompressedModel), "same": same,
                  "counts": counts, "ir": np.asarray(ir).tolist()}))  # fmt: skip
