"""``cmap="toolbox:<name>"`` reproduces the LRP Toolbox's heatmap pictures byte for byte.

The reference below restates the toolbox's ``render.hm_to_rgb`` for its custom maps
(enlarge the *raw* R, apply the map to it, multiply by the inverted Canny edges of the
enlarged input) and its ``save_image`` (``(rgb * 255).astype(uint8)``), with its colour
formulas written out per map, defects included.
"""
from __future__ import annotations

import warnings

import numpy
import pytest
from skimage.feature import canny

import lrpflow
from lrpflow.render import hm_to_rgb, save_image


def _ramp(x, s, w):
    return numpy.clip(x - s, 0, w) / w


def ref_map(name, R):
    R = R.copy()
    if name == "gray-red":
        m = R.max()
        rgb = numpy.ones(R.shape + (3,)) * 0.8
        t = numpy.maximum(numpy.minimum(R / m, 1.0), -1.0)
        n, p = R < 0, R >= 0
        rgb[n, 0] += t[n] * 0.8
        rgb[n, 1] += t[n] * 0.8
        rgb[n, 2] += -t[n] * 0.2
        rgb[p, 0] += t[p] * 0.2
        rgb[p, 1] += -t[p] * 0.8
        rgb[p, 2] += -t[p] * 0.8
        return rgb
    if name == "gray-red2":
        v = numpy.var(R)
        R[R > 10 * v] = 0
        R[R < 0] = 0
        x = R / numpy.max(R)
        r = (0.9 - _ramp(x, 0.3, 0.7) * 0.5) * (x >= 0) + (0.9 - _ramp(-x, 0, 0.3) * 0.5 - _ramp(-x, 0.3, 0.7) * 0.4) * (x < 0)
        g = (0.9 - _ramp(x, 0, 0.3) * 0.5 - _ramp(x, 0.3, 0.7) * 0.4) * (x >= 0) + \
            (0.9 - _ramp(-x, 0, 0.3) * 0.5 - _ramp(-x, 0.3, 0.7) * 0.4) * (x < 0)
        b = (0.9 - _ramp(x, 0, 0.3) * 0.5 - _ramp(x, 0.3, 0.7) * 0.4) * (x >= 0) + (0.9 - _ramp(-x, 0.3, 0.7) * 0.5) * (x < 0)
        return numpy.stack([r, g, b], axis=-1)
    if name in ("black-green", "blue-black-yellow"):
        m = R.max()
        rgb = numpy.zeros(R.shape + (3,))
        n, p = R < 0, R >= 0
        rgb[n, 2] = -R[n] / m
        rgb[p, 1] = R[p] / m
        if name == "blue-black-yellow":
            rgb[p, 0] = R[p] / m
        return rgb
    if name == "black-firered":
        x = R / numpy.max(numpy.abs(R))
        return numpy.stack([_ramp(x, 0, 0.25) + _ramp(-x, 0.5, 0.5), _ramp(x, 0.25, 0.25) + _ramp(-x, 0.25, 0.25),
                            _ramp(x, 0.5, 0.5) + _ramp(-x, 0, 0.25)], axis=-1)
    raise KeyError(name)


def toolbox_picture(R, X, name, scaling=3, sigma=2):
    big = numpy.kron(R, numpy.ones((scaling, scaling)))
    rgb = ref_map(name, big)
    edges = canny(numpy.kron(X, numpy.ones((scaling, scaling))), sigma=sigma)
    rgb *= numpy.invert(numpy.dstack([edges] * 3)) * 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (rgb * 255).astype(numpy.uint8)


@pytest.fixture(scope="module")
def lenet_maps(shared, mnist):
    x, _ = mnist
    model = lrpflow.load_model(str(shared / "models" / "MNIST" / "LeNet-5.txt"))
    out = lrpflow.explain(model, x[:4], rule="alpha_beta", alpha=2.0, beta=1.0, dtype="float64")
    return x[:4, ..., 0], out.relevance[..., 0]


@pytest.mark.parametrize("name", ["gray-red", "gray-red2", "black-green", "black-firered", "blue-black-yellow"])
def test_toolbox_maps_pixel_for_pixel(lenet_maps, name, tmp_path):
    xs, rs = lenet_maps
    # the outlier cut depends on the scale of R: at 1/20 of it some values exceed 10·var(R)
    for x, r in [(x, r * scale) for x, r in zip(xs, rs) for scale in (1.0, 0.05)]:
        assert (r < 0).any()
        ours = save_image([hm_to_rgb(r, X=x, scaling=3, sigma=2, cmap=f"toolbox:{name}")], tmp_path / "a.png", gap=0)
        numpy.testing.assert_array_equal(ours, toolbox_picture(r, x, name))
        assert r.min() < 0 and r.max() > 0  # the caller's map is untouched (the toolbox modified it in place)


def test_gray_red2_cut_and_zeroed_negatives_differ_from_the_default(lenet_maps):
    xs, rs = lenet_maps
    r = rs[0] * 0.05
    assert (r > 10 * r.var()).any()  # gray-red2's outliers are there at this scale
    tb = hm_to_rgb(r, cmap="toolbox:gray-red2", scaling=1)
    ours = hm_to_rgb(r, cmap="gray-red2", scaling=1)
    neg = r < 0
    numpy.testing.assert_allclose(tb[neg], 0.9 * 255 // 1 / 255, atol=1 / 255)  # negatives drawn as zero (light gray)
    assert (ours[neg][:, 2] > ours[neg][:, 0]).any()  # the default shows them in blue
    cut = r > 10 * r.var()
    numpy.testing.assert_allclose(tb[cut], 0.9 * 255 // 1 / 255, atol=1 / 255)  # outliers cut to zero
    assert not numpy.allclose(tb, ours)


def test_toolbox_family_names():
    from lrpflow.render.colormaps import get_colormap

    assert get_colormap("toolbox:gray_red2").name == "gray-red2"
    with pytest.raises(lrpflow.UnknownNameError, match="toolbox"):
        get_colormap("toolbox:viridis")
