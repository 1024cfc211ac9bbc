"""The `keras-compress` command: fast light commands without TensorFlow, one-line errors, quiet start-up.

The other side of the light import, that `import keras_compress` still registers every serializable
class so a saved model loads in a new process, is checked here too.
"""

import configparser
import json
from pathlib import Path

import pytest

from helpers import run_program
from keras_compress import cli

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the light commands
def test_console_script_starts_in_the_launcher_outside_the_package():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["options.entry_points"]["console_scripts"].strip() == "keras-compress = keras_compress_launcher:main"
    assert "keras_compress_launcher" in setup["options"]["py_modules"]


def test_help_version_schema_configs_and_validate_do_not_import_tensorflow(tmp_path):
    """One new process runs the light commands as the console script does, then looks at sys.modules."""
    config = tmp_path / "mine.json"
    config.write_text(json.dumps({"compression": {"algorithm": "filter_pruning"}}))
    result = run_program("cli_light_commands.py", config, cwd=tmp_path, timeout=300)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["heavy"] == [] and report["light"] is False
    outputs = report["outputs"]
    assert all(status in (0, None) for status, _ in outputs.values()), outputs
    from keras_compress import __version__

    assert outputs["--version"][1].strip() == f"keras-compress {__version__}"
    assert "compression" in json.loads(outputs["schema"][1])["properties"]
    assert "int8: quantization" in outputs["configs"][1]
    assert "int8: valid" in outputs["validate int8"][1] and "per-channel" in outputs["validate int8"][1]
    assert "filter_pruning" in outputs[f"validate {config}"][1]
    assert result.stderr == ""


def test_every_option_has_help_text():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in [("", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if action.dest not in ("help", "command"):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    assert all(choice.help for choice in subparsers._choices_actions)


# ----------------------------------------------------------------------------- bad arguments
def one_error_line(capsys, argv):
    try:
        status = cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status not in (0, None), (argv, captured)
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in captured.err, (argv, lines)
    return lines[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["benchmark", "m.xml", "--rounds", "0"], "--rounds: must be a positive integer. Received: 0"),
        (["benchmark", "m.xml", "--batch-size", "-3"], "--batch-size: must be a positive integer. Received: -3"),
        (["benchmark", "m.xml", "--batch-size", "0"], "--batch-size: must be a positive integer. Received: 0"),
        (["benchmark", "m.xml", "--batch-size", "two"], "Received: 'two'"),
        (["demo", "--epochs", "-1"], "--epochs: must be an integer >= 0. Received: -1"),
        (["benchmark", "--precision", "f16", "m.xml"], "invalid choice: 'f16'"),
        (["compress-it"], "invalid choice: 'compress-it'"),
        (["convert", "somewhere"], "-o/--output"),
    ],
)
def test_a_bad_argument_is_one_line_and_a_non_zero_exit(capsys, argv, expected):
    assert expected in one_error_line(capsys, argv)


def test_a_file_that_is_not_an_ir_is_one_line_for_benchmark(capsys, tmp_path):
    (tmp_path / "page.xml").write_text("<html><body>not a model</body></html>")
    (tmp_path / "text.xml").write_text("not even xml")
    (tmp_path / "lonely.xml").write_text('<?xml version="1.0"?>\n<net name="m" version="11"></net>')
    (tmp_path / "broken.xml").write_text('<?xml version="1.0"?>\n<net name="m" version="11"><layers><layer')
    (tmp_path / "broken.bin").write_bytes(b"\0" * 16)
    cases = {
        "page.xml": "root element is <html>, not <net>",
        "text.xml": "is not an OpenVINO IR: not XML",
        "lonely.xml": "has no weights file next to it",
        "missing.xml": "no IR file there",
        "broken.xml": "OpenVINO could not read or compile",
    }
    for name, expected in cases.items():
        assert expected in one_error_line(capsys, ["benchmark", str(tmp_path / name)]), name
    line = one_error_line(capsys, ["benchmark", str(tmp_path / "broken.xml"), "--vs", str(tmp_path / "page.xml")])
    assert "page.xml" in line


