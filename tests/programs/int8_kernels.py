"""The oneDNN kernels OpenVINO's CPU plugin picks for a small int8 network in a new process, for
tests/test_cpu_isa.py (run with ONEDNN_MAX_CPU_ISA in its environment).

Usage: int8_kernels.py. Prints `RESULTS {json}`: `kernels`, `{layer type: [primitiveType, ...]}`
(`helpers.int8_kernels`), and `compile_model`, the name of the `openvino.Core.compile_model` this process has
(`compile_as_on_avx2` once tests/avx2/sitecustomize.py installed `avx2_openvino`).
"""

import json

import openvino

from helpers import int8_kernels

print("RESULTS " + json.dumps({"kernels": int8_kernels(), "compile_model": openvino.Core.compile_model.__name__}))
