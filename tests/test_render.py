"""lrpflow.render: colormaps against the toolbox's formulas, the toolbox's image API, grids, curves."""
from __future__ import annotations

import numpy
import pytest

from lrpflow import render
from lrpflow.errors import ConfigError, DataFormatError, UnknownNameError
from lrpflow.plugins import build_registries, make_plugin_manager

T = numpy.array([-1.0, -0.5, 0.0, 0.5, 1.0])

# Colours at t = -1, -0.5, 0, 0.5, 1, worked out by hand from the toolbox's formulas
# (python/render.py) for a map whose largest value is its largest magnitude (max R = max |R| = 1).
EXPECTED = {
    # base gray 0.8; t<0: (0.8+0.8t, 0.8+0.8t, 0.8-0.2t); t>=0: (0.8+0.2t, 0.8-0.8t, 0.8-0.8t)
    "gray-red": [(0, 0, 1), (0.4, 0.4, 0.9), (0.8, 0.8, 0.8), (0.9, 0.4, 0.4), (1, 0, 0)],
    # t=0.5: r = 0.9 - (0.2/0.7)*0.5 = 0.9 - 1/7; g = b = 0.9 - 0.5 - (0.2/0.7)*0.4 = 0.4 - 0.8/7
    "gray-red2": [(0, 0, 0.4), (0.4 - 0.8 / 7, 0.4 - 0.8 / 7, 0.9 - 1 / 7), (0.9, 0.9, 0.9),
                  (0.9 - 1 / 7, 0.4 - 0.8 / 7, 0.4 - 0.8 / 7), (0.4, 0, 0)],
    # t<0: blue = -t; t>=0: green = t
    "black-green": [(0, 0, 1), (0, 0, 0.5), (0, 0, 0), (0, 0.5, 0), (0, 1, 0)],
    # ramps at 0 / 0.25 / 0.5 of widths 0.25 / 0.25 / 0.5
    "black-firered": [(1, 1, 1), (0, 1, 1), (0, 0, 0), (1, 1, 0), (1, 1, 1)],
    # t<0: blue = -t; t>=0: red = green = t
    "blue-black-yellow": [(0, 0, 1), (0, 0, 0.5), (0, 0, 0), (0.5, 0.5, 0), (1, 1, 0)],
    # the default: t<0: (1+t, 1+t, 1); t>=0: (1, 1-t, 1-t)
    "blue_white_red": [(0, 0, 1), (0.5, 0.5, 1), (1, 1, 1), (1, 0.5, 0.5), (1, 0, 0)],
}


# --- the toolbox's colormaps, as its code computes them (python/render.py) -----------------


def toolbox_gray_red(R):
    R = R.copy()
    basegray = 0.8
    maxabs = numpy.max(R)
    RGB = numpy.ones(R.shape + (3,)) * basegray
    tvals = numpy.maximum(numpy.minimum(R / maxabs, 1.0), -1.0)
    neg = R < 0
    RGB[neg, 0] += tvals[neg] * basegray
    RGB[neg, 1] += tvals[neg] * basegray
    RGB[neg, 2] += -tvals[neg] * (1 - basegray)
    pos = R >= 0
    RGB[pos, 0] += tvals[pos] * (1 - basegray)
    RGB[pos, 1] += -tvals[pos] * basegray
    RGB[pos, 2] += -tvals[pos] * basegray
    return RGB


def toolbox_gray_red2_colours(x):
    """The toolbox's gray-red2 colour formula (without its outlier/negative preprocessing)."""
    c = numpy.clip
    hrp = 0.9 - c(x - 0.3, 0, 0.7) / 0.7 * 0.5
    hgp = 0.9 - c(x - 0.0, 0, 0.3) / 0.3 * 0.5 - c(x - 0.3, 0, 0.7) / 0.7 * 0.4
    hbp = hgp
    hrn = 0.9 - c(-x - 0.0, 0, 0.3) / 0.3 * 0.5 - c(-x - 0.3, 0, 0.7) / 0.7 * 0.4
    hgn = hrn
    hbn = 0.9 - c(-x - 0.3, 0, 0.7) / 0.7 * 0.5
    return numpy.stack([hrp * (x >= 0) + hrn * (x < 0), hgp * (x >= 0) + hgn * (x < 0),
                        hbp * (x >= 0) + hbn * (x < 0)], axis=-1)


def toolbox_black_green(R):
    maxabs = numpy.max(R)
    RGB = numpy.zeros(R.shape + (3,))
    RGB[R < 0, 2] = -R[R < 0] / maxabs
    RGB[R >= 0, 1] = R[R >= 0] / maxabs
    return RGB


def toolbox_black_firered(R):
    x = R / numpy.max(numpy.abs(R))
    c = numpy.clip
    r = c(x, 0, 0.25) / 0.25 + c(-x - 0.5, 0, 0.5) / 0.5
    g = c(x - 0.25, 0, 0.25) / 0.25 + c(-x - 0.25, 0, 0.25) / 0.25
    b = c(x - 0.5, 0, 0.5) / 0.5 + c(-x, 0, 0.25) / 0.25
    return numpy.stack([r, g, b], axis=-1)


def toolbox_blue_black_yellow(R):
    maxabs = numpy.max(R)
    RGB = numpy.zeros(R.shape + (3,))
    RGB[R < 0, 2] = -R[R < 0] / maxabs
    RGB[R >= 0, 0] = R[R >= 0] / maxabs
    RGB[R >= 0, 1] = R[R >= 0] / maxabs
    return RGB


TOOLBOX = {
    "gray-red": toolbox_gray_red,
    "gray-red2": toolbox_gray_red2_colours,
    "black-green": toolbox_black_green,
    "black-firered": toolbox_black_firered,
    "blue-black-yellow": toolbox_blue_black_yellow,
}


def ring(n: int = 16) -> numpy.ndarray:
    """A synthetic 'digit': a bright square ring on a dark background, values in [0, 1]."""
    x = numpy.zeros((n, n))
    x[3:-3, 3:-3] = 1.0
    x[6:-6, 6:-6] = 0.0
    return x


# --- colormaps ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_colormap_values_by_hand(name):
    rgb = render.get_colormap(name)(T)
    assert rgb.shape == (5, 3) and rgb.dtype == numpy.float64
    numpy.testing.assert_allclose(rgb, numpy.array(EXPECTED[name], dtype=float), atol=1e-12)


@pytest.mark.parametrize("name", sorted(TOOLBOX))
def test_colormaps_follow_toolbox_formulas(name, rng):
    # a map whose peak is positive: max R = max |R|, where the toolbox's normalisation and ours agree
    R = rng.uniform(-1.0, 1.0, size=(7, 9)) * 3.0
    R[2, 4] = 3.5
    ours = render.hm_to_rgb(R, scaling=1, shape=R.shape, cmap=name)
    numpy.testing.assert_allclose(ours, TOOLBOX[name](R / 3.5 if name == "gray-red2" else R), atol=1e-12)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hm_to_rgb_normalises_by_max_abs(name):
    R = 3.0 * T  # after normalisation by max |R| = 3: T
    rgb = render.hm_to_rgb(R, scaling=2, shape=(1, 5), cmap=name)
    assert rgb.shape == (2, 10, 3)
    expected = numpy.array(EXPECTED[name], dtype=float)
    numpy.testing.assert_allclose(rgb[0, ::2], expected, atol=1e-12)
    numpy.testing.assert_allclose(rgb[1, 1::2], expected, atol=1e-12)  # every pixel repeated 2×2


@pytest.mark.parametrize("name", sorted(EXPECTED) + ["jet", "viridis"])
def test_caller_array_unchanged_and_zero_maps_finite(name):
    R = numpy.array([[-2.0, 0.5], [0.0, 1.0]])
    before = R.copy()
    render.get_colormap(name)(R)
    render.hm_to_rgb(R, X=R, scaling=2, cmap=name)
    render.overlay(R, numpy.ones((2, 2, 3)) * 0.5, cmap=name)
    render.normalize_relevance(R)
    numpy.testing.assert_array_equal(R, before)
    for r in (numpy.zeros((4, 4)), -numpy.ones((4, 4)), numpy.full((4, 4), -1e-30)):
        rgb = render.hm_to_rgb(r, scaling=1, cmap=name)
        assert numpy.all(numpy.isfinite(rgb)) and rgb.min() >= 0 and rgb.max() <= 1


def test_zero_and_all_negative_maps_use_the_right_colours():
    zero = render.hm_to_rgb(numpy.zeros((2, 2)), scaling=1, cmap="gray-red")
    numpy.testing.assert_allclose(zero, 0.8)  # gray, not NaN (toolbox: 0/0)
    neg = render.hm_to_rgb(numpy.array([[-1.0, -2.0]]), shape=(1, 2), scaling=1, cmap="gray-red")
    numpy.testing.assert_allclose(neg[0], [[0.4, 0.4, 0.9], [0, 0, 1]])  # blue side (toolbox: max R < 0 flipped it)
    assert numpy.all(render.normalize_relevance(numpy.zeros(3)) == 0)


def test_colormaps_clip_and_reject_nan():
    rgb = render.gray_red(numpy.array([-5.0, 5.0]))
    numpy.testing.assert_allclose(rgb, [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(DataFormatError):
        render.gray_red(numpy.array([numpy.nan]))
    with pytest.raises(DataFormatError):
        render.hm_to_rgb(numpy.array([[1.0, numpy.inf], [0, 0]]))


def test_matplotlib_colormaps_as_toolbox():
    import matplotlib

    R = numpy.linspace(-2.0, 1.0, 16).reshape(4, 4)
    rgb = render.hm_to_rgb(R, scaling=1, cmap="jet")
    expected = matplotlib.colormaps["jet"]((R / 2.0 + 1.0) / 2.0)[..., :3]  # the toolbox's normalize=True path
    numpy.testing.assert_allclose(rgb, expected)
    x = numpy.linspace(0.0, 1.0, 16)
    digit = render.digit_to_rgb(x, scaling=1)  # toolbox: matplotlib 'binary' on the raw values
    numpy.testing.assert_allclose(digit, matplotlib.colormaps["binary"](x.reshape(4, 4))[..., :3])
    numpy.testing.assert_allclose(render.digit_to_rgb(2 * x - 1, scaling=1, vmin=-1, vmax=1), digit, atol=1e-12)
    assert numpy.allclose(render.get_colormap(matplotlib.colormaps["bwr"])(T), render.get_colormap("bwr")(T))


def test_colormap_lookup():
    assert render.get_colormap("Gray-Red") is render.gray_red
    assert render.get_colormap("gray_red2") is render.gray_red2
    assert render.get_colormap("default") is render.blue_white_red
    assert render.get_colormap("matplotlib:viridis").name == "viridis"
    assert render.get_colormap("Viridis").name == "viridis"
    assert render.get_colormap(render.black_green) is render.black_green
    with pytest.raises(UnknownNameError, match="gray_red") as err:
        render.get_colormap("gray-redd")
    assert "matplotlib" in str(err.value)
    with pytest.raises(UnknownNameError):
        render.get_colormap("nope:viridis")
    with pytest.raises(UnknownNameError):
        render.get_colormap("matplotlib:gray-red")


def test_registered_names():
    regs = build_registries(make_plugin_manager(entry_points=False))
    assert render.colormap_names(regs.colormaps) == [
        "blue_white_red", "gray_red", "gray_red2", "black_green", "black_firered", "blue_black_yellow"]
    for toolbox_name in EXPECTED:
        assert toolbox_name in regs.colormaps
    assert regs.colormaps.entry("matplotlib").meta["resolver"]
    assert render.get_colormap("jet", regs.colormaps).name == "jet"
    assert {"heatmap", "digit", "overlay", "grid", "colormap_grid", "perturbation_curve",
            "metric_curve"} <= set(regs.renderers.names())
    assert all(e.plugin == "lrpflow.render" for e in regs.renderers)


# --- the toolbox's image API -----------------------------------------------------------------


def test_vec2im():
    v = numpy.arange(784.0)
    assert render.vec2im(v).shape == (28, 28)
    assert render.vec2im(numpy.arange(6), (2, 3)).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataFormatError):
        render.vec2im(numpy.arange(10))
    with pytest.raises(DataFormatError):
        render.vec2im(numpy.arange(10), (3, 3))


def test_enlarge_image_matches_pixel_loop(rng):
    for img in (rng.random((3, 4)), rng.random((3, 4, 2))):
        s = 3
        loop = numpy.zeros((s * img.shape[0], s * img.shape[1]) + img.shape[2:])
        for h in range(img.shape[0]):  # the toolbox's loop
            for w in range(img.shape[1]):
                loop[s * h:s * h + s, s * w:s * w + s] = img[h, w]
        numpy.testing.assert_array_equal(render.enlarge_image(img, s), loop)
    assert render.enlarge_image(numpy.ones((2, 2), dtype=numpy.uint8), 2).dtype == numpy.uint8
    for bad in (0, 1.5, True, -2):
        with pytest.raises(ConfigError):
            render.enlarge_image(numpy.ones((2, 2)), bad)


def test_sizes_and_save_image(tmp_path):
    import skimage.io

    R = numpy.random.default_rng(0).standard_normal(784)
    hm = render.hm_to_rgb(R, scaling=3)
    assert hm.shape == (84, 84, 3)
    assert render.hm_to_rgb(R.reshape(1, 28, 28, 1)).shape == (84, 84, 3)  # toolbox batch/channel axes
    digit = render.digit_to_rgb(numpy.zeros(784), scaling=3)
    before = hm.copy()
    out = render.save_image([digit, hm], tmp_path / "pair.png", gap=2)
    assert out.shape == (84, 84 + 2 + 84, 3) and out.dtype == numpy.uint8
    numpy.testing.assert_array_equal(hm, before)
    back = skimage.io.imread(tmp_path / "pair.png")
    numpy.testing.assert_array_equal(back, out)
    assert numpy.all(back[:, 84:86] == 0)  # the black gap
    numpy.testing.assert_array_equal(back[:, 86:], numpy.rint(hm * 255).astype(numpy.uint8))
    numpy.testing.assert_array_equal(back[:, :84], 255)  # 'binary' at 0 is white
    single = [hm.copy()]
    render.save_image(single, tmp_path / "one.png", gap=5)
    numpy.testing.assert_array_equal(single[0], hm)  # the toolbox multiplied the caller's image by 255
    assert render.save_image([hm, hm, hm], tmp_path / "three.png", gap=0).shape == (84, 252, 3)
    with pytest.raises(DataFormatError):
        render.save_image([hm, hm[:80]], tmp_path / "bad.png")
    with pytest.raises(DataFormatError):
        render.save_image([], tmp_path / "none.png")


def _check_outline(x, cmap="gray-red"):
    from skimage.feature import canny

    R = x - x.mean()
    rgb = render.hm_to_rgb(R, X=x, scaling=3, sigma=2, cmap=cmap)
    plain = render.hm_to_rgb(R, scaling=3, cmap=cmap)
    edges = canny(render.enlarge_image(x, 3), sigma=2)  # the toolbox: Canny on the enlarged input
    assert edges.any() and not edges.all()
    assert numpy.all(rgb[edges] == 0)
    numpy.testing.assert_array_equal(rgb[~edges], plain[~edges])
    assert numpy.all(plain.sum(axis=-1) > 0)  # gray-red has no black of its own: black = outline exactly
    return edges


def test_outline_is_black_exactly_at_canny_edges():
    _check_outline(ring())
    with pytest.raises(DataFormatError):
        render.hm_to_rgb(numpy.ones((16, 16)), X=numpy.ones((15, 15)))


def test_outline_on_mnist_digit(shared):
    from scipy.io import loadmat

    x = loadmat(str(shared / "data" / "MNIST" / "test_images.mat"))["data"][0].reshape(28, 28) / 255.0
    edges = _check_outline(x)
    assert edges.shape == (84, 84)


# --- natural images and overlays ----------------------------------------------------------


def test_natural_images_sum_channels_and_overlay(rng):
    R3 = rng.standard_normal((6, 5, 3))
    numpy.testing.assert_array_equal(render.hm_to_rgb(R3, scaling=2), render.hm_to_rgb(R3.sum(-1), scaling=2))
    image = rng.random((6, 5, 3))
    t = R3.sum(-1) / numpy.abs(R3.sum(-1)).max()
    out = render.overlay(R3, image, cmap="gray-red", alpha=0.25)
    numpy.testing.assert_allclose(out, 0.75 * image + 0.25 * render.gray_red(t))
    weighted = render.overlay(R3, image, cmap="gray-red", alpha=0.5, weighted=True)
    a = 0.5 * numpy.abs(t)[..., None]
    numpy.testing.assert_allclose(weighted, (1 - a) * image + a * render.gray_red(t))
    u8 = render.overlay(R3, (image * 255).astype(numpy.uint8), alpha=0.0)  # uint8 images are read as 0..255
    numpy.testing.assert_allclose(u8, (image * 255).astype(numpy.uint8) / 255.0)
    assert render.render_overlay(R3, image, scaling=3).shape == (18, 15, 3)
    edges = render.outline(numpy.pad(numpy.ones((8, 8, 3)), ((4, 4), (4, 4), (0, 0))), scaling=1, sigma=1)
    assert edges.any()
    with pytest.raises(ConfigError):
        render.overlay(R3, image, alpha=1.5)
    with pytest.raises(DataFormatError):
        render.overlay(R3, image[:5])


# --- renderers, grids, curves ---------------------------------------------------------------


def test_renderers_write_uint8_png(tmp_path):
    import skimage.io

    x = ring(28)
    img = render.render_heatmap(x - x.mean(), x, cmap="gray-red2", path=tmp_path / "hm.png")
    assert img.shape == (84, 84, 3) and img.dtype == numpy.uint8
    numpy.testing.assert_array_equal(skimage.io.imread(tmp_path / "hm.png"), img)
    assert render.render_digit(x).shape == (84, 84, 3)


def test_grids(tmp_path):
    import skimage.io

    x = numpy.stack([ring(16), ring(16).T[::-1] * 0.5])
    R = x - x.mean(axis=(1, 2), keepdims=True)
    img = render.heatmap_grid({"epsilon=0.01": R, "epsilon=1": -R, "zero": numpy.zeros_like(R)}, x,
                              title="grid", path=tmp_path / "grid.png", dpi=50)
    # 2 rows × 4 columns (input + 3), labels and title: see grid_figure's size formula
    width = round(50 * (0.08 + 0.9 + 4 * 1.4 + 3 * 0.06 + 0.08))
    height = round(50 * (0.08 + 0.3 + 0.42 + 2 * 1.4 + 1 * 0.06 + 0.08))
    assert img.shape == (height, width, 3) and img.dtype == numpy.uint8
    numpy.testing.assert_array_equal(skimage.io.imread(tmp_path / "grid.png"), img)
    assert len(numpy.unique(img.reshape(-1, 3), axis=0)) > 10  # not blank
    grid = render.colormap_grid(R, x, cmaps=("gray-red", "jet"), dpi=40)
    assert grid.ndim == 3 and grid.shape[1] > grid.shape[0]
    plain = render.render_grid([[render.hm_to_rgb(R[0])], [None]], dpi=20, cell_size=1.0)
    assert plain.shape == (round(20 * (2 + 0.06 + 0.16)), round(20 * 1.16), 3)
    with pytest.raises(DataFormatError):
        render.heatmap_grid({"a": R, "b": R[:1]})
    with pytest.raises(DataFormatError):
        render.heatmap_grid({"a": R}, x[:1])


def test_curves(tmp_path):
    import skimage.io

    steps = numpy.linspace(0.0, 1.0, 11)
    assert render.curve_area(1.0 - steps, steps) == pytest.approx(0.5)
    assert render.curve_area(numpy.full((3, 11), 0.25)) == pytest.approx(0.25)
    curves = {"lrp": numpy.exp(-4 * steps)[None] + numpy.zeros((5, 1)), "random": 1.0 - 0.5 * steps}
    img = render.plot_perturbation_curves(curves, steps, title="pixel flipping", path=tmp_path / "pf.png", dpi=50)
    assert img.shape == (180, 250, 3)  # figsize (5, 3.6) inches at 50 dpi
    numpy.testing.assert_array_equal(skimage.io.imread(tmp_path / "pf.png"), img)
    m = render.plot_metric_curve([1e-3, 1e-2, 1e-1, 1.0], {"aopc": [0.1, 0.2, 0.3, 0.25]}, dpi=40)
    assert m.shape == (144, 200, 3)
    assert render.metric_figure([1e-3, 1.0], [1, 2]).axes[0].get_xscale() == "log"
    cat = render.metric_figure(["z", "epsilon", "alpha_beta"], numpy.ones((3, 4)), band="std")
    assert [t.get_text() for t in cat.axes[0].get_xticklabels()] == ["z", "epsilon", "alpha_beta"]
    with pytest.raises(DataFormatError):
        render.plot_perturbation_curves({"a": [0.0, numpy.nan]})
    with pytest.raises(DataFormatError):
        render.plot_metric_curve([1, 2, 3], [1.0, 2.0])
    with pytest.raises(ConfigError):
        render.plot_perturbation_curves({"a": [1.0, 0.0]}, band="iqr")


# --- cupy -------------------------------------------------------------------------------------


class DeviceArray:
    """Stands in for a cupy array where cupy is missing: only ``.get()`` reaches its data."""

    __module__ = "cupy._core.core"  # what lrpflow.backend.to_numpy recognises

    def __init__(self, a):
        self._a = numpy.asarray(a)

    def get(self):
        return self._a.copy()

    def __array__(self, *args, **kwargs):  # numpy must never read it directly
        raise TypeError("implicit conversion of a device array to numpy")


def test_device_arrays_go_through_to_numpy(tmp_path):
    x = ring(28)
    R = x - x.mean()
    ref = render.hm_to_rgb(R, X=x, cmap="gray-red")
    numpy.testing.assert_array_equal(render.hm_to_rgb(DeviceArray(R), X=DeviceArray(x), cmap="gray-red"), ref)
    numpy.testing.assert_array_equal(render.gray_red(DeviceArray(T)), render.gray_red(T))
    img3 = numpy.random.default_rng(0).random((28, 28, 3))
    numpy.testing.assert_array_equal(render.overlay(DeviceArray(R), DeviceArray(img3)), render.overlay(R, img3))
    numpy.testing.assert_array_equal(render.digit_to_rgb(DeviceArray(x)), render.digit_to_rgb(x))
    assert render.save_image([DeviceArray(ref), ref], tmp_path / "d.png").shape == (84, 170, 3)
    assert render.heatmap_grid({"a": DeviceArray(R[None])}, DeviceArray(x[None]), dpi=20).dtype == numpy.uint8
    assert render.plot_perturbation_curves({"a": DeviceArray(numpy.linspace(1, 0, 5))}, dpi=20).dtype == numpy.uint8


@pytest.mark.gpu
def test_cupy_inputs_are_moved_to_the_host(tmp_path):
    cp = pytest.importorskip("cupy")
    from lrpflow.backend import cupy_available

    if not cupy_available():
        pytest.skip("needs a CUDA device")
    x = ring(28)
    R = x - x.mean()
    ref = render.hm_to_rgb(R, X=x, cmap="gray-red")
    got = render.hm_to_rgb(cp.asarray(R), X=cp.asarray(x), cmap="gray-red")
    assert isinstance(got, numpy.ndarray)
    numpy.testing.assert_array_equal(got, ref)
    numpy.testing.assert_array_equal(render.gray_red(cp.asarray(T)), render.gray_red(T))
    img3 = numpy.random.default_rng(0).random((28, 28, 3))
    numpy.testing.assert_array_equal(render.overlay(cp.asarray(R), cp.asarray(img3)), render.overlay(R, img3))
    out = render.save_image([cp.asarray(ref), ref], tmp_path / "cp.png")
    assert out.shape == (84, 170, 3)
    assert render.heatmap_grid({"a": cp.asarray(R[None])}, cp.asarray(x[None]), dpi=20).dtype == numpy.uint8
    assert render.plot_perturbation_curves({"a": cp.linspace(1, 0, 5)}, dpi=20).dtype == numpy.uint8
