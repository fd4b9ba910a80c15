"""onnxruntime convolution kernels (lrpflow/layers/ort_conv.py) against the numpy kernels and brute force."""
from __future__ import annotations

import pickle
import sys

import numpy
import pytest

import lrpflow
from lrpflow.errors import ConfigError
from lrpflow.graph import Sequential
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU
from lrpflow.layers import _windows as win
from lrpflow.layers import ort_conv

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_layers import brute_conv, brute_transpose, random_geometry  # noqa: E402


def close32(a, ref):
    """float32 rounding of sums of ≤ a few hundred terms: relative to the largest value."""
    assert a.dtype == numpy.float32 and a.shape == ref.shape
    numpy.testing.assert_allclose(a, ref, rtol=0, atol=2e-5 * max(1.0, float(numpy.abs(ref).max())))


@pytest.mark.parametrize("how", ["choice", "convT"])
def test_forward_and_transpose_match_brute_force(rng, monkeypatch, how):
    """Forced onnxruntime kernels on random geometries (stride, asymmetric padding, channels, batch)
    against float64 brute force; ``convT``: ConvTranspose even where the flipped Conv would be used."""
    if how == "convT":
        monkeypatch.setattr(ort_conv, "choose_transpose", lambda *a, **k: "convT")
    cache: dict = {}
    with ort_conv.use_conv_kernel("onnxruntime"):
        for _ in range(40):
            wshape, stride, pads, xshape = random_geometry(rng, max_channels=20)
            x = rng.normal(size=xshape).astype(numpy.float32)
            w = rng.normal(size=wshape).astype(numpy.float32)
            y = ort_conv.conv_forward(x, w, stride, pads, cache)
            close32(y, brute_conv(x.astype(float), w.astype(float), stride, pads))
            b = rng.normal(size=wshape[-1]).astype(numpy.float32)
            yb = ort_conv.conv_forward(x, w, stride, pads, cache, bias=b)
            numpy.testing.assert_array_equal(yb, y + b)  # MLAS adds the bias to each finished sum, as z + b
            s = rng.normal(size=y.shape).astype(numpy.float32)
            g = ort_conv.conv_transpose(s, w, stride, pads, x.shape, cache)
            close32(g, brute_transpose(s.astype(float), w.astype(float), stride, pads, x.shape))
    assert cache  # sessions were built and kept


@pytest.mark.parametrize("how", ["choice", "convT"])
@pytest.mark.parametrize("signed", [False, True])
def test_fused_transpose_times_is_bitwise_the_joined_transpose_and_products(rng, monkeypatch, how, signed):
    """``x ⊙ Wᵀ[s_0, s_1]`` (or ``x⁺ ⊙ A + x⁻ ⊙ B`` with ``[A, B] = Wᵀ s``) in one graph: the
    same float32 operations in the same order as joining the parts, ``conv_transpose`` and the
    products in numpy, so bitwise equal; and within float32 rounding of float64 brute force."""
    if how == "convT":
        monkeypatch.setattr(ort_conv, "choose_transpose", lambda *a, **k: "convT")
    cache: dict = {}
    with ort_conv.use_conv_kernel("onnxruntime"):
        for _ in range(25):
            (kh, kw, c, cout), stride, pads, xshape = random_geometry(rng, max_channels=12)
            cin = 2 * c if signed else c
            x = rng.normal(size=xshape).astype(numpy.float32)
            x[rng.random(x.shape) < 0.2] = 0.0  # zeros on both sides of the sign split
            w = rng.normal(size=(kh, kw, cin, 2 * cout)).astype(numpy.float32)
            grid = ort_conv.conv_forward(numpy.zeros(xshape[:3] + (cin,), numpy.float32), w, stride, pads).shape
            parts = [rng.normal(size=grid[:3] + (cout,)).astype(numpy.float32) for _ in range(2)]
            out = ort_conv.conv_transpose_times(parts, w, stride, pads, x, signed, cache)
            xin = numpy.concatenate([numpy.maximum(x, 0), numpy.minimum(x, 0)], axis=-1) if signed else x
            g = ort_conv.conv_transpose(numpy.concatenate(parts, axis=-1), w, stride, pads, xin.shape, cache)
            ref = xin * g
            if signed:
                ref = ref[..., :c] + ref[..., c:]
            assert out.dtype == numpy.float32 and out.shape == x.shape
            numpy.testing.assert_array_equal(out, ref)
            s64 = numpy.concatenate(parts, axis=-1).astype(float)
            brute = xin.astype(float) * brute_transpose(s64, w.astype(float), stride, pads, xin.shape)
            close32(out, brute[..., :c] + brute[..., c:] if signed else brute)
            single = ort_conv.conv_transpose_times([numpy.concatenate(parts, axis=-1)], w, stride, pads, x, signed, cache)
            numpy.testing.assert_array_equal(single, ref)  # one part: no join in the graph


