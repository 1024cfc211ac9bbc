"""Pure functions of sparsity: weight importance, thresholds, masks, levels."""

from __future__ import annotations

import numpy as np

__all__ = [
    "WEIGHT_IMPORTANCE_FUNCTIONS",
    "abs_importance",
    "normed_abs_importance",
    "threshold_for_level",
    "magnitude_masks",
    "sparsity_level",
    "block_expand",
]


def abs_importance(w):
    """|w|."""
    return np.abs(np.asarray(w, "float32"))


def normed_abs_importance(w):
    """|w| / ||w||_2: comparable across layers of different scale (NNCF's default)."""
    w = np.asarray(w, "float32")
    norm = float(np.linalg.norm(w))
    return np.abs(w) / (norm if norm > 0 else 1.0)


#: `weight_importance` config value -> function.
WEIGHT_IMPORTANCE_FUNCTIONS = {"abs": abs_importance, "normed_abs": normed_abs_importance}


def threshold_for_level(importance, level):
    """The value below which a `level` share of `importance` lies (values <= it are masked).

    Example:
        >>> threshold_for_level(np.array([0.1, 0.4, 0.2, 0.3]), 0.5)
        0.2
    """
    flat = np.ravel(importance)
    k = int(round(level * flat.size))
    if k <= 0:
        return -np.inf
    return float(np.partition(flat, k - 1)[k - 1])


def magnitude_masks(weights, level, importance="normed_abs", mode="global"):
    """Binary masks that zero the `level` share of least important weights.

    Args:
        weights: list of weight arrays.
        level: target share of zeros, in [0, 1).
        importance: "abs" or "normed_abs".
        mode: "global" (one threshold over all weights) or "local" (each array at `level`).

    Returns:
        List of float32 masks (1 keep, 0 drop), one per array.

    Example:
        >>> [m.tolist() for m in magnitude_masks([np.array([1.0, -3.0, 0.5, 2.0])], 0.5, "abs")]
        [[0.0, 1.0, 0.0, 1.0]]
    """
    fn = WEIGHT_IMPORTANCE_FUNCTIONS[importance]
    scores = [fn(w) for w in weights]
    if mode == "global":
        threshold = threshold_for_level(np.concatenate([s.ravel() for s in scores]), level)
        return [(s > threshold).astype("float32") for s in scores]
    return [(s > threshold_for_level(s, level)).astype("float32") for s in scores]


def sparsity_level(arrays):
    """Share of exact zeros over all `arrays`."""
    total = sum(int(np.size(a)) for a in arrays)
    zeros = sum(int(np.size(a) - np.count_nonzero(a)) for a in arrays)
    return zeros / total if total else 0.0


def block_expand(block_values, shape):
    """Repeats a block-level array to `shape` (each block value covers a block of weights).

    Example:
        >>> block_expand(np.array([[1, 0]]), (2, 4)).tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0]]
    """
    block_values = np.asarray(block_values)
    reps = [int(np.ceil(s / b)) for s, b in zip(shape, block_values.shape)]
    expanded = block_values
    for axis, r in enumerate(reps):
        expanded = np.repeat(expanded, r, axis=axis)
    return expanded[tuple(slice(0, s) for s in shape)]
