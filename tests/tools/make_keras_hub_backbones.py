"""Writes tests/keras_hub_backbones.py: a small config and input batch for every KerasHub family.

The configs are KerasHub's own test fixtures: the `setUp` of each model family's
`keras_hub/src/models/<family>/*_backbone_test.py` (its `init_kwargs` and `input_data`), with the
statements of the test that builds the backbone (`test_backbone_basics`, first parameters) up to
its `run_backbone_test` / `run_vision_backbone_test` call. Each becomes one function
`<family>() -> (backbone class, init_kwargs, input_data)`, `self` renamed `case`. Imports of
`keras_hub.src...` are rewritten to the public `keras_hub.models` / `keras_hub.layers` names where
KerasHub exports the object (the private import is kept, and listed in the header, where it does not).
Families whose backbone has no such test get a hand-written case (`HAND_WRITTEN`, from the family's
task tests).

Usage (needs keras_hub installed, to resolve the public names):

    python tests/tools/make_keras_hub_backbones.py [--repo /work/.mirror/keras-team+keras-hub/repo]

`--repo` is a keras-hub checkout or a bare git directory (files read at HEAD).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "keras_hub_backbones.py"
DEFAULT_REPO = "/work/.mirror/keras-team+keras-hub/repo"
MODELS = "keras_hub/src/models"
RUNNERS = ("run_backbone_test", "run_vision_backbone_test")

#: Families whose backbone test has no `init_kwargs` fixture: cases written by hand from the
#: backbone their task test builds (same kwargs), with the input batch that test feeds it.
HAND_WRITTEN = {
    "llama3": '''
def llama3():
    """Llama3Backbone: the backbone of Llama3CausalLMTest.setUp (llama3/llama3_causal_lm_test.py),
    with a vocabulary of 30 and a batch of 2 sequences of 7 tokens."""
    init_kwargs = {
        "vocabulary_size": 30,
        "num_layers": 2,
        "num_query_heads": 4,
        "num_key_value_heads": 2,
        "hidden_dim": 8,
        "intermediate_dim": 16,
    }
    input_data = {
        "token_ids": ops.ones((2, 7), dtype="int32"),
        "padding_mask": ops.ones((2, 7), dtype="int32"),
    }
    return Llama3Backbone, init_kwargs, input_data
''',
    "qwen": '''
def qwen():
    """QwenBackbone: the backbone of QwenCausalLMTest.setUp (qwen/qwen_causal_lm_test.py), with a
    vocabulary of 30 and a batch of 2 sequences of 7 tokens."""
    init_kwargs = {
        "vocabulary_size": 30,
        "num_layers": 2,
        "num_query_heads": 4,
        "num_key_value_heads": 2,
        "hidden_dim": 8,
        "intermediate_dim": 16,
    }
    input_data = {
        "token_ids": ops.ones((2, 7), dtype="int32"),
        "padding_mask": ops.ones((2, 7), dtype="int32"),
    }
    return QwenBackbone, init_kwargs, input_data
''',
}
HAND_WRITTEN_IMPORTS = {"llama3": ["Llama3Backbone"], "qwen": ["QwenBackbone"]}


# ------------------------------------------------------------------------------ reading the repository
class Repository:
    """The files of a keras-hub checkout, or of a bare git directory at HEAD."""

    def __init__(self, path):
        self.path = Path(path)
        self.bare = not (self.path / MODELS).is_dir()

    def commit(self):
        return self._git("rev-parse", "HEAD").strip()

    def test_files(self):
        if self.bare:
            names = self._git("ls-tree", "-r", "--name-only", "HEAD", MODELS).splitlines()
        else:
            names = [str(p.relative_to(self.path)) for p in (self.path / MODELS).rglob("*_test.py")]
        return sorted(n for n in names if n.endswith("_test.py"))

    def read(self, name):
        return self._git("show", f"HEAD:{name}") if self.bare else (self.path / name).read_text()

    def _git(self, *args):
        return subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, check=True).stdout


# ------------------------------------------------------------------------------ one test file
class _RenameSelf(ast.NodeTransformer):
    def visit_Name(self, node):
        if node.id == "self":
            return ast.copy_location(ast.Name("case", node.ctx), node)
        return node


def _runner_call(method):
    """The first `self.run_backbone_test(...)` / `self.run_vision_backbone_test(...)` statement of a
    method (a top-level statement of its body), or None."""
    for position, statement in enumerate(method.body):
        call = statement.value if isinstance(statement, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in RUNNERS
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "self"):  # fmt: skip
            return position, {k.arg: k.value for k in call.keywords}
    return None


def _first_parameters(method):
    """Assignments of the method's arguments to the first parameters of its `parameterized` decorator."""
    names = [a.arg for a in method.args.args[1:]]
    if not names:
        return []
    for decorator in method.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith(("named_parameters", "parameters")):
            first = decorator.args[0]
            if isinstance(first, ast.Dict):  # dict(testcase_name=..., arg=...)
                values = {ast.literal_eval(k): v for k, v in zip(first.keys, first.values)}
                return [ast.Assign([ast.Name(n, ast.Store())], values[n], lineno=0) for n in names]
            items = list(first.elts) if isinstance(first, ast.Tuple) else [first]
            if ast.unparse(decorator.func).endswith("named_parameters"):
                items = items[1:]
            return [ast.Assign([ast.Name(n, ast.Store())], v, lineno=0) for n, v in zip(names, items)]
    raise ValueError(f"{method.name} takes {names} but has no parameterized decorator")


