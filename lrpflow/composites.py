"""Composites: which rule applies to which node.

A composite has a default rule, an optional rule for the input layer(s) and ordered
overrides; the first override whose matcher fits a node wins. Matchers select by layer
kind (``"dense"``, ``"conv"``, ``"pool"``, ``"max_pool"``, a class name such as
``"Conv2d"``), by node-name glob (``"features.*"``) or by node index range
(``[0, 3]``: nodes 0, 1, 2; negative indices count from the end) — the toolbox's
per-layer ``set_lrp_parameters`` is an index override.

Precedence: a name or index override > the input-layer rule > a kind override > the default.

Rule scope (the field's convention: zennit's composites, iNNvestigate's analyzers,
Montavon et al. 2019): the default rule and the input-layer rule act on layers *with
weights* only — kinds ``"dense"`` and ``"conv"``. Every other linear map (sum/average/
global-average pooling, mean reductions, residual Add, Resize, a BatchNorm that was not
folded, ...) gets the proportional rule :class:`~lrpflow.rules.Norm` (``s = 1e-16``;
on an unfolded BatchNorm that is the z-rule with its shift absorbing, iNNvestigate's BN rule),
whatever the default's own ε or α; MaxPool gets winner-take-all. A kind, name or index
override (``kind="pool"``, ``kind="add"``, ``maxpool="proportional"``) still sets any rule.
``explain(rule=X)`` follows the same scope (:func:`scoped`); whole-model methods
(gradient, SmoothGrad, ...) are not scoped. The toolbox surface (``Sequential.lrp``,
``set_lrp_parameters``) keeps the toolbox's own per-layer rules.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lrpflow.errors import ConfigError
from lrpflow.hookspecs import hookimpl
from lrpflow.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Rule, WinnerTakeAll, ZBox, ZPlus, make_rule

#: layer kinds a rule given by name acts on: the layers with learned weights
WEIGHTED_KINDS = frozenset({"dense", "conv"})
#: the rule of parameter-free linear maps (pools, mean reductions, Add, Resize, ...)
NORM = Norm()
_WTA = WinnerTakeAll()


def has_weights(layer: Any) -> bool:
    """True for linear layers with learned weights (kinds in :data:`WEIGHTED_KINDS`)."""
    return layer.role == "linear" and bool(WEIGHTED_KINDS & set(layer.kinds))


def first_weighted_nodes(model: Any, through: tuple[str, ...]) -> set[str]:
    """The weighted nodes (:func:`has_weights`) reached from the model input through nodes whose role is in
    ``through`` only: the "input layer" of an input-layer rule."""
    consumers: dict[str, list[Any]] = {}
    for node in model.nodes:
        for i in node.inputs:
            consumers.setdefault(i, []).append(node)
    found, stack, seen = set(), [model.input_name], set()
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if has_weights(node.layer):
                found.add(node.name)
            elif node.layer.role in through:
                stack.append(node.name)
    return found


def scoped(rule: Rule, layer: Any) -> Rule:
    """The rule a node gets from a rule given for the whole model (not by an override).

    ``rule`` on layers with weights; :data:`NORM` on every other linear layer;
    winner-take-all on MaxPool; ``rule`` elsewhere (elementwise and shape layers, which
    every rule treats alike). Whole-model methods are returned unchanged.
    """
    if rule.global_only:
        return rule
    if layer.role == "linear" and not has_weights(layer):
        return NORM
    if layer.role == "maxpool":
        return _WTA
    return rule


@dataclass(frozen=True)
class Override:
    """Apply ``rule`` to the nodes matched by kind, name glob and/or index range (all given must match)."""

    rule: Rule
    kind: str | None = None
    name: str | None = None
    index: tuple[int, int] | None = None

    def matches(self, node: Any, position: int, count: int) -> bool:
        layer = node.layer
        if self.kind is not None:
            k = self.kind.lower()
            if k not in layer.kinds and k != type(layer).__name__.lower():
                return False
        if self.name is not None and not fnmatch.fnmatchcase(node.name, self.name):
            return False
        if self.index is not None:
            lo, hi = self.index
            lo = lo + count if lo < 0 else lo
            hi = hi + count if hi < 0 else hi
            if not lo <= position < hi:
                return False
        return True


def _index_range(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v + 1 if v != -1 else 1 << 30)
    if isinstance(v, str) and ":" in v:
        a, _, b = v.partition(":")
        return (int(a) if a else 0, int(b) if b else 1 << 30)
    seq = list(v)
    if len(seq) != 2:
        raise ConfigError(f"override index must be an int, 'a:b' or [a, b], got {v!r}")
    return (int(seq[0]), int(seq[1]))


class Composite:
    """Maps every node of a model to a rule.

    Parameters
    ----------
    default : Rule, str or mapping
        Rule for nodes no override matches.
    input_rule : Rule, str or mapping, optional
        Rule for the input layer(s): the first affine nodes reached from the input.
    overrides : sequence
        ``Override`` objects or mappings ``{"rule": ..., "kind"|"name"|"index": ..., **rule params}``; first match wins.
    maxpool : str, optional
        ``"winner_take_all"`` (the rules' default) or ``"proportional"`` for every MaxPool node.
    """

    def __init__(self, default: Any = "epsilon", input_rule: Any = None, overrides: Sequence[Any] = (),
                 maxpool: str | None = None, name: str | None = None) -> None:
        self.default = make_rule(default)
        self.input_rule = None if input_rule is None else make_rule(input_rule)
        self.overrides = [self._override(o) for o in overrides]
        if maxpool is not None:
            self.overrides.insert(0, Override(make_rule(maxpool), kind="max_pool"))
        self.name = name
        for o in self.overrides + ([Override(self.input_rule)] if self.input_rule else []):
            if o.rule.global_only:
                raise ConfigError(f"{type(o.rule).__name__} is a whole-model attribution method; use it as the only rule, not in an override")

    @staticmethod
    def _override(o: Any) -> Override:
        if isinstance(o, Override):
            return o
        if not isinstance(o, Mapping):
            raise ConfigError(f"an override must be a mapping with 'rule' and 'kind'/'name'/'index', got {o!r}")
        o = dict(o)
        rule = o.pop("rule", None)
        if rule is None:
            raise ConfigError(f"override {o!r} has no 'rule'")
        kind, name, index = o.pop("kind", None), o.pop("name", None), _index_range(o.pop("index", None))
        if kind is None and name is None and index is None:
            raise ConfigError(f"override for rule {rule!r} matches nothing: give kind, name or index")
        return Override(make_rule(rule, **o), kind=kind, name=name, index=index)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Composite:
        """From a mapping ``{default, input_rule, overrides, maxpool}`` (e.g. a YAML file)."""
        known = {"default", "input_rule", "overrides", "maxpool", "name"}
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"composite has unknown field(s) {sorted(unknown)}; fields: {sorted(known)}")
        return cls(**dict(cfg))

    def input_nodes(self, model: Any) -> set[str]:
        """Weighted nodes reached from the model input through elementwise, shape and
        parameter-free linear nodes only."""
        return first_weighted_nodes(model, ("elementwise", "shape", "softmax", "linear"))

    def assign(self, model: Any) -> dict[str, Rule]:
        """The rule of every node."""
        nodes = model.nodes
        inputs = self.input_nodes(model) if self.input_rule is not None else set()
        out = {}
        for pos, node in enumerate(nodes):
            match = next((o for o in self.overrides if o.matches(node, pos, len(nodes))), None)
            if node.name in inputs and (match is None or (match.name is None and match.index is None)):
                out[node.name] = self.input_rule  # more specific than a kind override
            elif match is None:
                out[node.name] = scoped(self.default, node.layer)
            else:
                out[node.name] = match.rule
        return out

    def __repr__(self) -> str:
        return f"Composite(name={self.name!r}, default={self.default!r}, input_rule={self.input_rule!r}, overrides={self.overrides!r})"


# --- presets ------------------------------------------------------------------------


def epsilon_plus(epsilon: float = 1e-6) -> Composite:
    """Dense: ε; convolutions: z⁺; pools, Add: norm; MaxPool: winner-take-all (zennit's EpsilonPlus)."""
    return Composite(Epsilon(epsilon), overrides=[Override(ZPlus(), kind="conv"), Override(Epsilon(epsilon), kind="dense")],
                     name="epsilon_plus")


def epsilon_plus_flat(epsilon: float = 1e-6) -> Composite:
    """epsilon_plus with flat on the input layer (zennit's EpsilonPlusFlat)."""
    c = epsilon_plus(epsilon)
    return Composite(c.default, Flat(), c.overrides, name="epsilon_plus_flat")


def epsilon_gamma_box(epsilon: float = 1e-6, gamma: float = 0.25, low: Any = None, high: Any = None) -> Composite:
    """Dense: ε; convolutions: generalised γ; input layer: z^B with bounds low/high; pools, Add: norm
    (Montavon et al. 2019; zennit's EpsilonGammaBox)."""
    return Composite(Epsilon(epsilon), ZBox(low, high),
                     overrides=[Override(Gamma(gamma), kind="conv"), Override(Epsilon(epsilon), kind="dense")],
                     name="epsilon_gamma_box")


def epsilon_alpha2_beta1(epsilon: float = 1e-6) -> Composite:
    """Dense: ε; convolutions: α2β1; pools, Add: norm (zennit's EpsilonAlpha2Beta1)."""
    return Composite(Epsilon(epsilon), overrides=[Override(AlphaBeta(2.0, 1.0), kind="conv"),
                                                  Override(Epsilon(epsilon), kind="dense")], name="epsilon_alpha2_beta1")


PRESETS = {
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
}


@hookimpl
def lrpflow_register_composites(registry):  # noqa: ANN001 - typed in the hookspec
    for name, fn in PRESETS.items():
        registry.add(name, fn)


def make_composite(spec: Any, registry: Any = None, **params: Any) -> Composite:
    """A composite from an instance, a preset name (+ parameters) or a mapping."""
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, Mapping):
        return Composite.from_config(spec)
    if isinstance(spec, str):
        if registry is None:
            from lrpflow.plugins import registries

            registry = registries().composites
        preset = registry.get(spec)
        try:
            return preset(**params)
        except TypeError as err:
            raise ConfigError(f"composite preset {spec!r}: {err}") from err
    raise ConfigError(f"a composite must be a preset name, a mapping or a Composite, got {type(spec).__name__}")
