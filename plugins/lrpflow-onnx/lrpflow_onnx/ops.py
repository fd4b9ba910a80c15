"""ONNX handlers for the operators of modern vision models beyond the plain CNN set.

Reductions (ReduceMean/ReduceMax, GlobalMaxPool), activations (HardSigmoid, HardSwish,
Clip, Erf, Gelu), products of two activations (gates), LayerNormalization, and selection
on activations (Slice, Split, Gather of one index, Squeeze/Unsqueeze). Imported by
:mod:`lrpflow_onnx.convert`, whose handler table these functions join.
"""
from __future__ import annotations

import math
from typing import Any

import numpy

from lrpflow.errors import ShapeError
from lrpflow.layers import (
    Clip, Erf, Gelu, GlobalAvgPool, HardSigmoid, HardSwish, LayerNorm, Max, Mean, Multiply, Reshape, Slice, Take,
)
from lrpflow.layers.product import is_gate
from lrpflow_onnx.convert import HANDLERS, MULTI_OUTPUT, Converter, Value, _attrs, _base, handles
from lrpflow_onnx.ops_cnn import _elementwise

#: ONNX sample axis (0 = channels) → stored axis of an ``nhwc`` value
NHWC_AXIS = {0: 2, 1: 0, 2: 1}


def _ints(c: Converter, n: Any, k: int, what: str) -> list[int] | None:
    if len(n.input) > k and n.input[k]:
        return [int(v) for v in numpy.asarray(c.const(n.input[k], n, what)).ravel()]
    return None


def _sample_axes(c: Converter, n: Any, axes: list[int], rank: int) -> list[int]:
    """ONNX axes (of the batched tensor) → sample axes (0-based, no batch); the batch axis is refused."""
    out = []
    for a in axes:
        a = a + rank if a < 0 else a
        if not 0 <= a < rank:
            raise c.fail(n, f"axis {a} out of range for a rank-{rank} tensor", ShapeError)
        if a == 0:
            raise c.fail(n, "operations across the batch axis are not supported")
        out.append(a - 1)
    return sorted(set(out))


def _stored(v: Value, axes: list[int]) -> list[int]:
    return [NHWC_AXIS[a] for a in axes] if v.kind == "nhwc" else axes


# -- reductions ----------------------------------------------------------------------


def _reduce(c: Converter, n: Any, mean: bool) -> None:
    a = _attrs(n)
    v = c.value(n.input[0], n)
    rank = len(v.shape) + 1
    axes = [int(x) for x in a["axes"]] if "axes" in a else _ints(c, n, 1, "axes")
    if not axes:
        if int(a.get("noop_with_empty_axes", 0)):
            c.alias(n.output[0], v)
            return
        axes = list(range(1, rank))
    axes = _sample_axes(c, n, axes, rank)
    keep = bool(int(a.get("keepdims", 1)))
    shape = tuple(1 if i in axes else d for i, d in enumerate(v.shape)) if keep else \
        tuple(d for i, d in enumerate(v.shape) if i not in axes)
    if v.kind == "flat" and all(v.shape[i] == 1 for i in axes):
        c.alias(n.output[0], v if keep else c.flat(v.node, shape, v.perm))  # a reduction over axes of size 1
        return
    if v.kind == "nhwc" and axes == [1, 2]:  # global pooling
        layer: Any = GlobalAvgPool() if mean else Max((0, 1), keepdims=False)
        name = c.add(_base(n), layer, [v.node])
        c.values[n.output[0]] = c.flat(name, shape, None)
        return
    if v.kind != "nhwc" or not keep:
        v = c.as_plain(v, _base(n))
    layer = (Mean if mean else Max)(_stored(v, axes), keepdims=keep)
    name = c.add(_base(n), layer, [v.node])
    c.values[n.output[0]] = Value(name, shape, v.kind)


HANDLERS["ReduceMean"] = lambda c, n: _reduce(c, n, mean=True)
HANDLERS["ReduceMax"] = lambda c, n: _reduce(c, n, mean=False)


