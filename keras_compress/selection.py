"""Which layers an algorithm compresses: scopes, supported layer kinds, and why a layer is left alone.

Shared by every algorithm, so a layer is selected, skipped and reported the same way by all of them.
"""

from __future__ import annotations

import difflib
import re

import keras

from keras_compress.compressible import (
    LAMBDA_REASON,
    compressible_spec,
    uncompressed_by_design,
    unsupported_reason,
)
from keras_compress.config import ConfigError
from keras_compress.config.errors import json_path
from keras_compress.config.scopes import (
    is_torch_scope,
    layer_scopes,
    split_precision_scope,
    torch_input_index,
    torch_module_path,
)
from keras_compress.graph import child_layers, is_container, is_graph_model, node_weights

__all__ = [
    "matches_scope",
    "in_scope",
    "LayerSelection",
    "check_scopes",
    "resolve_torch_scopes",
    "unmatched_quantizer_scopes",
]

#: How many NNCF PyTorch scopes that name no layer are listed one by one (the rest are counted).
_TORCH_LISTED = 10


def matches_scope(name, scopes):
    """Whether a layer name (or "outer/inner" path) matches one of NNCF-style `scopes`.

    A scope is an exact layer name, or a regular expression prefixed with `{re}` that must
    match the whole name.

    Args:
        name: a name, or a list of names of one layer (its name and its path).
        scopes: the scopes.

    Example:
        >>> matches_scope("conv2_block1_1_conv", ["{re}conv2_.*"])
        True
    """
    names = [name] if isinstance(name, str) else list(name)
    for scope in scopes:
        if scope.startswith("{re}"):
            pattern = re.compile(scope[4:])
            if any(pattern.fullmatch(n) for n in names):
                return True
        elif scope in names:
            return True
    return False


def in_scope(names, target_scopes=(), ignored_scopes=()):
    """Whether a layer is selected: in `target_scopes` (or no targets given) and not ignored."""
    if matches_scope(names, ignored_scopes):
        return False
    return not target_scopes or matches_scope(names, target_scopes)


class LayerSelection:
    """Selects the layers one algorithm compresses and records why the others are left alone.

    Args:
        kinds: compressible layer kinds the algorithm takes ("conv", "dense", ... see
            `keras_compress.compressible`).
        scoped: `(names) -> bool`: whether a layer (its name and path) is in the algorithm's scopes.
        kind_reason: the reason recorded for a supported layer of another kind, formatted with `kind`.

    Attributes:
        skipped: `{layer path: reason}` for every layer with weights that was not selected (layers
            uncompressed by design, such as BatchNormalization, are not listed).

    Example:
        >>> selection = LayerSelection(("dense",), lambda names: True)
        >>> selection.selects(keras.layers.Dense(2)), selection.selects(keras.layers.ReLU())
        (True, False)
    """

    def __init__(self, kinds, scoped=lambda names: True, kind_reason="{kind} layers are not compressed"):
        self.kinds = tuple(kinds)
        self.scoped = scoped
        self.kind_reason = kind_reason
        self.skipped = {}

    def reason(self, layer, path=""):
        """Why `layer` (a node's operation) is not selected; None when it is, "" when it is silently not."""
        if isinstance(layer, keras.Model) or is_container(layer) or not node_weights(layer):
            return LAMBDA_REASON if isinstance(layer, keras.layers.Lambda) else ""
        spec = compressible_spec(layer)
        reason = unsupported_reason(layer)
        if reason is None and spec.kind not in self.kinds:
            reason = self.kind_reason.format(kind=spec.kind)
        if reason is None and not self.scoped([layer.name, f"{path}{layer.name}"]):
            reason = "excluded by scopes"
        if reason is not None and spec is None and uncompressed_by_design(layer):
            return ""
        return reason

    def selects(self, layer, path=""):
        """Whether `layer` is compressed; records the reason in `skipped` when it is not."""
        reason = self.reason(layer, path)
        if reason:
            self.skipped[f"{path}{layer.name}"] = reason
        return reason is None