def test_signed_forward_splits_the_input_inside_the_graph(rng):
    """``conv_forward(..., signed=True)`` convolves ``[x⁺, x⁻]`` (split in the graph): bitwise the
    convolution of the stacked input, with or without a bias; ``Conv2d.apply_signed`` uses it."""
    cache: dict = {}
    with ort_conv.use_conv_kernel("onnxruntime"):
        for _ in range(15):
            (kh, kw, c, cout), stride, pads, xshape = random_geometry(rng, max_channels=12)
            x = rng.normal(size=xshape).astype(numpy.float32)
            x[rng.random(x.shape) < 0.2] = 0.0
            w = rng.normal(size=(kh, kw, 2 * c, cout)).astype(numpy.float32)
            b = rng.normal(size=cout).astype(numpy.float32)
            x2 = numpy.concatenate([numpy.maximum(x, 0), numpy.minimum(x, 0)], axis=-1)
            numpy.testing.assert_array_equal(ort_conv.conv_forward(x, w, stride, pads, cache, signed=True),
                                             ort_conv.conv_forward(x2, w, stride, pads, cache))
            numpy.testing.assert_array_equal(ort_conv.conv_forward(x, w, stride, pads, cache, bias=b, signed=True),
                                             ort_conv.conv_forward(x2, w, stride, pads, cache, bias=b))
            close32(ort_conv.conv_forward(x, w, stride, pads, cache, signed=True),
                    brute_conv(x2.astype(float), w.astype(float), stride, pads))
        assert ort_conv.conv_forward(x, w, stride, pads, cache) is None  # 2·C weight channels, C input channels
        layer = Conv2d(3, 3, 4, 16, padding=1)
        x = rng.normal(size=(2, 9, 9, 4)).astype(numpy.float32)
        w = rng.normal(size=(3, 3, 8, 16)).astype(numpy.float32)
        b = rng.normal(size=16).astype(numpy.float32)
        fused = layer.apply_signed(x, w, b)
    plain = Conv2d(3, 3, 8, 16, padding=1).apply([numpy.concatenate([numpy.maximum(x, 0), numpy.minimum(x, 0)], -1)], w, b)
    close32(fused, plain.astype(float))


def test_fused_transpose_times_declines_what_it_cannot_do(rng):
    w = rng.normal(size=(3, 3, 4, 8)).astype(numpy.float32)
    x = rng.normal(size=(1, 8, 8, 4)).astype(numpy.float32)
    s = [rng.normal(size=(1, 8, 8, 4)).astype(numpy.float32)] * 2
    pads = (1, 1, 1, 1)
    with ort_conv.use_conv_kernel("onnxruntime"):
        assert ort_conv.conv_transpose_times(s, w, (1, 1), pads, x) is not None
        assert ort_conv.conv_transpose_times(s, w, (1, 1), pads, x, signed=True) is None  # 4 ≠ 2·4 input channels
        assert ort_conv.conv_transpose_times(s[:1], w, (1, 1), pads, x) is None  # 4 ≠ 8 channels of s
        assert ort_conv.conv_transpose_times(s, w, (1, 1), pads, x.astype(numpy.float64)) is None
    with ort_conv.use_conv_kernel("numpy"):
        assert ort_conv.conv_transpose_times(s, w, (1, 1), pads, x) is None
    with ort_conv.use_conv_kernel("auto"):  # 256 input values: below FUSED_MIN_VALUES, numpy joins and multiplies
        assert x.size < ort_conv.FUSED_MIN_VALUES
        assert ort_conv.conv_transpose_times(s, w, (1, 1), pads, x) is None
        assert ort_conv.conv_forward(x, rng.normal(size=(3, 3, 8, 16)).astype(numpy.float32), (1, 1), pads, signed=True) is None
        big = rng.normal(size=(2, 64, 64, 4)).astype(numpy.float32)  # 32K values
        sb = [rng.normal(size=(2, 64, 64, 4)).astype(numpy.float32)] * 2
        assert ort_conv.conv_transpose_times(sb, w, (1, 1), pads, big) is not None


