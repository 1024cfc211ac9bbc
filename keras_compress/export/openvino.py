"""SavedModel -> OpenVINO IR conversion (openvino is imported only here, when used)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["convert_saved_model", "xml_path_for"]


def xml_path_for(path):
    """`out/model` or `out/model.xml` -> Path("out/model.xml")."""
    path = Path(path)
    return path if path.suffix == ".xml" else path.with_name(path.name + ".xml")


def convert_saved_model(saved_model_dir, output, compress_to_fp16=False):
    """Converts a TensorFlow SavedModel to OpenVINO IR (`.xml` + `.bin`), atomically.

    Works for any SavedModel, not only keras_compress ones. Fake-quant ops become
    FakeQuantize; per-channel weight fake-quant with variable ranges is stored as int8.

    Args:
        saved_model_dir: the SavedModel directory.
        output: the target path (`out/model` or `out/model.xml`).
        compress_to_fp16: store float weights as fp16 (halves the size, changes the
            numbers slightly). Off by default so the IR computes what the Keras model does.

    Returns:
        The `Path` of the written `.xml`.

    Raises:
        FileNotFoundError: when `saved_model_dir` is not a SavedModel.
        RuntimeError: when OpenVINO cannot convert the model (its message names the op).
    """
    saved_model_dir = Path(saved_model_dir)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"`saved_model_dir` must be a TensorFlow SavedModel directory (with saved_model.pb). "
            f"Received: {str(saved_model_dir)!r}"
        )
    import openvino as ov

    xml = xml_path_for(output)
    xml.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov_model = ov.convert_model(str(saved_model_dir))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises several error types
        raise RuntimeError(f"OpenVINO could not convert {str(saved_model_dir)!r}: {err}") from err
    tmp = Path(tempfile.mkdtemp(prefix=".kc-ir-", dir=xml.parent))
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=compress_to_fp16)
        os.replace(tmp / "model.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "model.xml", xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml
