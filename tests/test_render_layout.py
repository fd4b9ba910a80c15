"""Renderers accept relevance in the model's declared layout (NCHW for ONNX models)."""
from __future__ import annotations

import numpy
import pytest

import lrpflow
from lrpflow import render


@pytest.fixture
def sample(rng):
    """One (H, W, C) = (12, 10, 3) image and relevance, channels-last."""
    return rng.uniform(0, 1, (12, 10, 3)), rng.normal(0, 1, (12, 10, 3))


def test_hm_to_rgb_takes_nchw(sample):
    x, r = sample
    want = render.hm_to_rgb(r, X=x, scaling=2)
    chw_r, chw_x = r.transpose(2, 0, 1), x.transpose(2, 0, 1)
    numpy.testing.assert_array_equal(render.hm_to_rgb(chw_r, X=chw_x, scaling=2, layout="NCHW"), want)
    # one sample with its batch axis, and the shape alone (a (3, H, W) sample is unambiguous)
    numpy.testing.assert_array_equal(render.hm_to_rgb(chw_r[None], X=chw_x[None], scaling=2, layout="NCHW"), want)
    numpy.testing.assert_array_equal(render.hm_to_rgb(chw_r, X=chw_x, scaling=2), want)
    numpy.testing.assert_array_equal(render.hm_to_rgb(r, X=x, scaling=2, layout="NHWC"), want)
    assert want.shape == (24, 20, 3)


def test_explicit_layout_decides_ambiguous_shapes(rng):
    r = rng.normal(0, 1, (3, 4, 4))  # (C=3, H=4, W=4) or (H=3, W=4, C=4)?
    assert render.hm_to_rgb(r, scaling=1).shape == (3, 4, 3)  # lrpflow's own layout: channels last
    numpy.testing.assert_array_equal(render.hm_to_rgb(r, scaling=1, layout="NCHW"),
                                     render.hm_to_rgb(r.transpose(1, 2, 0), scaling=1))
    with pytest.raises(lrpflow.ConfigError, match="layout must be"):
        render.hm_to_rgb(r, layout="CWH")
    with pytest.raises(lrpflow.DataFormatError, match="NCHW"):
        render.hm_to_rgb(rng.normal(0, 1, (12, 10, 8)), layout="NHWC")


def test_digit_overlay_and_grids_take_nchw(sample, rng):
    x, r = sample
    chw_x, chw_r = x.transpose(2, 0, 1), r.transpose(2, 0, 1)
    numpy.testing.assert_array_equal(render.digit_to_rgb(chw_x, layout="NCHW"), render.digit_to_rgb(x))
    numpy.testing.assert_array_equal(render.overlay(chw_r, chw_x, layout="NCHW"), render.overlay(r, x))
    numpy.testing.assert_array_equal(render.render_heatmap(chw_r, chw_x, layout="NCHW"), render.render_heatmap(r, x))
    xb, rb = numpy.stack([x, x]), numpy.stack([r, -r])
    want = render.colormap_grid(rb, xb, cmaps=["gray_red"], dpi=40)
    got = render.colormap_grid(rb.transpose(0, 3, 1, 2), xb.transpose(0, 3, 1, 2), cmaps=["gray_red"], dpi=40,
                               layout="NCHW")
    numpy.testing.assert_array_equal(got, want)
    got = render.heatmap_grid({"a": rb.transpose(0, 3, 1, 2)}, xb.transpose(0, 3, 1, 2), dpi=40, layout="NCHW")
    numpy.testing.assert_array_equal(got, render.heatmap_grid({"a": rb}, xb, dpi=40))


def test_explanation_carries_the_model_layout(rng):
    from lrpflow.layers import Conv2d, Flatten, Linear, ReLU

    layers = [Conv2d(3, 3, 3, 2, padding=1, rng=rng), ReLU(), Flatten(), Linear(2 * 36, 3, rng=rng)]
    nchw = lrpflow.Sequential(layers, input_shape=(6, 6, 3), layout="NCHW")
    x = rng.uniform(0, 1, (2, 3, 6, 6))
    e = lrpflow.explain(nchw, x, rule="epsilon")
    assert e.layout == "NCHW" and e.relevance.shape == (2, 3, 6, 6) and e.to_numpy().layout == "NCHW"
    got = render.hm_to_rgb(e.relevance[0], X=x[0], layout=e.layout)
    numpy.testing.assert_array_equal(got, render.hm_to_rgb(e.relevance[0].transpose(1, 2, 0), X=x[0].transpose(1, 2, 0)))
