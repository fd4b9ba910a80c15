"""Recognise operations the exporters write as several ONNX nodes, before conversion.

- LayerNorm below opset 17 (the TorchScript exporter):
  ``m = ReduceMean(x); d = Sub(x, m); v = ReduceMean(Pow(d, 2)); y = Div(d, Sqrt(Add(v, eps)))``
  over the trailing axes becomes one ``LayerNormalization(x, 1, 0, epsilon=eps)`` node (the
  following ``Mul γ``/``Add β`` stay affine maps by constants), so the LayerNorm's LRP convention
  (:class:`lrpflow.layers.LayerNorm`) applies to the whole pattern.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy


def _axes(node: Any, const: Callable[[str], Any]) -> list[int] | None:
    from onnx import helper

    for a in node.attribute:
        if a.name == "axes":
            return [int(v) for v in helper.get_attribute_value(a)]
    if len(node.input) > 1 and node.input[1]:
        v = const(node.input[1])
        return None if v is None else [int(x) for x in numpy.asarray(v).ravel()]
    return None


def _keepdims(node: Any) -> bool:
    return all(a.i != 0 for a in node.attribute if a.name == "keepdims")


def fuse_layer_norms(nodes: Sequence[Any], const: Callable[[str], Any],
                     rank: Callable[[str], int | None]) -> tuple[list[Any], dict[str, numpy.ndarray]]:
    """``nodes`` with every decomposed LayerNorm's final ``Div`` replaced by a ``LayerNormalization`` node,
    and the new constants (its unit scale and zero bias).

    ``const(name)`` gives a constant's value (None if not a constant), ``rank(name)`` a tensor's rank if known.
    """
    from onnx import helper

    producer = {o: n for n in nodes for o in n.output if o}
    out, extra = [], []
    for n in nodes:
        fused = None
        if n.op_type == "Div" and n.domain in ("", "ai.onnx"):
            sub, sqrt = producer.get(n.input[0]), producer.get(n.input[1])
            add = producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
            var = add and next((producer.get(i) for i in add.input if producer.get(i) is not None
                                and producer[i].op_type == "ReduceMean"), None)
            eps_name = add and next((i for i in add.input if const(i) is not None), None)
            pow_ = producer.get(var.input[0]) if var is not None else None
            mean = producer.get(sub.input[1]) if sub is not None and sub.op_type == "Sub" else None
            if (pow_ is not None and pow_.op_type == "Pow" and pow_.input[0] == n.input[0]
                    and const(pow_.input[1]) is not None and float(numpy.asarray(const(pow_.input[1])).ravel()[0]) == 2.0
                    and mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == sub.input[0]
                    and eps_name is not None and _keepdims(mean) and _keepdims(var)):
                axes_m, axes_v = _axes(mean, const), _axes(var, const)
                r = rank(sub.input[0]) if axes_m and min(axes_m) >= 0 else 0
                if axes_m and axes_v and r is not None:
                    am = sorted(a - r if a >= 0 else a for a in axes_m)  # negative: counted from the end
                    av = sorted(a - r if a >= 0 else a for a in axes_v)
                    if am == av and am == list(range(-len(am), 0)):
                        fused = (sub.input[0], am[0], float(numpy.asarray(const(eps_name)).ravel()[0]))
        if fused is None:
            out.append(n)
            continue
        x, axis, eps = fused
        base = n.name or n.output[0]
        ones, zeros = f"{base}/ln_scale", f"{base}/ln_bias"
        extra += [(ones, 1.0), (zeros, 0.0)]
        out.append(helper.make_node("LayerNormalization", [x, ones, zeros], [n.output[0]], name=base,
                                    axis=axis, epsilon=eps))
    return out, {name: numpy.array(v, dtype=numpy.float32) for name, v in extra}


def _through_cast(name: str, producer: dict[str, Any]) -> str:
    """The tensor before any chain of Cast nodes."""
    for _ in range(8):
        p = producer.get(name)
        if p is None or p.op_type != "Cast":
            return name
        name = p.input[0]
    return name


def fuse_rms_norms(nodes: Sequence[Any], const: Callable[[str], Any],
                   rank: Callable[[str], int | None]) -> tuple[list[Any], dict[str, numpy.ndarray]]:
    """``nodes`` with every RMSNorm written as ``Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))``
    (or ``Div(1, Sqrt(...))``, or ``Div(x, Sqrt(...))``; Casts allowed around ``x``) replaced by one
    ``RMSNormalization(x, 1)`` node over the last axis — AttnLRP's identity applies to the whole pattern.
    The following ``Mul w`` stays an affine map by a constant."""
    from onnx import helper

    producer = {o: n for n in nodes for o in n.output if o}

    def op(name: str, *types: str) -> Any:
        p = producer.get(name)
        return p if p is not None and p.op_type in types else None

    def denominator(name: str) -> tuple[str, float] | None:
        """(x, eps) if ``name`` is ``Sqrt(Add(ReduceMean(Pow(x, 2), last axis), eps))``."""
        sqrt = op(name, "Sqrt")
        add = sqrt and op(sqrt.input[0], "Add")
        if add is None:
            return None
        eps = next((i for i in add.input if const(i) is not None), None)
        mean = next((op(i, "ReduceMean") for i in add.input if op(i, "ReduceMean") is not None), None)
        pow_ = mean and op(mean.input[0], "Pow")
        if eps is None or pow_ is None or const(pow_.input[1]) is None or \
                float(numpy.asarray(const(pow_.input[1])).ravel()[0]) != 2.0 or not _keepdims(mean):
            return None
        axes = _axes(mean, const)
        r = rank(mean.input[0])
        if axes is None or len(axes) != 1 or r is None or axes[0] not in (-1, r - 1):
            return None
        return _through_cast(pow_.input[0], producer), float(numpy.asarray(const(eps)).ravel()[0])

    out, extra = [], []
    for n in nodes:
        fused = None
        if n.op_type == "Mul" and len(n.input) == 2:
            for i in (0, 1):
                rec = op(n.input[i], "Reciprocal", "Div")
                if rec is None or (rec.op_type == "Div" and (const(rec.input[0]) is None
                                                            or float(numpy.asarray(const(rec.input[0])).ravel()[0]) != 1.0)):
                    continue
                den = denominator(rec.input[-1] if rec.op_type == "Div" else rec.input[0])
                if den is not None and den[0] == _through_cast(n.input[1 - i], producer):
                    fused = (n.input[1 - i], den[1])
                    break
        elif n.op_type == "Div" and len(n.input) == 2:
            den = denominator(n.input[1])
            if den is not None and den[0] == _through_cast(n.input[0], producer):
                fused = (n.input[0], den[1])
        if fused is None:
            out.append(n)
            continue
        base = n.name or n.output[0]
        ones = f"{base}/rms_scale"
        extra.append(ones)
        out.append(helper.make_node("RMSNormalization", [fused[0], ones], [n.output[0]], name=base,
                                    axis=-1, epsilon=fused[1]))
    return out, {name: numpy.array(1.0, dtype=numpy.float32) for name in extra}
