"""A new session for tests/test_resume.py: every saved model loads with `safe_mode=True` after
`import keras_compress`, gets its controller back, trains one more epoch and exports.

Usage: resume.py WORK (the folder with `jobs.json`, `{name: config}`, and `<name>.keras` / `<name>.npy`, the
saved model and its outputs). Prints `RESULTS {json}`: the package's path, and per model whether the controller is
bound to the loaded model, the largest output difference, the progress before and after, losses, figures and
whether the IR was written.
"""

import json
import os
import sys

import keras
import numpy as np

import keras_compress as kc

work = sys.argv[1]
with open(os.path.join(work, "jobs.json")) as file:
    jobs = json.load(file)
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
y = np.arange(32) % 3
results = {"package": kc.__file__}
for name, config in jobs.items():
    # Not one custom object: everything keras_compress saved is registered by `import keras_compress`.
    loaded = keras.saving.load_model(os.path.join(work, name + ".keras"), safe_mode=True)
    same = float(np.max(np.abs(np.asarray(loaded(x)) - np.load(os.path.join(work, name + ".npy")))))
    model, ctrl = kc.compress(loaded, config)
    before = ctrl.progress()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=ctrl.callbacks())
    xml = kc.export(model, os.path.join(work, "ir", name))
    results[name] = {
        "bound_to_loaded": model is loaded, "max_output_difference": same, "progress_before": before,
        "progress_after": ctrl.progress(), "loss": history.history["loss"],
        "figures": {k: float(v) for k, v in ctrl.statistics().figures().items()},
        "ir": os.path.isfile(xml) and os.path.isfile(str(xml)[:-4] + ".bin"),
    }  # fmt: skip
print("RESULTS " + json.dumps(results))