@handles("GlobalMaxPool")
def _global_max(c: Converter, n: Any) -> None:
    v = c.as_nhwc(c.value(n.input[0], n), _base(n), n)
    name = c.add(_base(n), Max((0, 1), keepdims=False), [v.node])
    c.values[n.output[0]] = c.flat(name, (v.shape[0], 1, 1), None)


# -- activations -----------------------------------------------------------------------


HANDLERS["HardSigmoid"] = _elementwise(lambda a: HardSigmoid(float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))))
HANDLERS["HardSwish"] = _elementwise(lambda a: HardSwish())
HANDLERS["Erf"] = _elementwise(lambda a: Erf())


def _gelu_mode(a: dict[str, Any]) -> str:
    mode = a.get("approximate", b"none")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


HANDLERS["Gelu"] = _elementwise(lambda a: Gelu(_gelu_mode(a)))


@handles("Clip")
def _clip(c: Converter, n: Any) -> None:
    a = _attrs(n)
    low, high = a.get("min"), a.get("max")
    for k, what in ((1, "min"), (2, "max")):
        if len(n.input) > k and n.input[k]:
            val = float(numpy.asarray(c.const(n.input[k], n, what)).ravel()[0])
            low, high = (val, high) if k == 1 else (low, val)
    v = c.value(n.input[0], n)
    name = c.add(_base(n), Clip(low, high), [v.node])
    c.values[n.output[0]] = Value(name, v.shape, v.kind, v.perm)


# -- products of two activations -----------------------------------------------------

def product(c: Converter, n: Any) -> None:
    """``Mul`` of two activations: a :class:`~lrpflow.layers.Multiply` (gate held constant, or the uniform split)."""
    vs = [c.value(n.input[0], n), c.value(n.input[1], n)]
    if len(vs[0].shape) != len(vs[1].shape):
        raise c.fail(n, f"product of tensors of different ranks {vs[0].shape} and {vs[1].shape} is not supported")
    if all(len(v.shape) == 3 for v in vs) and any(v.kind == "nhwc" for v in vs):
        vs = [c.as_nhwc(v, f"{_base(n)}.in{k}", n) for k, v in enumerate(vs)]
        kind = "nhwc"
    elif all(v.kind == vs[0].kind and v.shape == vs[0].shape and (v.perm is None) == (vs[0].perm is None) for v in vs) \
            and (vs[0].perm is None or numpy.array_equal(vs[0].perm, vs[1].perm)):
        kind = vs[0].kind
    else:
        vs = [c.as_plain(v, f"{_base(n)}.in{k}") for k, v in enumerate(vs)]
        kind = "plain"
    try:
        shape = tuple(numpy.broadcast_shapes(vs[0].shape, vs[1].shape))
    except ValueError:
        raise c.fail(n, f"shapes {vs[0].shape} and {vs[1].shape} do not broadcast", ShapeError) from None
    gates = [is_gate(c.nodes, v.node) for v in vs]
    gate = None if gates[0] == gates[1] else (0 if gates[0] else 1)
    name = c.add(_base(n), Multiply(gate=gate if c.product_rule == "gate" else None), [v.node for v in vs])
    c.values[n.output[0]] = Value(name, shape, kind, vs[0].perm if kind == "flat" else None)


# -- normalisation ---------------------------------------------------------------------


