"""The composites ``attnlrp`` and ``cp_lrp`` for transformers (``../shared/ATTNLRP.md``, docs/transformers.md).

``attnlrp`` (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024, as its authors' library LXT implements it):

| layer (kind) | rule | default ε |
|---|---|---|
| Linear, Conv2d (``dense``, ``conv``) | ε, bias absorbing (or generalised γ: ``gamma_linear``/``gamma_conv`` > 0) | 1e-6 |
| MatMul of two activations (``bilinear``) | ε on ``Y``, 50/50 split: ``R_A = A ⊙ (R⊘(2Y+ε) Bᵀ)`` | 1e-8 |
| Softmax (``softmax``) | ``x0 ⊙ (R − p Σ R)`` | – |
| product ``a ⊙ b`` (``multiply``) | uniform ``R/2``; gates (SiLU, GELU) pass ``R`` to the gated operand | – |
| residual Add, Add of a constant, constant affine (``add``, ``add_constant``, ``batch_norm``) | ε-proportional, constants absorb | 1e-8 |
| product with a constant of several axes (``mul_constant``: RoPE, Neg) | identity | – |
| LayerNorm (``layer_norm``) | σ constant, ε on the rest | 1e-6 |
| mean reductions (``mean``, ``pool``) | ε on the sum | 1e-6 |
| elementwise (GELU, SiLU, RMSNorm, Tanh, ...) | identity | – |
| data movement (Reshape, Transpose, Slice, Gather, Concat, Where) | moved | – |

``epsilon`` (0 allowed) sets every ε at once; with ``epsilon=0`` the rules are exact AttnLRP-0.
lrpflow's ε is sign-aware (``z + ε·sign(z)``, LXT divides by ``z + ε``); at ε = 0 they agree.

``cp_lrp`` (Ali et al., "XAI for Transformers: Better Explanations through Conservative
Propagation", ICML 2022): the same, but ``A @ V`` holds the attention ``A`` constant and gives all
relevance to ``V`` (``R_V = V ⊙ (Aᵀ (R ⊘ (O + ε)))``), so q and k receive none.
"""
from __future__ import annotations

from typing import Any

from lrpflow.composites import Composite, Override
from lrpflow.hookspecs import hookimpl
from lrpflow.rules import AttnSoftmax, Epsilon, Gamma, HeldFirst, Pass, ProductSplit

#: LXT's default ε per operation
DEFAULTS = {"linear": 1e-6, "product": 1e-8, "add": 1e-8, "layer_norm": 1e-6, "mean": 1e-6}


def _eps(epsilon: float | None, which: str) -> float:
    return DEFAULTS[which] if epsilon is None else float(epsilon)


def _weighted(epsilon: float | None, gamma: float) -> Any:
    if gamma and gamma > 0:
        return Gamma(float(gamma))
    return Epsilon(_eps(epsilon, "linear"))


def _composite(name: str, epsilon: float | None, gamma_linear: float, gamma_conv: float, cp: bool) -> Composite:
    add = Epsilon(_eps(epsilon, "add"))
    product = HeldFirst(_eps(epsilon, "product")) if cp else Epsilon(_eps(epsilon, "product") / 2)
    overrides = [
        Override(_weighted(epsilon, gamma_linear), kind="dense"),
        Override(_weighted(epsilon, gamma_conv), kind="conv"),
        Override(product, kind="bilinear"),
        Override(AttnSoftmax(), kind="softmax"),
        Override(ProductSplit(), kind="multiply"),
        Override(add, kind="add"),
        Override(add, kind="add_constant"),
        Override(add, kind="batch_norm"),
        Override(Pass(), kind="mul_constant"),
        Override(Epsilon(_eps(epsilon, "layer_norm")), kind="layer_norm"),
        Override(Epsilon(_eps(epsilon, "mean")), kind="mean"),
        Override(Epsilon(_eps(epsilon, "mean")), kind="pool"),
    ]
    return Composite(Epsilon(_eps(epsilon, "linear")), overrides=overrides, name=name)


def attnlrp(epsilon: float | None = None, gamma_linear: float = 0.0, gamma_conv: float = 0.0) -> Composite:
    """AttnLRP (module doc); ``epsilon=None``: LXT's defaults per operation, a number: every ε."""
    return _composite("attnlrp", epsilon, gamma_linear, gamma_conv, cp=False)


def cp_lrp(epsilon: float | None = None, gamma_linear: float = 0.0, gamma_conv: float = 0.0) -> Composite:
    """CP-LRP: AttnLRP with the attention matrix held constant in ``A @ V`` (module doc)."""
    return _composite("cp_lrp", epsilon, gamma_linear, gamma_conv, cp=True)


@hookimpl
def lrpflow_register_composites(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("attnlrp", attnlrp)
    registry.add("cp_lrp", cp_lrp)
