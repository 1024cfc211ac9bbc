"""SavedModel -> OpenVINO IR conversion, in a separate process (openvino is imported only there).

OpenVINO's converter is native code, and it can crash the process it runs in (a segmentation
fault in `ov.convert_model` was seen with keras.applications.NASNetMobile). So it never runs in
the user's process: a converter process (`python -c`, importing only openvino) is started on the
first conversion and reused for the next ones; a crash of it becomes a `RuntimeError` here, and
the next conversion starts a new one.

Measured on this 2-core machine (shared, load 4-9; a small QAT SavedModel, 5 runs each): in-process
`ov.convert_model` + `ov.save_model` took 0.6-3.2 s; the first conversion through the converter
process 1.4-3.7 s (it starts Python and imports openvino, about 1-2 s), the next ones 0.3-1.0 s. So the
separate process costs its start-up once per Python process, and nothing after that (a conversion
there, in a process without TensorFlow loaded, was not slower than in-process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from keras_compress.export.atomic import check_file_target, replace_together, staging_folder
from keras_compress.export.job_process import SERVE_LOOP, JobProcess, describe_exit

__all__ = ["ConverterCrashed", "convert_saved_model", "xml_path_for"]

#: The converter process's program (a `JobProcess`): it imports only openvino.
CONVERTER_CODE = r"""
import openvino as ov

def handle(job):
    model = ov.convert_model(job["saved_model"])
    ov.save_model(model, job["xml"], compress_to_fp16=job["compress_to_fp16"])
""" + SERVE_LOOP


class ConverterCrashed(RuntimeError):
    """OpenVINO's converter process died while converting (a crash in native code)."""


def _crash_message(code, source):
    """What a converter process that ended without answering means for the user."""
    if code is not None and code < 0:
        return (
            f"OpenVINO's converter crashed ({describe_exit(code)}) while converting {source}. It ran in a "
            "separate process, so this process and its model are unaffected and nothing was written at the "
            "target. The model holds an operation or pattern OpenVINO cannot convert: try another "
            "OpenVINO version, or export with format='saved_model' and convert it elsewhere."
        )
    return (
        f"OpenVINO's converter process ended (exit status {code}) before converting {source}; its "
        f"error output is on this process's stderr (it runs `{sys.executable} -c ...` and imports "
        "openvino). Nothing was written at the target."
    )


#: One converter process per Python process (the program is read when it starts).
_CONVERTER = JobProcess(lambda: CONVERTER_CODE, lambda code, source: ConverterCrashed(_crash_message(code, source)))


def xml_path_for(path):
    """`out/model` or `out/model.xml` -> Path("out/model.xml").

    Raises:
        ValueError: when `path` names no file (`""`, `"."`, `".."`, `"out/.."`).
    """
    shown, path = os.fspath(path), Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(
            "The OpenVINO IR target must name the file to write (`out/model` or `out/model.xml`). "
            f"Received: {shown!r}, which names no file."
        )
    return path if path.suffix == ".xml" else path.with_name(path.name + ".xml")


def check_ir_target(output):
    """Raises, before any work, when `output` names no file, or its `.xml` or `.bin` exists as something else
    than a file."""
    xml = xml_path_for(output)
    check_file_target(xml, "OpenVINO IR (.xml)")
    check_file_target(xml.with_suffix(".bin"), "OpenVINO IR (.bin)")
    return xml


def convert_saved_model(saved_model_dir, output, compress_to_fp16=False, source=None):
    """Converts a TensorFlow SavedModel to OpenVINO IR (`.xml` + `.bin`), atomically.

    Works for any SavedModel, not only keras_compress ones. Fake-quant ops become
    FakeQuantize; per-channel weight fake-quant with variable ranges is stored as int8. The
    conversion runs in a separate process, so a crash of OpenVINO's converter cannot take this
    process down. The `.xml` and `.bin` are replaced together: after a failure both are as they
    were.

    Args:
        saved_model_dir: the SavedModel directory.
        output: the target path (`out/model` or `out/model.xml`).
        compress_to_fp16: store float weights as fp16 (halves the size, changes the
            numbers slightly). Off by default so the IR computes what the Keras model does.
        source: what is converted, for error messages (default: the SavedModel's path).

    Returns:
        The `Path` of the written `.xml`.

    Raises:
        FileNotFoundError: when `saved_model_dir` is not a SavedModel.
        ValueError: when `output` names no file (`""`), before any work.
        TypeError: when `compress_to_fp16` is not a bool.
        IsADirectoryError: when the `.xml` or `.bin` target exists as a directory (before any work).
        OSError: when the target's directory cannot be created (before any work).
        ConverterCrashed: (a `RuntimeError`) when OpenVINO's converter process crashed.
        RuntimeError: when OpenVINO cannot convert the model (its message names the op).
    """
    saved_model_dir = Path(saved_model_dir)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"`saved_model_dir` must be a TensorFlow SavedModel directory (with saved_model.pb). "
            f"Received: {str(saved_model_dir)!r}"
        )
    if not isinstance(compress_to_fp16, bool):
        raise TypeError(f"`compress_to_fp16` must be True or False. Received: compress_to_fp16={compress_to_fp16!r}")
    xml = check_ir_target(output)
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a regular file where a folder of the path should be, no permission, ...
        raise OSError(f"Cannot create the IR's directory {str(xml.parent)!r}: {err}") from err
    with staging_folder(xml.parent) as tmp:
        source = source or f"the SavedModel {str(saved_model_dir)!r}"
        # Absolute paths: the converter process may have been started in another working directory.
        job = {"saved_model": str(saved_model_dir.resolve()), "xml": str((tmp / "model.xml").resolve()),
               "compress_to_fp16": bool(compress_to_fp16)}  # fmt: skip
        reply = _CONVERTER.run(job, source)
        if not reply["ok"]:
            raise RuntimeError(f"OpenVINO could not convert {source}: {reply['error']}")
        replace_together([(tmp / "model.bin", xml.with_suffix(".bin")), (tmp / "model.xml", xml)], backup=tmp)
    return xml
