"""Pixel flipping's defaults (Samek et al. 2017) tell a good map from a random one on LeNet-5 + MNIST."""
from __future__ import annotations

import subprocess
import sys

import numpy
import pytest

import lrpflow
from lrpflow import evaluate as ev


def test_defaults_are_samek_2017():
    d = ev.PIXEL_FLIPPING_DEFAULTS
    assert (d["order"], d["steps"], d["fraction"], d["patch"], d["baseline"]) == (
        "most_relevant_first", 20, 0.2, "auto", "zero")
    import inspect

    sig = inspect.signature(ev.pixel_flipping).parameters
    assert all(sig[k].default == v for k, v in d.items())  # the function's defaults are the documented ones
    # region side 9/224 of the image side: 9 px on ImageNet, single pixels on MNIST
    assert [ev.auto_patch_side(s) for s in [(224, 224), (32, 32), (28, 28), (64, 64), (448, 300), (10,)]] == \
        [9, 1, 1, 3, 12, 1]


def test_lrp_epsilon_clearly_beats_a_random_map_on_lenet5(shared, mnist):
    x, _ = mnist
    x = x[:40].astype(numpy.float32)
    model = lrpflow.load_model(str(shared / "models" / "MNIST" / "LeNet-5.txt"))
    model.drop_softmax_output_layer()
    lrp = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01)
    rnd = lrpflow.explain(model, x, rule="random")
    good = ev.pixel_flipping(model, x, lrp.relevance, lrp.target)
    bad = ev.pixel_flipping(model, x, rnd.relevance, lrp.target)
    assert good.curve.shape == (40, 21) and good.regions == 32 * 32
    numpy.testing.assert_allclose(good.fractions[-1], 0.2, atol=1e-3)  # 20% of the pixels at the end
    ratio = float(good.aopc.mean() / bad.aopc.mean())
    # measured 4.08 on 50 digits (17.6 vs 4.3 logit units); fraction=1.0 (the old default) gave 1.48
    assert ratio > 3.0, ratio
    old = float(ev.pixel_flipping(model, x, lrp.relevance, lrp.target, fraction=1.0).aopc.mean()
                / ev.pixel_flipping(model, x, rnd.relevance, lrp.target, fraction=1.0).aopc.mean())
    assert old < 2.0 and ratio > 2 * old


def test_info_states_the_defaults():
    out = subprocess.run([sys.executable, "-c", "from lrpflow.cli import info; raise SystemExit(info())",
                          "pixel_flipping"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "pixel_flipping (metric" in text and "aliases: aopc" in text
    for line in ("steps: default 20", "fraction: default 0.2", "patch: default 'auto'",
                 "order: default 'most_relevant_first'", "baseline: default 'zero'"):
        assert line in text, text
    assert "Samek et al." in text


@pytest.mark.parametrize("bad", ["big", -1, 0])
def test_patch_auto_or_sizes(bad):
    model = lrpflow.Sequential([lrpflow.layers.Linear(4, 2, rng=0)])
    with pytest.raises(lrpflow.ConfigError, match="patch"):
        ev.pixel_flipping(model, numpy.ones((1, 4)), numpy.ones((1, 4)), patch=bad)