def _is_self_call(statement):
    """`self.assert...(...)` and the like: statements that only check."""
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
            and isinstance(statement.value.func, ast.Attribute)
            and ast.unparse(statement.value.func.value) in ("self", "super()"))  # fmt: skip


def _imported_backbone(tree, family):
    """The name of the family's backbone class a test file imports (`...<family>_backbone import XBackbone`)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith(f"{family}.{family}_backbone"):
            names = [a.asname or a.name for a in node.names if a.name.endswith("Backbone")]
            if len(names) == 1:
                return names[0]
    return None


def extract_case(family, path, source):
    """`(function source, names it uses)` for one `*_backbone_test.py`, or None when the file has no
    backbone test with a setUp."""
    tree = ast.parse(source)
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        methods = {m.name: m for m in cls.body if isinstance(m, ast.FunctionDef)}
        if "setUp" not in methods:
            continue
        found = None
        for method in methods.values():
            call = _runner_call(method)
            if call is not None:
                found = (method, *call)
                break
        if found is None:
            # No runner call (MoonshineBackboneTest calls the backbone itself): the setUp's
            # `init_kwargs` and `input_data` with the family's backbone class.
            assigned = {ast.unparse(t) for s in methods["setUp"].body if isinstance(s, ast.Assign) for t in s.targets}
            backbone = _imported_backbone(tree, family)
            if not {"self.init_kwargs", "self.input_data"} <= assigned or backbone is None:
                continue
            keywords = {"cls": ast.Name(backbone, ast.Load()), "init_kwargs": ast.parse("self.init_kwargs").body[0].value,
                        "input_data": ast.parse("self.input_data").body[0].value}  # fmt: skip
            method, position = ast.FunctionDef(name="setUp", body=[], decorator_list=[], args=methods["setUp"].args), 0
        else:
            method, position, keywords = found
        body = [s for s in methods["setUp"].body if not _is_self_call(s)]
        body += _first_parameters(method) if method.decorator_list else []
        body += [s for s in method.body[:position] if not _is_self_call(s)]
        returned = ast.Tuple([keywords["cls"], keywords["init_kwargs"], keywords["input_data"]], ast.Load())
        body.append(ast.Return(returned))
        if any(isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self" for s in body for n in ast.walk(s)):
            body.insert(0, ast.parse("case = types.SimpleNamespace()").body[0])
        function = ast.FunctionDef(
            name=family,
            args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
            body=[ast.Expr(ast.Constant(f"{cls.name}.setUp and {method.name} of {path.split('/src/')[1]}."))] + body,
            decorator_list=[],
            returns=None,
            type_params=[],
        )
        function = ast.fix_missing_locations(_RenameSelf().visit(function))
        return ast.unparse(function), {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
    return None


def module_imports(source):
    """`{name: import statement}` of a test file's module-level imports, `keras_hub.src` imports
    rewritten to public names where they exist; and the names left private."""
    public = {}
    for namespace in ("models", "layers"):
        for name, obj in vars(importlib.import_module(f"keras_hub.{namespace}")).items():
            public.setdefault(id(obj), (namespace, name))
    imports, private = {}, set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports[alias.asname or alias.name.split(".")[0]] = ast.unparse(ast.Import([alias]))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                name = alias.asname or alias.name
                if node.module.startswith("keras_hub.src.tests"):
                    continue  # the test harness (TestCase): not used by the cases
                if node.module.startswith("keras_hub.src"):
                    obj = getattr(importlib.import_module(node.module), alias.name)
                    if id(obj) in public:
                        namespace, public_name = public[id(obj)]
                        as_name = f" as {name}" if public_name != name else ""
                        imports[name] = f"from keras_hub.{namespace} import {public_name}{as_name}"
                        continue
                    private.add(f"{node.module}.{alias.name}")
                imports[name] = ast.unparse(ast.ImportFrom(node.module, [alias], 0))
    return imports, private


# ------------------------------------------------------------------------------ the module
HEADER = '''"""Small configs of every KerasHub model family: `<family>() -> (backbone class, init_kwargs, input_data)`.

