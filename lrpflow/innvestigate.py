"""iNNvestigate's analyzer names with iNNvestigate's semantics where they are sound.

``from lrpflow import innvestigate as inn`` ports an iNNvestigate script line by line::

    analyzer = inn.create_analyzer("lrp.alpha_1_beta_0_IB", model, input_layer_rule="WSquare")
    a = analyzer.analyze(x)                       # the max logit's relevance (neuron_selection_mode="max_activation")

Every analyzer name is also a composite (``explain(model, x, composite="lrp.epsilon", epsilon=0.1)``)
and, where it is one rule, a rule name (``explain(model, x, rule="lrp.w_square")``, then with
the engine's default handling of the other layers). What a composite pins, per iNNvestigate
(``../shared/INNVESTIGATE_SEMANTICS.md``):

* layers with weights (kinds ``dense``/``conv``) get the analyzer's rule; the *input layer*
  (the first weighted layer(s) reached from the input through shape/elementwise layers) gets
  ``input_layer_rule`` when given;
* Add, Average/Subtract merges, average/sum/global-average pooling: the Z rule on the sum
  (``R_k = x_k · R / Σ x``, signed, iNNvestigate's ``AddReverseLayer``/``AveragePoolingReverseLayer``);
  for ``deep_taylor*`` the gradient (each Add branch receives a full copy of R, GAP spreads R uniformly);
  layers iNNvestigate has no rule for — Multiply (gate held constant, see the readers'
  ``product_rule``), UpSampling/Resize, LayerNormalization (σ held constant), mean reductions —
  get the Z rule on their linear map too (the analyzer's own rule, e.g. flat, would zero a LayerNorm);
* MaxPool: winner-take-all (ties are shared equally; TF routes them to the first maximum);
* activations pass relevance through (``deep_taylor*``: the ReLU gradient ``R·[x > 0]``);
  shape layers move it.

Deviations from iNNvestigate, where its maths is not the published rule:

* **BatchNormalization** is folded exactly into the preceding layer (readers do it by default);
  iNNvestigate applies the rule to a surrogate ``k x + c`` with ``k = γ/√(σ⁴+ε)`` (the variance
  squared) and ``c = β − μ/√(σ⁴+ε)`` (γ missing on the mean term). An unfolded BatchNorm gets the
  analyzer's rule on its exact affine map (``deep_taylor*``: its gradient).
* **alpha-beta with bias** (``lrp.alpha_2_beta_1``, ``lrp.alpha_1_beta_0``, the presets' conv
  rule): b⁺ in the activator's and b⁻ in the inhibitor's denominator (Bach et al. 2015);
  iNNvestigate puts the full signed bias ``b`` in both.
* ``lrp.sequential_preset_a/b``: BatchNorm is folded (iNNvestigate: ``AlphaBetaX2m100`` on the
  surrogate, which amplifies relevance).
* Stabilisers: iNNvestigate's ``safe_divide`` replaces an exact-zero denominator by 1e-7; lrpflow's
  Z/αβ/z^B add 1e-16·sign (0 relevance where nothing contributes either way).
* A ``keras.layers.ReLU`` layer passes relevance like ``Activation("relu")`` (iNNvestigate masks it
  with the ReLU gradient); Keras' Dense on a sequence/image is a 1×1 convolution here (kind ``conv``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from lrpflow.composites import Composite, first_weighted_nodes
from lrpflow.errors import ConfigError
from lrpflow.hookspecs import hookimpl
from lrpflow.layers.base import Layer
from lrpflow.rules import AlphaBeta, Epsilon, Flat, Gradient, GradientXInput, Rule, WSquare, Z, ZBox, ZPlus, make_rule
from lrpflow.rules.base import Contribution, NodeContext, keep, modified_gradient, positive, safe_divide

__all__ = ["create_analyzer", "model_wo_softmax", "make_input_layer_rule", "Analyzer", "ANALYZERS", "INPUT_LAYER_RULES",
           "ZPlusFast", "IgnoreBiasZPlus", "GradientMapping", "InnvestigateComposite"]

#: iNNvestigate's K.epsilon(), the default ε of lrp.epsilon
INNVESTIGATE_EPSILON = 1e-7


# --- rules iNNvestigate has and lrpflow had not -----------------------------------------------


@dataclass(frozen=True)
class ZPlusFast(Rule):
    """iNNvestigate's ``ZPlusFast``: ``R_i = x_i Σ_j w⁺_ij R_j / Σ_i' x_i' w⁺_i'j`` (no bias, no input masking).

    Differs from z⁺ when inputs are negative (they are not dropped).
    """

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return modified_gradient(layer, xs, r, [Contribution(keep, positive, None)], ctx, safe_divide)


@dataclass(frozen=True)
class IgnoreBiasZPlus(ZPlus):
    """iNNvestigate's ``lrp.z_plus``: α=1, β=0 without bias (keeps the ``x⁻w⁻`` part on signed inputs)."""

    bias: bool = False


