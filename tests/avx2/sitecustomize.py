"""Imported by Python at the start of every child process of the test suite (conftest.py puts this folder first
on PYTHONPATH): under ONEDNN_MAX_CPU_ISA=AVX2, OpenVINO compiles as on an AVX2 CPU (`avx2_openvino`). Then runs
the `sitecustomize` this one hides, if the installation has one."""

import importlib.machinery
import importlib.util
import os
import sys

if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
    import avx2_openvino

    avx2_openvino.install()

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if _entry and os.path.abspath(_entry) != _here:
        _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [_entry])
        if _spec is not None:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
            break
