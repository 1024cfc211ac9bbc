"""The documentation's code is true: its Python blocks run, its JSON configs load, its commands parse.

Python blocks of a page run in order in one namespace, in a scratch folder, after a prelude that
defines what the pages take as given: `model` (a small digits-shaped CNN), `x_train`, `y_train`,
`x`, `y`, `xv`, `yv`, `x_test`, `y_test`, `train_ds`, `val_ds`, `loss`, `optimizer`, a compiled
`compressed` model with its `ctrl`, and `config`, the last JSON block above the Python block on
the page. A block right after the line `<!-- docs-test: skip -->` is not run (code for other
libraries, NNCF and tfmot, on the migration pages).
"""

import json
import re
import shlex
import shutil
import warnings
from pathlib import Path

import pytest

from keras_compress import cli
from keras_compress.config import ConfigWarning, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = "<!-- docs-test: skip -->"
#: Pages whose Python is run elsewhere, not here.
NOT_RUN_HERE = {"reliability.md": "distributed training on several workers: tests/test_reliability.py runs it",
                "backends.md": "JAX data parallelism, one host and several: tests/test_backends.py runs it"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")

PRELUDE = """
import keras
import numpy as np
import tensorflow as tf
import keras_compress as kc

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)


def make_model():
    inputs = keras.Input((8, 8, 1), name="image")
    h = inputs
    for i, filters in enumerate((8, 16)):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(h)
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(h)
        h = keras.layers.ReLU(name=f"relu{i + 1}")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="docs_cnn")


model = make_model()
x_train, y_train = rng.random((96, 8, 8, 1), "float32"), rng.integers(0, 10, 96)
x_test, y_test = rng.random((32, 8, 8, 1), "float32"), rng.integers(0, 10, 32)
x, y, xv, yv = x_train, y_train, x_test, y_test
train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)
val_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(32)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
optimizer = keras.optimizers.Adam(1e-3)
compressed, ctrl = kc.compress(model, {"compression": {"algorithm": "magnitude_sparsity"}}, verbose=0)
compressed.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
"""


def blocks(path):
    """`(language, code, skipped, line)` of every fenced block of a Markdown file."""
    lines = path.read_text().splitlines()
    found, index, previous = [], 0, ""
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match or not match["lang"]:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        indent, start = match["indent"], index
        body = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent):])
            index += 1
        found.append((match["lang"], "\n".join(body), previous == SKIP, start + 1))
        previous, index = "", index + 1
    return found


def page_id(path):
    return str(path.relative_to(ROOT))


PYTHON_PAGES = [p for p in PAGES if any(lang == "python" for lang, *_ in blocks(p)) and p.name not in NOT_RUN_HERE]


def test_the_snippets_are_found():
    names = {p.name for p in PYTHON_PAGES}
    assert {"README.md", "index.md", "quickstart.md", "quantization.md", "pruning.md", "sparsity.md",
            "training.md", "config.md", "export.md", "migration-nncf.md", "migration-tfmot.md", "transformers.md"} <= names  # fmt: skip
    skipped = [(p.name, line) for p in PAGES for lang, _, skip, line in blocks(p) if skip]
    assert sorted({name for name, _ in skipped}) == ["migration-nncf.md", "migration-tfmot.md"], skipped


@pytest.mark.parametrize("path", [p for p in PAGES if any(lang == "json" for lang, *_ in blocks(p))], ids=page_id)
def test_every_json_config_in_the_docs_loads(path):
    for lang, code, skipped, line in blocks(path):
        if lang == "json" and not skipped:
            with warnings.catch_warnings():
                warnings.simplefilter("error", ConfigWarning)
                assert load_config(json.loads(code)).compression, f"{path.name}:{line}"


def test_every_keras_compress_command_in_the_docs_parses():
    commands = []
    for path in PAGES:
        for lang, code, skipped, line in blocks(path):
            if lang in ("bash", "sh", "console") and not skipped:
                for part in re.split(r"&&|\n", code):
                    words = shlex.split(part, comments=True)
                    if words and words[0] == "keras-compress":
                        commands.append((f"{path.name}:{line}", words[1:]))
    assert len(commands) >= 3
    parser = cli.build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as exit:
            pytest.fail(f"{where}: keras-compress {' '.join(argv)} does not parse (exit {exit.code})")


@pytest.mark.slow
@pytest.mark.parametrize("path", PYTHON_PAGES, ids=page_id)
def test_the_python_of_every_page_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for config in (ROOT / "examples" / "configs").glob("*.json"):
        shutil.copy(config, tmp_path)
    Path("my_config.json").write_text(json.dumps({"compression": {"algorithm": "quantization"}}))
    namespace = {"__name__": "__docs__"}
    exec(compile(PRELUDE, "prelude", "exec"), namespace)
    config = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # NNCF's files carry training-script keys
        for lang, code, skipped, line in blocks(path):
            if skipped:
                continue
            if lang == "json":
                config = json.loads(code)
            elif lang == "python":
                if config is not None:
                    namespace["config"] = config
                exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
