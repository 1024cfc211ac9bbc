"""The package's architecture as checked rules: layered imports, small modules, no hidden imports.

docs/architecture.md explains the layers; setup.cfg's `[importlinter]` section holds the contracts.
"""

import ast
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_compress"
MODULES = sorted(PACKAGE.rglob("*.py"))
#: The CLI imports its commands lazily: `--help`, `schema` and `validate` must not load TensorFlow.
LAZY_IMPORTS_ALLOWED = {PACKAGE / "cli.py"}
#: import-linter's command (a `test` extra), next to this Python or on PATH.
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def _relative(path):
    return str(path.relative_to(ROOT))


def test_import_contracts_are_kept():
    assert LINT_IMPORTS, "import-linter is not installed: pip install -e '.[test]'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree, whatever is installed
    result = subprocess.run([LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """The contract is not vacuous: a copy of the package with one upward import fails it."""
    assert LINT_IMPORTS, "import-linter is not installed: pip install -e '.[test]'"
    copy = tmp_path / "keras_compress"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    graph = copy / "graph.py"
    graph.write_text(graph.read_text() + "\nfrom keras_compress.controller import compress  # noqa\n")
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    result = subprocess.run(
        [LINT_IMPORTS], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert result.returncode != 0
    assert "keras_compress.graph -> keras_compress.controller" in result.stdout


def test_every_module_and_package_is_in_a_layer_of_the_contract():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = {name.strip() for row in config["importlinter:contract:layers"]["layers"].split() for name in
              row.split("|") if name.strip()}  # fmt: skip
    units = {f"keras_compress.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    units |= {f"keras_compress.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert units - listed == set()


def test_every_module_is_under_600_lines():
    long = {_relative(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 600}
    assert not long


def _function_level_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("keras_compress"):
                    yield inner.lineno
                if isinstance(inner, ast.Import) and any(a.name.startswith("keras_compress") for a in inner.names):
                    yield inner.lineno


def test_no_function_level_imports_of_the_package_own_modules():
    found = {
        _relative(p): lines
        for p in MODULES
        if p not in LAZY_IMPORTS_ALLOWED and (lines := list(_function_level_imports(ast.parse(p.read_text()))))
    }
    assert not found


def test_library_code_does_not_print():
    prints = {}
    for path in MODULES:
        if path.name in ("cli.py", "demo.py"):
            continue
        calls = [
            node.lineno
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
        ]
        if calls:
            prints[_relative(path)] = calls
    assert not prints


def test_no_except_import_error_around_own_modules():
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
            ):
                imported = [
                    n.module or "" for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                ] + [a.name for n in ast.walk(node) if isinstance(n, ast.Import) for a in n.names]
                assert not any(m.startswith("keras_compress") for m in imported), (_relative(path), node.lineno)


def test_every_package_init_says_what_it_offers():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), _relative(init)
        names = [n for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]  # fmt: skip
        assert names, f"{_relative(init)} has no __all__"


# ---------------------------------------------------------------------------------------------------
# Each algorithm owns what it knows

#: The algorithms' config names, and the files allowed to name them: their own package, the registry,
#: the config sections (the config package needs no Keras, so it lists them itself) and the CLI/docs text.
ALGORITHM_NAMES = {
    "quantization": "quantization", "filter_pruning": "pruning", "magnitude_sparsity": "sparsity",
    "rb_sparsity": "sparsity", "movement_sparsity": "sparsity",
}  # fmt: skip
NAMING_ALLOWED = {PACKAGE / "algorithms.py", PACKAGE / "cli.py", PACKAGE / "demo.py"}


def test_no_module_names_an_algorithm_outside_its_package_the_registry_and_the_config():
    offenders = []
    for path in MODULES:
        relative = path.relative_to(PACKAGE).parts
        if path in NAMING_ALLOWED or relative[0] == "config":
            continue
        strings = {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)}
        for name, package in ALGORITHM_NAMES.items():
            if name in strings and relative[0] != package:
                offenders.append(f"{_relative(path)} names {name!r}")
    assert not offenders, offenders


def test_no_algorithm_package_imports_another_algorithms_layers():
    packages = set(ALGORITHM_NAMES.values())
    offenders = []
    for path in MODULES:
        relative = path.relative_to(PACKAGE).parts
        if relative[0] not in packages:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keras_compress."):
                imported = node.module.split(".")[1]
                if imported in packages and imported != relative[0]:
                    offenders.append(f"{_relative(path)} imports {node.module}")
    assert not offenders, offenders


def test_the_adaptive_algorithms_of_the_config_are_those_whose_level_can_be_set():
    from keras_compress.algorithm import CompressionAlgorithm
    from keras_compress.algorithms import ALGORITHMS
    from keras_compress.config.document import ADAPTIVE_ALGORITHMS

    assert {name for name, cls in ALGORITHMS.items() if cls.adaptive} == set(ADAPTIVE_ALGORITHMS)
    for cls in ALGORITHMS.values():  # an adaptive algorithm has a level to aim at and to set
        own = cls.set_level is not CompressionAlgorithm.set_level and cls.target_level is not CompressionAlgorithm.target_level
        assert own == cls.adaptive, cls.name


def test_the_architecture_drawing_is_drawn_from_the_code_as_it_is():
    sys.path.insert(0, str(ROOT / "docs" / "tools"))
    try:
        import architecture_graph
    finally:
        sys.path.pop(0)
    svg = (ROOT / "docs" / "architecture.svg").read_text()
    assert architecture_graph.source_stamp() in svg, (
        "docs/architecture.svg is stale: run `python docs/tools/architecture_graph.py` (needs Graphviz's `dot`)"
    )
