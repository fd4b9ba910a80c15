"""The product of two activations: squeeze-excitation gates, SiLU ``x·σ(x)``, GELU's ``x·Φ(x)``, HardSwish patterns.

``y = a ⊙ b`` is not affine in its inputs, so LRP needs a convention. lrpflow offers two:

- ``"gate"`` (default where one operand is a gate): the gate ``b`` is held constant, the
  layer is then the linear map ``a ↦ b ⊙ a`` and relevance flows through the gated path
  only: ``R_a = a ⊙ b ⊙ R / z`` (``= R`` under the proportional rule), ``R_b = 0``. For
  ``x·σ(x)`` (SiLU), whose gate comes from the same ``x``, relevance passes through like
  through an activation. This is the convention of LRP for LSTM gates (Arras et al.,
  2017) and of zennit/LXT for SE blocks and SiLU/GELU.
- ``"uniform"``: each operand gets half, ``R_a = R_b = R/2`` under the proportional rule
  (AttnLRP's rule for products of two activations, Achtibat et al., ICML 2024).

Gradients (``vjp``) are the true ones, ``∂y/∂a = b``, ``∂y/∂b = a`` (summed over broadcast axes).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.layers.base import LinearLike, Shape


def reduce_to(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` over the axes along which an array of ``shape`` was broadcast to ``g.shape``."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    out = g.sum(axis=axes, keepdims=True)
    return out.reshape(shape)


class Multiply(LinearLike):
    """``y = a ⊙ b`` of two activations (numpy broadcasting); see the module doc for its LRP.

    Parameters
    ----------
    gate : int or None
        Index (0 or 1) of the input held constant for LRP; None: the uniform 50/50 split.
    """

    kinds = frozenset({"product", "merge", "multiply"})
    n_inputs = 2
    nonneg_weight = True
    keeps_nonneg = True

    def __init__(self, gate: int | None = 1) -> None:
        super().__init__()
        if gate not in (0, 1, None):
            raise ConfigError(f"Multiply: gate must be 0, 1 or None (uniform split), got {gate!r}")
        self.gate = gate

    def config(self) -> dict[str, Any]:
        return {"gate": self.gate}

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        return get_namespace(xs[0]).ones((), dtype=xs[0].dtype), None

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        z = xs[0] * xs[1] * weight
        return z if bias is None else z + bias

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        a, b = xs
        g = s * weight
        if self.gate is None:
            g = g * 0.5
            return [reduce_to(g * b, a.shape), reduce_to(g * a, b.shape)]
        xp = get_namespace(s)
        held, free = (b, a) if self.gate == 1 else (a, b)
        moved = reduce_to(g * held, free.shape)
        zero = xp.zeros(held.shape, dtype=moved.dtype)
        return [moved, zero] if self.gate == 1 else [zero, moved]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        a, b = xs
        return [reduce_to(g * b, a.shape), reduce_to(g * a, b.shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        if len(shapes[0]) != len(shapes[1]):
            raise ShapeError(f"Multiply expects inputs of one rank, got {list(shapes)}")
        try:
            import numpy

            return tuple(numpy.broadcast_shapes(shapes[0], shapes[1]))
        except ValueError:
            raise ShapeError(f"Multiply: shapes {shapes[0]} and {shapes[1]} do not broadcast") from None


#: layers whose output gates another activation (bounded, sigmoid-like)
GATE_LAYERS = ("Sigmoid", "HardSigmoid", "Erf", "Tanh")
#: layers a gate may pass through and stay a gate (affine maps by constants, shape layers)
GATE_THROUGH = ("BatchNorm", "Reshape", "Flatten", "Transpose", "Permute", "Identity", "Dropout")


def is_gate(nodes: Sequence[Any], name: str, max_depth: int = 16) -> bool:
    """Whether node ``name`` of a graph under construction (``nodes``: objects with ``name``, ``layer``,
    ``inputs``) is a gate: the output of a :data:`GATE_LAYERS` layer, possibly through single-input
    :data:`GATE_THROUGH` layers. The readers (ONNX, Keras) hold such an operand of a :class:`Multiply`
    constant (the SE-block / SiLU / GELU convention, docs/onnx.md)."""
    by_name = {nd.name: nd for nd in nodes}
    for _ in range(max_depth):
        nd = by_name.get(name)
        if nd is None:
            return False
        kind = type(nd.layer).__name__
        if kind in GATE_LAYERS:
            return True
        if kind not in GATE_THROUGH or len(nd.inputs) != 1:
            return False
        name = nd.inputs[0]
    return False
