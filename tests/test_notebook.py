"""examples/notebooks/quantization_aware_training.ipynb runs end to end, with a small budget.

The notebook reads `KERAS_COMPRESS_NOTEBOOK_QUICK=1` and then trains for a couple of epochs only:
the same cells, a fraction of the time. Needs the `test` extras (nbclient, nbformat, ipykernel).
"""

import os
import re
from pathlib import Path

import ipykernel  # noqa: F401 - the kernel nbclient starts (a `test` extra, like nbclient and nbformat)
import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebooks" / "quantization_aware_training.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.slow
@pytest.mark.openvino
def test_the_notebook_trains_compresses_exports_and_compares(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_COMPRESS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()  # raises CellExecutionError, with the cell and the traceback, if a cell fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "quick run: True" in text
    assert re.search(r"^INT8 IR +\| [\d.]+ +\| [\d.]+ +\| [\d.]+ +\| .*Convolution:u8", text, re.M), text
    assert "INT8 vs FP32: accuracy" in text and "Assets written" not in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 2  # the statistics plot and the comparison
    assert (tmp_path / "notebook_output" / "int8.xml").is_file() and (tmp_path / "notebook_output" / "fp32.bin").is_file()
