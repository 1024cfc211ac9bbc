"""Configs by name (`kc.load_config("int8")`, `kc.list_configs()`) and the BatchNorm adaptation sample rule.

Only `keras_compress.config` is used here: it needs no TensorFlow.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from helpers import PROGRAMS
from keras_compress.config import ConfigError, ConfigWarning, list_configs, load_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = sorted(path.stem for path in (ROOT / "keras_compress" / "configs").glob("*.json"))


def test_list_configs_names_every_packaged_file():
    assert PACKAGED and list_configs() == PACKAGED


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_config_loads_by_name_with_or_without_json(name):
    by_name = load_config(name)
    assert by_name == load_config(f"{name}.json") == load_config(ROOT / "keras_compress" / "configs" / f"{name}.json")
    assert by_name.compression


def test_configs_load_by_name_from_another_directory(tmp_path):
    """A new process in an empty folder, where `configs/int8.json` does not exist as a path."""
    result = subprocess.run([sys.executable, str(PROGRAMS / "packaged_configs.py")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "KERAS_COMPRESS_LIGHT_IMPORT": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"['quantization'] {PACKAGED}"


def test_a_file_wins_over_a_packaged_config_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("int8").write_text(json.dumps({"compression": {"algorithm": "filter_pruning"}}))
    assert load_config("int8").algorithm_names() == ["filter_pruning"]
    assert load_config("int8.json").algorithm_names() == ["quantization"]


def test_an_unknown_name_lists_the_packaged_configs():
    with pytest.raises(ConfigError) as err:
        load_config("int4")
    assert "config file not found: 'int4'" in str(err.value) and ", ".join(PACKAGED) in str(err.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("configs/nothing.json")  # a path with a folder is never a packaged name


# ----------------------------------------------------------------------------- BatchNorm adaptation samples
def bn(samples=None, algorithm="quantization"):
    section = {"algorithm": algorithm}
    if samples is not None:
        section["initializer"] = {"batchnorm_adaptation": {"num_bn_adaptation_samples": samples}}
    return section


@pytest.mark.parametrize(
    "sections, expected",
    [
        ([bn(algorithm="filter_pruning"), bn(512)], 512),  # demo.json: a default does not overrule a set value
        ([bn(algorithm="filter_pruning"), bn(4096)], 4096),  # ... whichever way
        ([bn(algorithm="filter_pruning"), bn()], 2000),  # nothing set: NNCF's default
        ([bn(0, "filter_pruning"), bn()], 0),
        ([], 0),
    ],
)
def test_batchnorm_adaptation_reads_the_smallest_value_set(sections, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        config = load_config({"compression": sections})
    assert config.batchnorm_adaptation_samples() == expected
    assert load_config(config.to_dict()).batchnorm_adaptation_samples() == expected


def test_different_values_set_in_two_sections_are_warned_about():
    with pytest.warns(ConfigWarning) as record:
        config = load_config({"compression": [bn(1000, "filter_pruning"), bn(300)]})
    assert config.batchnorm_adaptation_samples() == 300
    (message,) = [str(w.message) for w in record]
    assert "compression[0] asks for 1000, compression[1] asks for 300" in message
    assert "runs once for all algorithms, on the smallest: 300 samples" in message


def test_demo_config_uses_the_quantization_sections_512_samples():
    config = load_config("demo")
    assert config.batchnorm_adaptation_samples() == 512
    assert "BatchNorm adaptation: 512 samples, once for all algorithms" in config.summary()
