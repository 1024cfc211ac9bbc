"""The environment every test module, and every program a test starts, begins with.

pytest imports this file before it collects the test modules, so what it sets holds before any of
them imports TensorFlow, Keras or keras_compress:

- TensorFlow's native start-up lines off (`TF_CPP_MIN_LOG_LEVEL=3`) and the TensorFlow backend, unless
  the environment says otherwise;
- this checkout's folder first on `sys.path`, then `tests/` (the shared helpers, the test models), and the
  same two first on `PYTHONPATH`, which the programs of `tests/programs/` inherit: the tests and their child
  processes import this tree's keras_compress, whatever version is installed;
- under ONEDNN_MAX_CPU_ISA=AVX2 (the AVX2 set of .ci/run), OpenVINO compiles as on an AVX2 CPU, in this process
  and, through `tests/avx2/sitecustomize.py` first on `PYTHONPATH`, in every child (`avx2_openvino`).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

for _path in (str(TESTS), str(ROOT)):
    while _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)
_ours = (str(TESTS / "avx2"), str(ROOT), str(TESTS))
_inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in _ours]
os.environ["PYTHONPATH"] = os.pathsep.join([*_ours, *_inherited])

import avx2_openvino  # noqa: E402 - from tests/, on sys.path now

if avx2_openvino.CAPPED:  # the test run capped at AVX2 (.ci/run): OpenVINO compiles as on an AVX2 CPU
    avx2_openvino.install()

