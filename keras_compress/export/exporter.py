"""kc.export: a compressed Keras model to a SavedModel or an OpenVINO IR."""

from __future__ import annotations

import os
from pathlib import Path

from keras_compress.export.atomic import check_folder_target, replace_together, staging_folder
from keras_compress.export.openvino import check_ir_target, convert_saved_model
from keras_compress.export.saved_model import write_saved_model
from keras_compress.export.strip import strip_model

__all__ = ["export"]

FORMATS = ("openvino", "saved_model")
#: What `model.export(format="tf_saved_model")` writes in a SavedModel folder: a folder holding
#: only these is a previous SavedModel, which an export to the same path replaces.
SAVED_MODEL_ENTRIES = ("assets", "fingerprint.pb", "saved_model.pb", "variables")


def _save_saved_model(model, directory):
    """The stripped model as a SavedModel in `directory` (on JAX/PyTorch through the TensorFlow helper
    process, its temporary `.keras` file next to `directory`, in the staging folder)."""
    write_saved_model(model, directory)


def export(model, path, format="openvino", compress_to_fp16=False):
    """Exports a (compressed) Keras model.

    The model is stripped first (`strip_model`: quantizers kept as fake-quant ops, overflow
    fix applied); the model passed in is not changed. Files appear at `path` only when the
    export succeeded: a failure leaves nothing half-written there, and nothing of the user's
    is ever deleted or replaced but a previous export at the same path:

    - "openvino": an existing `.xml`/`.bin` pair is replaced as a pair (after a failure both
      are as they were); a `.xml` or `.bin` target that is a directory is an error;
    - "saved_model": the target must be a new or empty folder or a previous SavedModel (a folder
      holding only `saved_model.pb`, `fingerprint.pb`, `variables/`, `assets/`); a regular file
      or a folder with other files is an error.

    Wrong targets are refused before any work. The export is written into a temporary folder
    next to the target (`.kc-export-<pid>-...`), removed afterwards whatever happened, also when
    the process exits or is ended by SIGTERM/SIGHUP during the export; one that a killed (SIGKILL)
    export left behind is removed by the next export to the same folder. The SavedModel -> IR
    conversion runs in a separate process (see `convert_saved_model`).

    Any Keras backend: on JAX or PyTorch the stripped model is written as a SavedModel by a helper
    process on the TensorFlow backend (`write_saved_model`), so the IR is the one a model trained
    on TensorFlow gives. Its custom classes must then be defined in importable modules.

    Args:
        model: a `keras.Model` (compressed by `kc.compress`, or plain).
        path: for "openvino", `out/model` or `out/model.xml` (writes `.xml` and `.bin`);
            for "saved_model", the SavedModel directory.
        format: "openvino" or "saved_model".
        compress_to_fp16: OpenVINO only: store float weights as fp16.

    Returns:
        The `Path` of the `.xml` (OpenVINO) or of the SavedModel directory.

    Raises:
        ValueError: for an unknown `format`, and a `path` that names no file or folder (`""`, `"."`).
        TypeError: when `model` is not a `keras.Model`, `path` not a path or `compress_to_fp16` not a bool.
        IsADirectoryError, NotADirectoryError, FileExistsError: for a target that exists as the
            wrong kind of thing (see above), before any work.
        OSError: when the target's folder cannot be created or written.
        ValueError: on JAX or PyTorch, for a model with a class defined in `__main__`.
        RuntimeError: when tracing or the conversion fails (also when OpenVINO's converter crashes).

    Example:
        ```python
        xml = kc.export(compressed, "out/model")   # out/model.xml + out/model.bin
        ```
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    if not isinstance(compress_to_fp16, bool):
        raise TypeError(f"`compress_to_fp16` must be True or False. Received: compress_to_fp16={compress_to_fp16!r}")
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or an os.PathLike. Received: path={path!r}")
    target = Path(path)
    if target.name in ("", ".", ".."):
        raise ValueError(
            f"`path` must name the {'IR file' if format == 'openvino' else 'SavedModel folder'} to write "
            f"(`out/model`). Received: path={os.fspath(path)!r}, which names no file or folder."
        )
    if format == "openvino":
        parent = check_ir_target(target).parent
    else:
        check_folder_target(target, "SavedModel", SAVED_MODEL_ENTRIES)
        parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"Cannot create the export directory {str(parent)!r}: {err}") from err
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"The export directory {str(parent)!r} is not writable.")
    stripped = strip_model(model)
    with staging_folder(parent) as tmp:
        saved = tmp / "saved_model"
        _save_saved_model(stripped, saved)
        if format == "openvino":
            return convert_saved_model(
                saved, target, compress_to_fp16=compress_to_fp16, source=f"model {model.name!r}"
            )
        check_folder_target(target, "SavedModel", SAVED_MODEL_ENTRIES)  # it may have changed meanwhile
        replace_together([(saved, target)], backup=tmp)
        return target
