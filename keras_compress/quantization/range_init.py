"""Quantizer range initialization from calibration data.

`RangeCollector` reduces per-sample statistics to a (low, high) range, as NNCF's range
initializers do:

| type              | low                                   | high                                  |
|-------------------|---------------------------------------|---------------------------------------|
| `min_max`         | min over all samples                  | max over all samples                  |
| `mean_min_max`    | mean of per-sample minima             | mean of per-sample maxima             |
| `mixed_min_max`   | min over all samples                  | mean of per-sample maxima             |
| `threesigma`      | median - 3 * MAD                      | median + 3 * MAD                      |
| `percentile`      | `min_percentile` of all values        | `max_percentile` of all values        |
| `mean_percentile` | mean of per-sample `min_percentile`   | mean of per-sample `max_percentile`   |

MAD is the median absolute deviation. Percentile and three-sigma statistics use a bounded
random subsample of the values (at most `max_values`), so memory stays small on large models.
"""

from __future__ import annotations

import numpy as np

from keras_compress.config.quantization import RANGE_TYPES

__all__ = ["RANGE_TYPES", "RangeCollector"]


class RangeCollector:
    """Accumulates activation statistics and reduces them to a range.

    Args:
        range_type: one of `RANGE_TYPES`.
        min_percentile: lower percentile (percentile types), in percent.
        max_percentile: upper percentile (percentile types), in percent.
        max_values: cap on the values kept for percentile / three-sigma statistics.
        seed: seed of the subsampling.

    Example:
        >>> c = RangeCollector("mixed_min_max")
        >>> c.update(np.array([[0.0, 1.0], [-1.0, 3.0]]))
        >>> c.result()
        (-1.0, 2.0)
    """

    def __init__(self, range_type="mixed_min_max", min_percentile=0.1, max_percentile=99.9,
                 max_values=1_000_000, seed=0):  # fmt: skip
        if range_type not in RANGE_TYPES:
            raise ValueError(
                f"`range_type` must be one of {RANGE_TYPES}. Received: range_type={range_type!r}"
            )
        self.range_type = range_type
        self.percentiles = (min_percentile, max_percentile)
        self.max_values = max_values
        self.rng = np.random.default_rng(seed)
        self.mins, self.maxs, self.low_pcts, self.high_pcts, self.values = [], [], [], [], []
        self.num_samples = 0

    def update(self, x):
        """Adds a batch (first axis = samples) of one tensor's values."""
        x = np.asarray(x, dtype="float32")
        if x.size == 0:
            return
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        x = np.where(np.isfinite(x), x, np.nan)
        if x.size == 0:
            return
        self.num_samples += x.shape[0]
        self.mins.append(np.nanmin(x, axis=1))
        self.maxs.append(np.nanmax(x, axis=1))
        if self.range_type == "mean_percentile":
            lo, hi = np.nanpercentile(x, self.percentiles, axis=1)
            self.low_pcts.append(lo)
            self.high_pcts.append(hi)
        elif self.range_type in ("percentile", "threesigma"):
            flat = x[np.isfinite(x)]
            budget = max(self.max_values // 64, 1024)
            if flat.size > budget:
                flat = self.rng.choice(flat, budget, replace=False)
            self.values.append(flat)

    def result(self):
        """The (low, high) range as floats; (0.0, 0.0) when nothing finite was seen."""
        if not self.mins:
            return 0.0, 0.0
        mins, maxs = np.concatenate(self.mins), np.concatenate(self.maxs)
        if np.all(np.isnan(mins)):
            return 0.0, 0.0
        t = self.range_type
        if t == "min_max":
            low, high = np.nanmin(mins), np.nanmax(maxs)
        elif t == "mean_min_max":
            low, high = np.nanmean(mins), np.nanmean(maxs)
        elif t == "mixed_min_max":
            low, high = np.nanmin(mins), np.nanmean(maxs)
        elif t == "mean_percentile":
            low = np.nanmean(np.concatenate(self.low_pcts))
            high = np.nanmean(np.concatenate(self.high_pcts))
        else:
            values = np.concatenate(self.values)
            if values.size == 0:
                return 0.0, 0.0
            if t == "percentile":
                low, high = np.percentile(values, self.percentiles)
            else:
                median = np.median(values)
                mad = np.median(np.abs(values - median))
                low, high = median - 3 * mad, median + 3 * mad
        return float(low), float(high)
