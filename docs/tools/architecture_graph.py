"""Draws docs/architecture.svg: the package's layers (from setup.cfg's import-linter contract) and
the imports between its modules and subpackages, collapsed to one node each.

Run from the repository root (needs grimp, which import-linter installs, and Graphviz's `dot`):

    python docs/tools/architecture_graph.py            # writes docs/architecture.svg
    python docs/tools/architecture_graph.py --png x.png
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import subprocess
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "keras_compress"


def layers():
    """The layers of the contract, top first: a list of lists of module names (without the package)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    text = config["importlinter:contract:layers"]["layers"]
    rows = [line.strip() for line in text.splitlines() if line.strip()]
    return [[name.strip().removeprefix(f"{PACKAGE}.") for name in row.split("|")] for row in rows]


def unit(module):
    """The node a module belongs to: `keras_compress.pruning.groups` -> `pruning`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def edges():
    graph = grimp.build_graph(PACKAGE)
    found = set()
    for module in graph.modules:
        source = unit(module)
        for imported in graph.find_modules_directly_imported_by(module):
            target = unit(imported)
            if source and target and source != target:
                found.add((source, target))
    return found


def dot_source():
    rows = layers()
    lines = [
        "digraph keras_compress {",
        '  graph [rankdir=TB, nodesep=0.25, ranksep=0.45, fontname="Helvetica", fontsize=11];',
        '  node [shape=box, style="rounded,filled", fillcolor="#eef2ff", color="#4f5bd5", fontname="Helvetica", '
        "fontsize=11];",
        '  edge [color="#8a8fa8", arrowsize=0.6];',
    ]
    packages = {p.name for p in (ROOT / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    for index, row in enumerate(rows):
        names = " ".join(f'"{n}"' for n in row)
        lines.append(f"  {{ rank=same; {names} }}")
        for name in row:
            label = f"{name}/" if name in packages else f"{name}.py"
            fill = "#fff4e0" if name in packages else "#eef2ff"
            lines.append(f'  "{name}" [label="{label}", fillcolor="{fill}"];')
        if index:
            # Invisible edges keep the rows in contract order.
            lines.append(f'  "{rows[index - 1][0]}" -> "{row[0]}" [style=invis];')
    for source, target in sorted(edges()):
        lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines)


def source_stamp(source=None):
    """The comment the SVG carries: the hash of the DOT source it was drawn from (tests/test_architecture.py
    compares it with the code's, so a stale drawing fails the suite)."""
    digest = hashlib.sha256((source or dot_source()).encode()).hexdigest()
    return f"<!-- drawn from architecture graph {digest} -->"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svg", default=str(ROOT / "docs" / "architecture.svg"), help="SVG file to write")
    parser.add_argument("--png", help="also write a PNG (to look at)")
    args = parser.parse_args()
    source = dot_source()
    svg = subprocess.run(["dot", "-Tsvg"], input=source, text=True, check=True, capture_output=True).stdout
    Path(args.svg).write_text(svg.replace("<svg", f"{source_stamp(source)}\n<svg", 1))
    if args.png:
        subprocess.run(["dot", "-Tpng", "-Gdpi=110", "-o", args.png], input=source, text=True, check=True)
    print(args.svg)


if __name__ == "__main__":
    main()
