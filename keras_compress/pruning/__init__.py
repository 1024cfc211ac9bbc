"""Filter pruning: importance, pruning groups, the mask wrapper, and surgery that removes filters."""

from keras_compress.pruning.algorithm import FilterPruningAlgorithm
from keras_compress.pruning.groups import ChannelAnalysis, Layout, PruningGroup, analyze_channels
from keras_compress.pruning.importance import (
    FILTER_IMPORTANCE_FUNCTIONS,
    geometric_median_importance,
    l1_importance,
    l2_importance,
)
from keras_compress.pruning.surgery import remove_pruned_filters
from keras_compress.pruning.wrapper import FilterPruningWrapper

__all__ = [
    "FILTER_IMPORTANCE_FUNCTIONS",
    "ChannelAnalysis",
    "FilterPruningAlgorithm",
    "FilterPruningWrapper",
    "Layout",
    "PruningGroup",
    "analyze_channels",
    "geometric_median_importance",
    "l1_importance",
    "l2_importance",
    "remove_pruned_filters",
]
