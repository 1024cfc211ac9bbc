"""Config keys that name layers: where they are, their `|WEIGHT` / `|OUTPUT` suffixes, NNCF PyTorch names.

A config names layers in many keys (`ignored_scopes`, `target_scopes` of sections, groups and
per-scope range rules, `scope_overrides` keys, `bitwidth_per_scope`, `unified_scale_ops`,
`sparse_structure_by_scopes`). `layer_scopes` lists them all with their JSON paths, so that one
check (`keras_compress.selection.check_scopes`) covers every one of them the same way.

`bitwidth_per_scope` entries may end in `|WEIGHT` (the layer's weights, also the default) or
`|OUTPUT` (the activation quantizer on the layer's output), as NNCF writes them. NNCF's manual
mixed-precision configs are written for PyTorch models, with scopes such as
`ResNet/Sequential[layer1]/Bottleneck[0]/NNCFConv2d[conv1]/conv2d_0|WEIGHT`: `torch_module_path`
reads the module path out of them (`layer1.0.conv1`), which `kc.compress` looks up among the
Keras model's layer names.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, NamedTuple

__all__ = [
    "PRECISION_SUFFIXES",
    "LayerScope",
    "is_torch_scope",
    "layer_scopes",
    "split_precision_scope",
    "torch_module_path",
    "torch_input_index",
]

#: `bitwidth_per_scope` suffix -> the quantizer group it selects.
PRECISION_SUFFIXES = {"WEIGHT": "weights", "OUTPUT": "activations"}
_TORCH_MODULE = re.compile(r"[A-Za-z_]\w*\[([^\]]*)\]")
_TORCH_INPUT = re.compile(r"^/?nncf_model_input_(\d+)$")


class LayerScope(NamedTuple):
    """One scope of a config: where it is, what it is, how it is matched."""

    path: tuple[str | int, ...]
    """Its JSON path inside the `compression` section, e.g. `("scope_overrides", "weights", "conv1")`."""
    scope: str
    """The scope as written (without a `|WEIGHT` / `|OUTPUT` suffix)."""
    group: str
    """"layers": it names a layer (or operation); "quantizers": an activation quantizer, by its name or by
    the layer or model input whose output it quantizes."""
    validate: bool
    """Whether an exact name that is not in the model is an error (`validate_scopes`)."""


def split_precision_scope(scope: str) -> tuple[str, str]:
    """`"conv1|WEIGHT"` -> `("conv1", "weights")`; without a suffix, the weights.

    Raises:
        ValueError: for a suffix other than `|WEIGHT` and `|OUTPUT`.

    Example:
        >>> split_precision_scope("relu1|OUTPUT"), split_precision_scope("{re}conv(1|2)")
        (('relu1', 'activations'), ('{re}conv(1|2)', 'weights'))
    """
    name, _, suffix = scope.rpartition("|")
    if not name or not re.fullmatch(r"[A-Z]+\d*", suffix):  # no suffix ("|" of a regex is not one)
        return scope, "weights"
    if suffix not in PRECISION_SUFFIXES:
        raise ValueError(
            f"{scope!r} ends in '|{suffix}'; a bitwidth_per_scope scope may end in "
            f"{' or '.join('|' + s for s in PRECISION_SUFFIXES)} (or nothing: the weights)"
        )
    return name, PRECISION_SUFFIXES[suffix]


def is_torch_scope(scope: str) -> bool:
    """Whether a scope is an NNCF PyTorch scope name (`Model/Module[name]/op_0`, `/nncf_model_input_0`).

    Example:
        >>> [is_torch_scope(s) for s in ("ResNet/NNCFConv2d[conv1]/conv2d_0", "conv1", "{re}conv[13]")]
        [True, False, False]
    """
    if scope.startswith("{re}"):
        return False
    return bool(("/" in scope and _TORCH_MODULE.search(scope)) or _TORCH_INPUT.match(scope))


def torch_module_path(scope: str) -> str | None:
    """The dotted PyTorch module path of an NNCF PyTorch scope (its `state_dict` prefix).

    Example:
        >>> torch_module_path("ResNet/Sequential[layer1]/Bottleneck[0]/NNCFConv2d[conv1]/conv2d_0")
        'layer1.0.conv1'
    """
    names = _TORCH_MODULE.findall(scope)
    return ".".join(names) if names else None


def torch_input_index(scope: str) -> int | None:
    """The input number of `/nncf_model_input_<n>`, else None."""
    match = _TORCH_INPUT.match(scope)
    return int(match.group(1)) if match else None


def _scoped(path: tuple, section: Any, validate: bool, group: str = "layers") -> Iterator[LayerScope]:
    validate = validate and getattr(section, "validate_scopes", True)
    for key in ("ignored_scopes", "target_scopes"):
        for scope in getattr(section, key, None) or []:
            yield LayerScope((*path, key), scope, group, validate)


def layer_scopes(section: Any) -> Iterator[LayerScope]:
    """Every scope of one `compression` section, with its path inside the section.

    Example:
        >>> from keras_compress.config import load_config
        >>> section = load_config({"compression": {"algorithm": "quantization",
        ...                                        "ignored_scopes": ["fc"]}}).compression[0]
        >>> [(s.path, s.scope) for s in layer_scopes(section)]
        [(('ignored_scopes',), 'fc')]
    """
    validate = section.validate_scopes
    yield from _scoped((), section, validate)
    for group in ("weights", "activations"):
        settings = getattr(section, group, None)
        if settings is not None and hasattr(settings, "validate_scopes"):
            yield from _scoped((group,), settings, validate)  # activations: the layers that read them
    for group, overrides in (getattr(section, "scope_overrides", None) or {}).items():
        kind = "quantizers" if group == "activations" else "layers"
        for scope in overrides:
            yield LayerScope(("scope_overrides", group, scope), scope, kind, validate)
    activations = getattr(section, "activations", None)
    for i, ops in enumerate(getattr(activations, "unified_scale_ops", None) or []):
        for j, scope in enumerate(ops):
            yield LayerScope(("activations", "unified_scale_ops", i, j), scope, "layers", validate)
    initializer = getattr(section, "initializer", None)
    rules = getattr(initializer, "range", None)
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        yield from _scoped(("initializer", "range", i), rule, validate, "quantizers")
    precision = getattr(initializer, "precision", None)
    for i, (_, scope) in enumerate(getattr(precision, "bitwidth_per_scope", None) or []):
        name, group = split_precision_scope(scope)
        yield LayerScope(("initializer", "precision", "bitwidth_per_scope", i), name,
                         "quantizers" if group == "activations" else "layers", validate)  # fmt: skip
    for i, structure in enumerate(getattr(section, "sparse_structure_by_scopes", None) or []):
        yield from _scoped(("sparse_structure_by_scopes", i), structure, validate)
