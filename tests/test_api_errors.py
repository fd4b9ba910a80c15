"""The Python API raises LrpflowErrors only: empty batches, wrong shapes, absurd layer sizes, NaN/Inf, overflows."""
from __future__ import annotations

import io

import numpy
import pytest

import lrpflow
from lrpflow.io.toolbox_pickle import STAND_INS, _ToolboxPickler
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool


def _net(layout="NHWC"):
    rng = numpy.random.default_rng(0)
    return lrpflow.Sequential([Conv2d(3, 3, 1, 2, rng=rng), ReLU(), SumPool(2, 2), Flatten(), Linear(8, 3, rng=rng),
                               SoftMax()], layout=layout)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("target", ["pred", 1, "topk:2"])
def test_empty_batch_gives_an_empty_explanation(dtype, target):
    x = numpy.ones((0, 1, 6, 6), dtype=dtype)
    e = lrpflow.explain(_net("NCHW"), x, rule="epsilon", target=target, dtype=dtype)
    assert e.relevance.shape == (0, 1, 6, 6) and e.relevance.dtype == numpy.dtype(dtype)
    assert e.logits.shape == (0, 3) and e.r_init.shape == (0, 3) and e.conservation.shape == (0,)
    assert e.target.shape[0] == 0
    assert set(e.ledger) == {"0_conv2d", "1_relu", "2_sumpool", "3_flatten", "4_linear"}


def test_toolbox_forward_wrong_shape_is_the_same_shape_error_as_explain():
    nn = _net()
    x = numpy.ones((2, 5, 5, 1))
    with pytest.raises(lrpflow.ShapeError) as via_explain:
        lrpflow.explain(nn, x)
    with pytest.raises(lrpflow.ShapeError) as via_forward:
        nn.forward(x)
    assert str(via_forward.value) == str(via_explain.value)
    with pytest.raises(lrpflow.ShapeError, match="does not fit the input"):
        lrpflow.Sequential([MaxPool(10**6, 10**6, stride=(1, 1))]).forward(x)


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
def test_toolbox_surface_refuses_nan_and_inf(bad):
    nn = _net()
    x = numpy.ones((2, 6, 6, 1))
    x[1, 2, 3, 0] = bad
    with pytest.raises(lrpflow.DataFormatError, match="input X contains NaN or Inf"):
        nn.forward(x)
    y = nn.forward(numpy.ones((2, 6, 6, 1)))
    r = numpy.array(y)
    r[0, 1] = bad
    with pytest.raises(lrpflow.DataFormatError, match="relevance R contains NaN or Inf"):
        nn.lrp(r)
    assert numpy.isfinite(nn.lrp(numpy.array(y))).all()


@pytest.mark.parametrize("header", ["MaxPool 1000000000 1000000000 1 1", "SumPool 2 2 1000000 1",
                                    "Convolution 100000 1 1 1 1 1"])
def test_text_model_with_absurd_sizes_names_the_line(tmp_path, header):
    path = tmp_path / "m.txt"
    path.write_text(f"Rect\n{header}\nFlatten\n")
    with pytest.raises(lrpflow.ModelFormatError, match=r"m\.txt, line 2: .* exceeds 65536"):
        lrpflow.load_model(path)


def test_pickle_model_with_absurd_pool_is_refused(tmp_path):
    buf = io.BytesIO()
    pool = STAND_INS["MaxPool"]({"pool": (10**9, 10**9), "stride": (1, 1)})
    _ToolboxPickler(buf, protocol=2).dump(STAND_INS["Sequential"]({"modules": [pool]}))
    path = tmp_path / "m.nn"
    path.write_bytes(buf.getvalue())
    with pytest.raises(lrpflow.ModelFormatError, match=r"module 0 \(MaxPool\): attribute 'pool' must be a pair of "
                                                      r"integers from 1 to 65536"):
        lrpflow.load_model(path)


# --- numerics: no overflow where float64 has none, never a silent zero ------------------------------------


def _lenet(shared):
    return lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.nn")


@pytest.mark.parametrize("method", [dict(rule="zbox"), dict(composite="epsilon_gamma_box"), dict(rule="epsilon")])
def test_huge_float32_inputs_match_float64(shared, method):
    """Inputs around 1e30: float32 relevance overflowed R/ε at dead SumPool windows (NaN, then masked to 0)."""
    x = numpy.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)) * 1e30
    e32 = lrpflow.explain(_lenet(shared), x.astype(numpy.float32), **method)
    e64 = lrpflow.explain(_lenet(shared), x, dtype="float64", **method)
    assert numpy.isfinite(e32.relevance).all() and (e32.relevance != 0).any()
    scale = numpy.abs(e64.relevance).max()
    numpy.testing.assert_allclose(e32.relevance, e64.relevance, rtol=1e-3, atol=1e-4 * scale)
    numpy.testing.assert_allclose(e32.conservation, e64.conservation, atol=1e-4)


def test_overflow_raises_naming_the_node_and_rule(shared):
    """Past float32's range (z of the z^B bounds overflows) the result is an error, not a map of zeros."""
    x = numpy.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype(numpy.float32) * 1e37
    with pytest.warns(RuntimeWarning), pytest.raises(lrpflow.LrpflowError, match=r"node '\d+_conv2d' \(Conv2d\): "
                                                                                 r"rule ZBox\(.*\) produced NaN or Inf"):
        lrpflow.explain(_lenet(shared), x, rule="zbox")
    e = lrpflow.explain(_lenet(shared), x.astype(numpy.float64), dtype="float64", rule="zbox")
    assert numpy.isfinite(e.relevance).all() and (e.relevance != 0).any()


def test_relevance_scaling_is_exact():
    """R is propagated divided by a power of two per sample: results are bitwise those of unscaled inputs."""
    nn = _net()
    x = numpy.random.default_rng(1).uniform(0, 1, (3, 6, 6, 1)).astype(numpy.float32)
    a = lrpflow.explain(nn, x, rule="epsilon").relevance
    b = lrpflow.explain(nn, x, rule="epsilon", target=numpy.eye(3, dtype=numpy.float32)[[0, 1, 2]] * 1024).relevance
    c = lrpflow.explain(nn, x, rule="epsilon", target=numpy.eye(3, dtype=numpy.float32)[[0, 1, 2]]).relevance
    numpy.testing.assert_array_equal(b, c * 1024)
    assert a.shape == b.shape
