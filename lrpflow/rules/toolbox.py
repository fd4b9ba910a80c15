"""The LRP Toolbox's rule names (``Sequential.lrp(R, lrp_var, param)``) as lrpflow rules.

``None|'none'|'simple'`` → :class:`Z` (bias in the denominator, stabiliser 1e-16·s);
``'epsilon'`` → :class:`Epsilon` (param = ε, required); ``'alphabeta'|'alpha'`` →
:class:`AlphaBeta` with α = param and β = α − 1 (the toolbox's "beta = 1 − alpha" is the
signed weight of the negative share); ``'flat'`` → :class:`Flat`; ``'ww'|'w^2'`` →
:class:`WSquare`; the ``*_slow`` spellings map to the same rules. MaxPool uses
winner-take-all for every rule but flat/ww (uniform), as in the toolbox.

Where lrpflow differs from the toolbox code (TOOLBOX_SEMANTICS.md, known defects):
SumPool's αβ negative share is *not* multiplied by R twice; the αβ stabiliser has one
sign (P + 1e-16, N − 1e-16) in every layer; ``alphabeta_slow`` gives 0, not NaN, for zero denominators.
"""
from __future__ import annotations

from typing import Any

from lrpflow.errors import ConfigError, UnknownNameError
from lrpflow.rules.base import Rule
from lrpflow.rules.lrp import AlphaBeta, Epsilon, Flat, WSquare, Z

_NAMES = {
    "none": "simple", "simple": "simple", "slow": "simple", "simple_slow": "simple",
    "epsilon": "epsilon", "epsilon_slow": "epsilon",
    "alphabeta": "alphabeta", "alpha": "alphabeta", "alphabeta_slow": "alphabeta", "alpha_slow": "alphabeta",
    "flat": "flat", "ww": "ww", "w^2": "ww",
}


def toolbox_rule(lrp_var: str | None, param: float | None, layer: Any = None) -> Rule:
    """The lrpflow rule for a toolbox ``(lrp_var, param)`` pair (on ``layer``, if given)."""
    kind = "simple" if lrp_var is None else _NAMES.get(str(lrp_var).lower())
    if kind is None:
        raise UnknownNameError(f"unknown toolbox lrp_var {lrp_var!r}; known: None, {', '.join(sorted(_NAMES))}")
    if kind == "simple":
        # the toolbox stabilises SumPool's LRP-0 with 1e-12, every other layer with 1e-16
        return Epsilon(epsilon=1e-12) if getattr(layer, "toolbox_name", None) == "SumPool" else Z()
    if kind == "flat":
        return Flat()
    if kind == "ww":
        return WSquare()
    if param is None:
        raise ConfigError(f"lrp_var {lrp_var!r} needs a parameter ({'epsilon' if kind == 'epsilon' else 'alpha'}); got None")
    if kind == "epsilon":
        return Epsilon(epsilon=float(param))
    return AlphaBeta(alpha=float(param), beta=float(param) - 1.0)
