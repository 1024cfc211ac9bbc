"""The instruction set OpenVINO's int8 kernels use can be capped at AVX2, so that CI runs the OpenVINO tests as
on a CPU without AVX512-VNNI: `ONEDNN_MAX_CPU_ISA=AVX2` in the environment (.ci/run, README "Tests").

oneDNN, inside OpenVINO's CPU plugin, reads the variable once, when the plugin first picks a kernel (measured:
set after a first compile in the same process, it changed nothing), so it must be in the process's environment
from the start. It caps the oneDNN kernels (Convolution, FullyConnected, MatMul, Pooling: where int8 arithmetic
happens). The plugin's own JIT kernels (FakeQuantize, Eltwise, Reduce) and its choices that depend on the CPU
follow the real CPU in release builds (its debug builds read OV_CPU_MAX_ISA too); of those choices, bf16 as the
default inference precision and quantizing the float inputs of a FullyConnected with int8 weights on the fly
would ask the capped oneDNN for kernels it does not have, so under the cap the test processes compile for the CPU
with the values an AVX2 CPU gets (f32, no dynamic quantization): tests/avx2_openvino.py.
"""

import os
import re

import pytest

from helpers import int8_kernels, results_of, run_program

#: Instruction sets above AVX2 in oneDNN's kernel names (`brgconv_avx512_amx_I8`, `jit_avx512_core_vnni`).
ABOVE_AVX2 = re.compile(r"avx512|amx|avx2_vnni|avx_vnni", re.IGNORECASE)


def assert_capped_at_avx2(kernels):
    names = [name for names in kernels.values() for name in names]
    assert kernels.keys() >= {"Convolution", "FullyConnected", "Pooling"}, kernels
    assert not [name for name in names if ABOVE_AVX2.search(name)], kernels
    # The JIT kernels name their instruction set: AVX2, or less on a CPU without it.
    assert all(re.search(r"avx2|avx|sse41", name) for name in kernels["Convolution"] + kernels["Pooling"]), kernels


@pytest.mark.openvino
def test_onednn_max_cpu_isa_caps_the_int8_kernels_at_avx2():
    # In a new process, whatever the CPU: the variable takes effect (on this AVX512/AMX machine the same network
    # runs brgconv_avx512_amx_I8 and brgemm_avx512_amx_I8 without it), and the child compiles as on AVX2.
    child = results_of(run_program("int8_kernels.py", env={"ONEDNN_MAX_CPU_ISA": "AVX2"}).stdout)
    assert_capped_at_avx2(child["kernels"])
    assert child["compile_model"] == "compile_as_on_avx2", child
    # In this process, when the test suite runs under the cap (.ci/run's AVX2 set): every test here is capped.
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
        import openvino

        assert_capped_at_avx2(int8_kernels())
        assert openvino.Core.compile_model.__name__ == "compile_as_on_avx2"


def test_compiles_start_from_the_avx2_choices_and_keep_what_the_caller_asks(monkeypatch):
    import avx2_openvino
    import openvino

    seen = []
    monkeypatch.setattr(openvino.Core, "compile_model", lambda self, model, device_name=None, config=None:
                        seen.append((device_name, config)))  # fmt: skip
    avx2_openvino.install()
    core = openvino.Core.__new__(openvino.Core)  # no plugin is loaded: the wrapped call is recorded
    core.compile_model("m.xml", "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    core.compile_model("m.xml", "CPU")
    core.compile_model("m.xml", "GPU", {"A": 1})
    assert seen == [("CPU", {**avx2_openvino.AVX2_CHOICES, "INFERENCE_PRECISION_HINT": "bf16"}),
                    ("CPU", avx2_openvino.AVX2_CHOICES), ("GPU", {"A": 1})]  # fmt: skip