@handles("LayerNormalization")
def _layer_norm(c: Converter, n: Any) -> None:
    a = _attrs(n)
    v = c.value(n.input[0], n)
    rank = len(v.shape) + 1
    axis = int(a.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if axis < 1:
        raise c.fail(n, f"normalisation over the batch axis (axis={a.get('axis')}) is not supported")
    for extra in n.output[1:]:
        if extra and c.uses.get(extra):
            raise c.fail(n, "its Mean/InvStdDev outputs are used (training graphs) — not supported")
    v = c.as_plain(v, _base(n))
    shape = v.shape[axis - 1:]
    scale = numpy.asarray(c.const(n.input[1], n, "Scale"))
    dtype = scale.dtype if scale.dtype.kind == "f" else numpy.dtype("float32")
    gamma = numpy.broadcast_to(scale, shape).astype(dtype)
    beta = numpy.zeros(shape, dtype)
    if len(n.input) > 2 and n.input[2]:
        beta = numpy.broadcast_to(numpy.asarray(c.const(n.input[2], n, "B")), shape).astype(dtype)
    name = c.add(_base(n), LayerNorm(shape, gamma=gamma, beta=beta, eps=float(a.get("epsilon", 1e-5))), [v.node])
    c.values[n.output[0]] = Value(name, v.shape, "plain")


MULTI_OUTPUT.add("LayerNormalization")


# -- selection on activations ----------------------------------------------------------


def _slice_value(c: Converter, n: Any, v: Value, spec: dict[int, tuple[int, int, int]], out: str, base: str) -> None:
    """``v`` sliced by ``spec`` (ONNX sample axis → (start, stop, step)), stored as ``out``."""
    if v.kind == "flat" and v.perm is not None:
        v = c.as_plain(v, base)
    if v.kind == "flat":
        v = c.as_plain(v, base)
    shape = list(v.shape)
    for ax, (start, stop, step) in spec.items():
        shape[ax] = len(range(*slice(start, stop, step).indices(shape[ax])))
    stored = {(NHWC_AXIS[ax] if v.kind == "nhwc" else ax): s for ax, s in spec.items()}
    name = c.add(base, Slice(stored), [v.node])
    c.values[out] = Value(name, tuple(shape), v.kind)


def _clamp(i: int, size: int) -> int:
    """ONNX Slice bounds (numpy semantics for the huge sentinel values exporters write)."""
    return max(min(i, size), -size - 1)


@handles("Slice")
def _slice(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    a = _attrs(n)
    rank = len(v.shape) + 1
    if "starts" in a:  # opset < 10
        starts, ends = [int(x) for x in a["starts"]], [int(x) for x in a["ends"]]
        axes, steps = [int(x) for x in a.get("axes", range(len(starts)))], [1] * len(starts)
    else:
        starts, ends = _ints(c, n, 1, "starts"), _ints(c, n, 2, "ends")
        axes = _ints(c, n, 3, "axes") or list(range(len(starts or [])))
        steps = _ints(c, n, 4, "steps") or [1] * len(axes)
    spec = {}
    for ax, s0, s1, st in zip(axes, starts or [], ends or [], steps):
        ax = ax + rank if ax < 0 else ax
        if ax == 0:
            if (s0, st) == (0, 1) and s1 >= (c.batch or 1 << 62):
                continue
            raise c.fail(n, "slicing the batch axis is not supported")
        size = v.shape[ax - 1]
        spec[ax - 1] = (_clamp(s0, size), _clamp(s1, size), st)
    if not spec:
        c.alias(n.output[0], v)
        return
    _slice_value(c, n, v, spec, n.output[0], _base(n))


@handles("Split")
def _split(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    a = _attrs(n)
    rank = len(v.shape) + 1
    axis = int(a.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise c.fail(n, "splitting the batch axis is not supported")
    size = v.shape[axis - 1]
    outs = [o for o in n.output]
    sizes = [int(x) for x in a["split"]] if "split" in a else _ints(c, n, 1, "split")
    if not sizes:
        k = len(outs)
        part = -(-size // k)
        sizes = [part] * (k - 1) + [size - part * (k - 1)]
    if sum(sizes) != size or len(sizes) != len(outs):
        raise c.fail(n, f"split sizes {sizes} do not fit axis {axis} of size {size} and {len(outs)} outputs", ShapeError)
    start = 0
    for k, (o, s) in enumerate(zip(outs, sizes)):
        if o and c.uses.get(o):
            _slice_value(c, n, v, {axis - 1: (start, start + s, 1)}, o, f"{_base(n)}.{k}")
        start += s


MULTI_OUTPUT.add("Split")


def _reshape_to(c: Converter, n: Any, v: Value, shape: tuple[int, ...]) -> None:
    from lrpflow_onnx.ops_cnn import _flatten_value

    if shape == v.shape:
        c.alias(n.output[0], v)
        return
    if len(shape) == 1:
        _flatten_value(c, n, v)
        return
    if v.kind == "flat" and v.perm is None and len(shape) == 3 and shape[1:] == (1, 1):
        c.alias(n.output[0], c.flat(v.node, shape, None))
        return
    v = c.as_plain(v, _base(n))
    c.values[n.output[0]] = Value(c.add(_base(n), Reshape(shape), [v.node]), shape, "plain")


@handles("Squeeze", "Unsqueeze")
def _squeeze(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    a = _attrs(n)
    axes = [int(x) for x in a["axes"]] if "axes" in a else _ints(c, n, 1, "axes")
    full = [0, *v.shape]
    if n.op_type == "Squeeze":
        rank = len(full)
        drop = {x + rank if x < 0 else x for x in axes} if axes else {i for i, d in enumerate(full) if d == 1 and i}
        if 0 in drop:
            raise c.fail(n, "squeezing the batch axis is not supported")
        shape = tuple(d for i, d in enumerate(full) if i not in drop)[1:]
    else:
        rank = len(full) + len(axes or [])
        for x in sorted((x + rank if x < 0 else x) for x in axes or []):
            if x == 0:
                raise c.fail(n, "a new axis before the batch axis is not supported")
            full.insert(x, 1)
        shape = tuple(full[1:])
    _reshape_to(c, n, v, shape)


def _gather_merged(c: Converter, n: Any, v: Value, idx: numpy.ndarray) -> None:
    """``Gather`` on a tensor whose batch a Reshape merged (the dynamo exporter's ``as_strided``): allowed when
    the indices of sample ``b`` are those of sample 0 shifted by ``b`` samples — then a per-sample :class:`Take`."""
    size = math.prod(v.shape)
    batch = c.batch or 0
    if int(_attrs(n).get("axis", 0)) != 0 or idx.ndim < 1 or idx.shape[0] != batch or \
            not all(numpy.array_equal(idx[b] - b * size, idx[0]) for b in range(batch)) or \
            idx[0].min() < 0 or idx[0].max() >= size:
        raise c.fail(n, "a Gather on a batch-merged tensor must select within each sample alike")
    name = c.add(_base(n), Take(idx[0]), [v.node])
    c.values[n.output[0]] = Value(name, tuple(int(s) for s in idx.shape[1:]), "plain")


@handles("Gather")
def _gather(c: Converter, n: Any) -> None:
    idx = numpy.asarray(c.const(n.input[1], n, "indices"))
    if n.input[0] in c.merged:
        _gather_merged(c, n, c.merged[n.input[0]], idx)
        return
    v = c.value(n.input[0], n)
    rank = len(v.shape) + 1
    axis = int(_attrs(n).get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if axis == 0 or idx.ndim != 0:
        raise c.fail(n, "only Gather of one index on a sample axis of an activation is supported")
    size = v.shape[axis - 1]
    i = int(idx) + size if int(idx) < 0 else int(idx)
    tmp = n.output[0] + "/slice"
    _slice_value(c, n, v, {axis - 1: (i, i + 1, 1)}, tmp, _base(n))
    shape = tuple(d for k, d in enumerate(v.shape) if k != axis - 1)
    _reshape_to(c, n, c.values[tmp], shape)


# -- transposed convolution -----------------------------------------------------------


@handles("ConvTranspose")
def _conv_transpose(c: Converter, n: Any) -> None:
    from lrpflow.layers import ConvTranspose2d
    from lrpflow_onnx.ops_cnn import _pair

    a = _attrs(n)
    w = numpy.asarray(c.const(n.input[1], n, "W (the filters)"))
    if w.ndim != 4:
        raise c.fail(n, f"only 2-D transposed convolutions are supported, got filters of shape {w.shape}")
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        raise c.fail(n, f"dilations={list(a['dilations'])} are not supported")
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "", "VALID") or "output_shape" in a:
        raise c.fail(n, "auto_pad SAME_* and output_shape are not supported (give pads and output_padding)")
    groups = int(a.get("group", 1))
    v = c.as_nhwc(c.value(n.input[0], n), _base(n), n)
    cin, h, wd = v.shape
    if w.shape[0] != cin:
        raise c.fail(n, f"filters for {w.shape[0]} input channels applied to {cin} channels", ShapeError)
    cout, kh, kw = w.shape[1] * groups, w.shape[2], w.shape[3]
    p = [int(x) for x in a.get("pads", [0, 0, 0, 0])] if auto != "VALID" else [0, 0, 0, 0]
    dtype = w.dtype if w.dtype.kind == "f" else numpy.dtype("float32")
    bias = numpy.zeros(cout, dtype=dtype)
    if len(n.input) > 2 and n.input[2]:
        bias = numpy.asarray(c.const(n.input[2], n, "B (the bias)"), dtype=dtype).ravel()
    layer = ConvTranspose2d(kh, kw, cin, cout, stride=_pair(c, n, a, "strides", (1, 1)),
                            padding=(p[0], p[2], p[1], p[3]), output_padding=_pair(c, n, a, "output_padding", (0, 0)),
                            groups=groups, weight=numpy.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=dtype),
                            bias=bias)
    name = c.add(_base(n), layer, [v.node])
    ho, wo, _ = layer.output_shape((h, wd, cin))
    c.values[n.output[0]] = Value(name, (cout, ho, wo), "nhwc")


# -- resizing ----------------------------------------------------------------------------


def _text(a: dict[str, Any], key: str, default: str) -> str:
    v = a.get(key, default.encode())
    return v.decode() if isinstance(v, bytes) else str(v)


@handles("Resize", "Upsample")
def _resize(c: Converter, n: Any) -> None:
    from lrpflow.layers import Resize

    a = _attrs(n)
    v = c.as_nhwc(c.value(n.input[0], n), _base(n), n)
    ch, h, w = v.shape
    mode = _text(a, "mode", "nearest")
    if n.op_type == "Upsample":
        coords, nearest = "asymmetric", "floor"
        scales = [float(s) for s in a["scales"]] if "scales" in a else \
            [float(s) for s in numpy.asarray(c.const(n.input[1], n, "scales")).ravel()]
        sizes = None
    else:
        coords = _text(a, "coordinate_transformation_mode", "half_pixel")
        nearest = _text(a, "nearest_mode", "round_prefer_floor")
        if int(a.get("antialias", 0)) or "axes" in a or _text(a, "keep_aspect_ratio_policy", "stretch") != "stretch":
            raise c.fail(n, "antialias, axes and keep_aspect_ratio_policy are not supported")
        scales = [float(s) for s in numpy.asarray(c.consts[n.input[2]]).ravel()] if len(n.input) > 2 and n.input[2] \
            and c.is_const(n.input[2]) else []
        sizes = [int(s) for s in numpy.asarray(c.consts[n.input[3]]).ravel()] if len(n.input) > 3 and n.input[3] \
            and c.is_const(n.input[3]) else None
    mode = "linear" if mode in ("linear", "bilinear") else mode
    if mode not in ("nearest", "linear") or coords not in ("half_pixel", "pytorch_half_pixel", "asymmetric",
                                                           "align_corners"):
        raise c.fail(n, f"mode={mode}, coordinate_transformation_mode={coords} are not supported (nearest/linear; "
                        f"half_pixel, pytorch_half_pixel, asymmetric, align_corners)")
    if sizes:
        if len(sizes) != 4 or sizes[1] != ch:
            raise c.fail(n, f"sizes {sizes} must be 4 values that keep the channels")
        out, scale = (sizes[2], sizes[3]), None
    elif len(scales) == 4:
        if scales[0] != 1 or scales[1] != 1:
            raise c.fail(n, f"scales {scales} resize the batch or channel axis")
        out, scale = (int(math.floor(h * scales[2])), int(math.floor(w * scales[3]))), (scales[2], scales[3])
    else:
        raise c.fail(n, "needs constant scales (4 values) or sizes")
    layer = Resize((h, w), out, scale, mode=mode, coordinates=coords, nearest=nearest)
    name = c.add(_base(n), layer, [v.node])
    c.values[n.output[0]] = Value(name, (ch, *out), "nhwc")
