"""The documentation site builds in strict mode, the statistics plot draws, and the examples run.

The digits QAT example is run by tests/test_examples_and_demo.py.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_compress.statistics import CompressionStatistics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "NO_MKDOCS_2_WARNING": "1"}


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name, *args, timeout=600):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def figure(out, label):
    return float(re.search(rf"^{label}:\s+([\d.]+)", out, re.M).group(1))


# ----------------------------------------------------------------------------- the site
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings_handlers.python")


def test_mkdocs_build_strict(tmp_path):
    missing = [p for p in DOCS_PACKAGES if importlib.util.find_spec(p.split(".")[0]) is None]
    assert not missing, f"{missing} not installed: pip install -e '.[docs]' (the README's test command does)"
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    reference = (site / "config-reference" / "index.html").read_text()
    for key in ("quantization", "filter_pruning", "rb_sparsity", "movement_sparsity", "sparsity_target",
                "num_bn_adaptation_samples", "maximal_relative_accuracy_degradation"):  # fmt: skip
        assert key in reference, key
    api = (site / "api" / "index.html").read_text()
    # Rendered from the docstrings: each function has its anchor, its summary line and its sections.
    import keras_compress as kc

    for name in ("compress", "load_config", "export"):
        assert f'id="keras_compress.{name}"' in api, name
    assert kc.compress.__doc__.splitlines()[0] in api
    assert "Parameters:" in api and "Returns:" in api
    for page in ("quickstart", "migration-nncf", "migration-tfmot", "examples", "benchmarks"):
        assert (site / page / "index.html").is_file(), page


def test_config_reference_lists_every_key_of_the_schema():
    from keras_compress.config import json_schema

    hooks = load_module(ROOT / "docs" / "hooks" / "site.py", "kc_docs_hooks")
    schema = json_schema()
    page = hooks.config_reference_markdown(schema)
    objects = [schema, *schema["$defs"].values()]
    for obj in objects:
        for key in obj.get("properties", {}):
            assert f"| `{key}` |" in page, key
    # Defaults and constraints come from the pydantic models.
    assert re.search(r"\| `sparsity_target` \| number \| `0.5` \| >= 0", page)
    assert "[QuantizerGroupConfig](#quantizergroupconfig)" in page
    assert "{#quantizergroupconfig}" in page


def test_every_key_of_the_config_reference_is_described_and_no_internal_model_is_listed():
    from keras_compress.config import json_schema

    schema = json_schema()
    undescribed = [f"{name}.{key}" for name, obj in [("CompressionConfig", schema), *schema["$defs"].items()]
                   for key, prop in obj.get("properties", {}).items() if not prop.get("description", "").strip()]
    assert not undescribed
    assert not [name for name in schema["$defs"] if name.startswith("_")]
    assert "extra" not in schema["properties"] and "ignored_algorithms" not in schema["properties"]
    page = load_module(ROOT / "docs" / "hooks" / "site.py", "kc_docs_hooks").config_reference_markdown(schema)
    assert page.startswith("---\nhide:\n  - toc\n---\n")  # the tables get the page's width
    assert '<div class="kc-config-reference" markdown>' in page


def test_nav_leaves_out_pages_that_do_not_exist(tmp_path):
    hooks = load_module(ROOT / "docs" / "hooks" / "site.py", "kc_docs_hooks")
    (tmp_path / "index.md").write_text("# x")
    (tmp_path / "quantization.md").write_text("# x")
    nav = [
        {"Home": "index.md"},
        {"Algorithms": [{"Quantization": "quantization.md"}, {"Filter pruning": "pruning.md"}]},
        {"Later": [{"Nothing yet": "later.md"}]},
        {"Reference": hooks.REFERENCE_PAGE},
    ]
    assert hooks._existing_nav(nav, tmp_path) == [
        {"Home": "index.md"},
        {"Algorithms": [{"Quantization": "quantization.md"}]},
        {"Reference": hooks.REFERENCE_PAGE},
    ]


# ----------------------------------------------------------------------------- statistics plot
def stats_of_three_algorithms():
    return CompressionStatistics(
        {
            "filter_pruning": {
                "figures": {"pruned_filters": 40},
                "filters": (["layer", "filters kept", "filters", "params full"],
                            [["conv1", 32, 32, 288], ["conv2", 24, 64, 900]]),
                "skipped": {"conv1": "first convolution"},
            },
            "magnitude_sparsity": {
                "figures": {"sparsity_level": 0.5},
                "layers": (["layer", "weights", "sparsity"], [["conv1", 288, 0.25], ["conv2", 18432, 0.5]]),
            },
            "quantization": {
                "weights": (["layer", "weight", "bits", "mode"], [["conv1", "kernel", 8, "symmetric"],
                                                                  ["conv2", "kernel", 4, "symmetric"]]),
                "mixed precision": (["weight", "parameters", "sensitivity", "bits"], []),
            },
        }
    )  # fmt: skip


def test_plot_panels_cover_bits_sparsity_and_kept_filters():
    panels = {(p["title"], str(p["column"])): p for p in stats_of_three_algorithms().plot_panels()}
    assert set(panels) == {
        ("filter_pruning: filters", "filters kept"),
        ("magnitude_sparsity: layers", "sparsity"),
        ("quantization: weights", "bits"),
    }
    kept = panels[("filter_pruning: filters", "filters kept")]
    assert kept["labels"] == ["conv1", "conv2"] and kept["values"] == [32.0, 24.0] and kept["totals"] == [32.0, 64.0]
    bits = panels[("quantization: weights", "bits")]
    assert bits["labels"] == ["conv1/kernel", "conv2/kernel"] and bits["values"] == [8.0, 4.0]
    assert bits["totals"] is None
    assert panels[("magnitude_sparsity: layers", "sparsity")]["values"] == [0.25, 0.5]


def test_plot_writes_a_png_of_a_real_controller(tmp_path):
    import keras

    import keras_compress as kc

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(3, name="dense")(keras.layers.Flatten()(x))
    config = {
        "compression": [
            {"algorithm": "magnitude_sparsity", "sparsity_init": 0.5, "params": {"sparsity_target": 0.5},
             "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
            {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 8}}},
        ]
    }  # fmt: skip
    data = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 1)).astype("float32")
    _, ctrl = kc.compress(keras.Model(inputs, outputs), config, dataset=data)
    stats = ctrl.statistics()
    columns = {str(p["column"]) for p in stats.plot_panels()}
    assert columns == {"bits", "sparsity"}
    path = stats.plot(tmp_path / "plots" / "stats.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="No table has a numeric column"):
        stats.plot(tmp_path / "none.png", columns=("kept filters",))


def test_layer_overview_shows_what_differs_between_layers():
    overview = stats_of_three_algorithms().layer_overview()
    assert overview["rows"] == ["conv1", "conv2"]
    assert [c.split("\n")[0] for c in overview["columns"]] == ["filters kept", "sparsity", "bits"]
    (kept1, sparse1, bits1), (kept2, sparse2, bits2) = overview["cells"]
    assert [kept1["text"], kept2["text"], sparse1["text"], sparse2["text"], bits1["text"], bits2["text"]] == [
        "32/32", "24/64", "25%", "50%", "8", "4"]
    # The more compressed layer of each column is the stronger one: fewer filters kept, more zeros, fewer bits.
    assert (kept1["strength"], kept2["strength"]) == (0.0, 1.0)
    assert (sparse1["strength"], sparse2["strength"]) == (0.0, 1.0)
    assert (bits1["strength"], bits2["strength"]) == (0.0, 1.0)
    # With two layers there is no "most layers" value: nothing is marked as departing from it.
    assert not any(cell["differs"] for row in overview["cells"] for cell in row)


def test_a_layer_that_departs_from_the_common_value_is_marked():
    stats = CompressionStatistics({
        "quantization": {"weights": (["layer", "weight", "bits"], [[f"conv{i}", "kernel", 8] for i in range(3)]
                                     + [["fc", "kernel", 4]])},
        "magnitude_sparsity": {"layers": (["layer", "weights", "sparsity"], [["conv0", 9, 0.5], ["fc", 9, 0.5]])},
    })  # fmt: skip
    overview = stats.layer_overview()
    differs = {row: [cell["differs"] for cell in cells if cell] for row, cells in zip(overview["rows"], overview["cells"])}
    assert differs == {"conv0": [False, False], "conv1": [False], "conv2": [False], "fc": [True, False]}
    assert CompressionStatistics({"quantization": stats.sections["quantization"]}).layer_overview() is None


def test_plot_labels_every_bar_with_its_value_and_collapses_uniform_columns():
    from matplotlib.figure import Figure

    from keras_compress.statistics import _collapse_uniform, _draw_bars

    panels = {p["column"]: p for p in stats_of_three_algorithms().plot_panels()}
    texts = {}
    for column, panel in panels.items():
        ax = Figure().subplots()
        _draw_bars(ax, _collapse_uniform(panel))
        texts[column] = [t.get_text() for t in ax.texts]
    assert texts == {"filters kept": ["32/32", "24/64"], "sparsity": ["25%", "50%"], "bits": ["8", "4"]}
    uniform = {"title": "quantization: activations", "column": "bits", "labels": ["a", "b", "c"],
               "values": [8.0, 8.0, 8.0], "totals": None}  # fmt: skip
    collapsed = _collapse_uniform(uniform)
    assert collapsed["labels"] == ["all 3"] and collapsed["values"] == [8.0] and "the same for all 3" in collapsed["note"]


# ----------------------------------------------------------------------------- benchmarks
def test_benchmark_builders_match_the_demo_model_and_write_markdown():
    import keras

    from keras_compress.demo import build_digits_cnn

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        compare = load_module(ROOT / "benchmarks" / "tfmot_compare.py", "kc_tfmot_compare")
        report = load_module(ROOT / "benchmarks" / "report.py", "kc_bench_report")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # Same layers in the same order: the FP32 weights move between Keras 3 and tf_keras.
    shapes = [w.shape for w in compare.build_digits_cnn(keras).get_weights()]
    assert shapes == [w.shape for w in build_digits_cnn().get_weights()]
    x, y = compare.make_patterns(20, 0)
    assert x.shape == (20, 32, 32, 3) and set(y) <= set(range(10))
    assert compare.build_resnet_cnn(keras).output_shape == (None, 10)
    table = report.md_table(["a", "b|c"], [[1.23456, "x"]])
    assert table.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1.235 | x |"]
    assert "| keras |" in report.machine_markdown()


# ----------------------------------------------------------------------------- examples
@pytest.mark.slow
@pytest.mark.openvino
def test_resnet_pruning_int8_example_removes_filters_and_runs_int8(tmp_path):
    out = run_example("resnet_pruning_int8.py", "--output", tmp_path)
    fp32, int8 = figure(out, "FP32 IR accuracy"), figure(out, "Pruned INT8 IR accuracy")
    assert fp32 > 0.9, out
    assert int8 >= fp32 - 0.02, out
    assert figure(out, "Parameters kept") < 0.8, out  # the masks cover the pruned filters
    assert re.search(r"^INT8 runtime precisions:\s+(u8|i8)(, (u8|i8))?$", out, re.M), out
    kib = re.search(r"^IR weights \(.bin\):\s+([\d.]+) KiB -> ([\d.]+) KiB", out, re.M)
    assert float(kib.group(2)) < float(kib.group(1)) / 3, out  # int8 weights
    conv = re.search(r"^IR convolution weights:\s+\d+ -> \d+ \(([\d.]+)\)", out, re.M)
    assert float(conv.group(1)) < 0.8, out  # pruned filters removed from the IR


@pytest.mark.slow
def test_accuracy_aware_sparsity_example_raises_the_level_within_the_bound():
    out = run_example("accuracy_aware_sparsity.py", "--epochs", 10)
    fp32, final = figure(out, "FP32 accuracy"), figure(out, "Final accuracy")
    assert final >= figure(out, "Accuracy bound") - 1e-6, out
    assert figure(out, "Final sparsity level") > 0.4, out  # started at 0.3
    assert fp32 > 0.95


@pytest.mark.slow
@pytest.mark.openvino
def test_nncf_config_example_reaches_the_files_sparsity_in_int8(tmp_path):
    out = run_example("nncf_config.py", "--output", tmp_path)
    assert "rb_sparsity, quantization" in out
    assert re.search(r"^Training-script keys:.*\bbatch_size\b.*\boptimizer\b", out, re.M), out
    fp32, int8 = figure(out, "FP32 Keras accuracy"), figure(out, "INT8 OpenVINO accuracy")
    assert int8 >= fp32 - 0.02, out
    level = figure(out, "Sparsity level reached")
    assert abs(level - 0.52) <= 0.03, out
