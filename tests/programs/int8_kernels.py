"""The oneDNN kernels OpenVINO's CPU plugin picks for a small int8 network in a new process, for
tests/test_cpu_isa.py (run with ONEDNN_MAX_CPU_ISA in its environment).

Usage: int8_kernels.py. Prints `RESULTS {json}`: `{layer type: [primitiveType, ...]}` (`helpers.int8_kernels`).
"""

import json

from helpers import int8_kernels

print("RESULTS " + json.dumps(int8_kernels()))
