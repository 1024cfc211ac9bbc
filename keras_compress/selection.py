"""Which layers an algorithm compresses: scopes, supported layer kinds, and why a layer is left alone.

Shared by every algorithm, so a layer is selected, skipped and reported the same way by all of them.
"""

from __future__ import annotations

import difflib
import re

import keras

from keras_compress.compressible import (
    LAMBDA_REASON,
    UNCOMPRESSED_BY_DESIGN,
    compressible_spec,
    unsupported_reason,
)
from keras_compress.config import ConfigError
from keras_compress.graph import child_layers, is_container, node_weights

__all__ = ["matches_scope", "in_scope", "LayerSelection", "check_scopes"]


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
        if isinstance(layer, keras.Model) or not node_weights(layer):
            return LAMBDA_REASON if isinstance(layer, keras.layers.Lambda) else ""
        spec = compressible_spec(layer)
        reason = unsupported_reason(layer)
        if reason is None and spec.kind not in self.kinds:
            reason = self.kind_reason.format(kind=spec.kind)
        if reason is None and not self.scoped([layer.name, f"{path}{layer.name}"]):
            reason = "excluded by scopes"
        if reason is not None and spec is None and isinstance(layer, UNCOMPRESSED_BY_DESIGN):
            return ""
        return reason

    def selects(self, layer, path=""):
        """Whether `layer` is compressed; records the reason in `skipped` when it is not."""
        reason = self.reason(layer, path)
        if reason:
            self.skipped[f"{path}{layer.name}"] = reason
        return reason is None


def check_scopes(model, config):
    """Raises `ConfigError` for an exact layer name in `ignored_scopes`/`target_scopes` that is not
    a layer of `model` (a misspelt scope would otherwise silently select nothing).

    `{re}` patterns are not checked (one pattern often serves a family of models), nor sections
    or groups with `validate_scopes: false`.

    Args:
        model: the model being compressed (nested models and a subclassed model's sublayers are
            searched too).
        config: the `CompressionConfig`.
    """
    names = set()

    def collect(parent, path):
        for name, layer in child_layers(parent):
            names.update((layer.name, f"{path}{layer.name}"))
            if isinstance(layer, keras.Model) or is_container(layer):
                collect(layer, f"{path}{name}/")

    collect(model, "")
    problems = []
    for index, section in enumerate(config.compression):
        where = "compression" if len(config.compression) == 1 else f"compression[{index}]"
        groups = [(where, section)] + [
            (f"{where}.{group}", getattr(section, group))
            for group in ("weights", "activations")
            if hasattr(getattr(section, group, None), "validate_scopes")
        ]
        for path, group in groups:
            if not (section.validate_scopes and group.validate_scopes):
                continue
            for key in ("ignored_scopes", "target_scopes"):
                for scope in getattr(group, key):
                    if scope.startswith("{re}") or scope in names:
                        continue
                    close = difflib.get_close_matches(scope, sorted(names), n=1, cutoff=0.6)
                    problems.append((
                        f"{path}.{key}",
                        f"'{scope}' is not the name of a layer of model '{model.name}'"
                        + (f"; did you mean '{close[0]}'?" if close else "")
                        + " (a `{re}` prefix makes it a regular expression; `validate_scopes: false` "
                        "accepts names that match nothing)",
                    ))  # fmt: skip
    if problems:
        raise ConfigError(problems)