def test_convert_and_demo_refuse_bad_paths_in_one_line(capsys, tmp_path):
    (tmp_path / "model.xml").write_text("<net/>")
    assert "must be a TensorFlow SavedModel directory" in one_error_line(
        capsys, ["convert", str(tmp_path / "model.xml"), "-o", str(tmp_path / "out.xml")]
    )
    broken = tmp_path / "sm"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    line = one_error_line(capsys, ["convert", str(broken), "-o", str(tmp_path / "out.xml")])
    assert "OpenVINO could not convert" in line and not (tmp_path / "out.xml").exists()
    assert "must be a directory" in one_error_line(capsys, ["demo", "--output", str(tmp_path / "model.xml")])
    assert "config file not found" in one_error_line(capsys, ["validate", str(tmp_path / "nothing.json")])


def test_validate_shows_config_warnings_as_lines(capsys, tmp_path):
    config = tmp_path / "nncf.json"
    config.write_text(json.dumps({"batch_size": 32, "compression": {"algorithm": "quantization"}}))
    assert cli.main(["validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: keys not used by keras_compress") and "'batch_size'" in captured.err
    assert "Traceback" not in captured.err and "warnings.warn" not in captured.err


# ----------------------------------------------------------------------------- quiet TensorFlow
def test_tensorflow_start_up_lines_are_recognized_as_noise():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796017593.450960   31631 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796017593.452088   31631 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        "W0000 00:00:1796017593.498399   31631 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.",
        "E0000 00:00:1796017656.105896   32390 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    ]
    kept = [
        "E0000 00:00:1796017900.424866    2962 text_format.cc:417] Error parsing text-format tensorflow.GraphDef",
        "UserWarning: something a user must see",
        "Traceback (most recent call last):",
    ]
    assert all(cli._NATIVE_NOISE.match(line) for line in noise)
    assert not any(cli._NATIVE_NOISE.match(line) for line in kept)


@pytest.mark.slow
def test_tensorflow_imported_by_the_cli_writes_nothing_to_stderr():
    result = run_program("cli_imports_tensorflow.py", cwd=ROOT, timeout=300)
    assert result.stderr == ""


def test_the_launcher_imports_only_the_standard_library_before_the_cli():
    import ast

    tree = ast.parse((ROOT / "keras_compress_launcher.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in top if isinstance(n, ast.ImportFrom)}  # fmt: skip
    assert names <= {"__future__", "os", "sys"}
    import keras_compress
    import keras_compress_launcher

    assert keras_compress_launcher.LIGHT_IMPORT_ENV == keras_compress.LIGHT_IMPORT_ENV


@pytest.mark.slow
def test_after_the_light_import_public_names_load_on_first_use():
    result = run_program("light_import_first_use.py", cwd=ROOT, timeout=300)
    assert result.stdout.split() == ["True", "True", "True"]


# ----------------------------------------------------------------------------- the other side
@pytest.mark.slow
def test_import_keras_compress_still_registers_every_serializable_class():
    result = run_program("import_registers_classes.py", cwd=ROOT, timeout=300)
    assert result.stdout.split() == ["[]", "True"]


@pytest.mark.slow
def test_a_saved_model_loads_in_a_new_process_after_import_keras_compress(tmp_path):
    import keras
    import numpy as np

    import keras_compress as kc

    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(x)))
    config = {"compression": [{"algorithm": "magnitude_sparsity", "sparsity_init": 0.5},
                              {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}}]}
    compressed, _ = kc.compress(model, config, dataset=np.random.default_rng(0).random((8, 6, 6, 1), "float32"),
                                verbose=0)  # fmt: skip
    compressed.save(tmp_path / "m.keras")
    result = run_program("saved_layer_types.py", tmp_path / "m.keras", cwd=ROOT, timeout=300)
    names = result.stdout.splitlines()[-1]
    assert "QuantizeWrapper" in names and "FakeQuantize" in names
