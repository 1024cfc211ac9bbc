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
#: Families that build small but do not go through the whole path, each with the reason (the goal is
#: at most 10% of the families that build small, with PARTLY_INT8; docs/keras_hub.md has the figure).
FAILING = {
    "deberta_v3": "OpenVINO 2026.4's CPU plugin does not compile the INT8 IR: its low-precision "
    "ReshapeTransformation throws on the per-channel dequantization of the relative-position key "
    "projection reshaped to [?, 512, 2, 1] (a broadcast check); conversion, save and load work",
    "dinov3": "OpenVINO 2026.4's CPU plugin does not compile the INT8 IR: its low-precision "
    "ReshapeTransformation throws on the per-channel dequantization of the bias-free o_proj Dense "
    "reshaped from [?, 16] to [?, 21, 16] (static token count); conversion, save and load work",
    "gemma4": "Gemma4ClippableEinsumDense holds an EinsumDense but never calls it: its call() computes "
    "ops.einsum(x, self.dense.kernel), reading the sublayer's kernel, which the QuantizeWrapper around "
    "the sublayer does not have (compress fails in the first forward pass)",
    "basnet": "OpenVINO 2026.4's CPU plugin does not compile the IR: 'CPU plugin does not support f64 "
    "for use with oneDNN' (a float64 tensor in KerasHub's BASNet graph)",
    "d_fine": "the backbone's outputs are not a SavedModel signature: 'decoder_hidden_states' is a tuple "
    "of tensors inside the output dict, which TensorFlow's SavedModel export rejects (the float model "
    "too)",
    "depth_anything": "the model loaded in a new process computes something else (0.054 of the largest "
    "output, after the fit step; equal when loaded without training in the compressing process): not "
    "analysed",
    "qwen3_5": "exported at the compressed sizes (Qwen3_5GatedDeltaNet needs its length known to trace), "
    "the IR does not convert: OpenVINO's TensorFlow frontend has no rule for MatrixDiagV3",
    "qwen3_5_moe": "as qwen3_5: Qwen3_5GatedDeltaNet's MatrixDiagV3 has no OpenVINO conversion rule",
    "sam3": "the model loaded in a new process computes something else (0.042 of the largest output; "
    "every compute op of its IR is int8): not analysed",
    "stable_diffusion_3": "the float backbone does not run in a TensorFlow graph: "
    "FlowMatchEulerDiscreteScheduler.set_sigmas passes its step count to ops.linspace as a Python "
    "number (the uncompressed model's predict fails the same way on the TensorFlow backend)",
    "swin_transformer": "OpenVINO's TensorFlow frontend has no rule for XlaDynamicUpdateSlice, which "
    "Keras' TensorFlow backend emits for the window attention's ops.slice_update (the float model's IR "
    "does not convert either)",
}
#: Families whose IR runs less than 95% of its Convolution / FullyConnected / MatMul ops in int8, with
#: what is left in float and why.
_EXPERTS = ("the mixture-of-experts layer ({}) holds the experts' kernels as weights of its own and "
            "multiplies them with ops.einsum: a layer with its own math, left in float and listed "
            "({} FullyConnected in f32); attention and shared layers are int8")  # fmt: skip
PARTLY_INT8 = {
    "gpt_oss": _EXPERTS.format("GptOssExperts", 4),
    "mixtral": _EXPERTS.format("MixtralMoeExperts", 5),
    "qwen_moe": _EXPERTS.format("QwenMoeExperts", 4),
    "qwen3_moe": _EXPERTS.format("Qwen3MoeExperts", 4),
    "smollm3": "16 of 18: the 2 f32 MatMuls are SmolLM3RotaryEmbedding's inv_freq x positions product "
    "(a layer with a weight of its own, left in float and listed)",
    "vit_det": "11 of 19: 4 MatMuls of AddRelativePositionalEmbedding (a layer with weights of its own: "
    "the relative-position einsums stay float) and 4 FullyConnected that OpenVINO keeps in f32 "
    "(not analysed)",
    "xlnet": "22 of 24: the 2 f32 FullyConnected are TwoStreamRelativeAttention's segment term, "
    "einsum('bind,snd->bnis', query + bias, segment_encoding), whose second operand is a weight of the "
    "encoder (one vector per segment and head): a matmul with a weight, not a layer's, left in float",
    "gemma3n": "49 of 53: AltUp calls its prediction_coefs / correction_coefs Dense layers and its "
    "coefficient matmul from its predict() and correct() methods, not from call(), and a composite layer's "
    "graph is recorded from call(): their inputs get no quantizer (2 FullyConnected, 1 MatMul in f32; their "
    "weights are quantized). The vision stem's 3-channel Convolution stays f32 in OpenVINO's runtime "
    "although both its inputs are FakeQuantize outputs (its input is a Concat of the images with a constant)",
    "rwkv7": "17 of 158: RWKV7TimeMix has weights of its own (w1, a1, g1, ...) besides its Dense "
    "sublayers, so it is left as it is, sublayers included, and listed; its WKV recurrence, unrolled "
    "over the length it is exported at (the compressed one: its call needs the length known to trace), "
    "is 128 f32 MatMuls, with 13 FullyConnected in f32",
    "sam": "67 of 133: the prompt encoder and the mask decoder's two-way transformer leave 34 "
    "FullyConnected and 32 MatMuls in f32 (not analysed)",
}


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
