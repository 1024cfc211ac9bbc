"""Loading a config: from a path, a dict or a JSON string, validated, with notices for unused keys."""

from __future__ import annotations

import difflib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from keras_compress.config.document import (
    ALGORITHM_NAMES,
    ALGORITHMS,
    IGNORED_ALGORITHMS,
    PYTORCH_ONLY_KEYS,
    CompressionConfig,
    is_ignored,
)
from keras_compress.config.errors import ConfigError, ConfigWarning, ErrorSchema, json_type, translate_errors
from keras_compress.config.packaged import list_configs, packaged_config
from keras_compress.config.quantization import UNION_TAGS
from keras_compress.config.scopes import is_torch_scope, split_precision_scope

__all__ = ["load_config", "json_schema"]

_ERROR_SCHEMA = ErrorSchema(
    root=CompressionConfig,
    algorithms=ALGORITHMS,
    algorithm_names=ALGORITHM_NAMES,
    known_algorithms=ALGORITHM_NAMES + IGNORED_ALGORITHMS,
    union_tags=UNION_TAGS,
)


def load_config(source: str | os.PathLike | dict | CompressionConfig) -> CompressionConfig:
    """Loads and validates a compression config; never evaluates code.

    Args:
        source: the name of a packaged config (`"int8"`, see `list_configs()`), a path to a JSON
            file, a dict (NumPy scalars in it are read as the Python values they hold), a JSON
            string (a str starting with `{` or `[`, after whitespace or a UTF-8 byte order mark),
            or a `CompressionConfig` (returned as it is). A file at that path wins over a packaged
            config of the same name.

    Returns:
        The validated config, with defaults and presets filled in.

    Raises:
        ConfigError: listing every problem found, each with its JSON path.

    Warns:
        ConfigWarning: once for all top-level keys keras_compress does not use (kept in `extra`), and
            once for each PyTorch-only NNCF key or algorithm (stored, no effect).

    Example:

    ```python
    config = load_config('{"compression": {"algorithm": "filter_pruning", "params": {"pruning_target": 0.4}}}')
    config.get_algorithm("filter_pruning").params.pruning_target  # 0.4
    load_config("int8").algorithm_names()  # ['quantization']: a packaged config, by name
    ```
    """
    if isinstance(source, CompressionConfig):
        return source
    raw = _read(source)
    try:
        raw = _plain_values(raw)
    except RecursionError:
        raise ConfigError([("$", "the config is nested too deeply to be a compression config")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([("$", f"the config must be a JSON object (received {json_type(raw)})")])
    single = {key for key in ("input_info", "compression") if isinstance(raw.get(key), dict)}
    sections = raw.get("compression")
    sections = [sections] if isinstance(sections, dict) else sections if isinstance(sections, list) else []
    kept = [index for index, section in enumerate(sections) if not is_ignored(section)]
    try:
        config = CompressionConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(translate_errors(err, _ERROR_SCHEMA, single, kept)) from None
    for message in _notices(config, sections, single):
        warnings.warn(message, ConfigWarning, stacklevel=2)
    return config


def json_schema() -> dict[str, Any]:
    """Returns the JSON Schema of a compression config.

    Returns:
        A JSON Schema (draft 2020-12) dict; `properties.compression` describes the algorithms.

    Example:

    ```python
    sorted(json_schema()["properties"])[:3]  # ['accuracy_aware_training', 'compression', ...]
    ```
    """
    return CompressionConfig.model_json_schema()


def _read(source: Any) -> Any:
    """Returns the parsed JSON of `source` (or `source` itself when it is a dict)."""
    if isinstance(source, dict):
        return source
    if isinstance(source, str) and source.lstrip(_BOM_AND_SPACE)[:1] in ("{", "["):
        text = source.lstrip(_BOM_AND_SPACE)  # a JSON string saved by an editor that writes a BOM
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        packaged = packaged_config(source) if isinstance(source, str) and not path.exists() else None
        try:
            text = (packaged or path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError([("$", f"config file not found: '{path}' (and no packaged config has that name; "
                                     f"packaged: {', '.join(list_configs())})")]) from None
        except IsADirectoryError:
            raise ConfigError([("$", f"config path is a directory, not a JSON file: '{path}'")]) from None
        except (OSError, ValueError) as err:  # permissions, bad encoding, NUL in the path, ...
            raise ConfigError([("$", f"cannot read config file '{path}': {err}")]) from None
    else:
        raise ConfigError([("$", "`source` must be a path, a dict, a JSON string or a CompressionConfig. "
                                 f"Received: {type(source).__name__}")])
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as err:
        raise ConfigError([("$", f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}")]) from None
    except (ValueError, RecursionError) as err:
        raise ConfigError([("$", f"invalid JSON: {err}")]) from None


#: What may precede a JSON document in a string: whitespace and a UTF-8 byte order mark (U+FEFF), which
#: editors on Windows write and `open(path).read()` keeps. (Files are read with `utf-8-sig`, which drops it.)
_BOM_AND_SPACE = "\ufeff \t\r\n"


def _plain_values(value: Any) -> Any:
    """`value` with every NumPy scalar (`np.int64(8)`, `np.float32(0.5)`, `np.True_`) replaced by the Python
    value it holds, in nested dicts and lists; a config built in code often carries them. Other
    values are returned as they are (the config package imports no NumPy: scalars are recognized by type)."""
    if isinstance(value, dict):
        return {key: _plain_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_values(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain_values(item) for item in value)
    if _is_numpy_scalar(value):
        return value.item()
    return value


def _is_numpy_scalar(value: Any) -> bool:
    """Whether `value` is a NumPy bool, integer, floating-point or string scalar (checked by class name)."""
    kinds = {cls.__name__ for cls in type(value).__mro__ if cls.__module__ == "numpy"}
    return "generic" in kinds and bool(kinds & {"bool", "bool_", "integer", "floating", "str_"})


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        duplicate = next(key for index, (key, _) in enumerate(pairs) if key in dict(pairs[:index]))
        raise ValueError(f"key '{duplicate}' appears twice in one object")
    return data


def _notices(config: CompressionConfig, sections: list, single: set[str]) -> list[str]:
    """Returns the warnings for a loaded config: every key it accepts that has no effect (unused top-level
    keys, PyTorch-only keys and algorithms, values keras_compress does not act on), and inputs that look
    like PyTorch's."""
    notices = []
    extra = dict(config.extra)
    if "bootstrapNAS" in extra:
        del extra["bootstrapNAS"]
        notices.append("bootstrapNAS: NAS is not supported: keras_compress does no neural architecture search "
                       "(NNCF's BootstrapNAS is PyTorch-only); the section is kept in `extra` and has no effect")
    if extra:
        known = [name for name in CompressionConfig.model_fields if name not in ("extra", "ignored_algorithms")]
        names = []
        for key in extra:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            names.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        notices.append(f"keys not used by keras_compress (training-script settings, kept in `extra`): "
                       f"{', '.join(names)}")
    notices += _input_notices(config, single)
    located = [("", {k: getattr(config, k) for k in PYTORCH_ONLY_KEYS[""]}, "")]
    for index, section in enumerate(sections):
        where = "compression" if "compression" in single else f"compression[{index}]"
        if is_ignored(section):
            notices.append(f"{where}: algorithm '{section['algorithm']}' is PyTorch-only in NNCF and has no "
                           "effect in keras_compress (kept in `ignored_algorithms`)")
        else:
            located.append((where, section, section["algorithm"]))
    models = iter(config.compression)  # the validated sections, in the order of `located`'s
    for where, section, algorithm in located:
        for dotted in PYTORCH_ONLY_KEYS.get(algorithm, ()) + (PYTORCH_ONLY_KEYS["*"] if algorithm else ()):
            *parents, key = dotted.split(".")
            node = section
            for parent in parents:
                node = node.get(parent) or {}
            if isinstance(node, dict) and node.get(key) is not None:
                path = ".".join(filter(None, [where, dotted]))
                notices.append(f"{path}: PyTorch-only in NNCF, it has no effect in keras_compress")
        if algorithm:
            notices += _section_notices(where, next(models))
    notices += _batchnorm_notices(config, sections, single)
    return notices


def _input_notices(config: CompressionConfig, single: set[str]) -> list[str]:
    """`input_info` entries that look like PyTorch's (NCHW), and keys keras_compress does not read."""
    notices = []
    for index, info in enumerate(config.input_info):
        where = "input_info" if "input_info" in single else f"input_info[{index}]"
        size = info.sample_size
        if len(size) in (3, 4, 5) and size[1] <= 4 < size[-1]:
            shape = (*size[2:], size[1])
            notices.append(f"{where}.sample_size: {size} looks like PyTorch's channels-first layout (NCHW); "
                           f"keras_compress reads it channels-last (batch, ..., channels): an input of shape "
                           f"{tuple(size[1:])}. For channels-last write {[size[0], *shape]}")
        for key in ("type", "filler", "keyword"):
            if key in info.model_fields_set:
                notices.append(f"{where}.{key}: NNCF's setting for generated inputs; keras_compress reads only "
                               "`sample_size`, it has no effect")
    return notices


def _section_notices(where: str, section: Any) -> list[str]:
    """Values of one section that keras_compress accepts but does not act on as NNCF would."""
    notices = []
    params = getattr(section, "params", None)
    if section.algorithm == "filter_pruning" and params.prune_batch_norms is False:
        notices.append(f"{where}.params.prune_batch_norms: false has no effect: keras_compress always removes the "
                       "BatchNormalization channels of pruned filters together with the filters")
    precision = getattr(getattr(section, "initializer", None), "precision", None)
    if precision is not None and precision.type != "manual" and precision.bitwidth_per_scope:
        notices.append(f"{where}.initializer.precision.bitwidth_per_scope: used only by `type: manual`; "
                       f"it has no effect with type '{precision.type}'")
    torch = [scope for _, scope in getattr(precision, "bitwidth_per_scope", None) or []
             if is_torch_scope(split_precision_scope(scope)[0])]  # fmt: skip
    if torch:
        notices.append(f"{where}.initializer.precision.bitwidth_per_scope: {len(torch)} scope(s) are NNCF PyTorch "
                       f"names (e.g. {torch[0]!r}); kc.compress looks each one up among the Keras model's layers by "
                       "its module path (`layer1.0.conv1`, also as `layer1_0_conv1`) and refuses the ones it "
                       "cannot find. Keras scopes are layer names: [bits, 'conv1'] or [bits, 'relu1|OUTPUT']")
    return notices


def _batchnorm_notices(config: CompressionConfig, sections: list, single: set[str]) -> list[str]:
    """A warning when sections set different BatchNorm adaptation sample counts (it runs once, on the smallest)."""
    settings = config.batchnorm_adaptation_settings()
    if len({value for _, value in settings}) < 2:
        return []
    kept = [index for index, section in enumerate(sections) if not is_ignored(section)]
    where = [("compression" if "compression" in single else f"compression[{kept[index]}]") for index, _ in settings]
    asked = ", ".join(f"{path} asks for {value}" for path, (_, value) in zip(where, settings))
    return [f"initializer.batchnorm_adaptation.num_bn_adaptation_samples differs between sections ({asked}): "
            f"BatchNorm adaptation runs once for all algorithms, on the smallest: "
            f"{config.batchnorm_adaptation_samples()} samples"]
