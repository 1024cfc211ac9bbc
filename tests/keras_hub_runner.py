"""Runs KerasHub families through tests/keras_hub_child.py, a batch of families per child process.

Shared by tests/test_keras_hub_families.py and benchmarks/hub.py. A child that dies (a crash in native
code, a timeout) costs the family it was running, which is reported with the child's exit status and
the tail of its stderr; the families after it run in a new child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CHILD = TESTS / "keras_hub_child.py"

# ------------------------------------------------------------------------------ what runs, what is listed
#: Classes of `keras_hub.models` that subclass Backbone without being a model family's backbone.
BASES = {
    "feature_pyramid_backbone": "FeaturePyramidBackbone is the base class of the vision backbones "
    "that return feature maps, not a model",
}
#: Families whose small config does not build small on a CPU: not run (nor counted as exceptions).
NOT_SMALL = {}
#: Families that build small but do not go through the whole path, each with the reason (at most 10%
#: of the families that build small, with PARTLY_INT8).
FAILING = {}
#: Families whose IR runs less than 95% of its Convolution / FullyConnected / MatMul ops in int8, with
#: what is left in float and why.
PARTLY_INT8 = {}


def run_list():
    """The families run: every family with a small config (tests/keras_hub_backbones.py) but those
    that do not build small."""
    from keras_hub_backbones import CASES

    return sorted(family for family in CASES if family not in NOT_SMALL)



def child_env():
    """The environment of a child: this checkout importable, TensorFlow quiet, OpenVINO telemetry off
    (`CI`: 2-4 s saved per converter process)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "CI": "true"}


def run_phase(phase, families, workdir, timeout=1800, log=None):
    """`{family: result}` of one phase of the child ("compress" or "export") for `families`.

    Args:
        phase: "compress" or "export".
        families: family names (keys of `keras_hub_backbones.CASES`).
        workdir: the folder the models are saved to and read from.
        timeout: seconds one child may run.
        log: a callable given each result as it arrives (progress), or None.
    """
    results, left = {}, list(families)
    while left:
        try:
            done = subprocess.run(
                [sys.executable, str(CHILD), phase, str(workdir), *left],
                capture_output=True, text=True, env=child_env(), timeout=timeout,
            )  # fmt: skip
            stdout, stderr, status = done.stdout, done.stderr, done.returncode
        except subprocess.TimeoutExpired as expired:
            stdout, stderr, status = _text(expired.stdout), _text(expired.stderr), f"timeout after {timeout} s"
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results[result["family"]] = result
                if log is not None:
                    log(result)
        left = [family for family in left if family not in results]
        if left:  # the child died while running left[0]
            results[left[0]] = {"family": left[0], "phase": phase,
                                "error": f"the child process ended ({status}) while running it: {stderr[-1500:]}"}  # fmt: skip
            if log is not None:
                log(results[left[0]])
            left = left[1:]
    return results


def _text(output):
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_families(families, workdir, batch=12, timeout=1800, log=None):
    """`{family: {"compress": result, "export": result}}`: every family compressed, trained and saved
    in children of batches of `batch` families, then loaded in new children and exported."""
    results = {family: {} for family in families}
    for start in range(0, len(families), batch):
        part = families[start : start + batch]
        for family, result in run_phase("compress", part, workdir, timeout, log).items():
            results[family]["compress"] = result
        saved = [family for family in part if "error" not in results[family]["compress"]]
        for family, result in run_phase("export", saved, workdir, timeout, log).items():
            results[family]["export"] = result
    return results