def _model_names(model):
    """`(layer names, activation names)` of `model`: every layer and operation, also as "outer/inner"
    for nested models; activation scopes also name model inputs and activation quantizers."""
    names = set()

    def collect(parent, path):
        if is_graph_model(parent):
            children = [(op.name, op) for op in getattr(parent, "operations", None) or parent.layers]
        else:  # a subclassed model or a layer of the user's: its sublayers by attribute path
            children = child_layers(parent)
        for name, op in children:
            names.update((op.name, f"{path}{op.name}"))
            inner = op
            while isinstance(inner, keras.layers.Wrapper):  # a compressed model's wrapped layers
                inner = inner.layer
                names.update((inner.name, f"{path}{inner.name}"))
            if isinstance(op, keras.Model) or is_container(op):
                collect(op, f"{path}{name}/")

    collect(model, "")
    try:
        inputs = {t.name for t in model.inputs}
    except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
        inputs = set()
    stems = names | inputs
    quantizers = {f"{n}{suffix}" for n in stems for suffix in ("_quantizer", "_inputs", "_inputs_quantizer",
                                                                "_output", "_output_quantizer")}  # fmt: skip
    return names, stems | quantizers


def _section_path(config, index):
    return ("compression",) if len(config.compression) == 1 else ("compression", index)


def check_scopes(model, config):
    """Raises `ConfigError` for an exact layer name in any key of the config that names layers and is not a
    layer of `model` (a misspelt scope would otherwise silently select nothing).

    The keys: `ignored_scopes` / `target_scopes` of sections, of their `weights` / `activations` groups and
    of per-scope range rules, `scope_overrides` keys, `bitwidth_per_scope` scopes, `unified_scale_ops`,
    `sparse_structure_by_scopes` (see `keras_compress.config.scopes.layer_scopes`). Activation scopes may
    also name model inputs and activation quantizers. `{re}` patterns are not checked (one pattern
    often serves a family of models), nor keys under `validate_scopes: false`. NNCF PyTorch scope names
    in `bitwidth_per_scope` must first be resolved (`resolve_torch_scopes`).

    Args:
        model: the model being compressed (nested models and a subclassed model's sublayers are
            searched too).
        config: the `CompressionConfig`.
    """
    layers, activations = _model_names(model)
    problems = []
    for index, section in enumerate(config.compression):
        for scope in layer_scopes(section):
            names = activations if scope.group == "quantizers" else layers
            if not scope.validate or scope.scope.startswith("{re}") or scope.scope in names:
                continue
            close = difflib.get_close_matches(scope.scope, sorted(names), n=1, cutoff=0.6)
            problems.append((
                json_path((*_section_path(config, index), *scope.path)),
                f"'{scope.scope}' is not the name of a layer of model '{model.name}'"
                + (f"; did you mean '{close[0]}'?" if close else "")
                + " (a `{re}` prefix makes it a regular expression; `validate_scopes: false` "
                "accepts names that match nothing)",
            ))  # fmt: skip
    if problems:
        raise ConfigError(problems)


def unmatched_quantizer_scopes(model, section, section_path, quantizer_names):
    """`(json path, message)` for every exact scope naming activation quantizers that names none of `model`.

    A name that passed `check_scopes` (a layer or an input) may still have no quantizer on its output
    (quantizers sit at the inputs of the layers that compute on integers): such a scope has no effect.
    `bitwidth_per_scope` is left to the quantization algorithm, which reports all its unused entries.

    Args:
        model: the compressed model.
        section: the config section (of the quantization algorithm).
        section_path: its JSON path (`("compression",)` or `("compression", index)`).
        quantizer_names: the names of the model's activation quantizers (with "outer/" paths).
    """
    names = set()
    for path in quantizer_names:
        for name in (path, path.rsplit("/", 1)[-1]):
            names.update((name, name.rsplit("_quantizer", 1)[0]))
    found = []
    for scope in layer_scopes(section):
        if scope.group != "quantizers" or "bitwidth_per_scope" in scope.path or scope.scope.startswith("{re}"):
            continue
        if scope.scope not in names:
            found.append((json_path((*section_path, *scope.path)),
                          f"'{scope.scope}' names no activation quantizer of model '{model.name}' "
                          f"(its quantizers: {', '.join(sorted(quantizer_names)) or 'none'}); it has no effect"))
    return found


