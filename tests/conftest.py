"""The environment every test module, and every program a test starts, begins with.

pytest imports this file before it collects the test modules, so what it sets holds before any of
them imports TensorFlow, Keras or keras_compress:

- TensorFlow's native start-up lines off (`TF_CPP_MIN_LOG_LEVEL=3`) and the TensorFlow backend, unless
  the environment says otherwise;
- this checkout's folder first on `sys.path`, then `tests/` (the shared helpers, the test models), and the
  same two first on `PYTHONPATH`, which the programs of `tests/programs/` inherit: the tests and their child
  processes import this tree's keras_compress, whatever version is installed.
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
_inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in (str(ROOT), str(TESTS))]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), *_inherited])


def _compile_as_on_avx2(compile_model):
    """`openvino.Core.compile_model` with the CPU settings the plugin picks by itself on an AVX2 CPU.

    ONEDNN_MAX_CPU_ISA=AVX2 caps the oneDNN kernels of OpenVINO's CPU plugin, but the plugin decides some things
    by the real CPU (in release builds; its debug builds also read OV_CPU_MAX_ISA): on an AVX512-BF16 CPU it
    infers in bf16 by default, and with VNNI it quantizes the activations of a FullyConnected with int8 weights
    and float inputs on the fly. Under the cap oneDNN then has no kernel for them ("could not create a primitive
    descriptor"), which an AVX2 CPU never meets: there the plugin infers in f32 and runs such a FullyConnected in
    f32. So, under the cap, compiles for the CPU start from those AVX2 choices; settings a test passes win.
    """

    def compile_as_on_avx2(self, model, device_name=None, config=None):
        if device_name == "CPU":
            config = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", **(config or {})}
        return compile_model(self, model, device_name, config)

    return compile_as_on_avx2


if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
    import openvino

    openvino.Core.compile_model = _compile_as_on_avx2(openvino.Core.compile_model)