@dataclass(frozen=True)
class GradientMapping(Rule):
    """iNNvestigate's default reverse mapping of non-kernel layers: the layer's vector–Jacobian product."""

    def backward(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        if layer.role == "maxpool":
            return [layer.winners(xs[0], y, r)]  # type: ignore[attr-defined]
        return layer.vjp(xs, y, r)


# --- the composites ------------------------------------------------------------------------------

#: the input_layer_rule strings iNNvestigate knows (LRP_RULES) → lrpflow rules
INPUT_LAYER_RULES: dict[str, Any] = {
    "z": lambda: Z(),
    "epsilon": lambda: Epsilon(INNVESTIGATE_EPSILON),
    "wsquare": lambda: WSquare(),
    "flat": lambda: Flat(),
    "alpha2beta1": lambda: AlphaBeta(2.0, 1.0),
    "alpha2beta1ignorebias": lambda: AlphaBeta(2.0, 1.0, bias=False),
    "alpha1beta0": lambda: AlphaBeta(1.0, 0.0),
    "alpha1beta0ignorebias": lambda: AlphaBeta(1.0, 0.0, bias=False),
    "zplus": lambda: IgnoreBiasZPlus(),
    "zplusfast": lambda: ZPlusFast(),
    "bounded": lambda: ZBox(-1.0, 1.0),
}


def make_input_layer_rule(spec: Any) -> Rule | None:
    """``None``, an iNNvestigate rule name (``"WSquare"``, ``"Bounded"``, ...), a ``(low, high)`` tuple or a Rule."""
    if spec is None or isinstance(spec, Rule):
        return spec
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
        return ZBox(float(spec[0]), float(spec[1]))
    if isinstance(spec, str):
        key = spec.replace("_", "").replace(".", "").lower()
        if key in ("alphabeta", "alphabetaignorebias"):
            raise ConfigError(f"input_layer_rule {spec!r} needs alpha and beta: use 'Alpha2Beta1', 'Alpha1Beta0' "
                              "(+ 'IgnoreBias') or pass lrpflow.rules.AlphaBeta(alpha, beta)")
        if key in INPUT_LAYER_RULES:
            return INPUT_LAYER_RULES[key]()
        try:
            return make_rule(spec)
        except Exception:
            raise ConfigError(f"unknown input_layer_rule {spec!r}; iNNvestigate's names: Z, Epsilon, WSquare, Flat, "
                              "Alpha2Beta1[IgnoreBias], Alpha1Beta0[IgnoreBias], ZPlus, ZPlusFast, Bounded, "
                              "or a (low, high) tuple") from None
    raise ConfigError(f"input_layer_rule must be a name, a (low, high) tuple or a Rule, got {spec!r}")


_SUMS = ("add", "average", "subtract", "avg_pool", "sum_pool", "global_avg_pool")
#: layers iNNvestigate has no rule for, given the Z rule on their linear map (lrpflow's layer-scope
#: convention): products of activations (gate held constant), resizing, LayerNorm (σ constant), means
_PROPORTIONAL = _SUMS + ("product", "resize", "layer_norm", "mean")


class InnvestigateComposite(Composite):
    """iNNvestigate's layer scope, pinned node by node (see the module docstring).

    ``dense``/``conv``: the rules of weighted layers (one rule, or one per kind for the presets);
    ``input_rule``: for the input layer(s); ``deep_taylor``: gradient mapping on every other layer.
    """

    def __init__(self, dense: Rule, conv: Rule | None = None, input_rule: Rule | None = None,
                 deep_taylor: bool = False, name: str | None = None) -> None:
        super().__init__(dense, input_rule=input_rule, name=name)
        self.dense_rule, self.conv_rule = dense, conv or dense
        self.deep_taylor = deep_taylor

    @staticmethod
    def _input_kernel_nodes(model: Any) -> set[str]:
        """Weighted nodes fed by the input through shape/elementwise nodes only (iNNvestigate's is_input_layer)."""
        return first_weighted_nodes(model, ("shape", "elementwise"))

    def assign(self, model: Any) -> dict[str, Rule]:
        inputs = self._input_kernel_nodes(model) if self.input_rule is not None else set()
        z, grad = Z(), GradientMapping()
        out: dict[str, Rule] = {}
        for node in model.nodes:
            kinds = node.layer.kinds
            if "dense" in kinds or "conv" in kinds:
                rule = self.conv_rule if "conv" in kinds else self.dense_rule
                out[node.name] = self.input_rule if node.name in inputs else rule
            elif self.deep_taylor:
                out[node.name] = grad
            elif node.layer.role == "maxpool":
                out[node.name] = grad  # winner-take-all
            elif node.layer.role == "linear" and any(k in kinds for k in _PROPORTIONAL):
                out[node.name] = z
            else:  # activations (pass), shape layers (moved), other affine maps (BatchNorm): the rule
                out[node.name] = self.dense_rule
        return out


def _lrp(rule: Rule, name: str) -> Any:
    def preset(input_layer_rule: Any = None) -> InnvestigateComposite:
        return InnvestigateComposite(rule, input_rule=make_input_layer_rule(input_layer_rule), name=name)
    preset.__doc__ = f"iNNvestigate's {name!r} analyzer (see lrpflow.innvestigate)."
    return preset


def _epsilon(epsilon: float = INNVESTIGATE_EPSILON, bias: bool = True, input_layer_rule: Any = None) -> InnvestigateComposite:
    """iNNvestigate's 'lrp.epsilon' (ε = 1e-7 by default, as K.epsilon())."""
    return InnvestigateComposite(Epsilon(epsilon, bias), input_rule=make_input_layer_rule(input_layer_rule), name="lrp.epsilon")


def _preset(conv: Rule, name: str, flat: bool) -> Any:
    def preset(epsilon: float = 0.1, input_layer_rule: Any = None) -> InnvestigateComposite:
        ilr = make_input_layer_rule("Flat" if flat and input_layer_rule is None else input_layer_rule)
        return InnvestigateComposite(Epsilon(epsilon), conv, ilr, name=name)
    preset.__doc__ = f"iNNvestigate's {name!r}: Dense ε (0.1), Conv {conv!r}" + (", input layer flat" if flat else "")
    return preset


def _deep_taylor(input_layer_rule: Any = None) -> InnvestigateComposite:
    """iNNvestigate's 'deep_taylor': z⁺ (α1β0, no bias) on weighted layers, gradient elsewhere."""
    return InnvestigateComposite(IgnoreBiasZPlus(), input_rule=make_input_layer_rule(input_layer_rule), deep_taylor=True,
                                 name="deep_taylor")


def _bounded(low: Any = None, high: Any = None) -> InnvestigateComposite:
    """iNNvestigate's 'deep_taylor.bounded': deep_taylor with z^B(low, high) on the input layer."""
    if low is None or high is None:
        raise ConfigError("'deep_taylor.bounded' needs low= and high= (the bounds of the input)")
    return InnvestigateComposite(IgnoreBiasZPlus(), input_rule=ZBox(float(low), float(high)), deep_taylor=True,
                                 name="deep_taylor.bounded")


def _whole(rule: type[Rule]) -> Any:
    def preset() -> Composite:
        return Composite(rule(), name=rule.__name__)
    return preset


#: analyzer name (lower case; lookups are case-insensitive) → composite factory
ANALYZERS: dict[str, Any] = {
    "gradient": _whole(Gradient),
    "input_t_gradient": _whole(GradientXInput),
    "lrp.z": _lrp(Z(), "lrp.z"),
    "lrp.epsilon": _epsilon,
    "lrp.w_square": _lrp(WSquare(), "lrp.w_square"),
    "lrp.flat": _lrp(Flat(), "lrp.flat"),
    "lrp.alpha_2_beta_1": _lrp(AlphaBeta(2.0, 1.0), "lrp.alpha_2_beta_1"),
    "lrp.alpha_2_beta_1_ib": _lrp(AlphaBeta(2.0, 1.0, bias=False), "lrp.alpha_2_beta_1_IB"),
    "lrp.alpha_1_beta_0": _lrp(AlphaBeta(1.0, 0.0), "lrp.alpha_1_beta_0"),
    "lrp.alpha_1_beta_0_ib": _lrp(AlphaBeta(1.0, 0.0, bias=False), "lrp.alpha_1_beta_0_IB"),
    "lrp.z_plus": _lrp(IgnoreBiasZPlus(), "lrp.z_plus"),
    "lrp.z_plus_fast": _lrp(ZPlusFast(), "lrp.z_plus_fast"),
    "lrp.sequential_preset_a": _preset(AlphaBeta(1.0, 0.0), "lrp.sequential_preset_a", False),
    "lrp.sequential_preset_b": _preset(AlphaBeta(2.0, 1.0), "lrp.sequential_preset_b", False),
    "lrp.sequential_preset_a_flat": _preset(AlphaBeta(1.0, 0.0), "lrp.sequential_preset_a_flat", True),
    "lrp.sequential_preset_b_flat": _preset(AlphaBeta(2.0, 1.0), "lrp.sequential_preset_b_flat", True),
    "deep_taylor": _deep_taylor,
    "deep_taylor.bounded": _bounded,
}

#: analyzer names that are one rule: registered as rule names too (the ones lrpflow lacked)
RULE_NAMES: dict[str, tuple[type[Rule], tuple[str, ...]]] = {
    "lrp.w_square": (WSquare, ()),
    "lrp.alpha_2_beta_1": (AlphaBeta, ("lrp.alpha_2_beta_1_ib",)),
    "lrp.alpha_1_beta_0_ib": (ZPlus, ()),
    "lrp.z_plus": (IgnoreBiasZPlus, ()),
    "lrp.z_plus_fast": (ZPlusFast, ("z_plus_fast",)),
    "deep_taylor": (IgnoreBiasZPlus, ()),
}


@hookimpl
def lrpflow_register_rules(registry):  # noqa: ANN001 - typed in the hookspec
    for name, (cls, aliases) in RULE_NAMES.items():
        if name not in registry:
            registry.add(name, cls, aliases=tuple(a for a in aliases if a not in registry))


@hookimpl
def lrpflow_register_composites(registry):  # noqa: ANN001 - typed in the hookspec
    for name, fn in ANALYZERS.items():
        if name not in registry:  # a name another built-in already gives keeps its meaning
            registry.add(name, fn)


# --- the analyzer interface ---------------------------------------------------------------------

MODES = ("max_activation", "index", "all")


class Analyzer:
    """``analyzer.analyze(x, neuron_selection=None)`` as in iNNvestigate; numpy in, numpy out."""

    def __init__(self, name: str, model: Any, neuron_selection_mode: str = "max_activation", dtype: Any = "float32",
                 backend: str | None = None, **params: Any) -> None:
        from lrpflow.explain import Explainer
        from lrpflow.plugins import registries

        if neuron_selection_mode not in MODES:
            raise ConfigError(f"neuron_selection_mode must be one of {MODES}, got {neuron_selection_mode!r}")
        regs = registries().composites
        key = name.lower()
        if key not in regs:
            raise ConfigError(f"unknown analyzer {name!r}; known: {', '.join(ANALYZERS)}")
        self.name, self.model, self.neuron_selection_mode = name, model, neuron_selection_mode
        self.composite = regs.get(key)(**params) if params else regs.get(key)()
        self.gradient = self.composite.default.default_init == "one"
        self.relu_head = bool(getattr(self.composite, "deep_taylor", False))
        self.explainer = Explainer(model, composite=self.composite, dtype=dtype, backend=backend)

    def analyze(self, x: Any, neuron_selection: Any = None) -> Any:
        """Relevance (or gradient) of ``x`` in the model's layout, as a numpy array."""
        from lrpflow.backend import to_numpy

        exp = self.explainer
        trace = exp.forward(x)
        logits = trace.logits
        mode = self.neuron_selection_mode
        if mode == "index":
            if neuron_selection is None:
                raise ConfigError("neuron_selection_mode='index' needs analyze(x, neuron_selection=k)")
            sel = numpy.asarray(neuron_selection)
            idx = numpy.full(logits.shape[0], int(sel)) if sel.ndim == 0 else sel.astype(numpy.int64)
        elif neuron_selection is not None:
            raise ConfigError(f"neuron_selection is only for neuron_selection_mode='index' (mode is {mode!r})")
        xp_logits = to_numpy(logits)
        if mode == "all":
            r = numpy.ones_like(xp_logits) if self.gradient else xp_logits.copy()
        else:
            if mode == "max_activation":
                idx = xp_logits.argmax(axis=1)
            if idx.shape != (xp_logits.shape[0],) or idx.min() < 0 or idx.max() >= xp_logits.shape[1]:
                raise ConfigError(f"neuron_selection must be class indices in [0, {xp_logits.shape[1]}), got {neuron_selection!r}")
            mask = numpy.zeros_like(xp_logits)
            mask[numpy.arange(len(idx)), idx] = 1
            r = mask if self.gradient else xp_logits * mask
        if self.relu_head:  # deep_taylor explains relu(output)
            r = numpy.maximum(r, 0)
        from lrpflow.backend import get_namespace

        r = get_namespace(logits).asarray(r, dtype=logits.dtype)
        return to_numpy(exp.explain(trace=trace, target=r).relevance)


def create_analyzer(name: str, model: Any, input_layer_rule: Any = None,
                    neuron_selection_mode: str = "max_activation", **params: Any) -> Analyzer:
    """iNNvestigate's ``create_analyzer``: an :class:`Analyzer` for a name of :data:`ANALYZERS`.

    ``params``: the analyzer's own (``epsilon``, ``bias`` for lrp.epsilon; ``low``, ``high`` for
    deep_taylor.bounded; ``epsilon`` for the presets), plus ``dtype``/``backend`` for lrpflow.
    """
    opts = {k: params.pop(k) for k in ("dtype", "backend") if k in params}
    if input_layer_rule is not None:
        if name.lower() in ("gradient", "input_t_gradient", "deep_taylor.bounded"):
            raise ConfigError(f"analyzer {name!r} takes no input_layer_rule")
        params["input_layer_rule"] = input_layer_rule
    try:
        return Analyzer(name, model, neuron_selection_mode, **opts, **params)
    except TypeError as err:
        raise ConfigError(f"analyzer {name!r}: {err}") from None


def model_wo_softmax(model: Any) -> Any:
    """The model without a SoftMax output layer (iNNvestigate's ``model_wo_softmax``); others unchanged."""
    from lrpflow.graph import Model, Sequential

    out = model.node(model.output)
    if out.layer.role != "softmax":
        return model
    if isinstance(model, Sequential):
        return Sequential(model.modules[:-1], input_shape=model.input_shape, layout=model.layout)
    nodes = [n for n in model.nodes if n.name != out.name]
    new = Model(nodes, output=out.inputs[0], input_shape=model.input_shape, input_name=model.input_name,
                layout=model.layout)
    for attr in ("canonizers", "source_format"):
        if hasattr(model, attr):
            setattr(new, attr, getattr(model, attr))
    return new
