"""`kc.compress(verbose=...)`: silent at 0, progress bars that end at the samples actually read."""


import logging
import re

import keras
import numpy as np
import pytest

import keras_compress as kc

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def model_with_batchnorm():
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(x))
    return keras.Model(inputs, keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(x)))


def config(bn_samples=100, init_samples=64):
    return {"compression": {"algorithm": "quantization", "initializer": {
        "range": {"num_init_samples": init_samples},
        "batchnorm_adaptation": {"num_bn_adaptation_samples": bn_samples}}}}  # fmt: skip


DATA = np.random.default_rng(0).random((40, 6, 6, 1), "float32")  # fewer samples than the config asks for


def test_verbose_0_prints_nothing(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="keras_compress")
    kc.compress(model_with_batchnorm(), config(), dataset=DATA, verbose=0)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert caplog.records == []


def test_progress_bars_end_at_the_samples_read_each_on_its_own_line(capfd):
    kc.compress(model_with_batchnorm(), config(), dataset=DATA, verbose=1)
    out = ANSI.sub("", capfd.readouterr().out)
    # Two passes (BatchNorm adaptation asks for 100, range init for 64); the data holds 40.
    renders = [part.strip() for part in re.split(r"[\r\n\x08]+", out) if part.strip()]
    counts = [render.split(" ")[0] for render in renders]
    assert counts.count("40/40") == 2 and counts[-1] == "40/40", counts
    assert not [c for c in counts if c in ("40/100", "40/64")], counts
    assert out.endswith("\n")  # what comes next starts on a line of its own


def test_verbose_2_is_one_line_per_pass(capfd):
    kc.compress(model_with_batchnorm(), config(bn_samples=32, init_samples=16), dataset=DATA, verbose=2)
    lines = ANSI.sub("", capfd.readouterr().out).splitlines()
    assert [line.split(" ")[0] for line in lines] == ["32/32", "16/16"]


def test_verbose_is_checked():
    with pytest.raises(ValueError, match=r'`verbose` must be 0, 1, 2 or "auto". Received: verbose=3'):
        kc.compress(model_with_batchnorm(), config(), dataset=DATA, verbose=3)
