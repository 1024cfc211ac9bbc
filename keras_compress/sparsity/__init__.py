"""Magnitude, RB and movement sparsity: pure mask functions, the mask wrappers, the algorithms.

- `functions`: weight importance, thresholds, masks and levels on numpy arrays;
- `wrappers`: `MagnitudeSparsityWrapper`, `RBSparsityWrapper`, `MovementSparsityWrapper`
  (serializable Keras layers that multiply weights by masks);
- `algorithm`: the three algorithms (layer selection, schedules, statistics).
"""

from keras_compress.sparsity.algorithm import (
    MagnitudeSparsityAlgorithm,
    MovementSparsityAlgorithm,
    RBSparsityAlgorithm,
)
from keras_compress.sparsity.functions import magnitude_masks, sparsity_level
from keras_compress.sparsity.wrappers import (
    MagnitudeSparsityWrapper,
    MaskedWeightsWrapper,
    MovementSparsityWrapper,
    RBSparsityWrapper,
)

__all__ = [
    "MagnitudeSparsityAlgorithm",
    "MagnitudeSparsityWrapper",
    "MaskedWeightsWrapper",
    "MovementSparsityAlgorithm",
    "MovementSparsityWrapper",
    "RBSparsityAlgorithm",
    "RBSparsityWrapper",
    "magnitude_masks",
    "sparsity_level",
]
