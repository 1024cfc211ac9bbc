"""Small builders shared by the test modules (pytest puts this folder on sys.path)."""

import numpy as np


def quantization_config(bn_samples=0, init_samples=32, **section):
    """A config with one quantization section: per-channel weights, no overflow fix, and the
    given numbers of BN-adaptation and range-init samples; `section` adds or replaces keys."""
    q = {
        "algorithm": "quantization",
        "weights": {"per_channel": True},
        "overflow_fix": "disable",
        "initializer": {
            "range": {"num_init_samples": init_samples},
            "batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples},
        },
    }
    q.update(section)
    return {"compression": q}


def data(shape, seed=0):
    """Standard-normal float32 data of `shape`."""
    return np.random.default_rng(seed).normal(size=shape).astype("float32")