def test_transpose_choices_cover_both_graphs():
    assert ort_conv.choose_transpose(3, 8, (3, 3), (1, 1), (1, 1, 1, 1), (8, 8), forced=True) == "flip"
    assert ort_conv.choose_transpose(3, 8, (3, 3), (2, 2), (1, 1, 1, 1), (8, 8), forced=True) == "convT"
    # padding wider than the kernel: the flipped Conv would need negative pads
    assert ort_conv.choose_transpose(3, 8, (2, 2), (1, 1), (2, 0, 0, 0), (8, 8), forced=True) == "convT"


def test_small_grids_go_to_onnxruntime_only_with_several_threads_and_small_batches():
    """The measured rules: 4×4 and 2×2 grids stay on numpy in one thread or at large batches; with 2
    threads, forward convolutions at batch 1 and flipped transposes at batches ≤ 4 go to onnxruntime."""
    fwd = ort_conv.choose_forward
    assert not fwd(512, 512, (3, 3), (1, 1), (4, 4))
    assert not fwd(512, 512, (3, 3), (1, 1), (4, 4), threads=2, batch=4)
    assert fwd(512, 512, (3, 3), (1, 1), (2, 2), threads=2, batch=1)
    assert not fwd(512, 512, (1, 1), (1, 1), (2, 2), threads=2, batch=1)  # 1×1 kernels: numpy's plain GEMM
    assert not fwd(25, 100, (4, 4), (1, 1), (2, 2), threads=2, batch=1)  # C_out off MLAS's 16-channel blocks
    assert not fwd(10, 25, (5, 5), (1, 1), (10, 10))  # ... LeNet-5's second layer
    assert fwd(1, 10, (5, 5), (1, 1), (28, 28))  # ... but a thin input (LeNet-5's first layer): onnxruntime
    assert fwd(2, 10, (5, 5), (1, 1), (28, 28))  # (and its [x⁺, x⁻] stack for αβ)
    assert fwd(64, 128, (3, 3), (1, 1), (16, 16))  # large grids as before, any thread count
    tr = ort_conv.choose_transpose
    same = (1, 1, 1, 1)
    assert tr(512, 512, (3, 3), (1, 1), same, (2, 2)) is None
    assert tr(512, 512, (3, 3), (1, 1), same, (2, 2), threads=2, batch=4) == "flip"
    assert tr(512, 512, (3, 3), (1, 1), same, (2, 2), threads=2, batch=64) is None
    assert tr(256, 512, (3, 3), (2, 2), same, (2, 2), threads=2, batch=1) == "convT"
    assert tr(256, 512, (3, 3), (2, 2), same, (2, 2), threads=2, batch=4) is None
    assert tr(256, 512, (1, 1), (2, 2), (0, 0, 0, 0), (4, 4), threads=2, batch=1) is None
    assert tr(6, 32, (3, 3), (1, 1), same, (128, 128)) is None  # thin inputs, 32 channels out: numpy ...
    assert tr(6, 32, (3, 3), (1, 1), same, (128, 128), threads=2, batch=1) == "convT"  # ... but at batch 1
    assert tr(6, 32, (3, 3), (1, 1), same, (128, 128), threads=2, batch=16) is None
    # a thin transpose with ≤ 16 channels in (ε on the wide net's 3→16) at batch 1 on a large grid: numpy, for
    # memory; on a small grid or at larger batches ConvTranspose as before
    assert tr(3, 16, (3, 3), (1, 1), same, (128, 128), threads=2, batch=1) is None
    assert tr(3, 16, (3, 3), (1, 1), same, (128, 128), threads=1, batch=1) is None
    assert tr(3, 16, (3, 3), (1, 1), same, (32, 32), threads=2, batch=1) == "convT"
    assert tr(3, 16, (3, 3), (1, 1), same, (128, 128), threads=2, batch=2) == "convT"


