"""Built-in relevance rules and attribution baselines, registered like any plugin."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lrpflow.errors import ConfigError
from lrpflow.hookspecs import hookimpl
from lrpflow.rules.attn import AttnSoftmax, HeldFirst, ProductSplit
from lrpflow.rules.base import NodeContext, Rule
from lrpflow.rules.baselines import Deconvnet, Gradient, GradientXInput, IntegratedGradients, Random, SmoothGrad
from lrpflow.rules.lrp import (
    AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, Proportional, WinnerTakeAll, WSquare, Z, ZBox, ZPlus,
)

__all__ = [
    "Rule", "NodeContext", "Z", "Epsilon", "Gamma", "Norm", "AlphaBeta", "ZPlus", "ZBox", "WSquare", "Flat", "Pass",
    "WinnerTakeAll", "Proportional", "Gradient", "GradientXInput", "Deconvnet", "SmoothGrad",
    "IntegratedGradients", "Random", "make_rule", "AttnSoftmax", "ProductSplit", "HeldFirst",
]

#: name → (class, aliases). Aliases come from the toolbox and iNNvestigate.
BUILTIN_RULES: dict[str, tuple[type[Rule], tuple[str, ...]]] = {
    "z": (Z, ("simple", "lrp.z", "lrp0", "lrp.z_ib")),
    "epsilon": (Epsilon, ("lrp.epsilon", "lrp.epsilon_ib")),
    "gamma": (Gamma, ("lrp.gamma",)),
    "alpha_beta": (AlphaBeta, ("alphabeta", "alpha", "lrp.alpha_beta")),
    "zplus": (ZPlus, ("alpha_1_beta_0", "lrp.alpha_1_beta_0", "lrp.zplus", "z_plus")),
    "zbox": (ZBox, ("zb", "bounded", "lrp.bounded", "z_box")),
    "wsquare": (WSquare, ("ww", "w^2", "w_square", "lrp.wsquare")),
    "flat": (Flat, ("lrp.flat",)),
    "norm": (Norm, ("lrp.norm",)),
    "pass": (Pass, ("identity_rule",)),
    "winner_take_all": (WinnerTakeAll, ("wta",)),
    "proportional": (Proportional, ()),
    "gradient": (Gradient, ("sensitivity",)),
    "gradient_x_input": (GradientXInput, ("input_t_gradient", "gradient_times_input")),
    "deconvnet": (Deconvnet, ()),
    "smoothgrad": (SmoothGrad, ("smooth_grad",)),
    "integrated_gradients": (IntegratedGradients, ("ig",)),
    "random": (Random, ()),
    "attn_softmax": (AttnSoftmax, ("softmax_attnlrp",)),
    "product_split": (ProductSplit, ("uniform_product",)),
    "held_first": (HeldFirst, ("cp_value",)),
}


@hookimpl
def lrpflow_register_rules(registry):  # noqa: ANN001 - typed in the hookspec
    for name, (cls, aliases) in BUILTIN_RULES.items():
        registry.add(name, cls, aliases=aliases)


def make_rule(spec: Any, registry: Any = None, **params: Any) -> Rule:
    """A rule from an instance, a registered name (+ parameters) or a mapping ``{"name": ..., **params}``.

    The iNNvestigate suffix ``_IB`` ("ignore bias") sets ``bias=False``.
    """
    import dataclasses

    if isinstance(spec, Rule) and not params:
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None) or spec.pop("rule", None)
        if name is None:
            raise ConfigError(f"rule mapping needs a 'name' field, got {sorted(spec)}")
        return make_rule(name, registry, **{**spec, **params})
    if isinstance(spec, Rule):
        return dataclasses.replace(spec, **params)
    if not isinstance(spec, str):
        raise ConfigError(f"a rule must be a name, a mapping or a Rule, got {type(spec).__name__}")
    if registry is None:
        from lrpflow.plugins import registries

        registry = registries().rules
    cls = registry.get(spec)
    if spec.lower().endswith("_ib"):
        params.setdefault("bias", False)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    if fields is not None:
        unknown = sorted(set(params) - fields)
        if unknown:
            raise ConfigError(f"rule {spec!r} has no parameter(s) {', '.join(unknown)}; "
                              f"its parameters: {', '.join(sorted(fields)) or '(none)'}")
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"rule {spec!r}: {err}") from err
