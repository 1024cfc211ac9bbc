"""Config errors: `ConfigError`, `ConfigWarning`, and the translation of pydantic errors into JSON paths.

Every problem a user can make in a config is reported as `(json_path, message)`, for example
`compression[1].params.pruning_target: must be < 1 (received 1.5)`, with a "did you mean" hint
for misspelt keys and values.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "ErrorSchema",
    "fail",
    "json_path",
    "json_type",
    "show",
    "suggest",
    "translate_errors",
]


class ConfigError(ValueError):
    """A config could not be loaded; lists every problem found, one per line.

    Args:
        errors: `(json_path, message)` pairs; the path is `$` for the document as a whole.

    Example:

    ```python
    try:
        load_config({"compression": {"algorithm": "quantization", "weights": {"bits": 12}}})
    except ConfigError as err:
        err.errors  # [('compression.weights.bits', '`bits` must be between 2 and 8. Received: bits=12')]
    ```
    """

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = list(errors)
        super().__init__("\n".join(f"{path}: {message}" for path, message in self.errors))

    def __reduce__(self):
        return type(self), (self.errors,)


class ConfigWarning(UserWarning):
    """A config key is accepted but has no effect in keras_compress."""


def fail(problems: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Raises cross-field problems from a model validator, each with its path relative to the model."""
    if problems:
        summary = "; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in problems)
        raise PydanticCustomError("config_rule", "{summary}", {"summary": summary, "problems": problems})


def show(value: Any) -> str:
    """A value as the user wrote it in JSON, shortened to 80 characters."""
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value ("an array", "a string", ...)."""
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


_TYPE_MESSAGES = {
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "tuple_type": "must be a JSON array",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
}
_COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


class ErrorSchema(typing.NamedTuple):
    """What the translation needs to know about the config models."""

    root: type[BaseModel]
    algorithms: tuple[type[BaseModel], ...]  # the section models, chosen by their `algorithm` key
    algorithm_names: tuple[str, ...]
    known_algorithms: tuple[str, ...]  # names offered in "did you mean" hints
    union_tags: dict[str, tuple[str, ...]]  # tags pydantic puts in error paths after these keys


def translate_errors(
    error: ValidationError, schema: ErrorSchema, single: set[str], kept: list[int]
) -> list[tuple[str, str]]:
    """`(json_path, message)` for every error of a pydantic `ValidationError` of a config.

    Args:
        error: what pydantic raised.
        schema: the config models (`ErrorSchema`).
        single: top-level keys the user wrote as one object where a list is allowed (their `[0]` is
            left out of paths).
        kept: positions in the file's `compression` list of the sections that were validated.
    """
    converted = []
    for err in error.errors():
        loc = _clean_loc(err["loc"], schema, kept)
        if err["type"] == "config_rule":
            for subpath, message in err["ctx"]["problems"]:
                converted.append((_json_path(_clean_loc((*err["loc"], *subpath), schema, kept), single), message))
            continue
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "algorithm")
        converted.append((_json_path(loc, single), _message(err, loc, schema)))
    return list(dict.fromkeys(converted))


def _clean_loc(loc: tuple, schema: ErrorSchema, kept: list[int]) -> tuple:
    """Drops the union tags pydantic puts in `loc`, and maps `compression` indices back to the file's."""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "compression" and isinstance(parts[1], int):
        if parts[1] < len(kept):
            parts[1] = kept[parts[1]]
        if len(parts) >= 3 and parts[2] in schema.algorithm_names:
            del parts[2]
    cleaned = []
    for part in parts:
        if not (cleaned and part in schema.union_tags.get(str(cleaned[-1]), ())):
            cleaned.append(part)
    return tuple(cleaned)


def _json_path(loc: tuple, single: set[str]) -> str:
    path = ""
    for position, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int):
            if not (position == 1 and loc[0] in single and part == 0):
                path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            path += f".{part}" if path else str(part)
        else:
            path += f"[{json.dumps(str(part))}]"
    return path or "$"


def json_path(loc: tuple) -> str:
    """The JSON path of a location in a config document, e.g. `compression[1].params.pruning_target`.

    Example:

    ```python
    json_path(("compression", 0, "scope_overrides", "weights", "{re}conv.*"))
    # 'compression[0].scope_overrides.weights["{re}conv.*"]'
    ```
    """
    return _json_path(tuple(loc), set())


def _message(err: dict, loc: tuple, schema: ErrorSchema) -> str:
    kind, ctx, received = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        key, allowed = str(loc[-1]), _allowed_keys(err["loc"][:-1], schema)
        return f"unknown key '{key}'" + suggest(key, allowed, "allowed keys")
    if kind == "missing":
        return "required key is missing" if isinstance(loc[-1], str) else "required item is missing"
    if kind == "union_tag_not_found":
        return "required key is missing: every compression section needs an `algorithm`"
    if kind == "union_tag_invalid":
        name = received.get("algorithm") if isinstance(received, dict) else ctx.get("tag")
        return f"unknown algorithm {show(name)}" + suggest(str(name), schema.known_algorithms, "known")
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return (f"must be one of {', '.join(map(repr, expected))} (received {show(received)})"
                + (suggest(received, expected, None) if isinstance(received, str) else ""))
    if kind in _COMPARISONS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {_COMPARISONS[kind]} {bound} (received {show(received)})"
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]} (received {show(received)})"
    message = str(err["msg"])
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return f"{message[:1].lower()}{message[1:]} (received {show(received)})"


def suggest(word: str, choices: typing.Iterable[str], listing: str | None) -> str:
    """"; did you mean 'x'?" for the closest choice, else the list of choices (when `listing` names it)."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6) or [
        choice for choice in choices if word and choice.lower().startswith(word.lower())][:1]
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" ({listing}: {', '.join(choices)})" if listing else ""


def _allowed_keys(loc: tuple, schema: ErrorSchema) -> list[str]:
    """Returns the keys allowed in the object at `loc` (a raw pydantic loc), by walking the models."""
    models: list[type[BaseModel]] = [schema.root]
    for part in loc:
        if not isinstance(part, str):
            continue
        inner = [m for model in models if part in model.model_fields
                 for m in _models_in(model.model_fields[part].annotation)]
        tagged = [model for model in models
                  if model in schema.algorithms and part == model.model_fields["algorithm"].default]
        models = inner or tagged or models
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