def _torch_candidates(model, scope):
    """The Keras names an NNCF PyTorch scope may stand for, most specific first."""
    index = torch_input_index(scope)
    if index is not None:
        return [model.inputs[index].name] if index < len(model.inputs) else []
    parts = torch_module_path(scope).split(".")
    candidates = [".".join(parts), "_".join(parts), "/".join(parts)]
    return list(dict.fromkeys(candidates))


def resolve_torch_scopes(model, config):
    """`config` with the NNCF PyTorch scope names of `bitwidth_per_scope` replaced by Keras layer names.

    NNCF's manual mixed-precision configs name PyTorch modules
    (`ResNet/Sequential[layer1]/Bottleneck[0]/NNCFConv2d[conv1]/conv2d_0|WEIGHT`). A scope resolves
    to the layer of `model` named by its module path, as `layer1.0.conv1`, `layer1_0_conv1` or the
    nested path `layer1/0/conv1`; `/nncf_model_input_<n>` resolves to the model's n-th input. The
    `|WEIGHT` / `|OUTPUT` suffix is kept.

    Args:
        model: the Functional model being compressed.
        config: the `CompressionConfig` (not changed).

    Returns:
        The config itself when it holds no PyTorch scope, else a resolved copy.

    Raises:
        ConfigError: for the PyTorch scopes that name no layer of `model` (unless `validate_scopes` is
            false: they then match nothing), each with its JSON path.
    """
    sections = [s for s in config.compression if getattr(getattr(s, "initializer", None), "precision", None)]
    if not any(is_torch_scope(split_precision_scope(scope)[0])
               for s in sections for _, scope in s.initializer.precision.bitwidth_per_scope):  # fmt: skip
        return config
    layers, activations = _model_names(model)
    config = config.model_copy(deep=True)
    problems = []
    for index, section in enumerate(config.compression):
        precision = getattr(getattr(section, "initializer", None), "precision", None)
        if precision is None:
            continue
        resolved = []
        for position, (bits, scope) in enumerate(precision.bitwidth_per_scope):
            name, group = split_precision_scope(scope)
            if not is_torch_scope(name):
                resolved.append((bits, scope))
                continue
            names = activations if group == "activations" else layers
            candidates = _torch_candidates(model, name)
            found = next((c for c in candidates if c in names), None)
            if found is not None:
                resolved.append((bits, f"{found}|{'OUTPUT' if group == 'activations' else 'WEIGHT'}"))
                continue
            resolved.append((bits, scope))
            if section.validate_scopes:
                looked = ", ".join(repr(c) for c in candidates) or "an input of that number"
                problems.append((
                    json_path((*_section_path(config, index), "initializer", "precision", "bitwidth_per_scope",
                               position)),
                    f"{scope!r} is an NNCF PyTorch scope; model '{model.name}' has no layer it names (looked "
                    f"for {looked}). Keras scopes are layer names: [bits, 'conv1'] sets the bits of a layer's "
                    "weights, [bits, 'relu1|OUTPUT'] those of the activation quantizer on its output",
                ))  # fmt: skip
        precision.bitwidth_per_scope = resolved
    if len(problems) > _TORCH_LISTED:
        path = problems[0][0].rsplit("[", 1)[0]
        problems = problems[:_TORCH_LISTED] + [(path, f"... and {len(problems) - _TORCH_LISTED} more NNCF PyTorch "
                                                      f"scopes that name no layer of model '{model.name}'")]
    if problems:
        raise ConfigError(problems)
    return config
