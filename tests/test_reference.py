"""Tests of the slow reference (tests/reference.py) against numbers worked out by hand.

Every expected value below is derived in the comment above it from the formulas in
the reference's docstrings, so the reference itself can be trusted as ground truth.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reference import (
    add_rule,
    avgpool_rule,
    batchnorm_rule,
    conv2d_forward,
    conv2d_rule,
    linear_forward,
    linear_rule,
    maxpool_flat,
    maxpool_forward,
    maxpool_proportional,
    maxpool_wta,
    read_toolbox_txt,
    safe,
    shared_dir,
    sign0,
    sumpool_forward,
    sumpool_rule,
    toolbox_forward,
    toolbox_layer_lrp,
    toolbox_lrp,
    toolbox_mnist_preprocess,
)

TIGHT = dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def test_sign0_and_safe():
    # s(0) = +1, unlike np.sign
    np.testing.assert_array_equal(sign0([-2.0, 0.0, 3.0]), [-1.0, 1.0, 1.0])
    # safe: 0 where the denominator is 0, no NaN / warning
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(safe([1.0, 2.0, 0.0], [2.0, 0.0, 0.0]), [0.5, 0.0, 0.0])


# ---------------------------------------------------------------------------------
# Linear, one sample
#   x = [1, -2], W = [[1, 2], [3, -1]], b = [0.5, -1], R = [1, 2]
#   z_ij = x_i w_ij:  z_00 = 1, z_01 = 2, z_10 = -6, z_11 = 2
#   sum_i z_ij = [-5, 4];  y = z_j = [-4.5, 3]
# ---------------------------------------------------------------------------------
X1 = np.array([[1.0, -2.0]])
W1 = np.array([[1.0, 2.0], [3.0, -1.0]])
B1 = np.array([0.5, -1.0])
R1 = np.array([[1.0, 2.0]])


def test_linear_forward():
    np.testing.assert_allclose(linear_forward(X1, W1, B1), [[-4.5, 3.0]], **TIGHT)


@pytest.mark.parametrize(
    "rule, params, expected",
    [
        # z (bias): q_00 = 1/-4.5 = -2/9, q_10 = -6/-4.5 = 4/3, q_01 = q_11 = 2/3
        #   R_0 = -2/9 + 2*(2/3) = 10/9 ; R_1 = 4/3 + 2*(2/3) = 8/3
        ("z", {}, [10 / 9, 8 / 3]),
        # z, bias=False: den = [-5, 4]; q_00 = -1/5, q_10 = 6/5, q_01 = q_11 = 1/2
        #   R_0 = -1/5 + 1 = 4/5 ; R_1 = 6/5 + 1 = 11/5   (sum 3 = sum R: conserved)
        ("z", {"bias": False}, [4 / 5, 11 / 5]),
        # epsilon 0.5: den = [-4.5 - 0.5, 3 + 0.5] = [-5, 3.5]
        #   q_00 = -1/5, q_10 = 6/5, q_01 = q_11 = 2/3.5 = 4/7
        #   R_0 = -1/5 + 8/7 = 33/35 ; R_1 = 6/5 + 8/7 = 82/35
        ("epsilon", {"epsilon": 0.5}, [33 / 35, 82 / 35]),
        # epsilon 0.5, bias=False: den = [-5.5, 4.5]
        #   R_0 = (1/-5.5)*1 + (2/4.5)*2 = -2/11 + 8/9 = 70/99
        #   R_1 = (-6/-5.5)*1 + (2/4.5)*2 = 12/11 + 8/9 = 196/99
        ("epsilon", {"epsilon": 0.5, "bias": False}, [70 / 99, 196 / 99]),
        # gamma 0.5 (generalised): the plain outputs are z_j = [-4.5, 3]
        #   neuron 0 (z < 0) favours negative contributions, z + 0.5 z-: z_00 = 1, z_10 = -9,
        #     b = 0.5 + 0.5 * min(0.5, 0) = 0.5; den = 1 - 9 + 0.5 = -7.5; q_00 = -2/15, q_10 = 6/5
        #   neuron 1 (z > 0) positive ones, z + 0.5 z+: z_01 = z_11 = 3, b = -1; den = 5; q = 0.6
        #   R_0 = -2/15 + 0.6*2 = 16/15 ; R_1 = 6/5 + 0.6*2 = 2.4
        #   (the earlier form used z + 0.5 z+ for neuron 0 too: den = -3.75, R = [0.8, 2.8])
        ("gamma", {"gamma": 0.5}, [16 / 15, 2.4]),
        # alpha 2, beta 1 (bias): P = [1 + 0.5, 2 + 2] = [1.5, 4] ; N = [-6, -1]
        #   R_0 = 2*(1/1.5)*1 + 2*(2/4)*2 = 4/3 + 2 = 10/3
        #   R_1 = -1*(-6/-6)*1 + 2*(2/4)*2 = -1 + 2 = 1
        ("alpha_beta", {"alpha": 2.0, "beta": 1.0}, [10 / 3, 1.0]),
        # beta defaults to alpha - 1
        ("alpha_beta", {"alpha": 2.0}, [10 / 3, 1.0]),
        # alpha 2, beta 1, bias=False: P = [1, 4], N = [-6, 0]
        #   R_0 = 2*1*1 + 2*(1/2)*2 = 4 ; R_1 = -1*1*1 + 2 = 1
        ("alpha_beta", {"alpha": 2.0, "beta": 1.0, "bias": False}, [4.0, 1.0]),
        # zplus (bias): R_0 = (1/1.5)*1 + (2/4)*2 = 5/3 ; R_1 = 0 + (2/4)*2 = 1
        ("zplus", {}, [5 / 3, 1.0]),
        # zplus, bias=False: R_0 = 1*1 + 1 = 2; R_1 = 1
        ("zplus", {"bias": False}, [2.0, 1.0]),
        # zbox low=-1, high=2: z_ij = x_i w_ij - l w+_ij - h w-_ij
        #   z_00 = 1 + 1 = 2, z_01 = 2 + 2 = 4, z_10 = -6 + 3 = -3, z_11 = 2 + 0 + 2 = 4
        #   z_j = [-1, 8]; q_00 = -2, q_10 = 3, q_01 = q_11 = 1/2
        #   R_0 = -2 + 1 = -1 ; R_1 = 3 + 1 = 4
        ("zbox", {"low": -1.0, "high": 2.0}, [-1.0, 4.0]),
        # zbox per input: low = [0, -2], high = [1, 0]
        #   z_00 = 1 - 0 - 0 = 1, z_01 = 2, z_10 = -6 + 2*3 = 0, z_11 = 2 + 0 - 0 = 2
        #   z_j = [1, 4]; R_0 = 1*1 + (2/4)*2 = 2 ; R_1 = 0 + (2/4)*2 = 1
        ("zbox", {"low": np.array([0.0, -2.0]), "high": np.array([1.0, 0.0])}, [2.0, 1.0]),
        # wsquare: w^2 = [[1, 4], [9, 1]], column sums [10, 5]
        #   R_0 = 0.1*1 + 0.8*2 = 1.7 ; R_1 = 0.9*1 + 0.2*2 = 1.3
        ("wsquare", {}, [1.7, 1.3]),
        # flat: 1/2 each: R_0 = R_1 = (1 + 2)/2
        ("flat", {}, [1.5, 1.5]),
    ],
)
def test_linear_rules_by_hand(rule, params, expected):
    np.testing.assert_allclose(linear_rule(X1, W1, B1, R1, rule, **params), [expected], **TIGHT)


def test_linear_batch_and_batched_box():
    # a second sample x = [0, 1] under z without bias: z = [[0, 0], [3, -1]], z_j = [3, -1]
    #   R = [1, 1]: q_10 = 1, q_11 = 1 -> R_in = [0, 2]
    X = np.array([[1.0, -2.0], [0.0, 1.0]])
    R = np.array([[1.0, 2.0], [1.0, 1.0]])
    out = linear_rule(X, W1, B1, R, "z", bias=False)
    np.testing.assert_allclose(out, [[4 / 5, 11 / 5], [0.0, 2.0]], **TIGHT)
    # zbox bounds with batch axis give the same as without for identical rows
    low = np.array([[0.0, -2.0]])
    high = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(linear_rule(X1, W1, B1, R1, "zbox", low=low, high=high),
                               [[2.0, 1.0]], **TIGHT)


def test_linear_zero_denominator_gives_zero():
    # x = [1, -1], W = [[1], [1]], b = 0 -> z_j = 0; epsilon 0 -> safe division -> 0
    x = np.array([[1.0, -1.0]])
    W = np.array([[1.0], [1.0]])
    with np.errstate(all="raise"):
        out = linear_rule(x, W, np.zeros(1), np.array([[5.0]]), "epsilon", epsilon=0.0)
    np.testing.assert_array_equal(out, [[0.0, 0.0]])
    # wsquare with an all-zero weight column: 0, not NaN
    out = linear_rule(x, np.zeros((2, 1)), None, np.array([[5.0]]), "wsquare")
    np.testing.assert_array_equal(out, [[0.0, 0.0]])


def test_unknown_rule_and_missing_param():
    with pytest.raises(ValueError):
        linear_rule(X1, W1, B1, R1, "nope")
    with pytest.raises(ValueError):
        linear_rule(X1, W1, B1, R1, "epsilon")
    with pytest.raises(ValueError):
        linear_rule(X1, W1, B1, R1, "zbox", low=0.0)


# ---------------------------------------------------------------------------------
# Convolution: 3x3x1 input, 2x2x1x1 kernel
#   x = [[1, 2, 0], [-1, 3, 1], [2, 0, -2]],  W[:, :, 0, 0] = [[1, 0], [-1, 2]]
# ---------------------------------------------------------------------------------
XC = np.array([[1.0, 2.0, 0.0], [-1.0, 3.0, 1.0], [2.0, 0.0, -2.0]]).reshape(1, 3, 3, 1)
WC = np.array([[1.0, 0.0], [-1.0, 2.0]]).reshape(2, 2, 1, 1)
BC = np.array([0.5])


def test_conv_forward_by_hand():
    # y[0,0] = 1*1 + 2*0 + (-1)(-1) + 3*2 = 8
    # y[0,1] = 2*1 + 0*0 + 3*(-1) + 1*2 = 1
    # y[1,0] = -1*1 + 3*0 + 2*(-1) + 0*2 = -3
    # y[1,1] = 3*1 + 1*0 + 0*(-1) + (-2)*2 = -1   (+ bias 0.5)
    y = conv2d_forward(XC, WC, BC)
    np.testing.assert_allclose(y[0, :, :, 0], [[8.5, 1.5], [-2.5, -0.5]], **TIGHT)


def test_conv_z_rule_by_hand():
    # bias=False, R = 1 everywhere; windows and contributions z / z_j:
    #   (0,0): den 8 : x00 1/8, x01 0, x10 1/8, x11 6/8
    #   (0,1): den 1 : x01 2,   x02 0, x11 -3,  x12 2
    #   (1,0): den -3: x10 1/3, x11 0, x20 2/3, x21 0
    #   (1,1): den -1: x11 -3,  x12 0, x21 0,   x22 4
    # summed per input:
    #   (0,0) 1/8 ; (0,1) 2 ; (0,2) 0 ; (1,0) 1/8 + 1/3 = 11/24 ; (1,1) 3/4 - 3 - 3 = -21/4
    #   (1,2) 2 ; (2,0) 2/3 ; (2,1) 0 ; (2,2) 4         (total 4 = sum R: conserved)
    R = np.ones((1, 2, 2, 1))
    out = conv2d_rule(XC, WC, BC, R, rule="z", bias=False)
    expected = [[1 / 8, 2.0, 0.0], [11 / 24, -21 / 4, 2.0], [2 / 3, 0.0, 4.0]]
    np.testing.assert_allclose(out[0, :, :, 0], expected, **TIGHT)


def test_conv_wsquare_by_hand():
    # W^2 = [[1, 0], [1, 4]], sum 6; each window shares [1/6, 0; 1/6, 4/6], R = 1:
    #   (0,0) 1/6 ; (0,1) 0 + 1/6 ; (0,2) 0 ; (1,0) 1/6 + 1/6 ; (1,1) 4/6 + 0 + 1/6 + 1/6 = 1
    #   (1,2) 4/6 + 0 ; (2,0) 1/6 ; (2,1) 4/6 + 1/6 ; (2,2) 4/6
    R = np.ones((1, 2, 2, 1))
    out = conv2d_rule(XC, WC, BC, R, rule="wsquare")
    expected = np.array([[1, 1, 0], [2, 6, 4], [1, 5, 4]]) / 6
    np.testing.assert_allclose(out[0, :, :, 0], expected, **TIGHT)


def test_conv_padding_stride_by_hand():
    # padding (1,1), stride (2,2): output 2x2; in-image members (row, col) <- kernel (a, b)
    #   (0,0): (0,0)<-(1,1)                                w = 2
    #   (0,1): (0,1)<-(1,0), (0,2)<-(1,1)                  w = -1, 2
    #   (1,0): (1,0)<-(0,1), (2,0)<-(1,1)                  w = 0, 2
    #   (1,1): (1,1)<-(0,0), (1,2)<-(0,1), (2,1)<-(1,0), (2,2)<-(1,1)
    # forward: y = [[1*2, 2*-1 + 0*2], [-1*0 + 2*2, 3 - 0 + 0 - 4]] = [[2, -2], [4, -1]]
    y = conv2d_forward(XC, WC, None, stride=(2, 2), padding=(1, 1))
    np.testing.assert_allclose(y[0, :, :, 0], [[2.0, -2.0], [4.0, -1.0]], **TIGHT)
    R = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    # z, bias=False: (0,0) gets 1 ; (0,1): -2/-2 * 2 = 2, (0,2): 0
    #   (1,0): 0, (2,0): 4/4 * 3 = 3 ; (1,1): 3/-1 * 4 = -12, (2,2): -4/-1 * 4 = 16
    out = conv2d_rule(XC, WC, None, R, stride=(2, 2), padding=(1, 1), rule="z", bias=False)
    np.testing.assert_allclose(out[0, :, :, 0], [[1, 2, 0], [0, -12, 0], [3, 0, 16]], **TIGHT)
    # flat: 1/#in-image members: window sizes 1, 2, 2, 4
    #   (0,0) 1 ; (0,1) (0,2) 2/2 ; (1,0) (2,0) 3/2 ; the last four 4/4
    out = conv2d_rule(XC, WC, None, R, stride=(2, 2), padding=(1, 1), rule="flat")
    np.testing.assert_allclose(out[0, :, :, 0], [[1, 1, 1], [1.5, 1, 1], [1.5, 1, 1]], **TIGHT)
    # wsquare counts only in-image members: (1,0) window has w^2 = [0, 4] -> (2,0) gets all 3
    #   (0,1) window: w^2 = [1, 4] -> 2/5, 8/5 ; (1,1) window: [1, 0, 1, 4]/6 * 4
    out = conv2d_rule(XC, WC, None, R, stride=(2, 2), padding=(1, 1), rule="wsquare")
    expected = [[1, 2 / 5, 8 / 5], [0, 4 / 6, 0], [3, 4 / 6, 16 / 6]]
    np.testing.assert_allclose(out[0, :, :, 0], expected, **TIGHT)


RULE_CASES = [
    ("z", {}), ("z", {"bias": False}), ("epsilon", {"epsilon": 0.3}),
    ("gamma", {"gamma": 0.25}), ("alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    ("alpha_beta", {"alpha": 1.5, "beta": 0.5, "bias": False}), ("zplus", {}),
    ("zbox", {"low": -1.0, "high": 1.0}), ("wsquare", {}), ("flat", {}),
]


@pytest.mark.parametrize("rule, params", RULE_CASES)
def test_conv_full_kernel_equals_linear(rule, params):
    # a kernel as large as the image is a dense layer on the C-order flattened input
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 2, 2))
    W = rng.normal(size=(3, 2, 2, 4))
    b = rng.normal(size=4)
    R = rng.normal(size=(2, 1, 1, 4))
    conv = conv2d_rule(x, W, b, R, rule=rule, **params)
    dense = linear_rule(x.reshape(2, -1), W.reshape(-1, 4), b, R.reshape(2, 4), rule, **params)
    np.testing.assert_allclose(conv.reshape(2, -1), dense, **TIGHT)


@pytest.mark.parametrize("rule, params", RULE_CASES)
def test_conv_1x1_equals_linear_per_pixel(rule, params):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 3, 2))
    W = rng.normal(size=(1, 1, 2, 3))
    b = rng.normal(size=3)
    R = rng.normal(size=(2, 3, 3, 3))
    conv = conv2d_rule(x, W, b, R, rule=rule, **params)
    dense = linear_rule(x.reshape(-1, 2), W.reshape(2, 3), b, R.reshape(-1, 3), rule, **params)
    np.testing.assert_allclose(conv.reshape(-1, 2), dense, **TIGHT)


@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3), s=st.integers(1, 3),
       p=st.integers(0, 1), rule=st.sampled_from(["flat", "wsquare"]))
def test_conv_flat_wsquare_conserve(seed, k, s, p, rule):
    # flat and wsquare conserve per window, hence overall, as long as every window has an
    # in-image member (k > p guarantees that; k = 1, p = 1 has all-padding windows)
    assume(k > p)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 4, 5, 2))
    W = rng.normal(size=(k, k, 2, 3))
    y = conv2d_forward(x, W, None, stride=(s, s), padding=(p, p))
    R = rng.normal(size=y.shape)
    out = conv2d_rule(x, W, rng.normal(size=3), R, stride=(s, s), padding=(p, p), rule=rule)
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), R.sum(axis=(1, 2, 3)), rtol=1e-12)


# ---------------------------------------------------------------------------------
# Pools: x (1, 2, 4, 1) = [[1, -2, 0, 0], [3, 2, 0, 0]], pool 2x2, stride 2, R = [2, 5]
#   window 0 = [1, -2, 3, 2] (sum 4), window 1 = [0, 0, 0, 0] (sum 0)
# ---------------------------------------------------------------------------------
XP = np.array([[1.0, -2.0, 0.0, 0.0], [3.0, 2.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
RP = np.array([2.0, 5.0]).reshape(1, 1, 2, 1)


def _img(a):
    return np.asarray(a, dtype=float).reshape(1, 2, 4, 1)


def test_pool_forward():
    np.testing.assert_allclose(sumpool_forward(XP, 2, 2)[0, 0, :, 0], [4.0, 0.0])
    np.testing.assert_allclose(maxpool_forward(XP, 2, 2)[0, 0, :, 0], [3.0, 0.0])


@pytest.mark.parametrize(
    "fn, rule, params, expected",
    [
        # z: window 0 -> x/4 * 2 ; window 1: 0/(0 + 1e-16) = 0 (its 5 is lost)
        (sumpool_rule, "z", {}, [[0.5, -1, 0, 0], [1.5, 1, 0, 0]]),
        # epsilon 1: den 5 -> x/5 * 2
        (sumpool_rule, "epsilon", {"epsilon": 1.0}, [[0.4, -0.8, 0, 0], [1.2, 0.8, 0, 0]]),
        # alpha 2 beta 1: P = 6, N = -2: 2*x+/6*2 - 1*(x-/-2)*2 -> [2/3, -2, 2, 4/3]
        (sumpool_rule, "alpha_beta", {"alpha": 2.0, "beta": 1.0},
         [[2 / 3, -2, 0, 0], [2, 4 / 3, 0, 0]]),
        # zplus: x+/6 * 2
        (sumpool_rule, "zplus", {}, [[1 / 3, 0, 0, 0], [1, 2 / 3, 0, 0]]),
        # flat / wsquare: R/4 per member: 0.5 and 1.25
        (sumpool_rule, "flat", {}, [[0.5, 0.5, 1.25, 1.25], [0.5, 0.5, 1.25, 1.25]]),
        (sumpool_rule, "wsquare", {}, [[0.5, 0.5, 1.25, 1.25], [0.5, 0.5, 1.25, 1.25]]),
        # avgpool epsilon 1: z_ij = x/4, z_j = 1, den 2 -> x/8 * 2
        (avgpool_rule, "epsilon", {"epsilon": 1.0}, [[0.25, -0.5, 0, 0], [0.75, 0.5, 0, 0]]),
        # avgpool z: the 1/4 cancels -> same as sumpool z
        (avgpool_rule, "z", {}, [[0.5, -1, 0, 0], [1.5, 1, 0, 0]]),
    ],
)
def test_pool_rules_by_hand(fn, rule, params, expected):
    np.testing.assert_allclose(fn(XP, RP, (2, 2), (2, 2), rule, **params), _img(expected),
                               **TIGHT)


def test_maxpool_variants_by_hand():
    # wta: window 0's max 3 takes 2; window 1 is a 4-way tie of zeros: 5/4 each
    out = maxpool_wta(XP, RP, (2, 2), (2, 2))
    np.testing.assert_allclose(out, _img([[0, 0, 1.25, 1.25], [2, 0, 1.25, 1.25]]), **TIGHT)
    # a two-way tie [[3, 1], [3, 0]] with R = 2 -> 1 and 1
    x = np.array([[3.0, 1.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
    out = maxpool_wta(x, np.full((1, 1, 1, 1), 2.0), (2, 2), (2, 2))
    np.testing.assert_allclose(out[0, :, :, 0], [[1, 0], [1, 0]], **TIGHT)
    # flat: uniform over the whole window
    np.testing.assert_allclose(maxpool_flat(XP, RP, (2, 2), (2, 2)),
                               _img([[0.5, 0.5, 1.25, 1.25], [0.5, 0.5, 1.25, 1.25]]), **TIGHT)
    # proportional = sumpool z
    np.testing.assert_allclose(maxpool_proportional(XP, RP, (2, 2), (2, 2)),
                               _img([[0.5, -1, 0, 0], [1.5, 1, 0, 0]]), **TIGHT)


def test_overlapping_pools_by_hand():
    # x = [[1, 2, 3], [4, 5, 6]], pool 2x2, stride 1 -> windows [1,2,4,5], [2,3,5,6]; R = 1, 1
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(1, 2, 3, 1)
    R = np.ones((1, 1, 2, 1))
    # wta: maxima 5 at (1,1) and 6 at (1,2)
    out = maxpool_wta(x, R, (2, 2), (1, 1))
    np.testing.assert_allclose(out[0, :, :, 0], [[0, 0, 0], [0, 1, 1]], **TIGHT)
    # z: [1,2,4,5]/12 and [2,3,5,6]/16 summed:
    #   (0,0) 1/12 ; (0,1) 2/12 + 2/16 = 7/24 ; (0,2) 3/16
    #   (1,0) 4/12 ; (1,1) 5/12 + 5/16 = 35/48 ; (1,2) 6/16
    out = sumpool_rule(x, R, (2, 2), (1, 1), "z")
    expected = [[1 / 12, 7 / 24, 3 / 16], [1 / 3, 35 / 48, 3 / 8]]
    np.testing.assert_allclose(out[0, :, :, 0], expected, **TIGHT)


def test_pool_per_channel():
    # two channels pooled independently: channel 1 = 10 * channel 0 -> same shares
    x = np.concatenate([XP, 10 * XP], axis=3)
    R = np.concatenate([RP, RP], axis=3)
    out = sumpool_rule(x, R, (2, 2), (2, 2), "z")
    np.testing.assert_allclose(out[..., 0], out[..., 1], **TIGHT)


# ---------------------------------------------------------------------------------
# Add and BatchNorm
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule, params, expected",
    [
        # x1 = [1, -2], x2 = [3, 1], R = [4, 6]; element sums [4, -1]
        # z: element 0: 1/4*4 = 1, 3/4*4 = 3 ; element 1: -2/-1*6 = 12, 1/-1*6 = -6
        ("z", {}, ([1, 12], [3, -6])),
        # epsilon 1: den [5, -2]: 0.8, 2.4 ; 6, -3
        ("epsilon", {"epsilon": 1.0}, ([0.8, 6], [2.4, -3])),
        # alpha 2 beta 1: el 0: P = 4, N = 0: 2*1/4*4 = 2, 2*3/4*4 = 6
        #                 el 1: P = 1, N = -2: -(-2/-2)*6 = -6, 2*(1/1)*6 = 12
        ("alpha_beta", {"alpha": 2.0, "beta": 1.0}, ([2, -6], [6, 12])),
        # flat: half each
        ("flat", {}, ([2, 3], [2, 3])),
    ],
)
def test_add_rule_by_hand(rule, params, expected):
    x1 = np.array([[1.0, -2.0]])
    x2 = np.array([[3.0, 1.0]])
    out = add_rule([x1, x2], np.array([[4.0, 6.0]]), rule, **params)
    assert len(out) == 2
    np.testing.assert_allclose(out[0], [expected[0]], **TIGHT)
    np.testing.assert_allclose(out[1], [expected[1]], **TIGHT)


@pytest.mark.parametrize(
    "rule, params, expected",
    [
        # x = [[1, -2], [0, 4]], scale = [2, -1], shift = [1, 0.5] -> y = [[3, 2.5], [1, -3.5]]
        # z = x*scale = [[2, 2], [0, -4]]; R = [[1, 1], [2, 2]]
        # z (bias): [[2/3, 2/2.5], [0, -4/-3.5 * 2]] = [[2/3, 0.8], [0, 16/7]]
        ("z", {}, [[2 / 3, 0.8], [0, 16 / 7]]),
        # bias False: z/z = 1 (0 for z = 0)
        ("z", {"bias": False}, [[1, 1], [0, 2]]),
        # epsilon 0.5: den [[3.5, 3], [1.5, -4]] -> [[4/7, 2/3], [0, 2]]
        ("epsilon", {"epsilon": 0.5}, [[4 / 7, 2 / 3], [0, 2]]),
        # zplus: P = z+ + shift+ = [[3, 2.5], [1, 0.5]] -> [[2/3, 0.8], [0, 0]]
        ("zplus", {}, [[2 / 3, 0.8], [0, 0]]),
        # flat: single input -> R passes
        ("flat", {}, [[1, 1], [2, 2]]),
    ],
)
def test_batchnorm_rule_by_hand(rule, params, expected):
    x = np.array([[1.0, -2.0], [0.0, 4.0]])
    R = np.array([[1.0, 1.0], [2.0, 2.0]])
    out = batchnorm_rule(x, np.array([2.0, -1.0]), np.array([1.0, 0.5]), R, rule, **params)
    np.testing.assert_allclose(out, expected, **TIGHT)


# ---------------------------------------------------------------------------------
# Part B: toolbox semantics
# ---------------------------------------------------------------------------------
LIN1 = {"type": "Linear", "W": W1, "B": B1}


def _tb_lin(R, var, param=None):
    y, _ = toolbox_forward([LIN1], X1)
    return toolbox_layer_lrp(LIN1, X1, y, R, var, param)


def test_toolbox_linear_matches_generic():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 5))
    layer = {"type": "Linear", "W": rng.normal(size=(5, 4)), "B": rng.normal(size=4)}
    R = rng.normal(size=(3, 4))
    tb = lambda v, p=None: toolbox_lrp([layer], x, R, v, p)  # noqa: E731
    gen = lambda r, **kw: linear_rule(x, layer["W"], layer["B"], R, r, **kw)  # noqa: E731
    np.testing.assert_allclose(tb("simple"), gen("z"), **TIGHT)
    np.testing.assert_allclose(tb(None), gen("z"), **TIGHT)
    np.testing.assert_allclose(tb("EPSILON", 0.1), gen("epsilon", epsilon=0.1), **TIGHT)
    np.testing.assert_allclose(tb("alphabeta", 2.0), gen("alpha_beta", alpha=2.0, beta=1.0),
                               **TIGHT)
    np.testing.assert_allclose(tb("alpha", 1.0), gen("zplus"), **TIGHT)
    np.testing.assert_allclose(tb("flat"), gen("flat"), **TIGHT)
    np.testing.assert_allclose(tb("w^2"), gen("wsquare"), **TIGHT)


def test_toolbox_linear_by_hand():
    # same numbers as the generic hand examples above
    np.testing.assert_allclose(_tb_lin(R1, "simple"), [[10 / 9, 8 / 3]], **TIGHT)
    np.testing.assert_allclose(_tb_lin(R1, "epsilon", 0.5), [[33 / 35, 82 / 35]], **TIGHT)
    np.testing.assert_allclose(_tb_lin(R1, "alphabeta", 2.0), [[10 / 3, 1.0]], **TIGHT)
    np.testing.assert_allclose(_tb_lin(R1, "alphabeta", 1.0), [[5 / 3, 1.0]], **TIGHT)
    # alpha 0 (beta 1): q = z^(<=0) / (sum z- + b- - 1e-16): N = [-6, -1]
    #   R_1 = -6/-6 * 1 = 1 ; nothing negative in column 1
    np.testing.assert_allclose(_tb_lin(R1, "alphabeta", 0.0), [[0.0, 1.0]], **TIGHT)
    # alpha 0.5 (beta 0.5): P = [1.5, 4], N = Y - P = [-6, -1]
    #   R_0 = 0.5*(1/1.5)*1 + 0.5*(2/4)*2 = 1/3 + 1/2 = 5/6
    #   R_1 = 0.5*(-6/-6)*1 + 0.5*(2/4)*2 = 1/2 + 1/2 = 1
    np.testing.assert_allclose(_tb_lin(R1, "alphabeta", 0.5), [[5 / 6, 1.0]], **TIGHT)
    with pytest.raises(TypeError):
        _tb_lin(R1, "epsilon", None)
    with pytest.raises(ValueError):
        _tb_lin(R1, "bogus", 1.0)


def test_toolbox_alpha0_stabiliser_quirk():
    # one contribution z = -3e-16, b = 0, alpha = 0:
    #   Linear: -3e-16 / (-3e-16 - 1e-16) = 0.75 ; Convolution: -3e-16 / (-3e-16 + 1e-16) = 1.5
    x = np.array([[3e-16]])
    lin = {"type": "Linear", "W": np.array([[-1.0]]), "B": np.zeros(1)}
    conv = {"type": "Convolution", "W": -np.ones((1, 1, 1, 1)), "B": np.zeros(1),
            "stride": (1, 1)}
    r_lin = toolbox_lrp([lin], x, np.ones((1, 1)), "alphabeta", 0.0)
    r_conv = toolbox_lrp([conv], x.reshape(1, 1, 1, 1), np.ones((1, 1, 1, 1)), "alphabeta", 0.0)
    np.testing.assert_allclose(r_lin.ravel(), [0.75], rtol=1e-12)
    np.testing.assert_allclose(r_conv.ravel(), [1.5], rtol=1e-12)


def test_toolbox_conv_matches_generic():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 6, 2))
    layer = {"type": "Convolution", "W": rng.normal(size=(2, 3, 2, 3)),
             "B": rng.normal(size=3), "stride": (1, 2)}
    y, _ = toolbox_forward([layer], x)
    np.testing.assert_allclose(y, conv2d_forward(x, layer["W"], layer["B"], (1, 2)), **TIGHT)
    R = rng.normal(size=y.shape)
    tb = lambda v, p=None: toolbox_lrp([layer], x, R, v, p)  # noqa: E731
    gen = lambda r, **kw: conv2d_rule(x, layer["W"], layer["B"], R, (1, 2), rule=r, **kw)  # noqa
    np.testing.assert_allclose(tb("simple"), gen("z"), **TIGHT)
    np.testing.assert_allclose(tb("epsilon", 0.7), gen("epsilon", epsilon=0.7), **TIGHT)
    np.testing.assert_allclose(tb("alphabeta", 2.0), gen("alpha_beta", alpha=2.0, beta=1.0),
                               **TIGHT)
    np.testing.assert_allclose(tb("alphabeta", 1.0), gen("zplus"), **TIGHT)
    np.testing.assert_allclose(tb("flat"), gen("flat"), **TIGHT)
    np.testing.assert_allclose(tb("ww"), gen("wsquare"), **TIGHT)


def _tb_pool(kind, x, R, var, param=None, bug=False):
    layer = {"type": kind, "pool": (2, 2), "stride": (2, 2)}
    y, _ = toolbox_forward([layer], x)
    return toolbox_layer_lrp(layer, x, y, R, var, param, sumpool_r_squared_bug=bug)


def test_toolbox_sumpool_by_hand():
    # forward is scaled by 1/sqrt(4) = 1/2: window sums [4, 0] -> [2, 0]
    y, _ = toolbox_forward([{"type": "SumPool", "pool": (2, 2), "stride": (2, 2)}], XP)
    np.testing.assert_allclose(y[0, 0, :, 0], [2.0, 0.0], **TIGHT)
    # simple: x/(4 + 1e-12) * 2; all-zero window -> 0
    np.testing.assert_allclose(_tb_pool("SumPool", XP, RP, "simple"),
                               _img([[0.5, -1, 0, 0], [1.5, 1, 0, 0]]), rtol=1e-11)
    np.testing.assert_allclose(_tb_pool("SumPool", XP, RP, "epsilon", 1.0),
                               _img([[0.4, -0.8, 0, 0], [1.2, 0.8, 0, 0]]), **TIGHT)
    # alpha 2 (toolbox beta = -1): P = 6, N = 4 - 6 = -2
    #   corrected: 2*x+/6*2 + (-1)*x-/(-2)*2 = [2/3, -2, 2, 4/3]   (= generic alpha 2 beta 1)
    #   bug: the negative term uses R^2 = 4: (-1)*(-2)*4/(-2) = -4
    np.testing.assert_allclose(_tb_pool("SumPool", XP, RP, "alphabeta", 2.0),
                               _img([[2 / 3, -2, 0, 0], [2, 4 / 3, 0, 0]]), **TIGHT)
    np.testing.assert_allclose(_tb_pool("SumPool", XP, RP, "alphabeta", 2.0, bug=True),
                               _img([[2 / 3, -4, 0, 0], [2, 4 / 3, 0, 0]]), **TIGHT)
    # alpha 0: x^(<=0)/(sum x- - 1e-16): window 0 -> -2/-2 * 2 = 2 at (0,1)
    np.testing.assert_allclose(_tb_pool("SumPool", XP, RP, "alphabeta", 0.0),
                               _img([[0, 2, 0, 0], [0, 0, 0, 0]]), **TIGHT)
    # flat and ww: uniform
    for var in ("flat", "ww"):
        np.testing.assert_allclose(_tb_pool("SumPool", XP, RP, var),
                                   _img([[0.5, 0.5, 1.25, 1.25], [0.5, 0.5, 1.25, 1.25]]),
                                   **TIGHT)


def test_toolbox_maxpool_by_hand():
    wta = _img([[0, 0, 1.25, 1.25], [2, 0, 1.25, 1.25]])
    for var, param in (("simple", None), ("epsilon", 0.3), ("alphabeta", 2.0)):
        np.testing.assert_allclose(_tb_pool("MaxPool", XP, RP, var, param), wta, **TIGHT)
    for var in ("flat", "w^2"):
        np.testing.assert_allclose(_tb_pool("MaxPool", XP, RP, var),
                                   _img([[0.5, 0.5, 1.25, 1.25], [0.5, 0.5, 1.25, 1.25]]),
                                   **TIGHT)


def _small_cnn(rng):
    return [
        {"type": "Convolution", "W": rng.normal(size=(3, 3, 1, 4)), "B": rng.normal(size=4),
         "stride": (1, 1)},
        {"type": "Rect"},
        {"type": "MaxPool", "pool": (2, 2), "stride": (2, 2)},
        {"type": "Convolution", "W": rng.normal(size=(2, 2, 4, 3)), "B": rng.normal(size=3),
         "stride": (1, 1)},
        {"type": "Tanh"},
        {"type": "SumPool", "pool": (2, 2), "stride": (1, 1)},
        {"type": "Flatten"},
        {"type": "Linear", "W": rng.normal(size=(3, 2)), "B": rng.normal(size=2)},
        {"type": "SoftMax"},
    ]


@pytest.mark.parametrize("var", ["flat", "ww"])
def test_toolbox_flat_ww_conserve(var):
    rng = np.random.default_rng(5)
    layers = _small_cnn(rng)
    x = rng.normal(size=(2, 8, 8, 1))
    Y, _ = toolbox_forward(layers, x)
    assert Y.shape == (2, 2)
    np.testing.assert_allclose(Y.sum(axis=1), 1.0, **TIGHT)   # softmax output
    R = rng.normal(size=Y.shape)
    out = toolbox_lrp(layers, x, R, var)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), R.sum(axis=1), rtol=1e-12)


def test_toolbox_per_layer_presets():
    rng = np.random.default_rng(6)
    layers = _small_cnn(rng)
    x = rng.normal(size=(1, 8, 8, 1))
    R = rng.normal(size=(1, 2))
    vars_ = ["ww", None, "flat", "epsilon", None, "alphabeta", None, "simple", None]
    params = [None, None, None, 0.5, None, 1.0, None, None, None]
    out = toolbox_lrp(layers, x, R, vars_, params)
    # the same, one layer at a time
    Y, acts = toolbox_forward(layers, x)
    outs = acts[1:] + [Y]
    r = R
    for k in range(len(layers) - 1, -1, -1):
        r = toolbox_layer_lrp(layers[k], acts[k], outs[k], r, vars_[k], params[k])
    np.testing.assert_allclose(out, r, rtol=0, atol=0)
    # a single value applies to every layer
    np.testing.assert_allclose(toolbox_lrp(layers, x, R, "flat"),
                               toolbox_lrp(layers, x, R, ["flat"] * 9), rtol=0, atol=0)
    with pytest.raises(ValueError):
        toolbox_lrp(layers, x, R, ["flat"] * 3)


# ---------------------------------------------------------------------------------
# Part B: text model reader
# ---------------------------------------------------------------------------------
def test_read_toolbox_txt_current_and_legacy(tmp_path):
    current = tmp_path / "current.txt"
    current.write_text(
        "Convolution 1 2 1 2 1 1\n1.0 2.0 3.0 4.0\n0.5 -0.5\nRect\nSumPool 2 2 2 2\n"
        "MaxPool 1 1 1 1\nFlatten\nLinear 2 3\n1 2 3 4 5 6\n0.1 0.2 0.3\nTanh\nSoftMax\n"
    )
    layers = read_toolbox_txt(current)
    assert [lay["type"] for lay in layers] == [
        "Convolution", "Rect", "SumPool", "MaxPool", "Flatten", "Linear", "Tanh", "SoftMax"]
    conv = layers[0]
    assert conv["W"].shape == (1, 2, 1, 2) and conv["stride"] == (1, 1)
    # C order of W[h, w, d, n]: W[0, 1, 0, 0] is the third value
    assert conv["W"][0, 1, 0, 0] == 3.0 and conv["W"][0, 0, 0, 1] == 2.0
    np.testing.assert_array_equal(conv["B"], [0.5, -0.5])
    assert layers[2]["pool"] == (2, 2) and layers[2]["stride"] == (2, 2)
    np.testing.assert_array_equal(layers[5]["W"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(layers[5]["B"], [0.1, 0.2, 0.3])

    legacy = tmp_path / "legacy.txt"
    legacy.write_text("Linear 2 3\n1 2 3\n4 5 6\n0.1 0.2 0.3\nTanh\nLinear 3 1\n1\n2\n3\n-1\n")
    layers = read_toolbox_txt(legacy)
    assert [lay["type"] for lay in layers] == ["Linear", "Tanh", "Linear"]
    np.testing.assert_array_equal(layers[0]["W"], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(layers[2]["W"], [[1], [2], [3]])
    np.testing.assert_array_equal(layers[2]["B"], [-1])

    bad = tmp_path / "bad.txt"
    bad.write_text("Sigmoid\n")
    with pytest.raises(ValueError):
        read_toolbox_txt(bad)


def test_read_xor_net():
    path = shared_dir() / "models" / "XOR" / "xor_net_small.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    layers = read_toolbox_txt(path)
    assert layers[0]["type"] == "Linear" and layers[0]["W"].shape == (2, 3)
    assert layers[-1]["type"] == "SoftMax"
    Y, _ = toolbox_forward(layers, np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(Y.sum(axis=1), 1.0, **TIGHT)


@pytest.fixture(scope="module")
def lenet():
    path = shared_dir() / "models" / "MNIST" / "LeNet-5.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return read_toolbox_txt(path)


def test_read_lenet5(lenet):
    assert [lay["type"] for lay in lenet] == [
        "Convolution", "Rect", "SumPool", "Convolution", "Rect", "SumPool",
        "Convolution", "Rect", "SumPool", "Convolution", "Flatten"]
    shapes = [lay["W"].shape for lay in lenet if lay["type"] == "Convolution"]
    assert shapes == [(5, 5, 1, 10), (5, 5, 10, 25), (4, 4, 25, 100), (1, 1, 100, 10)]
    assert all(lay["pool"] == (2, 2) and lay["stride"] == (2, 2)
               for lay in lenet if lay["type"] == "SumPool")


def test_lenet5_forward_and_lrp(lenet):
    scipy_io = pytest.importorskip("scipy.io")
    path = shared_dir() / "data" / "MNIST" / "test_images.mat"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = scipy_io.loadmat(str(path))["data"][:4]
    X = toolbox_mnist_preprocess(data)
    assert X.shape == (4, 32, 32, 1)
    Y, acts = toolbox_forward(lenet, X)
    assert Y.shape == (4, 10) and np.all(np.isfinite(Y))
    assert [a.shape[1:] for a in acts[1:4]] == [(28, 28, 10), (28, 28, 10), (14, 14, 10)]
    labels_path = shared_dir() / "data" / "MNIST" / "test_labels.npy"
    if labels_path.exists():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = np.load(labels_path).ravel()[:4].astype(int)
        assert (Y.argmax(axis=1) == labels).sum() >= 3
    # flat conserves exactly; alpha = 1 conserves for LeNet-5 (all biases negative)
    mask = np.eye(10)[Y.argmax(axis=1)]
    R0 = Y * mask
    for var, param, rtol in (("flat", None, 1e-12), ("alphabeta", 1.0, 1e-9)):
        R = toolbox_lrp(lenet, X, R0, var, param)
        assert R.shape == X.shape and np.all(np.isfinite(R))
        np.testing.assert_allclose(R.sum(axis=(1, 2, 3)), R0.sum(axis=1), rtol=rtol)
