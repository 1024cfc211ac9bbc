"""OpenVINO's CPU plugin compiling as on an AVX2 CPU, in the processes of a test run under ONEDNN_MAX_CPU_ISA=AVX2.

ONEDNN_MAX_CPU_ISA=AVX2 caps the oneDNN kernels of OpenVINO's CPU plugin (tests/test_cpu_isa.py), but in release
builds the plugin still makes some choices by the real CPU (its debug builds also read OV_CPU_MAX_ISA): on a CPU
with AVX512-BF16 it infers in bf16 by default, and with VNNI it quantizes on the fly the float inputs of a
FullyConnected whose weights are int8. Under the cap oneDNN has no kernel for those ("Supported primitive
descriptors list is empty for node: ... type: Pooling", "could not create a primitive descriptor for the inner
product"), which an AVX2 CPU never meets: there the plugin infers in f32 and runs such a FullyConnected in f32.
`install` makes every compile for the CPU start from those AVX2 choices; settings the caller passes win.

conftest.py calls `install` in the test process; `tests/avx2/sitecustomize.py` (first on the PYTHONPATH that
conftest.py gives the child processes) calls it in every child, at start-up.
"""

import importlib.abc
import importlib.util
import os
import sys

#: Whether this process runs with OpenVINO's oneDNN kernels capped at AVX2.
CAPPED = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2"
#: What the CPU plugin picks by itself on an AVX2 CPU, where the cap does not reach its choice.
AVX2_CHOICES = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def install():
    """Makes `openvino.Core.compile_model` start CPU compiles from AVX2_CHOICES, now if openvino is imported, else
    when it is (the process imports nothing it would not import without this)."""
    if "openvino" in sys.modules:
        _patch(sys.modules["openvino"])
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def _patch(openvino):
    compile_model = openvino.Core.compile_model
    if compile_model.__name__ == "compile_as_on_avx2":
        return

    def compile_as_on_avx2(self, model, device_name=None, config=None):
        if device_name == "CPU":
            config = {**AVX2_CHOICES, **(config or {})}
        return compile_model(self, model, device_name, config)

    openvino.Core.compile_model = compile_as_on_avx2


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches the `openvino` package right after it is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "openvino":
            return None
        sys.meta_path.remove(self)  # once; and the search below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec
