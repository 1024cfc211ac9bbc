"""Filter importance: pure functions of a weight array, one score per filter.

A filter is a slice of the weight along `axis` (for a Keras Conv kernel `(kh, kw, in, out)` the
filters lie on the last axis). The less important filters are pruned first. The functions and
the flat `FILTER_IMPORTANCE_FUNCTIONS` dict follow NNCF's.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "l1_importance",
    "l2_importance",
    "geometric_median_importance",
    "l2_normalized",
    "FILTER_IMPORTANCE_FUNCTIONS",
]


def _filters(weights, axis):
    """The weights as a `(filters, values per filter)` matrix."""
    weights = np.asarray(weights, dtype="float64")
    return np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)


def l1_importance(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """The L1 norm of each filter.

    Example:
        >>> l1_importance(np.array([[1.0, -2.0], [3.0, 0.0]]))
        array([4., 2.])
    """
    return np.abs(_filters(weights, axis)).sum(axis=1)


def l2_importance(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """The L2 norm of each filter (NNCF's default criterion).

    Example:
        >>> l2_importance(np.array([[3.0, 0.0], [4.0, 1.0]]))
        array([5., 1.])
    """
    return np.sqrt(np.square(_filters(weights, axis)).sum(axis=1))


def geometric_median_importance(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """The sum of Euclidean distances from each filter to all the others (FPGM).

    Filters close to the geometric median of the layer's filters are the most replaceable
    by the others, so they get the lowest score.

    Example:
        >>> geometric_median_importance(np.array([[0.0, 1.0, 3.0]]))
        array([4., 3., 5.])
    """
    filters = _filters(weights, axis)
    squares = np.square(filters).sum(axis=1, keepdims=True)
    distances = np.sqrt(np.maximum(squares - 2.0 * filters @ filters.T + squares.T, 0.0))
    return distances.sum(axis=0)


def l2_normalized(weights: np.ndarray) -> np.ndarray:
    """The weights divided by their global L2 norm (makes layers comparable in global ranking)."""
    weights = np.asarray(weights, dtype="float64")
    norm = np.sqrt(np.square(weights).sum())
    return weights / norm if norm > 0 else weights


#: Config `filter_importance` name -> function `(weights, axis) -> scores`.
FILTER_IMPORTANCE_FUNCTIONS = {
    "L2": l2_importance,
    "L1": l1_importance,
    "geometric_median": geometric_median_importance,
}