GENERATED by tests/tools/make_keras_hub_backbones.py from keras-team/keras-hub at commit
{commit} (`keras_hub/src/models/*/*_backbone_test.py`: each test's `setUp` and the first
parameters of the test that builds the backbone). Do not edit by hand: rerun the generator.

Copyright The KerasHub Authors (keras-team/keras-hub), licensed under the Apache License,
Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0); this file is a derived work of those tests.

Imports of `keras_hub.src` are rewritten to the public `keras_hub.models` / `keras_hub.layers`
names. Objects KerasHub does not export, imported privately here (tests only): {private}.
Families with no backbone test fixture, written by hand: {hand}.
"""

# ruff: noqa
# fmt: off
'''


def hub_families():
    """The families of the installed KerasHub's public Backbone classes (their module's folder)."""
    import keras_hub

    backbone = keras_hub.models.Backbone
    return {cls.__module__.split(".")[3] for cls in vars(keras_hub.models).values()
            if isinstance(cls, type) and issubclass(cls, backbone) and cls is not backbone}  # fmt: skip


def generate(repo):
    repository = Repository(repo)
    functions, imports, private, sources = {}, {}, set(), {}
    families = hub_families()
    for path in repository.test_files():
        family = path.split("/")[3]
        if family not in families or not path.rsplit("/", 1)[1].startswith(family) or "backb" not in path.rsplit("/", 1)[1]:
            continue
        if family in functions:
            continue
        source = repository.read(path)
        case = extract_case(family, path, source)
        if case is None:
            continue
        function, names = case
        file_imports, file_private = module_imports(source)
        for name in sorted(names & set(file_imports)):
            statement = file_imports[name]
            if name in imports and imports[name] != statement:
                raise ValueError(f"{name!r} is imported as {imports[name]!r} and as {statement!r} ({path})")
            imports[name] = statement
            private |= {p for p in file_private if p.rsplit(".", 1)[1] == name}
        functions[family] = function
        sources[family] = path
    for family, text in HAND_WRITTEN.items():
        if family in functions:
            raise ValueError(f"{family} has a backbone test now: remove it from HAND_WRITTEN")
        functions[family] = text.strip()
        for name in HAND_WRITTEN_IMPORTS[family]:
            imports[name] = f"from keras_hub.models import {name}"
        imports.setdefault("ops", "from keras import ops")
    imports.setdefault("types", "import types")
    lines = [HEADER.format(commit=repository.commit(), private=", ".join(sorted(private)) or "none",
                           hand=", ".join(sorted(HAND_WRITTEN)))]  # fmt: skip
    ordered = sorted(set(imports.values()), key=lambda s: (s.startswith("from keras_hub"), s))
    lines += ordered + ["", ""]
    for family in sorted(functions):
        lines += [functions[family], "", ""]
    lines.append("#: Every family with a case: `{family: function}`.")
    lines.append("CASES = {" + ", ".join(f"{f!r}: {f}" for f in sorted(functions)) + "}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=DEFAULT_REPO)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    Path(args.output).write_text(generate(args.repo))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
