"""kc.export: a compressed Keras model to a SavedModel or an OpenVINO IR."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from keras_compress.export.openvino import convert_saved_model, xml_path_for
from keras_compress.export.strip import strip_model

__all__ = ["export"]

FORMATS = ("openvino", "saved_model")


def _save_saved_model(model, directory):
    # A model without symbolic inputs (a subclassed one) tells its inputs through `input_signature`.
    signature = getattr(model, "input_signature", None)
    options = {} if signature is None else {"input_signature": signature}
    try:
        model.export(str(directory), format="tf_saved_model", verbose=False, **options)
    except Exception as err:  # noqa: BLE001 - tracing can raise anything
        raise RuntimeError(
            f"Could not trace model {model.name!r} into a SavedModel: {err}"
        ) from err


def export(model, path, format="openvino", compress_to_fp16=False):
    """Exports a (compressed) Keras model.

    The model is stripped first (`strip_model`: quantizers kept as fake-quant ops, overflow
    fix applied); the model passed in is not changed. Files appear at `path` only when the
    export succeeded: a failure leaves nothing half-written there.

    Args:
        model: a `keras.Model` (compressed by `kc.compress`, or plain).
        path: for "openvino", `out/model` or `out/model.xml` (writes `.xml` and `.bin`);
            for "saved_model", the SavedModel directory.
        format: "openvino" or "saved_model".
        compress_to_fp16: OpenVINO only: store float weights as fp16.

    Returns:
        The `Path` of the `.xml` (OpenVINO) or of the SavedModel directory.

    Example:
        ```python
        xml = kc.export(compressed, "out/model")   # out/model.xml + out/model.bin
        ```
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    target = Path(path)
    parent = (xml_path_for(target) if format == "openvino" else target).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"Cannot create the export directory {str(parent)!r}: {err}") from err
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"The export directory {str(parent)!r} is not writable.")
    stripped = strip_model(model)
    tmp = Path(tempfile.mkdtemp(prefix=".kc-export-", dir=parent))
    try:
        saved = tmp / "saved_model"
        _save_saved_model(stripped, saved)
        if format == "openvino":
            return convert_saved_model(saved, target, compress_to_fp16=compress_to_fp16)
        if target.exists():
            old = tmp / "previous"
            os.replace(target, old)
        os.replace(saved, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
