"""Canonizers: exact model rewrites applied before explaining (kept apart from the rules).

:func:`fold_batchnorm` merges every BatchNorm into the Conv2d or Linear that feeds it
(when that layer's output goes nowhere else): ``W' = W · s``, ``b' = (b − μ) · s + β``
with ``s = γ / √(σ² + ε)`` per output channel. The merge is computed and *kept* in
float64 (whatever the model's dtype), so a float64 explanation of the folded model is
exact and a float32 one rounds once, when the parameters are cast. The forward pass is
unchanged (up to rounding); LRP then treats conv+BN as one affine layer, the usual
practice (Hui & Binder 2019, "BatchNorm decomposition for deep neural network
interpretation"; Montavon et al. 2019; zennit's ``MergeBatchNorm`` canonizers).
``load_model`` folds by default (``fold_batchnorm=False`` keeps BN as its own affine
layer, which gets the ``norm`` rule like every linear layer without weights). The merged node of a DAG is named
``"<conv>+<bn>"``, so the explanation's ledger shows the merge; every merge is also
listed in ``model.canonizers``.
"""
from __future__ import annotations

from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.graph import Model, Node, Sequential
from lrpflow.layers import BatchNorm, Conv2d, Linear


def _merge(layer: Any, bn: BatchNorm) -> Any:
    """A new Conv2d/Linear equal to ``bn(layer(x))``, its parameters in float64."""
    w, b = layer.weight, layer.bias
    xp = get_namespace(w)
    f64 = "float64"
    s = xp.asarray(bn.gamma, dtype=f64) / xp.sqrt(xp.asarray(bn.var, dtype=f64) + bn.eps)
    w2 = xp.asarray(w, dtype=f64) * s
    b0 = xp.zeros(s.shape, dtype=f64) if b is None else xp.asarray(b, dtype=f64)
    b2 = (b0 - xp.asarray(bn.mean, dtype=f64)) * s + xp.asarray(bn.beta, dtype=f64)
    # the layer's own constructor arguments (stride, padding, groups, ...); the output channels
    # are the weight's last axis, so scaling by s per output channel is the merge for all of them
    new: Any = type(layer)(**layer.config(), weight=w2, bias=b2)
    new.set_lrp_parameters(layer.lrp_var, layer.lrp_param)
    return new


def _foldable(layer: Any, bn: Any) -> bool:
    return (isinstance(bn, BatchNorm) and type(layer) in (Conv2d, Linear)
            and getattr(layer, "n", None) == bn.channels)


def fold_batchnorm(model: Model) -> Model:
    """A copy of ``model`` with each foldable BatchNorm merged into its preceding Conv2d/Linear.

    The input model is not changed. ``result.canonizers`` lists the merges, e.g.
    ``"fold_batchnorm: bn1 -> conv1+bn1"``.
    """
    notes = list(getattr(model, "canonizers", []) or [])
    if isinstance(model, Sequential):
        mods, names = [], [n.name for n in model.nodes]
        i = 0
        while i < len(model.modules):
            m = model.modules[i]
            nxt = model.modules[i + 1] if i + 1 < len(model.modules) else None
            if nxt is not None and _foldable(m, nxt):
                mods.append(_merge(m, nxt))
                notes.append(f"fold_batchnorm: {names[i + 1]} -> {names[i]}")
                i += 2
                continue
            mods.append(m)
            i += 1
        out: Model = Sequential(mods, input_shape=model.input_shape, layout=model.layout)
    else:
        uses: dict[str, int] = {}
        for node in model.nodes:
            for name in node.inputs:
                uses[name] = uses.get(name, 0) + 1
        by_name = {n.name: n for n in model.nodes}
        merged: dict[str, Node] = {}  # producer name -> merged node
        rename: dict[str, str] = {}  # BN name -> merged node name
        dropped: set[str] = set()
        for node in model.nodes:
            if not isinstance(node.layer, BatchNorm) or len(node.inputs) != 1:
                continue
            prev = by_name.get(node.inputs[0])
            if prev is None or uses.get(prev.name, 0) != 1 or prev.name == model.output:
                continue
            if not _foldable(prev.layer, node.layer):
                continue
            new_name = f"{prev.name}+{node.name}"
            if new_name in by_name:
                continue
            merged[prev.name] = Node(new_name, _merge(prev.layer, node.layer), prev.inputs)
            rename[node.name] = new_name
            dropped.add(node.name)
            notes.append(f"fold_batchnorm: {node.name} -> {new_name}")
        nodes = []
        for node in model.nodes:
            if node.name in dropped:
                continue
            node = merged.get(node.name, node)
            nodes.append(Node(node.name, node.layer, tuple(rename.get(i, i) for i in node.inputs)))
        output = rename.get(model.output, model.output)
        out = Model(nodes, output=output, input_shape=model.input_shape, input_name=model.input_name,
                    layout=model.layout)
    for key, value in vars(model).items():  # public metadata a reader attached (e.g. ``model.caffe``)
        if not key.startswith("_") and key not in vars(out):
            setattr(out, key, value)
    out.canonizers = notes  # type: ignore[attr-defined]
    return out