def test_small_grid_transposes_run_as_one_matmul_from_four_samples(rng, monkeypatch):
    """Auto mode: the transpose of a 3×3 convolution on a 2×2 grid (half the kernel's taps are
    padding) is one MatMul with the dense matrix's transpose; the fused graph declines it (the
    caller joins and transposes); below 4 samples, and in forced mode, the Conv graphs as before.
    The forward convolution stays on numpy's taps (None here)."""
    monkeypatch.setattr(ort_conv, "FUSED_MIN_VALUES", 0)
    w = rng.normal(size=(3, 3, 32, 48)).astype(numpy.float32)
    pads = (1, 1, 1, 1)
    x = rng.normal(size=(4, 2, 2, 32)).astype(numpy.float32)
    s = rng.normal(size=(4, 2, 2, 48)).astype(numpy.float32)
    with ort_conv.use_conv_kernel("auto"):
        cache: dict = {}
        g = ort_conv.conv_transpose(s, w, (1, 1), pads, x.shape, cache)
        close32(g, brute_transpose(s.astype(float), w.astype(float), (1, 1), pads, x.shape))
        assert [k[1] for k in cache if k[0] != "content"] == ["unrolledT"]
        assert ort_conv.conv_forward(x, w, (1, 1), pads, cache) is None
        assert ort_conv.conv_transpose_times([s], w, (1, 1), pads, x, cache=cache) is None
        small: dict = {}
        ort_conv.conv_transpose(s[:3], w, (1, 1), pads, x[:3].shape, small)
        assert not any(k[1] == "unrolledT" for k in small if k[0] != "content")
    with ort_conv.use_conv_kernel("onnxruntime"):
        forced: dict = {}
        ort_conv.conv_transpose(s, w, (1, 1), pads, x.shape, forced)
        assert [k[1] for k in forced if k[0] != "content"] == ["flip"]


def test_transposes_on_padded_small_grids_go_to_numpys_taps_above_batch_four(rng, monkeypatch):
    """A 3×3 transpose on a 4×4 grid (0.69 of im2col's taps real): numpy's tap-by-tap kernel above
    batch 4 in auto mode (the fused graph declines too); at batch ≤ 4 the flipped Conv as before."""
    monkeypatch.setattr(ort_conv, "FUSED_MIN_VALUES", 0)
    w = rng.normal(size=(3, 3, 32, 32)).astype(numpy.float32)
    pads = (1, 1, 1, 1)
    for n, on_numpy in [(5, True), (4, False)]:
        x = rng.normal(size=(n, 4, 4, 32)).astype(numpy.float32)
        s = rng.normal(size=x.shape).astype(numpy.float32)
        with ort_conv.use_conv_kernel("auto"):
            g = ort_conv.conv_transpose(s, w, (1, 1), pads, x.shape, {})
            fused = ort_conv.conv_transpose_times([s], w, (1, 1), pads, x)
        assert (g is None) == on_numpy and (fused is None) == on_numpy
        if not on_numpy:
            close32(g, brute_transpose(s.astype(float), w.astype(float), (1, 1), pads, x.shape))
    with ort_conv.use_conv_kernel("onnxruntime"):
        assert ort_conv.conv_transpose(s, w, (1, 1), pads, x.shape, {}) is not None


def unrolled_cnn(rng):
    """4×4 and 2×2 grids under 3×3 kernels: numpy's taps (forward, and the 4×4 transposes) and the
    2×2 transposes as MatMuls (batch > 4)."""
    def conv(cin, cout, **kw):
        return Conv2d(3, 3, cin, cout, weight=rng.normal(0, (9 * cin) ** -0.5, (3, 3, cin, cout)),
                      bias=rng.normal(0, 0.1, cout), **kw)

    return Sequential([conv(3, 16, padding=1), ReLU(), MaxPool(2, 2), conv(16, 32, padding=1), ReLU(), MaxPool(2, 2),
                       conv(32, 32, padding=1), ReLU(), Flatten(),
                       Linear(32 * 2 * 2, 5, weight=rng.normal(0, 0.1, (128, 5)), bias=numpy.zeros(5))])


@pytest.mark.parametrize("method", [dict(rule="epsilon", epsilon=0.01), dict(rule="alpha_beta", alpha=2.0, beta=1.0),
                                    dict(composite="epsilon_plus_flat"), dict(rule="gamma", gamma=0.25)])
