"""The layers added for Keras models: forward formulas and vjp against finite differences."""
from __future__ import annotations

import numpy
import pytest

import lrpflow
from lrpflow.layers import ELU, SELU, Average, ClippedReLU, Crop, Permute, PReLU, Softplus, Subtract

RNG = numpy.random.default_rng(3)


def numeric_vjp(layer, xs, g, h=1e-6):
    out = []
    for k, x in enumerate(xs):
        grad = numpy.zeros_like(x)
        it = numpy.nditer(x, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            plus = [a.copy() for a in xs]
            minus = [a.copy() for a in xs]
            plus[k][i] += h
            minus[k][i] -= h
            grad[i] = ((layer.forward(*plus) - layer.forward(*minus)) * g).sum() / (2 * h)
        out.append(grad)
    return out


@pytest.mark.parametrize("layer, n", [
    (ClippedReLU(1.0, 0.1, 0.3), 1), (ClippedReLU(None, 0.2, 0.0), 1), (ClippedReLU(6.0), 1),
    (PReLU(RNG.uniform(0.1, 0.4, (3,))), 1), (ELU(0.7), 1), (SELU(), 1), (Softplus(), 1),
    (Subtract(), 2), (Average(), 3), (Crop((1, 0, 0, 2)), 1), (Permute((2, 3, 1)), 1),
])
def test_vjp_is_the_derivative(layer, n):
    xs = [RNG.normal(0, 1, (2, 4, 5, 3)) for _ in range(n)]
    y = layer.forward(*xs)
    assert tuple(y.shape[1:]) == tuple(layer.output_shape(*(x.shape[1:] for x in xs)))
    g = RNG.normal(0, 1, y.shape)
    for a, b in zip(layer.vjp(xs, y, g), numeric_vjp(layer, xs, g)):
        numpy.testing.assert_allclose(a, b, atol=1e-6)


def test_forward_formulas():
    x = numpy.array([[-2.0, -0.1, 0.2, 0.5, 3.0]])
    # keras.activations.relu(x, negative_slope=0.1, max_value=1, threshold=0.3)
    numpy.testing.assert_allclose(ClippedReLU(1.0, 0.1, 0.3).forward(x), [[-0.23, -0.04, -0.01, 0.5, 1.0]])
    numpy.testing.assert_allclose(ELU(0.5).forward(x), [[0.5 * numpy.expm1(-2), 0.5 * numpy.expm1(-0.1), 0.2, 0.5, 3]])
    numpy.testing.assert_allclose(Softplus().forward(x), numpy.log1p(numpy.exp(x)))
    numpy.testing.assert_allclose(Subtract().forward(x, 2 * x), -x)
    numpy.testing.assert_allclose(Average().forward(x, 3 * x), 2 * x)


def test_subtract_and_average_conserve_under_z_rule():
    a, b = RNG.uniform(0.5, 1, (3, 4)), RNG.uniform(0, 0.4, (3, 4))
    for layer, xs in ((Subtract(), [a, b]), (Average(), [a, b])):
        y = layer.forward(*xs)
        rule = lrpflow.rules.make_rule("z")
        from lrpflow.rules.base import NodeContext

        rin = rule.backward(layer, xs, y, y, NodeContext("m"))
        numpy.testing.assert_allclose(sum(r.sum() for r in rin), y.sum(), rtol=1e-9)
        numpy.testing.assert_allclose(rin[0], xs[0] * (1 if isinstance(layer, Subtract) else 0.5), rtol=1e-9)
