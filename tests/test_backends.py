"""Every Keras 3 backend: the algorithms, the callbacks, save/load/resume in a new process, export to an int8
OpenVINO IR and `keras.distribution.DataParallel`, on JAX (and on PyTorch where torch is installed).

`KERAS_BACKEND` is fixed when Keras is imported, so each backend runs in child programs (tests/programs/):
`backend_matrix.py train` then `resume` (a new process) per backend, `data_parallel.py` on two JAX host
devices. This process runs TensorFlow and checks what they wrote: the IRs run int8 and hold the same ops
as the TensorFlow export of the same `.keras` file and of the same scenario trained on TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import collections  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress.benchmark import compile_ir, compute_op_precisions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = Path(__file__).resolve().parent / "programs"
#: The backends other than TensorFlow that this machine can run: JAX is a test extra, torch is optional.
BACKENDS = ["jax"] + (["torch"] if importlib.util.find_spec("torch") is not None else [])
#: The 8-bit scenarios: all their Convolution/FullyConnected/MatMul ops run u8/i8. (HAWQ's 4-bit layer may run
#: f32, depending on which layer it picks: the same IR as the TensorFlow export all the same.)
QUANTIZED = ("attention_quantization", "filter_pruning_quantization")


def _program(name):
    """A child program as a module of this process (its scenarios, on TensorFlow)."""
    spec = importlib.util.spec_from_file_location(f"programs_{name}", PROGRAMS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def program_env(backend, cache, **env):
    """The environment of a child program: this tree's package, `backend`, the shared XLA cache."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "",
           # The children compile the same small XLA programs: resume and DataParallel read what train compiled
           # (measured: the resume child's CPU time went from 45 s to 24 s).
           "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **env}  # fmt: skip


