"""An export that ends half-way, for tests/test_export.py: the process ends right after the SavedModel was
written into the staging folder, before the conversion.

Usage: export_interrupted.py HOW TARGET, with HOW one of:
- `sigkill`: the process kills itself with SIGKILL (nothing can clean up);
- `sigterm`: it sends itself SIGTERM (default handler: the staging folder is removed, then the process ends by
  the signal);
- `exit-from-thread`: the export runs in a daemon thread that blocks there, and the main thread exits
  (interpreter exit: `atexit` removes the staging folder).
"""

import os
import signal
import sys
import threading

import keras

import keras_compress as kc
from keras_compress.export import exporter

how, target = sys.argv[1:3]
real = exporter._save_saved_model
written = threading.Event()


def save_then_end(model, directory):
    real(model, directory)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    written.set()
    threading.Event().wait()  # blocks for ever: only the end of the process ends this export


exporter._save_saved_model = save_then_end
inputs = keras.Input((4,))
model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
if how == "exit-from-thread":
    threading.Thread(target=kc.export, args=(model, target), daemon=True).start()
    written.wait(timeout=300)
    sys.exit(3)
kc.export(model, target)