def test_explanations_through_the_small_grid_kernels_agree_with_the_numpy_kernels(rng, method, monkeypatch):
    taps = []
    real = win.conv_taps
    monkeypatch.setattr(win, "conv_taps", lambda *a, **k: taps.append(a[0].shape[1:3]) or real(*a, **k))
    model = unrolled_cnn(rng)
    x = rng.random((6, 8, 8, 3)).astype(numpy.float32)
    with ort_conv.use_conv_kernel("numpy"):
        ref = lrpflow.Explainer(model, dtype="float32", workers=1, **method)(x)
    assert {(4, 4), (2, 2)} <= set(taps)  # numpy at batch 6: taps on both grids
    taps.clear()
    with ort_conv.use_conv_kernel("auto"):
        out = lrpflow.Explainer(model, dtype="float32", workers=1, **method)(x)
    kinds = {k[1] for layer in model.modules for k in getattr(layer, "_ort_cache", {}) if k[0] != "content"}
    assert "unrolledT" in kinds and "unrolled" not in kinds and {(4, 4), (2, 2)} <= set(taps)
    numpy.testing.assert_allclose(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    r, r_ref = numpy.asarray(out.relevance), numpy.asarray(ref.relevance)
    numpy.testing.assert_allclose(r, r_ref, rtol=0, atol=1e-4 * numpy.abs(r_ref).max())
    numpy.testing.assert_allclose(out.conservation, ref.conservation, atol=1e-4)


def by_id(layer):
    return {k: v for k, v in layer._sessions().items() if k[0] != "content"}


def test_sessions_are_cached_per_weight_and_dropped_with_the_layer_cache(rng):
    layer = Conv2d(3, 3, 16, 16, padding=1, weight=rng.normal(size=(3, 3, 16, 16)), rng=0)
    x = rng.random((2, 6, 6, 16)).astype(numpy.float32)
    w32 = layer.lrp_params([x])[0]
    with ort_conv.use_conv_kernel("onnxruntime"):
        layer.apply([x], w32, None)
        (key, (held, session)), = by_id(layer).items()
        assert held == (w32,) and held[0] is w32 and key[0] == id(w32)
        layer.apply([x], w32, None)
        assert layer._sessions()[key][1] is session  # reused, not rebuilt
        w2 = w32 * 2  # another (modified) weight: its own session
        numpy.testing.assert_allclose(layer.apply([x], w2, None), 2 * layer.apply([x], w32, None), rtol=1e-5, atol=1e-5)
        assert len(by_id(layer)) == 2 and len({id(v[1]) for v in by_id(layer).values()}) == 2
        w3 = w32.copy()  # a new array with the same contents (a new Explainer's modified weight): same session
        layer.apply([x], w3, None)
        assert by_id(layer)[(id(w3), *key[1:])][1] is session
        b = rng.normal(size=16).astype(numpy.float32)  # a bias added in the graph: keyed and held with the weight
        yb = layer.apply([x], w32, b)
        (held_b, _), = [v for k, v in by_id(layer).items() if len(v[0]) == 2]
        assert held_b[0] is w32 and held_b[1] is b
        numpy.testing.assert_array_equal(yb, layer.apply([x], w32, None) + b)
    clone = pickle.loads(pickle.dumps(layer))
    assert "_ort_cache" not in clone.__dict__
    layer.invalidate()
    assert "_ort_cache" not in layer.__dict__


def test_numpy_switch_float64_and_groups_stay_on_numpy(rng, monkeypatch):
    x = rng.random((2, 8, 8, 16)).astype(numpy.float32)
    w = rng.normal(size=(3, 3, 16, 32)).astype(numpy.float32)
    with ort_conv.use_conv_kernel("numpy"):
        assert ort_conv.conv_forward(x, w, (1, 1), (1, 1, 1, 1), {}) is None
    monkeypatch.setenv(ort_conv.KERNEL_ENV, "numpy")
    assert ort_conv.conv_kernel() == "numpy"
    assert ort_conv.conv_forward(x, w, (1, 1), (1, 1, 1, 1), {}) is None
    monkeypatch.setenv(ort_conv.KERNEL_ENV, "onnxruntime")
    assert ort_conv.conv_forward(x, w, (1, 1), (1, 1, 1, 1), {}) is not None
    assert ort_conv.conv_forward(x.astype(float), w.astype(float), (1, 1), (1, 1, 1, 1), {}) is None
    assert ort_conv.conv_transpose(x.astype(float), w.astype(float), (1, 1), (1, 1, 1, 1), x.shape, {}) is None
    grouped = Conv2d(3, 3, 16, 32, padding=1, groups=2, rng=0)
    z = grouped.forward(x)
    assert "_ort_cache" not in grouped.__dict__ or not grouped._sessions()
    monkeypatch.setenv(ort_conv.KERNEL_ENV, "numpy")
    numpy.testing.assert_array_equal(grouped.forward(x), z)


def test_bad_kernel_names_raise(monkeypatch):
    with pytest.raises(ConfigError, match="must be one of"):
        ort_conv.set_conv_kernel("mkl")
    monkeypatch.setenv(ort_conv.KERNEL_ENV, "fastest")
    with pytest.raises(ConfigError, match="LRPFLOW_CONV_KERNEL"):
        ort_conv.conv_kernel()


def test_missing_onnxruntime_falls_back_to_numpy(rng, monkeypatch):
    monkeypatch.setattr(ort_conv, "_modules", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert not ort_conv.available()
    layer = Conv2d(3, 3, 16, 16, padding=1, rng=0)
    x = rng.random((2, 6, 6, 16)).astype(numpy.float32)
    with ort_conv.use_conv_kernel("onnxruntime"):
        y = layer.forward(x)
    assert not layer._sessions()
    numpy.testing.assert_array_equal(y, win.conv_forward(x, layer.lrp_params([x])[0], (1, 1), (1, 1, 1, 1)))


def test_chunk_workers_get_one_thread_each():
    from lrpflow.chunks import map_chunks

    assert map_chunks(lambda _: ort_conv._threads(), [0, 1], 2) == [1, 1]


def small_cnn(rng):
    """Channels ≥ 16 so that ``auto`` takes onnxruntime in the forward and the transposes."""
    def conv(cin, cout, **kw):
        return Conv2d(3, 3, cin, cout, weight=rng.normal(0, (9 * cin) ** -0.5, (3, 3, cin, cout)),
                      bias=rng.normal(0, 0.1, cout), **kw)

    return Sequential([conv(3, 16, padding=1), ReLU(), conv(16, 32, padding=1), ReLU(), MaxPool(2, 2),
                       conv(32, 32, stride=2, padding=(1, 0, 1, 0)), ReLU(), Flatten(),
                       Linear(32 * 4 * 4, 5, weight=rng.normal(0, 0.1, (512, 5)), bias=numpy.zeros(5))])


@pytest.mark.parametrize("method", [dict(rule="epsilon", epsilon=0.01), dict(rule="alpha_beta", alpha=2.0, beta=1.0),
                                    dict(composite="epsilon_plus_flat"), dict(rule="gamma", gamma=0.25)])
@pytest.mark.parametrize("kernel", ["auto", "onnxruntime"])
def test_explanations_agree_with_the_numpy_kernels(rng, method, kernel):
    model = small_cnn(rng)
    x = rng.random((5, 16, 16, 3)).astype(numpy.float32)
    with ort_conv.use_conv_kernel("numpy"):
        ref = lrpflow.Explainer(model, dtype="float32", workers=1, **method)(x)
    assert not any(getattr(layer, "_ort_cache", None) for layer in model.modules)
    with ort_conv.use_conv_kernel(kernel):
        out = lrpflow.Explainer(model, dtype="float32", workers=1, **method)(x)
    assert any(getattr(layer, "_ort_cache", None) for layer in model.modules)  # the onnxruntime path ran
    numpy.testing.assert_allclose(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    r, r_ref = numpy.asarray(out.relevance), numpy.asarray(ref.relevance)
    numpy.testing.assert_allclose(r, r_ref, rtol=0, atol=1e-4 * numpy.abs(r_ref).max())
    numpy.testing.assert_allclose(out.conservation, ref.conservation, atol=1e-4)


def test_float64_explanations_never_use_onnxruntime(rng):
    model = small_cnn(rng)
    x = rng.random((3, 16, 16, 3))
    with ort_conv.use_conv_kernel("onnxruntime"):
        out = lrpflow.Explainer(model, dtype="float64", rule="epsilon", epsilon=0.01)(x)
    assert out.relevance.dtype == numpy.float64
    assert not any(getattr(layer, "_ort_cache", None) for layer in model.modules)