def run_program(args, backend, cache, **env):
    """Runs `tests/programs/<args[0]>` on `backend`; fails the test with its stderr when it fails."""
    result = subprocess.run([sys.executable, str(PROGRAMS / args[0]), *map(str, args[1:])],
                            env=program_env(backend, cache, **env), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module", params=BACKENDS)
def matrix(request, tmp_path_factory, cache):
    """`(backend, work folder, train results, resume results)` of the backend matrix."""
    work = tmp_path_factory.mktemp(f"matrix_{request.param}")
    for phase in ("train", "resume"):
        run_program(["backend_matrix.py", phase, work], request.param, cache)
    train, resume = (json.loads((work / f"{phase}.json").read_text()) for phase in ("train", "resume"))
    return request.param, work, train, resume


def _scenarios(results):
    return {k: v for k, v in results.items() if isinstance(v, dict) and ("progress" in v or "progress_after" in v)}


def op_counts(xml):
    import openvino as ov

    return collections.Counter(op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops())


@pytest.mark.slow
def test_every_algorithm_trains_with_the_controller_callbacks(matrix):
    backend, _, train, _ = matrix
    assert train["backend"] == backend and Path(train["package"]).is_relative_to(ROOT)
    scenarios = _scenarios(train)
    assert set(scenarios) == set(_program("backend_matrix").SCENARIOS)
    for name, got in scenarios.items():
        assert got["progress"] == {"epochs": 2, "steps": 8}, name
        assert np.isfinite(got["loss"]).all(), name
    # The schedules' figures are in History (so in the progress bar, CSVLogger and TensorBoard).
    logged = {name: set(got["logged"]) for name, got in scenarios.items()}
    assert "compression/filter_pruning/pruning_level" in logged["filter_pruning_quantization"]
    assert {"compression/accuracy_aware/within_bound", "compression/magnitude_sparsity/sparsity_level"} <= (
        logged["magnitude_sparsity_accuracy_aware"])
    assert "compression/rb_sparsity/target_level" in logged["rb_sparsity"]
    assert "compression/movement_sparsity/sparsity_level" in logged["movement_sparsity"]
    figures = {name: got["figures"] for name, got in scenarios.items()}
    # Magnitude sparsity per step: the mask follows the schedule (0.2 -> 0.5 over 12 steps, 8 begun).
    assert figures["magnitude_sparsity_accuracy_aware"]["magnitude_sparsity/sparsity_level"] == pytest.approx(
        0.2 + 0.3 * 7 / 12, abs=0.01)
    # HAWQ (a Hessian trace by double backprop on this backend) gave some layers 4 bits within 6 on average.
    hawq = figures["quantization_hawq"]
    assert 4 <= hawq["quantization/weighted_weight_bits"] <= 6 and hawq["quantization/mean_weight_bits"] < 8
    assert figures["attention_quantization"]["quantization/weight_quantizers"] == 4 + 2  # q, k, v, output; 2 Dense
    assert figures["filter_pruning_quantization"]["filter_pruning/pruned_filters"] == 8  # conv2 keeps 24 of 32


@pytest.mark.slow
def test_saved_models_load_in_a_new_process_and_continue_their_schedules(matrix):
    _, _, train, resume = matrix
    for name, got in _scenarios(resume).items():
        assert got["bound_to_loaded"] and got["load_difference"] < 1e-5, name
        assert got["progress_before"] == {"epochs": 2, "steps": 8}, name
        assert got["progress_after"] == {"epochs": 3, "steps": 12}, name
    before, after = train["filter_pruning_quantization"]["figures"], resume["filter_pruning_quantization"]["figures"]
    assert after["filter_pruning/pruning_level"] > before["filter_pruning/pruning_level"]
    # RB sparsity's target is epoch 2 of the schedule (0.1 -> 0.5 over 3 epochs), not a restart at epoch 0.
    assert resume["rb_sparsity"]["figures"]["rb_sparsity/target_level"] == pytest.approx(0.1 + 0.4 * 2 / 3)


@pytest.mark.slow
def test_irs_exported_on_the_backend_run_int8_and_match_the_tensorflow_export(matrix, tmp_path):
    """The IR exported on JAX/PyTorch is the TensorFlow export of the same model: the same ops, the same
    outputs; quantized IRs run every Convolution, FullyConnected and MatMul in u8 or i8 (never pinned: AVX2
    CPUs run some MatMuls u8 where VNNI runs i8)."""
    _, work, _, resume = matrix
    for name in _scenarios(resume):
        xml = Path(resume[name]["xml"])
        # compile=False: a model compiled on PyTorch names its optimizer by a torch-only Keras module.
        reference = kc.export(keras.saving.load_model(work / "ir" / f"{name}.keras", compile=False), tmp_path / name)
        assert op_counts(xml) == op_counts(reference), name
        x = np.load(work / f"{name}.npz")["x"]
        compiled = compile_ir(xml, "f32")
        got, expected = compiled(x)[0], compile_ir(reference, "f32")(x)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=name)
        # What `ctrl.strip()` computed on the backend: within a few quantization steps of the IR.
        stripped = np.load(work / "ir" / f"{name}.npy")
        assert np.abs(got - stripped).max() <= 0.05 * np.abs(stripped).max(), name
        if name in QUANTIZED:
            precisions = compute_op_precisions(compiled, xml)
            assert precisions and {p for _, p in precisions} <= {"u8", "i8"}, (name, precisions)
    pruned = op_counts(resume["filter_pruning_quantization"]["xml"])
    assert pruned["FakeQuantize"] > 0 and pruned["Convolution"] == 2


