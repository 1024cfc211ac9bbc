"""The last sharp edges of bad input: each is accepted as the user meant it, or refused with an error that names
the key or path, before any work is done. The cases and their messages are listed in docs/reliability.md
("Edges"); the rest of the bad-input corpus is tests/test_reliability.py.
"""

import json
import re

import keras
import numpy as np
import pytest

import keras_compress as kc
from keras_compress import cli
from keras_compress.export import exporter

L = keras.layers
QUANTIZATION = {"compression": {"algorithm": "quantization", "weights": {"bits": 8, "per_channel": True},
                                "initializer": {"range": {"num_init_samples": 8}}}}  # fmt: skip


def small_cnn(name="small"):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    return keras.Model(inp, L.Dense(2, name="fc")(L.Flatten(name="flat")(x)), name=name)


def images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 3)).astype("float32")


@pytest.fixture(scope="module")
def compressed():
    return kc.compress(small_cnn(), QUANTIZATION, dataset=images(), verbose=0)


def never_traced(monkeypatch):
    """Makes any export work fail loudly: the checks must refuse the input before."""

    def trace(model, directory):
        raise AssertionError("the export started work it should have refused")

    monkeypatch.setattr(exporter, "_save_saved_model", trace)


# ---------------------------------------------------------------------------------------------------
# Configs: a UTF-8 byte order mark, NumPy numbers, a negative input dimension


def test_a_json_string_or_file_that_starts_with_a_utf8_bom_loads(tmp_path):
    text = json.dumps(QUANTIZATION)
    (tmp_path / "bom.json").write_text(text, encoding="utf-8-sig")  # what Notepad writes
    assert (tmp_path / "bom.json").read_bytes().startswith(b"\xef\xbb\xbf")
    expected = kc.load_config(text)
    assert kc.load_config("\ufeff" + text) == expected  # before: "config file not found: '\ufeff{...}'"
    assert kc.load_config("\ufeff\n  " + text) == expected
    assert kc.load_config(tmp_path / "bom.json") == expected
    assert kc.load_config((tmp_path / "bom.json").read_text()) == expected  # read without -sig: the BOM stays


def test_numpy_scalars_in_a_config_built_in_code_are_taken_as_python_values():
    bits, samples, fraction = np.int64(8), np.int32(8), np.float32(0.25)
    config = {"compression": [
        {"algorithm": "quantization", "weights": {"bits": bits, "per_channel": np.True_},
         "initializer": {"range": {"num_init_samples": samples}}},
        {"algorithm": "magnitude_sparsity", "sparsity_init": fraction, "params": {"sparsity_target": np.float64(0.5)}},
    ]}  # fmt: skip
    loaded = kc.load_config(config)  # before: "must be an integer (received np.int64(8))"
    quantization, sparsity = loaded.compression
    assert quantization.weights.bits == 8 and type(quantization.weights.bits) is int
    assert quantization.weights.per_channel is True
    assert quantization.initializer.range.num_init_samples == 8
    assert sparsity.sparsity_init == pytest.approx(0.25) and type(sparsity.sparsity_init) is float
    assert config["compression"][0]["weights"]["bits"] is bits  # the caller's dict is left as it was
    compressed, _ = kc.compress(small_cnn(), config, dataset=images(), verbose=0)
    assert isinstance(compressed.get_layer("conv"), kc.QuantizeWrapper)


def test_numpy_values_that_are_not_valid_are_still_refused_with_their_path():
    with pytest.raises(kc.ConfigError, match=r"compression\.weights\.bits: `bits` must be between 2 and 8\. "
                                             r"Received: bits=12"):
        kc.load_config({"compression": {"algorithm": "quantization", "weights": {"bits": np.int64(12)}}})
    with pytest.raises(kc.ConfigError, match=r"compression\.weights\.bits: must be an integer \(received 8\.5\)"):
        kc.load_config({"compression": {"algorithm": "quantization", "weights": {"bits": np.float32(8.5)}}})


@pytest.mark.parametrize("sample_size,where", [([1, -8, 8, 3], "input_info.sample_size[1]"),
                                               ([[1, 8, 0, 3]], "input_info[0].sample_size[2]")])  # fmt: skip
def test_a_negative_or_zero_input_dimension_is_a_config_error_naming_the_key(sample_size, where):
    info = {"sample_size": sample_size} if isinstance(sample_size[0], int) else [{"sample_size": sample_size[0]}]
    config = {"input_info": info, **QUANTIZATION}
    model = keras.Sequential([L.Conv2D(4, 3, name="conv"), L.Flatten(), L.Dense(2, name="fc")])  # unbuilt
    with pytest.raises(kc.ConfigError) as err:
        kc.compress(model, config, dataset=images())  # before: "Sequential model has no defined inputs yet"
    assert str(err.value) == f"{where}: must be >= 1 (received {-8 if -8 in sample_size else 0})"
    assert not model.built


# ---------------------------------------------------------------------------------------------------
# Callbacks: a log_dir that cannot be a folder, the callbacks of one model in the fit of another


