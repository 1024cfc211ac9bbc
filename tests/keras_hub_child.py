"""The child program of tests/test_keras_hub_families.py: KerasHub families through keras_compress.

    python tests/keras_hub_child.py compress WORKDIR FAMILY...
    python tests/keras_hub_child.py export WORKDIR FAMILY...

`compress`: for each family, the backbone of its small config (tests/keras_hub_backbones.py) is built,
compressed with the packaged `int8` config on its input batch, trained one step (an MSE loss towards
zero on its float outputs), and saved to `WORKDIR/<family>.keras`, with the batch and the compressed
model's outputs in `WORKDIR/<family>.npz`.
`export` (run in another process): each saved model is loaded, its outputs compared with the saved
ones, exported with `kc.export`, and its IR compiled: the runtime precision of every Convolution /
FullyConnected / MatMul, and the IR's outputs against the loaded model's.

Each family runs inside try/except: one line `RESULT {json}` per family, with `error` (and the
traceback's tail) when it failed, so one failure does not stop the others.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import compile_ir, compute_op_precisions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keras_hub_backbones import CASES  # noqa: E402

#: Weights and activations in 8 bits; range init on the family's input batch (2 samples), no
#: BatchNorm adaptation (one batch would only add noise to the statistics).
CONFIG = {"compression": {"algorithm": "quantization", "preset": "performance",
                          "weights": {"mode": "symmetric", "bits": 8, "per_channel": True},
                          "activations": {"mode": "symmetric", "bits": 8},
                          "initializer": {"range": {"num_init_samples": 2, "type": "mixed_min_max"},
                                          "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}}  # fmt: skip


def to_numpy(structure):
    return keras.tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)), structure)


def save_structure(path, **structures):
    """Saves nested structures of arrays (dicts, lists, arrays) to one `.npz`: the arrays flattened,
    each structure's shape (its arrays replaced by their indices) as JSON."""
    arrays, shapes = {}, {}
    for name, structure in structures.items():
        flat = keras.tree.flatten(structure)
        shapes[name] = keras.tree.pack_sequence_as(structure, list(range(len(flat))))
        arrays.update({f"{name}/{i}": array for i, array in enumerate(flat)})
    np.savez(path, structure=json.dumps(shapes), **arrays)


def load_structure(path):
    with np.load(path) as data:
        shapes = json.loads(str(data["structure"]))
        return {name: keras.tree.map_structure(lambda i, name=name: data[f"{name}/{i}"], shape)
                for name, shape in shapes.items()}  # fmt: skip


def is_float(array):
    return np.issubdtype(np.asarray(array).dtype, np.floating)


def relative_difference(got, expected):
    """The largest difference over the float outputs, relative to the largest output magnitude."""
    got, expected = keras.tree.flatten(got), keras.tree.flatten(expected)
    pairs = [(np.asarray(a, "float64"), np.asarray(b, "float64")) for a, b in zip(got, expected) if is_float(b)]
    scale = max(float(np.abs(b).max()) for _, b in pairs) + 1e-12
    return max(float(np.abs(a - b).max()) for a, b in pairs) / scale


def compress_family(family, workdir):
    """Build, compress, one training step, save; returns the figures."""
    keras.utils.set_random_seed(0)
    cls, init_kwargs, input_data = CASES[family]()
    x = to_numpy(input_data)
    model = cls(**init_kwargs)
    figures = {"class": cls.__name__, "parameters": int(model.count_params())}
    reference = to_numpy(model.predict(x, verbose=0))
    compressed, ctrl = kc.compress(model, CONFIG, dataset=x, verbose=0)
    figures["weight_quantizers"] = ctrl.statistics().figures()["quantization/weight_quantizers"]
    figures["kept_class"] = type(compressed).__name__ == cls.__name__ and isinstance(compressed, cls)
    before = to_numpy(compressed.predict(x, verbose=0))
    figures["quantization_error"] = relative_difference(before, reference)
    # One step towards zero on the float outputs (the others get no loss): one loss for all when all
    # are float (a structure of losses is matched to the output layers' names, which two outputs of one
    # layer share: SigLIP); the batch as a one-element generator (an output may have its own first
    # size: SAM's, which Keras' check of array sizes rejects).
    targets = keras.tree.map_structure(lambda a: np.zeros_like(a, "float32") if is_float(a) else a, before)
    all_float = all(is_float(a) for a in keras.tree.flatten(before))
    losses = "mse" if all_float else keras.tree.map_structure(lambda a: "mse" if is_float(a) else None, before)
    compressed.compile(optimizer=keras.optimizers.SGD(1e-3), loss=losses, run_eagerly=True)
    history = compressed.fit((item for item in [(x, targets)]), epochs=1, steps_per_epoch=1, verbose=0,
                             callbacks=ctrl.callbacks())  # fmt: skip
    figures["loss"] = float(history.history["loss"][-1])
    compressed.save(workdir / f"{family}.keras")
    save_structure(workdir / f"{family}.npz", x=x, y=to_numpy(compressed.predict(x, verbose=0)))
    return figures


def ir_outputs(compiled, x, expected):
    """The IR's outputs for batch `x`, in the structure of the Keras outputs `expected` (matched by
    name for dict outputs, by position otherwise)."""
    named = {name: array for name, array in (x.items() if isinstance(x, dict) else [])}
    feed = {}
    for i, port in enumerate(compiled.inputs):
        names = port.get_names()
        match = next((named[n] for n in names if n in named), None)
        feed[i] = match if match is not None else keras.tree.flatten(x)[i]
    result = compiled(feed)
    by_name = {}
    for port in compiled.outputs:
        for name in port.get_names():
            by_name[name] = result[port]
    if isinstance(expected, dict):
        return {key: by_name[key] for key in expected}
    flat = [result[port] for port in compiled.outputs]
    return keras.tree.pack_sequence_as(expected, flat)


def export_family(family, workdir):
    """Load in this (new) process, compare, export, compile; returns the figures."""
    saved = load_structure(workdir / f"{family}.npz")
    x, y = saved["x"], saved["y"]
    loaded = keras.saving.load_model(workdir / f"{family}.keras")
    got = to_numpy(loaded.predict(x, verbose=0))
    figures = {"load_difference": relative_difference(got, y), "loaded_class": type(loaded).__name__}
    xml = kc.export(loaded, workdir / family)
    compiled = compile_ir(xml, "f32")
    counts = compute_op_precisions(compiled, xml)
    figures["runtime"] = {f"{kind}:{precision}": n for (kind, precision), n in sorted(counts.items())}
    figures["int8_ops"] = sum(n for (_, precision), n in counts.items() if precision in ("u8", "i8"))
    figures["compute_ops"] = sum(counts.values())
    # Batch by batch: an IR exported from a model with a fixed batch size takes that size only.
    figures["ir_difference"] = relative_difference(ir_outputs(compiled, x, got), got)
    return figures


def main(argv):
    phase, workdir, families = argv[0], Path(argv[1]), argv[2:]
    step = {"compress": compress_family, "export": export_family}[phase]
    for family in families:
        start = time.perf_counter()
        result = {"family": family, "phase": phase}
        try:
            result.update(step(family, workdir))
        except Exception as err:  # noqa: BLE001 - reported per family, the others still run
            result["error"] = f"{type(err).__name__}: {err}"[:2000]
            result["traceback"] = traceback.format_exc()[-3000:]
        result["seconds"] = round(time.perf_counter() - start, 1)
        print("RESULT " + json.dumps(result), flush=True)
        keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