@pytest.mark.slow
def test_a_cnn_trained_on_the_backend_exports_the_ops_of_one_trained_on_tensorflow(matrix, tmp_path):
    """Filter pruning + QAT trained here on TensorFlow for the same epochs: the IR has the same ops (the same
    number of filters removed, the same FakeQuantize ops) as the one trained on the other backend."""
    _, work, _, resume = matrix
    program = _program("backend_matrix")
    builder, config = program.SCENARIOS["filter_pruning_quantization"]
    keras.utils.set_random_seed(0)
    x, y = program.data(builder)
    compressed, ctrl = kc.compress(builder(), config, dataset=x, verbose=0)
    compressed.compile(optimizer=keras.optimizers.SGD(0.05), loss=program.LOSS)
    compressed.fit(x, y, batch_size=program.BATCH, epochs=program.EPOCHS + 1, verbose=0, callbacks=ctrl.callbacks())
    xml = kc.export(compressed, tmp_path / "tensorflow_trained")
    assert op_counts(xml) == op_counts(resume["filter_pruning_quantization"]["xml"])

    def kept_filters(path):
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return [str(op.get_output_partial_shape(0)) for op in model.get_ops() if op.get_type_name() == "Convolution"]

    assert kept_filters(xml) == kept_filters(resume["filter_pruning_quantization"]["xml"])
    assert sorted(kept_filters(xml)) == ["[?,24,8,8]", "[?,8,8,8]"]  # conv2 keeps 24 of its 32 filters (NCHW)


@pytest.mark.slow
def test_export_on_the_backend_checks_targets_first_and_refuses_classes_of_main(matrix):
    _, _, _, resume = matrix
    errors = resume["errors"]
    assert errors["target"].startswith("IsADirectoryError: The OpenVINO IR (.xml) target must be a file path")
    assert errors["main_class"].startswith("ValueError: Exporting from the")
    assert "class 'ScriptDefined' defined in __main__" in errors["main_class"]
    assert errors["left_behind"] == []  # nothing written, no staging folder left


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory, cache):
    work = tmp_path_factory.mktemp("data_parallel")
    run_program(["data_parallel.py", "devices", work], "jax", cache, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return work


@pytest.mark.slow
def test_data_parallel_on_two_jax_host_devices_equals_one_device(data_parallel):
    """`keras.distribution.DataParallel` (the scale-out engine on JAX) over two host devices: every variable's
    replicas are identical (quantizer ranges, sparsity masks, schedule counters, BatchNorm statistics), and
    after 8 steps the outputs equal single-device training within 1e-4 relative."""
    got = json.loads((data_parallel / "data_parallel.json").read_text())
    assert len(got["devices"]) == 2 and got["progress"] == {"epochs": 2, "steps": 8}
    replicas = got["replicas"]
    assert all(r["count"] == 2 and r["equal"] for r in replicas.values()), replicas
    kinds = ("kernel_scale", "activation_scale", "kernel_mask", "compression_step", "moving_variance")
    assert all(any(path.endswith(kind) for path in replicas) for kind in kinds)
    assert got["output_relative_difference"] < 1e-4
    assert max(got["variable_relative_differences"].values()) < 1e-4
    assert got["figures"] == got["single_figures"]
    assert got["figures"]["magnitude_sparsity/sparsity_level"] > 0.4  # the mask moved every step


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_multi_host_recipe_runs_on_two_processes_and_equals_one_device(data_parallel, cache):
    """docs/backends.md's multi-host recipe (`keras.distribution.initialize`, DataParallel, each host feeding
    its shard) with two processes on this machine: both hold the same variables, equal to single-device
    training's within 1e-4 relative."""
    env = program_env("jax", cache, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    port = _free_port()
    workers = [subprocess.Popen([sys.executable, str(PROGRAMS / "data_parallel.py"), "processes", str(data_parallel),
                                 str(index), str(port)], env=env, stderr=subprocess.PIPE, text=True)
               for index in (0, 1)]  # fmt: skip
    try:
        errors = [worker.communicate(timeout=600)[1] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(e[-3000:] for e in errors)
    single = np.load(data_parallel / "single.npz")
    hosts = [np.load(data_parallel / f"process_{index}.npz") for index in (0, 1)]
    assert len(single.files) == len(hosts[0].files) > 10
    for key in single.files:
        np.testing.assert_array_equal(hosts[0][key], hosts[1][key], err_msg=key)
        reference = single[key]
        assert np.abs(hosts[0][key] - reference).max() <= 1e-4 * max(np.abs(reference).max(), 1e-6), key