@pytest.mark.parametrize("under", [False, True], ids=["a_file", "under_a_file"])
def test_a_log_dir_that_is_a_file_is_refused_when_the_callbacks_are_made(compressed, tmp_path, under):
    _, ctrl = compressed
    blocker = tmp_path / "events"
    blocker.write_text("user data")
    log_dir = blocker / "run1" if under else blocker
    expected = (f"`log_dir` must be a folder path (it is created when missing). Received: log_dir={str(log_dir)!r}"
                + (f", whose {str(blocker)!r} is a file, not a folder" if under else ", which is an existing file"))
    with pytest.raises(NotADirectoryError) as err:  # before: TensorFlow's error at the end of the first epoch
        ctrl.callbacks(log_dir=log_dir)
    assert str(err.value) == expected
    with pytest.raises(NotADirectoryError, match=re.escape(expected)):  # the config's `log_dir` alike
        kc.compress(compressed[0], {**QUANTIZATION, "log_dir": str(log_dir)})[1].callbacks()
    assert blocker.read_text() == "user data"


def test_the_callbacks_of_one_model_refuse_the_fit_of_another_before_training():
    first, first_ctrl = kc.compress(small_cnn("first"), QUANTIZATION, dataset=images(), verbose=0)
    second, _ = kc.compress(small_cnn("second"), QUANTIZATION, dataset=images(), verbose=0)
    second.compile(optimizer="sgd", loss="mse")
    before = [w.copy() for w in second.get_weights()]
    with pytest.raises(ValueError) as err:  # before: trained without a word, the schedules of `first` driven
        second.fit(images(), np.zeros((8, 2)), epochs=1, verbose=0, callbacks=first_ctrl.callbacks())
    assert str(err.value).startswith(
        "The callbacks of `ctrl.callbacks()` must be passed to `fit` of the model their controller compresses, "
        "'first', or of a model that contains it. Received: `fit` of model 'second', which does not hold that "
        "model's weights.")  # fmt: skip
    assert int(second.optimizer.iterations) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, second.get_weights()))


def test_the_callbacks_accept_the_fit_of_a_model_that_contains_the_compressed_one():
    compressed, ctrl = kc.compress(small_cnn(), QUANTIZATION, dataset=images(), verbose=0)
    inp = keras.Input((8, 8, 3))
    outer = keras.Model(inp, L.Dense(1, name="outer_head")(compressed(inp)), name="outer")
    outer.compile(optimizer="sgd", loss="mse")
    outer.fit(images(), np.zeros((8, 1)), epochs=1, verbose=0, callbacks=ctrl.callbacks())
    assert ctrl.progress()["epochs"] == 1


# ---------------------------------------------------------------------------------------------------
# Export and convert: paths that name nothing, a folder under a file, a flag that is not a bool


@pytest.mark.parametrize("fmt,what", [("openvino", "IR file"), ("saved_model", "SavedModel folder")])
@pytest.mark.parametrize("path", ["", ".", ".."])
def test_export_to_a_path_that_names_nothing_is_refused_before_any_work(compressed, tmp_path, monkeypatch, fmt,
                                                                        what, path):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    never_traced(monkeypatch)
    with pytest.raises(ValueError) as err:  # before: "PosixPath('.') has an empty name"
        kc.export(compressed[0], path, format=fmt)
    assert str(err.value) == (f"`path` must name the {what} to write (`out/model`). Received: path={path!r}, "
                              "which names no file or folder.")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["no", 1, None])
def test_compress_to_fp16_must_be_a_bool(compressed, tmp_path, monkeypatch, value):
    never_traced(monkeypatch)
    with pytest.raises(TypeError) as err:  # before: "no" was taken as True
        kc.export(compressed[0], tmp_path / "model", compress_to_fp16=value)
    assert str(err.value) == f"`compress_to_fp16` must be True or False. Received: compress_to_fp16={value!r}"
    assert list(tmp_path.iterdir()) == []


def convert_error(capsys, *argv):
    """Runs `keras-compress convert` in this process; returns its one error line."""
    status = cli.main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == "" and "Traceback" not in captured.err, captured
    (line,) = captured.err.splitlines()
    return line


def test_convert_to_an_empty_output_or_under_a_file_names_the_output(capsys, tmp_path):
    # A folder that passes for a SavedModel: the output is refused before OpenVINO is asked anything.
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    assert convert_error(capsys, tmp_path / "sm", "-o", "") == (  # before: "PosixPath('.') has an empty name"
        "keras-compress convert: error: -o/--output: The OpenVINO IR target must name the file to write "
        "(`out/model` or `out/model.xml`). Received: '', which names no file.")  # fmt: skip
    (tmp_path / "notes.txt").write_text("user data")
    target = tmp_path / "notes.txt" / "ir" / "model.xml"
    line = convert_error(capsys, tmp_path / "sm", "-o", target)  # before: "OpenVINO could not convert"
    assert line.startswith(f"keras-compress convert: error: -o/--output: Cannot create the IR's directory "
                           f"{str(target.parent)!r}: [Errno 20] Not a directory"), line  # fmt: skip
    assert "OpenVINO" not in line and (tmp_path / "notes.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "sm"]

