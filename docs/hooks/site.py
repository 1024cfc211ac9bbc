"""MkDocs hooks of the keras_compress site (mkdocs.yml `hooks:`).

- `on_config`: drops nav entries whose page does not exist (pages that other work adds later,
  such as pruning.md), so `mkdocs build --strict` passes with or without them.
- `on_files`: adds `config-reference.md`, generated from `keras_compress.config.json_schema()`,
  so the reference can never disagree with the pydantic models.

`python docs/hooks/site.py` prints the generated config reference.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.keras_compress")

REFERENCE_PAGE = "config-reference.md"
# Sections of `compression`, in the order the reference lists them.
ALGORITHMS = (
    "QuantizationConfig",
    "FilterPruningConfig",
    "MagnitudeSparsityConfig",
    "RBSparsityConfig",
    "MovementSparsityConfig",
)


# ---------------------------------------------------------------------------------- nav
def _existing_nav(items, docs_dir):
    kept = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                value = _existing_nav(value, docs_dir)
                if value:
                    kept.append({title: value})
                continue
            item_path = value
        else:
            item_path = item
        if "://" in str(item_path) or item_path == REFERENCE_PAGE or (Path(docs_dir) / item_path).is_file():
            kept.append(item)
        else:
            log.info("nav: %s does not exist yet, left out of the site navigation", item_path)
    return kept


def on_config(config):
    if config.nav:
        config.nav = _existing_nav(config.nav, config.docs_dir)
    return config


# ---------------------------------------------------------------------------------- config reference
def _ref_name(ref):
    return ref.rsplit("/", 1)[-1]


def _type(prop):
    """A short Markdown type of a JSON Schema property, linking to object definitions."""
    if "$ref" in prop:
        name = _ref_name(prop["$ref"])
        return f"[{name}](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            parts = [_type(p) for p in prop[key]]
            return " or ".join(dict.fromkeys(p for p in parts if p))
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p) for p in prop["prefixItems"]) + "]"
        items = prop.get("items")
        return f"list of {_type(items)}" if items else "list"
    if kind == "object":
        values = prop.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"object of {_type(values)}"
        return "object"
    if kind == "null":
        return "null"
    if isinstance(kind, list):
        return " or ".join(kind)
    return kind or "any"


def _bounds(prop):
    """`2 <= x <= 8` style constraints of a property (looking into anyOf)."""
    for sub in prop.get("anyOf", []) + prop.get("oneOf", []):
        text = _bounds(sub)
        if text:
            return text
    parts = []
    for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{symbol} {prop[key]}")
    if "minLength" in prop:
        parts.append(f"length >= {prop['minLength']}")
    return ", ".join(parts)


def _default(prop, name, required):
    if name in required:
        return "required"
    if "default" in prop:
        return f"`{json.dumps(prop['default'])}`"
    if "$ref" in prop:
        return "see the object"
    return ""


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def _object_section(name, schema, level, title=None):
    """A heading, the object's description and a table of its keys (no constraints column when
    no key has one, so the descriptions get the width)."""
    required = set(schema.get("required", []))
    lines = [f"{'#' * level} {title or name} {{#{name.lower()}}}", ""]
    description = schema.get("description", "").split("\n\nExample:")[0].strip()
    if description:
        lines += [description, ""]
    properties = schema.get("properties", {})
    if properties:
        rows = [(f"`{key}`", _type(prop), _default(prop, key, required), _bounds(prop), prop.get("description", ""))
                for key, prop in properties.items()]
        header = ["key", "type", "default", "constraints", "description"]
        if not any(row[3] for row in rows):
            header, rows = header[:3] + header[4:], [row[:3] + row[4:] for row in rows]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
        lines.append("")
    return lines


def _algorithm_key(definition, name):
    algorithm = definition.get("properties", {}).get("algorithm", {})
    return algorithm.get("const") or (algorithm.get("enum") or [name])[0]


def config_reference_markdown(schema=None):
    """The config reference page, as Markdown, from the config's JSON Schema."""
    if schema is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if "keras_compress" not in sys.modules:  # the config package needs no TensorFlow
            os.environ.setdefault("KERAS_COMPRESS_LIGHT_IMPORT", "1")
        from keras_compress.config import json_schema

        schema = json_schema()
    defs = schema.get("$defs", {})
    nested = [name for name in sorted(defs) if name not in set(ALGORITHMS) | {"AccuracyAwareConfig", "AccuracyAwareParams"}]
    lines = [
        # The table of contents is the index below: without the right-hand column the tables
        # get the page's width (a 1280 px window otherwise wraps key names mid-word).
        "---",
        "hide:",
        "  - toc",
        "---",
        "",
        "# Config reference",
        "",
        "Every key a keras_compress config accepts, with its type, default and constraints.",
        "This page is generated from the pydantic models (`keras_compress.config.json_schema()`,",
        "also printed by `keras-compress schema`) when the site is built. How the options work:",
        "[quantization](quantization.md), [sparsity](sparsity.md), [training](training.md),",
        "[config files](config.md).",
        "",
        "**On this page:** [top level](#compressionconfig) · algorithms: "
        + ", ".join(f"[`{_algorithm_key(defs.get(name, {}), name)}`](#{name.lower()})" for name in ALGORITHMS if name in defs)
        + " · [accuracy-aware training](#accuracyawareconfig) · nested objects: "
        + ", ".join(f"[{name}](#{name.lower()})" for name in nested),
        "",
    ]
    lines += ['<div class="kc-config-reference" markdown>', ""]
    lines += _object_section("CompressionConfig", schema, 2, "Top level")
    lines += ["## Algorithms (`compression`)", ""]
    for name in ALGORITHMS:
        if name in defs:
            lines += _object_section(name, defs[name], 3, f"`{_algorithm_key(defs[name], name)}` ({name})")
    if "AccuracyAwareConfig" in defs:
        lines += ["## Accuracy-aware training (`accuracy_aware_training`)", ""]
        for name in ("AccuracyAwareConfig", "AccuracyAwareParams"):
            lines += _object_section(name, defs[name], 3)
    lines += ["## Nested objects", ""]
    for name in nested:
        lines += _object_section(name, defs[name], 3)
    lines += ["</div>", ""]
    return "\n".join(lines).rstrip() + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, REFERENCE_PAGE, content=config_reference_markdown()))
    return files


if __name__ == "__main__":
    print(config_reference_markdown())
