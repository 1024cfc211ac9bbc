"""From a pruning level and filter importances to keep-masks: pure functions on numpy arrays.

Groups are indexed by position in a list; a keep-mask is a boolean array with one entry per
filter of the group (True keeps the filter).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "num_pruned_filters",
    "keep_mask",
    "uniform_masks",
    "global_order",
    "masks_from_order",
    "find_uniform_level",
    "find_global_count",
    "PRUNING_QUOTA",
]

#: At most this share of a group's filters is pruned in global (`all_weights`) ranking (NNCF).
PRUNING_QUOTA = 0.9


def num_pruned_filters(total: int, level: float, multiple_of: int = 8) -> int:
    """How many of `total` filters to prune at `level`, keeping a multiple of `multiple_of`.

    The number kept is rounded up (NNCF's `get_rounded_pruned_element_number`), so at least
    one filter always stays; fewer than `multiple_of` filters are never pruned.

    Example:
        >>> num_pruned_filters(64, 0.5), num_pruned_filters(64, 0.3), num_pruned_filters(8, 0.5)
        (32, 16, 0)
    """
    remaining = math.ceil(round(total * (1.0 - level), 6) / multiple_of) * multiple_of
    return max(total - max(remaining, 1), 0)


def keep_mask(importance: np.ndarray, num_pruned: int) -> np.ndarray:
    """Keeps all but the `num_pruned` least important filters (ties: the first ones go).

    Example:
        >>> keep_mask(np.array([3.0, 1.0, 2.0, 1.0]), 2)
        array([ True, False,  True, False])
    """
    mask = np.ones(len(importance), bool)
    mask[np.argsort(importance, kind="stable")[:num_pruned]] = False
    return mask


def uniform_masks(importances, level, multiple_of=8):
    """The same pruning level in every group: a keep-mask per group."""
    return [keep_mask(imp, num_pruned_filters(len(imp), level, multiple_of)) for imp in importances]


def global_order(importances, quota=PRUNING_QUOTA):
    """`(group, filter)` pairs in the order global ranking prunes them (least important first).

    Importances of different groups must be comparable (see `l2_normalized`). A group gives
    at most `floor(quota * filters)` filters and always keeps one.

    Example:
        >>> global_order([np.array([0.5, 0.1]), np.array([0.2, 0.3, 0.0])], quota=0.7)
        [(1, 2), (0, 1), (1, 0)]
    """
    entries = sorted(
        ((float(v), g, i) for g, imp in enumerate(importances) for i, v in enumerate(imp)),
        key=lambda e: e[0],
    )
    limits = [min(math.floor(quota * len(imp)), len(imp) - 1) for imp in importances]
    taken = [0] * len(importances)
    order = []
    for _, g, i in entries:
        if taken[g] < limits[g]:
            taken[g] += 1
            order.append((g, i))
    return order


def masks_from_order(sizes, order, count):
    """Keep-masks with the first `count` filters of a `global_order` pruned."""
    masks = [np.ones(n, bool) for n in sizes]
    for g, i in order[:count]:
        masks[g][i] = False
    return masks


def find_uniform_level(removed, target, iterations=30, max_level=0.99):
    """The smallest uniform pruning level whose `removed(level)` reaches `target` (bisection).

    Args:
        removed: monotone function from a level to the share of FLOPs it removes.
        target: the share of FLOPs to remove.
        iterations: bisection steps.
        max_level: the highest level tried.

    Returns:
        `(level, reached)`: `reached` is False when even `max_level` removes less than `target`
        (then `max_level` is returned).

    Example:
        >>> level, reached = find_uniform_level(lambda p: 1 - (1 - p) ** 2, 0.75)
        >>> round(level, 4), reached
        (0.5, True)
    """
    if removed(0.0) >= target:
        return 0.0, True
    if removed(max_level) < target:
        return max_level, False
    low, high = 0.0, max_level
    for _ in range(iterations):
        mid = (low + high) / 2
        if removed(mid) >= target:
            high = mid
        else:
            low = mid
    return high, True


def find_global_count(removed, target, length):
    """The smallest prefix length `k` of a `global_order` whose `removed(k)` reaches `target`.

    Returns:
        `(k, reached)` as in `find_uniform_level`.
    """
    if removed(0) >= target:
        return 0, True
    if removed(length) < target:
        return length, False
    low, high = 0, length
    while high - low > 1:
        mid = (low + high) // 2
        if removed(mid) >= target:
            high = mid
        else:
            low = mid
    return high, True
