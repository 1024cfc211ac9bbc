"""Export to SavedModel / OpenVINO IR, INT8 at runtime, atomic writes, and the CLI."""

import json
import os
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_compress as kc
from helpers import run_program
from keras_compress.benchmark import compile_ir, runtime_precisions
from keras_compress.export import atomic, exporter
from keras_compress.export import openvino as ov_export

ROOT = Path(__file__).resolve().parents[1]


QAT = {
    "compression": {
        "algorithm": "quantization",
        "weights": {"per_channel": True},
        "initializer": {
            "range": {"num_init_samples": 64},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": 64},
        },
    }
}


def assert_close_in_steps(got, expected, max_steps, mean_steps):
    """Outputs agree within a few output quantization steps (range / 255).

    The same fake-quant grids give the same values up to float summation order, which can flip
    a rounding at a quantizer boundary and move an output by about one step.
    """
    step = (expected.max() - expected.min()) / 255
    diff = np.abs(np.asarray(got) - np.asarray(expected))
    assert diff.max() < max_steps * step, (diff.max(), step)
    assert diff.mean() < mean_steps * step, (diff.mean(), step)


def small_cnn():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(16, 1)(y)
    x = keras.layers.Add()([x, y])
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).uniform(0, 1, (64, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="module")
def compressed(data):
    keras.utils.set_random_seed(0)
    model, ctrl = kc.compress(small_cnn(), QAT, dataset=data)
    return model, ctrl


@pytest.mark.openvino
def test_ir_matches_keras_and_runs_int8(compressed, data, tmp_path):
    model, _ = compressed
    xml = kc.export(model, tmp_path / "model")
    assert xml == tmp_path / "model.xml"
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    compiled = compile_ir(xml, "f32")  # the default would run the float parts in bf16 here
    expected = model.predict(data, verbose=0)
    got = compiled(data)[0]
    assert_close_in_steps(got, expected, max_steps=8, mean_steps=1)
    counts = runtime_precisions(compiled)
    assert counts[("Convolution", "u8")] + counts[("Convolution", "i8")] == 4
    assert counts[("FullyConnected", "u8")] + counts[("FullyConnected", "i8")] == 1
    assert not [k for k in counts if k[1] not in ("u8", "i8")]


def test_ir_has_fakequantize_and_int8_weights(compressed, tmp_path):
    import openvino as ov

    xml = kc.export(compressed[0], tmp_path / "model.xml")
    ov_model = ov.Core().read_model(str(xml))
    types = [op.get_type_name() for op in ov_model.get_ops()]
    # Every call of an activation quantizer in the Keras graph is one FakeQuantize in the IR (a quantizer shared
    # by several inputs is called once per input); the weight quantizers are int8 constants instead.
    calls = sum(len(layer["inbound_nodes"]) for layer in compressed[0].get_config()["layers"]
                if layer["class_name"] == "FakeQuantize")  # fmt: skip
    assert calls == 7 and types.count("FakeQuantize") == calls, (calls, types.count("FakeQuantize"))
    int8_constants = [
        op for op in ov_model.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
    ]  # fmt: skip
    assert len(int8_constants) == 5  # 4 conv kernels + 1 dense kernel stored as int8


@pytest.mark.openvino
def test_fp32_export_matches_plain_model(tmp_path, data):
    model = small_cnn()
    xml = kc.export(model, tmp_path / "fp32")
    got = compile_ir(xml, "f32")(data)[0]
    np.testing.assert_allclose(got, model.predict(data, verbose=0), rtol=1e-4, atol=1e-4)


def test_saved_model_export(compressed, tmp_path, data):
    import tensorflow as tf

    path = kc.export(compressed[0], tmp_path / "sm", format="saved_model")
    assert (path / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(path))
    got = loaded.serve(tf.constant(data)).numpy()
    assert_close_in_steps(got, compressed[0].predict(data, verbose=0), max_steps=2, mean_steps=0.1)


def test_export_leaves_user_model_untouched(tmp_path):
    config = json.loads(json.dumps(QAT))
    config["compression"]["overflow_fix"] = "enable"
    model, _ = kc.compress(small_cnn(), config)
    before = [w.copy() for w in model.get_weights()]
    specs = [
        q.spec.half_range
        for layer in model.layers
        if isinstance(layer, kc.QuantizeWrapper)
        for q in layer.quantizers.values()
    ]
    assert all(specs)
    kc.export(model, tmp_path / "m")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(
        q.spec.half_range
        for layer in model.layers
        if isinstance(layer, kc.QuantizeWrapper)
        for q in layer.quantizers.values()
    )


@pytest.mark.openvino
def test_overflow_fix_export_keeps_outputs(tmp_path, data):
    config = json.loads(json.dumps(QAT))
    config["compression"]["overflow_fix"] = "enable"
    model, ctrl = kc.compress(small_cnn(), config, dataset=data)
    stripped = ctrl.strip()
    expected = model.predict(data, verbose=0)
    got = stripped.predict(data, verbose=0)
    # Same weight values on a wider grid: only float noise.
    assert_close_in_steps(got, expected, max_steps=2, mean_steps=0.5)
    counts = runtime_precisions(compile_ir(kc.export(model, tmp_path / "m")))
    assert set(p for _, p in counts) <= {"u8", "i8"}


def test_failed_export_leaves_nothing(compressed, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("simulated conversion failure")

    monkeypatch.setattr(exporter, "convert_saved_model", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        kc.export(compressed[0], tmp_path / "out" / "model")
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_export_keeps_previous_ir(compressed, tmp_path, monkeypatch):
    xml = kc.export(compressed[0], tmp_path / "model")
    before = xml.read_bytes()

    def fail(model, directory):
        (directory / "partial").mkdir(parents=True)
        raise RuntimeError("trace failed")

    monkeypatch.setattr(exporter, "_save_saved_model", fail)
    with pytest.raises(RuntimeError, match="trace failed"):
        kc.export(compressed[0], tmp_path / "model")
    assert xml.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]


def test_export_rejects_bad_arguments(compressed, tmp_path):
    with pytest.raises(ValueError, match="format"):
        kc.export(compressed[0], tmp_path / "m", format="onnx")
    with pytest.raises(TypeError, match="keras.Model"):
        kc.export("not a model", tmp_path / "m")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        kc.export(compressed[0], blocker / "sub" / "m")


def run_cli(*args):
    """`keras-compress ARGS` as the console script runs it (its launcher: the light commands load no TensorFlow)."""
    return subprocess.run([sys.executable, "-m", "keras_compress_launcher", *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_cli_validate_and_schema(tmp_path):
    good = resources.files("keras_compress") / "configs" / "int8.json"
    result = run_cli("validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "quantization" in result.stdout and "per-channel" in result.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"compression": {"algorithm": "quantization", "weights": {"bitz": 8}}}))
    result = run_cli("validate", str(bad))
    assert result.returncode != 0
    assert "compression.weights" in result.stderr and "bits" in result.stderr
    result = run_cli("schema")
    assert result.returncode == 0
    assert "compression" in json.loads(result.stdout)["properties"]


@pytest.mark.openvino
def test_cli_convert_and_benchmark(compressed, tmp_path):
    sm = kc.export(compressed[0], tmp_path / "sm", format="saved_model")
    result = run_cli("convert", str(sm), "-o", str(tmp_path / "conv.xml"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "conv.xml").is_file() and (tmp_path / "conv.bin").is_file()
    fp32 = kc.export(small_cnn(), tmp_path / "fp32")
    result = run_cli(
        "benchmark", str(tmp_path / "conv.xml"), "--vs", str(fp32), "--rounds", "2", "--precision", "f32"
    )
    assert result.returncode == 0, result.stderr
    assert "speedup" in result.stdout and "Convolution:u8" in result.stdout


def test_cli_errors_on_bad_input(tmp_path):
    result = run_cli("convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x.xml"))
    assert result.returncode != 0 and "SavedModel" in result.stderr
    assert not (tmp_path / "x.xml").exists()
    result = run_cli("benchmark", str(tmp_path / "missing.xml"))
    assert result.returncode != 0 and "no IR file" in result.stderr
    result = run_cli("validate", str(tmp_path / "missing.json"))
    assert result.returncode != 0


# ---------------------------------------------------------------------------------------------------
# Targets: never destroy what the export did not create; wrong kinds refused before any work


def never_traced(monkeypatch):
    """Makes tracing fail loudly: the checks must refuse the target before any work."""

    def trace(model, directory):
        raise AssertionError("the export started work on a target it should have refused")

    monkeypatch.setattr(exporter, "_save_saved_model", trace)


def tree(directory):
    """{relative path: bytes or None for a folder} of everything under `directory`."""
    return {
        str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(directory.rglob("*"))
    }


def test_saved_model_export_onto_a_regular_file_is_refused_and_the_file_kept(compressed, tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.write_bytes(b"user data")
    never_traced(monkeypatch)
    with pytest.raises(NotADirectoryError, match=r"must be a folder path\. Received: .*existing file"):
        kc.export(compressed[0], target, format="saved_model")
    assert tree(tmp_path) == {"model": b"user data"}


def test_saved_model_export_into_a_folder_of_user_files_is_refused_and_the_files_kept(compressed, tmp_path,
                                                                                      monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "saved_model.pb").write_bytes(b"old")
    before = tree(tmp_path)
    never_traced(monkeypatch)
    with pytest.raises(FileExistsError, match=r"must be new, empty, or a previous SavedModel.*holds notes\.txt"):
        kc.export(compressed[0], target, format="saved_model")
    assert tree(tmp_path) == before


def test_saved_model_export_fills_an_empty_folder_and_replaces_a_previous_saved_model(compressed, data, tmp_path):
    import tensorflow as tf

    target = tmp_path / "sm"
    target.mkdir()
    kc.export(compressed[0], target, format="saved_model")
    first = tree(target)
    assert "saved_model.pb" in first
    plain = small_cnn()
    small_cnn_outputs = plain.predict(data, verbose=0)
    kc.export(plain, target, format="saved_model")  # a previous SavedModel: replaced
    assert tree(target) != first
    loaded = tf.saved_model.load(str(target))
    np.testing.assert_allclose(loaded.serve(tf.constant(data)).numpy(), small_cnn_outputs, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]  # no staging folder left


@pytest.mark.parametrize("suffix", [".xml", ".bin"])
def test_ir_export_onto_a_directory_is_refused_before_any_work(compressed, tmp_path, monkeypatch, suffix):
    (tmp_path / f"model{suffix}").mkdir()
    (tmp_path / f"model{suffix}" / "inside.txt").write_text("mine")
    before = tree(tmp_path)
    never_traced(monkeypatch)
    with pytest.raises(IsADirectoryError, match=rf"must be a file path .*model\{suffix}', which is an existing "
                                                r"directory"):
        kc.export(compressed[0], tmp_path / "model")
    assert tree(tmp_path) == before


def test_ir_pair_is_replaced_as_a_pair(compressed, tmp_path, monkeypatch):
    xml = kc.export(compressed[0], tmp_path / "model")
    before = tree(tmp_path)
    real_replace = os.replace

    def replace(source, target):
        if Path(source).name == "model.xml" and Path(target) == xml:  # the new .xml, once
            raise OSError("simulated failure while moving the new .xml into place")
        return real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="simulated"):
        kc.export(small_cnn(), xml)
    assert tree(tmp_path) == before  # the old .xml with the old .bin, and nothing else


def test_stale_staging_of_a_killed_export_is_removed_by_the_next_export(tmp_path):
    # A child process dies (SIGKILL) in the middle of its export, after the SavedModel was written.
    result = run_program("export_interrupted.py", "sigkill", tmp_path / "model", check=False, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".kc-export-")]
    assert len(stale) == 1 and (stale[0] / "saved_model" / "saved_model.pb").is_file()
    alive = tmp_path / f".kc-export-{os.getpid()}-running"  # an export of a live process: kept
    alive.mkdir()

    kc.export(small_cnn(), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "model.bin", "model.xml"])


@pytest.mark.parametrize(("how", "status"), [("sigterm", -signal.SIGTERM), ("exit-from-thread", 3)])
def test_a_process_ended_during_an_export_removes_its_staging_folder(how, status, tmp_path):
    # SIGTERM (default handler) in the main thread's export, or the interpreter's exit while an export
    # runs in another thread: both after the SavedModel was written into the staging folder.
    result = run_program("export_interrupted.py", how, tmp_path / "model", check=False, timeout=300)
    assert result.returncode == status, result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_terminating_signals_are_taken_over_only_during_an_export_and_only_from_the_default(compressed, tmp_path,
                                                                                           monkeypatch):
    own = {signum: signal.getsignal(signum) for signum in atomic.TERMINATING_SIGNALS}
    during = []
    real = exporter._save_saved_model

    def save(model, directory):
        during.append({signum: signal.getsignal(signum) for signum in atomic.TERMINATING_SIGNALS})
        real(model, directory)

    monkeypatch.setattr(exporter, "_save_saved_model", save)
    try:
        for signum in atomic.TERMINATING_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        kc.export(compressed[0], tmp_path / "a")
        assert all(handler == signal.SIG_DFL for handler in map(signal.getsignal, atomic.TERMINATING_SIGNALS))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the process's own choice: left alone
        kc.export(compressed[0], tmp_path / "b")
    finally:
        for signum, handler in own.items():
            signal.signal(signum, handler)
    assert all(handler is atomic._end_by_signal for handler in during[0].values())
    assert during[1][signal.SIGTERM] == signal.SIG_IGN
    assert not atomic._LIVE and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.xml", "b.bin", "b.xml"]


# ---------------------------------------------------------------------------------------------------
# OpenVINO's converter runs in its own process: a crash there cannot take the user's process down


def test_a_converter_crash_is_a_runtime_error_and_this_process_survives(compressed, data, tmp_path, monkeypatch):
    xml = kc.export(small_cnn(), tmp_path / "model")  # a previous IR at the target
    before = tree(tmp_path)
    # The converter process dies with SIGSEGV on its job, as OpenVINO's did on NASNetMobile.
    ov_export._CONVERTER.close()
    crash = "import os, signal, sys\nsys.stdin.readline()\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    monkeypatch.setattr(ov_export, "CONVERTER_CODE", crash)
    with pytest.raises(RuntimeError, match=r"converter crashed \(killed by signal SIGSEGV\) while converting "
                                           r"model 'functional.*this process and its model are unaffected"):
        kc.export(compressed[0], xml)
    assert tree(tmp_path) == before
    assert compressed[0].predict(data, verbose=0).shape == (len(data), 10)  # this process works on
    monkeypatch.undo()  # the real converter again: a new converter process is started
    kc.export(compressed[0], xml)
    assert tree(tmp_path) != before and xml.with_suffix(".bin").is_file()


def test_relative_ir_paths_follow_the_working_directory(compressed, tmp_path, monkeypatch):
    """The converter process outlives a `chdir` of this process: relative targets still land here."""
    model, _ = compressed
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    kc.export(model, "out/model")  # starts (or reuses) the converter process
    monkeypatch.chdir(tmp_path / "b")
    xml = kc.export(model, "out/model")
    assert (tmp_path / "b" / "out" / "model.xml").is_file() and (tmp_path / "b" / "out" / "model.bin").is_file()
    assert str(xml) == "out/model.xml"
