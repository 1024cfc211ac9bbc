"""The configs that ship inside the package (`keras_compress/configs/*.json`), found by name."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

__all__ = ["list_configs", "packaged_config"]


def _folder() -> Traversable:
    return resources.files("keras_compress").joinpath("configs")


def list_configs() -> list[str]:
    """Returns the names of the configs packaged with keras_compress, sorted.

    Each name can be passed to `load_config` (and to `kc.compress`) as it is, from any directory.

    Example:

    ```python
    list_configs()  # ['demo', 'int8', 'pruning', 'pruning_int8']
    ```
    """
    return sorted(item.name[: -len(".json")] for item in _folder().iterdir() if item.name.endswith(".json"))


def packaged_config(name: str) -> Traversable | None:
    """The packaged config file called `name` (`"int8"` or `"int8.json"`), or None.

    A name with a folder in it (`configs/int8.json`) is a path, never a packaged name.
    """
    if not name or "/" in name or "\\" in name:
        return None
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return _folder().joinpath(f"{stem}.json") if stem in list_configs() else None
