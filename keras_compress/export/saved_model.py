"""A Keras model as a TensorFlow SavedModel, from any Keras backend.

OpenVINO reads TensorFlow SavedModels, and turns the fake-quant ops of one written on the TensorFlow
backend into FakeQuantize. The other backends cannot write that graph: on JAX, Keras exports through
jax2tf, whose SavedModel holds one `XlaCallModule` op that OpenVINO cannot convert
("OpConversionFailure: No conversion rule found for operations: XlaCallModule"); PyTorch has no
SavedModel export. A `.keras` file is backend-independent, so on those backends the model is saved as
one and a helper process that runs Keras on TensorFlow loads it and writes the SavedModel: the same
graph, op for op, as for the model trained on TensorFlow.

The helper process (a `JobProcess`) starts on the first export and is reused by the next ones (its
start-up, importing TensorFlow and Keras, takes seconds once per process). It sees no GPU
(`CUDA_VISIBLE_DEVICES=""`: writing a SavedModel needs none, and a TensorFlow process would otherwise
reserve GPU memory next to JAX's), and finds modules where this process does (its `sys.path`).
It imports the modules of the classes the model's config names (`"module"` of each serialized object)
before loading it: a custom class must be defined in an importable module, not in the script or
notebook being run (`__main__`), which is refused with what to do.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import keras

from keras_compress import backend
from keras_compress.compressed import RECORD
from keras_compress.export.job_process import SERVE_LOOP, JobProcess, describe_exit

__all__ = ["write_saved_model"]

#: The helper process's program: Keras on TensorFlow, keras_compress's classes registered.
TENSORFLOW_PROGRAM = r"""
import importlib
import keras
from keras_compress.export.saved_model import write_saved_model

assert keras.backend.backend() == "tensorflow", keras.backend.backend()

def handle(job):
    for module in job["modules"]:
        importlib.import_module(module)
    # The file was written a moment ago by the process that asks: its Lambda layers may be loaded.
    model = keras.saving.load_model(job["keras"], compile=False, safe_mode=False)
    write_saved_model(model, job["saved_model"])
""" + SERVE_LOOP


def _helper_environment():
    """The helper process's environment: TensorFlow backend, no GPU, this process's module path."""
    path = [os.getcwd() if entry == "" else entry for entry in sys.path]
    return {
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
    }


def _crash(code, source):
    return RuntimeError(
        f"The TensorFlow process that writes the SavedModel of {source} ended without answering "
        f"({describe_exit(code)}); its error output is on this process's stderr. Nothing was written "
        "at the target."
    )


_TENSORFLOW = JobProcess(TENSORFLOW_PROGRAM, _crash, env=_helper_environment)


def _modules_of(keras_file):
    """`{module: class name}` of the classes a `.keras` file's config names, Keras' own left out.

    A class registered with `register_keras_serializable` is named by its registered name (its
    config's `module` is None): its module is looked up in this process's registry.
    """
    with zipfile.ZipFile(keras_file) as archive:
        config = json.loads(archive.read("config.json"))
    modules, stack = {}, [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module = item.get("module")
            registered = item.get("registered_name")
            if "class_name" in item and module is None and isinstance(registered, str):
                module = getattr(keras.saving.get_registered_object(registered), "__module__", None)
            if "class_name" in item and isinstance(module, str) and module != "keras" and not module.startswith("keras."):
                modules.setdefault(module, item["class_name"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return modules


def _short(error):
    """The informative part of an error from the helper process (Keras' load errors hold the whole config)."""
    error = error.rsplit("Exception encountered: ", 1)[-1].split(" Full object config:", 1)[0].strip()
    return error if len(error) <= 1000 else error[:1000] + " ..."


def _write_here(model, directory):
    """`model.export(format="tf_saved_model")` in this process (TensorFlow backend)."""
    # A model without symbolic inputs (a subclassed one) tells its inputs through `input_signature`.
    signature = getattr(model, "input_signature", None)
    options = {} if signature is None else {"input_signature": signature}
    try:
        model.export(str(directory), format="tf_saved_model", verbose=False, **options)
    except Exception as err:  # noqa: BLE001 - tracing can raise anything
        fixed = _compressed_shapes(model) if signature is None else None
        if fixed is None:
            raise RuntimeError(f"Could not trace model {model.name!r} into a SavedModel: {err}") from err
        # A model whose call needs its sizes known (a Python loop over the sequence length: KerasHub's
        # RWKV7 and Qwen3.5 linear attention) is traced at the sizes it was compressed with, batch free.
        try:
            model.export(str(directory), format="tf_saved_model", verbose=False, input_signature=fixed)
        except Exception as again:  # noqa: BLE001
            raise RuntimeError(
                f"Could not trace model {model.name!r} into a SavedModel, with free input sizes ({err}) or "
                f"with the sizes it was compressed with ({again})"
            ) from again


def _compressed_shapes(model):
    """`input_signature` for `model.export` from the shapes a compressed graph model was compressed with
    (`sample_signature` of its record), the batch size free; None when it has none."""
    signature = vars(model).get(RECORD, {}).get("sample_signature")
    if signature is None:
        return None

    def spec(item):
        return keras.InputSpec(shape=tuple(item["shape"]), dtype=item["dtype"], name=item["name"])

    if isinstance(signature, dict):
        return [{name: spec(item) for name, item in signature.items()}]
    return [spec(signature[0])] if len(signature) == 1 else [[spec(item) for item in signature]]


def write_saved_model(model, directory, staging=None):
    """Writes `model` as a TensorFlow SavedModel whose graph OpenVINO converts, on any backend.

    On TensorFlow: `model.export(format="tf_saved_model")`. On JAX and PyTorch: the model is saved as
    `staging/model.keras` and written by the helper process on the TensorFlow backend (see the module
    docstring).

    Args:
        model: an inference model (stripped: `strip_model`).
        directory: the SavedModel directory to write (new).
        staging: a folder for the temporary `.keras` file (default: next to `directory`).

    Raises:
        ValueError: on JAX/PyTorch, when the model holds a class defined in `__main__` (the helper
            process cannot import it).
        RuntimeError: when the model cannot be traced, saved, loaded or written; or when the helper
            process died.
    """
    if backend.is_tensorflow():
        _write_here(model, directory)
        return
    directory = Path(directory)
    keras_file = Path(staging or directory.parent) / f"{directory.name}.keras"
    try:
        model.save(keras_file)
    except Exception as err:  # noqa: BLE001 - saving calls the user's get_config
        raise RuntimeError(
            f"Exporting from the {backend.backend_name()} backend saves the model as a .keras file and writes "
            f"its SavedModel on the TensorFlow backend, so the model must be serializable. Received: model "
            f"{model.name!r}, which could not be saved: {err}"
        ) from err
    modules = _modules_of(keras_file)
    if "__main__" in modules:
        raise ValueError(
            f"Exporting from the {backend.backend_name()} backend loads the model in a TensorFlow-backend "
            "process, which must import every custom class of the model: define it in a module (a .py file "
            f"on the import path), not in the script or notebook being run. Received: class "
            f"{modules['__main__']!r} defined in __main__."
        )
    job = {"keras": str(keras_file.resolve()), "saved_model": str(directory.resolve()), "modules": sorted(modules)}
    reply = _TENSORFLOW.run(job, f"model {model.name!r}")
    if not reply["ok"]:
        raise RuntimeError(
            f"Could not write model {model.name!r} as a SavedModel on the TensorFlow backend (a helper "
            f"process loads its .keras file there): {_short(reply['error'])}"
        )
