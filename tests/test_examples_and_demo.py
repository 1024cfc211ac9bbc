"""The README's demo and the examples run end to end and reach their accuracy figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The children import this tree's keras_compress, whatever is installed (conftest.py sets PYTHONPATH).
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
#: Accuracy margins are at least this many images of the 360-image digits test set: a smaller
#: difference is one or two images that flip from run to run.
MARGIN = 4 / 360


@pytest.mark.slow
@pytest.mark.openvino
def test_demo_int8_ir_within_one_point_of_fp32(tmp_path):
    """Through the console script's launcher, as `keras-compress demo` runs: one table, no noise."""
    result = subprocess.run(
        [sys.executable, "-m", "keras_compress_launcher", "demo", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # no TensorFlow start-up lines, no log lines
    out = result.stdout
    assert "━" not in out and "/step" not in out  # no progress bars without --verbose
    fp32 = float(re.search(r"^FP32 IR \(f32\)\s+\|\s+([\d.]+)", out, re.M).group(1))
    int8 = float(re.search(r"^INT8 IR\s+\|\s+([\d.]+)", out, re.M).group(1))
    assert fp32 > 0.95
    assert int8 >= fp32 - 0.01, out
    assert (tmp_path / "int8.xml").is_file() and (tmp_path / "fp32.xml").is_file()


@pytest.mark.slow
@pytest.mark.openvino
def test_digits_qat_example_within_a_few_test_images(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits_qat.py"), "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    fp32 = float(re.search(r"FP32 Keras accuracy:\s+([\d.]+)", result.stdout).group(1))
    qat = float(re.search(r"QAT Keras accuracy:\s+([\d.]+)", result.stdout).group(1))
    int8 = float(re.search(r"INT8 OpenVINO accuracy:\s+([\d.]+)", result.stdout).group(1))
    assert fp32 > 0.95
    assert qat >= fp32 - MARGIN, result.stdout
    assert int8 >= fp32 - 0.01, result.stdout
