"""ONNX handlers of the classic CNN operators: activations, Gemm/MatMul, Conv and pooling, BatchNorm,
Add/Sub/Mul/Div (with constants, and Add of activations), Concat, Flatten/Reshape/Transpose, Pad.

Each handler turns one ONNX node into lrpflow layers and records its output :class:`Value`
(see :mod:`lrpflow_onnx.convert` for the layout bookkeeping). Imported by ``convert``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy

from lrpflow.errors import ModelFormatError, ShapeError
from lrpflow.layers import (
    Add, AvgPool, BatchNorm, Concat, Conv2d, Dropout, Flatten, GlobalAvgPool, LeakyReLU, Linear, MaxPool, Pad, ReLU,
    Reshape, Sigmoid, SoftMax, Tanh,
)
from lrpflow_onnx.convert import HANDLERS, Converter, Handler, Value, _attrs, _base, handles
from lrpflow_onnx.layers import Transpose


# -- shapes of activations --------------------------------------------------


def _shape_of(c: Converter, n: Any) -> None:
    """``Shape``/``Size`` of an activation: a constant (lrpflow shapes are static; the batch is the file's, or
    0 where the file leaves it open, which a later Reshape copies)."""
    if n.input[0] in c.views:  # the batch is not axis 0 here: its size, as the file fixes it
        full = numpy.array(c.views[n.input[0]].shape, dtype=numpy.int64)
    else:  # the batch as the file fixes it (exporters compute Reshape shapes such as (N·windows, ...) from it)
        full = numpy.array([c.batch or 0, *c.values[n.input[0]].shape], dtype=numpy.int64)
    if n.op_type == "Size":
        c.consts[n.output[0]] = numpy.array(math.prod(full[1:]) * (c.batch or 0) if full[0] == 0 else math.prod(full),
                                            dtype=numpy.int64)
        return
    a = _attrs(n)
    rank = full.size
    start = int(a.get("start", 0))
    end = int(a.get("end", rank))
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    c.consts[n.output[0]] = full[start:end]


# -- elementwise -------------------------------------------------------------


def _elementwise(make: Callable[[dict[str, Any]], Any]) -> Handler:
    def handler(c: Converter, n: Any) -> None:
        v = c.value(n.input[0], n)
        name = c.add(_base(n), make(_attrs(n)), [v.node])
        c.values[n.output[0]] = Value(name, v.shape, v.kind, v.perm)
    return handler


HANDLERS["Relu"] = _elementwise(lambda a: ReLU())
HANDLERS["LeakyRelu"] = _elementwise(lambda a: LeakyReLU(float(a.get("alpha", 0.01))))
HANDLERS["Tanh"] = _elementwise(lambda a: Tanh())
HANDLERS["Sigmoid"] = _elementwise(lambda a: Sigmoid())


@handles("Identity")
def _identity(c: Converter, n: Any) -> None:
    c.alias(n.output[0], c.value(n.input[0], n))


@handles("Dropout")
def _dropout(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    a = _attrs(n)
    rate = float(a.get("ratio", 0.5))
    if len(n.input) > 1 and n.input[1]:
        rate = float(numpy.asarray(c.const(n.input[1], n, "the ratio")).ravel()[0])
    if len(n.input) > 2 and n.input[2] and c.is_const(n.input[2]) and bool(numpy.asarray(c.consts[n.input[2]]).ravel()[0]):
        raise c.fail(n, "training_mode=True is not supported (lrpflow explains inference)")
    name = c.add(_base(n), Dropout(rate), [v.node])
    c.values[n.output[0]] = Value(name, v.shape, v.kind, v.perm)


@handles("Softmax")
def _softmax(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    rank = len(v.shape) + 1
    axis = int(_attrs(n).get("axis", 1 if c.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if (c.opset < 13 and not (rank == 2 and axis == 1)) or not 0 < axis < rank:
        raise c.fail(n, f"softmax over axis {axis} of a rank-{rank} tensor is supported from opset 13 on")
    if v.kind == "nhwc" and axis == 1:  # over the channels: lrpflow stores them last
        c.values[n.output[0]] = Value(c.add(_base(n), SoftMax(), [v.node]), v.shape, "nhwc")
        return
    v = c.as_plain(v, _base(n))
    layer = SoftMax() if axis == rank - 1 else SoftMax(axis - 1)
    c.values[n.output[0]] = Value(c.add(_base(n), layer, [v.node]), v.shape, "plain")


# -- dense ---------------------------------------------------------------------


def _vector(c: Converter, n: Any, v: Value) -> tuple[str, numpy.ndarray | None]:
    if len(v.shape) != 1:
        raise c.fail(n, f"needs a 2-D (N, D) input, got sample shape {v.shape}; flatten first")
    if v.kind == "flat":
        return v.node, v.perm
    return v.node, None


def gemm_params(c: Converter, n: Any, width: int, what: str) -> tuple[numpy.ndarray, numpy.ndarray]:
    """``Gemm``'s constant weight ``alpha · B`` (transposed for ``transB``) and bias ``beta · C`` for inputs of
    ``width`` features (``what`` names them in errors)."""
    a = _attrs(n)
    b = numpy.asarray(c.const(n.input[1], n, "B (the weights)"))
    w = b.T if int(a.get("transB", 0)) else b
    if w.ndim != 2 or w.shape[0] != width:
        raise c.fail(n, f"weights of shape {b.shape} do not fit {what} {width}", ShapeError)
    dtype = w.dtype if w.dtype.kind == "f" else numpy.dtype("float32")
    w = (w.astype(numpy.float64) * float(a.get("alpha", 1.0))).astype(dtype)
    bias = numpy.zeros(w.shape[1], dtype=dtype)
    if len(n.input) > 2 and n.input[2]:
        cc = numpy.asarray(c.const(n.input[2], n, "C (the bias)"))
        if cc.size not in (1, w.shape[1]) or (cc.ndim == 2 and cc.shape[0] != 1):
            raise c.fail(n, f"C of shape {cc.shape} is not a bias of {w.shape[1]} outputs")
        bias = (numpy.broadcast_to(cc.astype(numpy.float64).ravel(), (w.shape[1],)) * float(a.get("beta", 1.0))).astype(dtype)
    return w, bias


@handles("Gemm")
def _gemm(c: Converter, n: Any) -> None:
    if int(_attrs(n).get("transA", 0)):
        raise c.fail(n, "transA=1 is not supported")
    v = c.value(n.input[0], n)
    node, perm = _vector(c, n, v)
    w, bias = gemm_params(c, n, v.shape[0], "inputs of length")
    if perm is not None:
        w = w[perm]
    name = c.add(_base(n), Linear(w.shape[0], w.shape[1], weight=numpy.ascontiguousarray(w), bias=bias), [node])
    c.values[n.output[0]] = Value(name, (w.shape[1],))


@handles("MatMul")
def _matmul(c: Converter, n: Any) -> None:
    if c.is_const(n.input[0]):
        raise c.fail(n, "constant @ activation is not supported (only activation @ constant weights)")
    v = c.value(n.input[0], n)
    if len(v.shape) > 1 and not (v.kind == "flat" and all(s == 1 for s in v.shape[1:])):
        v = c.as_plain(v, _base(n))  # token-wise: the weight acts on the last axis
        node, perm = v.node, None
    else:
        node, perm = _vector(c, n, v)
    w = numpy.asarray(c.const(n.input[1], n, "the weight matrix"))
    if w.ndim != 2 or w.shape[0] != v.shape[-1]:
        raise c.fail(n, f"weights of shape {w.shape} do not fit inputs of shape {v.shape}", ShapeError)
    dtype = w.dtype if w.dtype.kind == "f" else numpy.dtype("float32")
    if perm is not None:
        w = w[perm]
    name = c.add(_base(n), Linear(w.shape[0], w.shape[1], weight=numpy.ascontiguousarray(w, dtype=dtype),
                                  bias=numpy.zeros(w.shape[1], dtype=dtype)), [node])
    c.foldable_bias.add(name)
    c.values[n.output[0]] = Value(name, (*v.shape[:-1], w.shape[1]) if v.kind == "plain" else (w.shape[1],))


# -- convolution and pooling -------------------------------------------------


def _spatial_pads(c: Converter, n: Any, a: dict[str, Any], hw: tuple[int, int], kernel: tuple[int, int],
                  strides: tuple[int, int]) -> list[int]:
    """(top, bottom, left, right) from ``pads``/``auto_pad``."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, s in zip(hw, kernel, strides):
            total = max(0, (math.ceil(size / s) - 1) * s + k - size)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return [out[0][0], out[0][1], out[1][0], out[1][1]]
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("NOTSET", ""):
        raise c.fail(n, f"auto_pad={auto} is not supported")
    p = [int(x) for x in a.get("pads", [0, 0, 0, 0])]
    if len(p) != 4 or min(p) < 0:
        raise c.fail(n, f"pads {p} must be 4 non-negative values (2-D)")
    return [p[0], p[2], p[1], p[3]]


def _pair(c: Converter, n: Any, a: dict[str, Any], key: str, default: Sequence[int]) -> tuple[int, int]:
    v = tuple(int(x) for x in a.get(key, default))
    if len(v) != 2:
        raise c.fail(n, f"{key}={list(v)}: only 2-D operations are supported")
    return v  # type: ignore[return-value]


@handles("Conv")
def _conv(c: Converter, n: Any) -> None:
    a = _attrs(n)
    w = numpy.asarray(c.const(n.input[1], n, "W (the filters)"))
    if w.ndim != 4:
        raise c.fail(n, f"only 2-D convolutions are supported, got filters of shape {w.shape}")
    groups = int(a.get("group", 1))
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        raise c.fail(n, f"dilations={list(a['dilations'])} are not supported")
    v = c.as_nhwc(c.value(n.input[0], n), _base(n), n)
    cin, h, wd = v.shape
    o, i, kh, kw = w.shape
    if i * groups != cin or groups < 1 or o % groups:
        raise c.fail(n, f"filters for {i} input channels in {groups} group(s) applied to {cin} channels", ShapeError)
    strides = _pair(c, n, a, "strides", (1, 1))
    pads = _spatial_pads(c, n, a, (h, wd), (kh, kw), strides)
    dtype = w.dtype if w.dtype.kind == "f" else numpy.dtype("float32")
    bias = numpy.zeros(o, dtype=dtype)
    if len(n.input) > 2 and n.input[2]:
        bias = numpy.asarray(c.const(n.input[2], n, "B (the bias)"), dtype=dtype).ravel()
    layer = Conv2d(kh, kw, cin, o, stride=strides, padding=pads,
                   weight=numpy.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=dtype), bias=bias, groups=groups)
    name = c.add(_base(n), layer, [v.node])
    shape = layer.output_shape((h, wd, cin))
    c.foldable_bias.add(name)
    c.values[n.output[0]] = Value(name, (shape[2], shape[0], shape[1]), "nhwc")


def _ceil_extra(size: int, k: int, s: int, p0: int, p1: int) -> int:
    """Extra end padding that gives ONNX's ceil_mode output size (windows must start inside input or begin padding)."""
    out = -(-(size + p0 + p1 - k) // s) + 1
    if (out - 1) * s >= size + p0:
        out -= 1
    return max(0, (out - 1) * s + k - (size + p0 + p1))


def _pool(c: Converter, n: Any, avg: bool) -> None:
    a = _attrs(n)
    kernel = _pair(c, n, a, "kernel_shape", ())
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        raise c.fail(n, f"dilations={list(a['dilations'])} are not supported")
    v = c.as_nhwc(c.value(n.input[0], n), _base(n), n)
    ch, h, w = v.shape
    strides = _pair(c, n, a, "strides", (1, 1))
    t, b, l, r = _spatial_pads(c, n, a, (h, w), kernel, strides)
    if int(a.get("ceil_mode", 0)):
        b += _ceil_extra(h, kernel[0], strides[0], t, b)
        r += _ceil_extra(w, kernel[1], strides[1], l, r)
    pads = (t, b, l, r)
    if avg:
        if any(pads) and not int(a.get("count_include_pad", 0)):
            raise c.fail(n, f"padded average pooling (pads {list(pads)}, or ceil_mode) with count_include_pad=0 divides "
                            f"border windows by fewer values; lrpflow's AvgPool divides by the window size. Export "
                            f"with count_include_pad=1 or without padding")
        layer: Any = AvgPool(*kernel, stride=strides, padding=pads)
    else:
        layer = MaxPool(*kernel, stride=strides, padding=pads)
    name = c.add(_base(n), layer, [v.node])
    oh, ow, _ = layer.output_shape((h, w, ch))
    c.values[n.output[0]] = Value(name, (ch, oh, ow), "nhwc")


HANDLERS["MaxPool"] = lambda c, n: _pool(c, n, avg=False)
HANDLERS["AveragePool"] = lambda c, n: _pool(c, n, avg=True)


@handles("GlobalAveragePool")
def _gap(c: Converter, n: Any) -> None:
    v = c.as_nhwc(c.value(n.input[0], n), _base(n), n)
    name = c.add(_base(n), GlobalAvgPool(), [v.node])
    c.values[n.output[0]] = c.flat(name, (v.shape[0], 1, 1), None)


@handles("BatchNormalization")
def _batchnorm(c: Converter, n: Any) -> None:
    a = _attrs(n)
    if int(a.get("training_mode", 0)):
        raise c.fail(n, "training_mode=1 is not supported (lrpflow explains inference)")
    v = c.value(n.input[0], n)
    gamma, beta, mean, var = (numpy.asarray(c.const(n.input[k], n, what)).ravel()
                              for k, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    ch = v.shape[0]
    if any(p.size != ch for p in (gamma, beta, mean, var)):
        raise c.fail(n, f"parameters do not have {ch} channels", ShapeError)
    if len(v.shape) == 3:
        v = c.as_nhwc(v, _base(n), n)
        out = Value("", v.shape, "nhwc")
    elif len(v.shape) == 1:
        if v.kind == "flat" and v.perm is not None:
            gamma, beta, mean, var = (p[v.perm] for p in (gamma, beta, mean, var))
        out = Value("", v.shape, v.kind, v.perm)
    else:
        raise c.fail(n, f"inputs of sample shape {v.shape} are not supported (only (N, C) and (N, C, H, W))")
    layer = BatchNorm(ch, gamma=gamma, beta=beta, mean=mean, var=var, eps=float(a.get("epsilon", 1e-5)))
    out.node = c.add(_base(n), layer, [v.node])
    c.values[n.output[0]] = out


# -- merges and affine constants --------------------------------------------------


def _harmonize(c: Converter, n: Any, vs: list[Value]) -> list[Value]:
    first = vs[0]
    if all(v.kind == first.kind and v.shape == first.shape and (
            (v.perm is None and first.perm is None) or (v.perm is not None and first.perm is not None
                                                         and numpy.array_equal(v.perm, first.perm))) for v in vs):
        return vs
    if all(len(v.shape) == 3 for v in vs):
        return [c.as_nhwc(v, f"{_base(n)}.in{k}", n) for k, v in enumerate(vs)]
    return [c.as_plain(v, f"{_base(n)}.in{k}") for k, v in enumerate(vs)]


def _per_channel(c: Converter, n: Any, v: Value, const: numpy.ndarray) -> tuple[numpy.ndarray, Value]:
    """A constant that broadcasts over a sample of ``v`` as one value per entry of ``v``'s *stored* last
    axis: ``(vector, v)``, ``v`` converted where needed (channels of images stored NHWC; the last axis of
    token tensors stored as in ONNX; scalars on anything)."""
    k = numpy.asarray(const, dtype=numpy.float64)
    full = (1, *v.shape)
    if k.ndim > len(full):
        raise c.fail(n, f"constant of shape {k.shape} does not broadcast to samples of shape {v.shape}")
    kk = k.reshape((1,) * (len(full) - k.ndim) + k.shape)
    try:
        numpy.broadcast_shapes(kk.shape, full)
    except ValueError:
        raise c.fail(n, f"constant of shape {k.shape} does not broadcast to samples of shape {v.shape}") from None
    varying = [i for i in range(1, len(full)) if kk.shape[i] != 1]
    if kk.shape[0] != 1 or len(varying) > 1 or (varying and varying[0] != 1 and varying[0] != len(full) - 1):
        raise c.fail(n, f"constant of shape {k.shape} varies over more than the channel (or last) axis of samples "
                        f"of shape {v.shape}; only per-channel constants are supported")
    if not varying:
        last = c.stored_shape(v)[-1]
        return numpy.full(last, float(kk.ravel()[0])), v
    if varying[0] == 1 and len(v.shape) == 3:
        v = c.as_nhwc(v, _base(n), n)
    elif varying[0] == 1 and len(v.shape) != 1 and not (v.kind == "flat" and all(s == 1 for s in v.shape[1:])):
        raise c.fail(n, f"per-channel constants on samples of shape {v.shape} are not supported")
    elif varying[0] != 1:
        v = c.as_plain(v, _base(n))
    axis = varying[0] - 1
    vec = kk.reshape(-1).copy()
    if v.kind == "flat" and v.perm is not None and axis == 0:
        vec = vec[v.perm]
    return vec, v


@handles("Add", "Sub", "Mul", "Div")
def _arith(c: Converter, n: Any) -> None:
    x, y = n.input[0], n.input[1]
    op = n.op_type
    if not c.is_const(x) and not c.is_const(y):
        if op == "Mul":
            from lrpflow_onnx.ops import product

            product(c, n)
            return
        if op != "Add":
            raise c.fail(n, f"{op} of two activations is not supported (not an affine map of its inputs)")
        vs = _harmonize(c, n, [c.value(x, n), c.value(y, n)])
        if vs[0].shape != vs[1].shape:
            raise c.fail(n, f"broadcasting Add of shapes {vs[0].shape} and {vs[1].shape} is not supported")
        name = c.add(_base(n), Add(), [vs[0].node, vs[1].node])
        c.values[n.output[0]] = Value(name, vs[0].shape, vs[0].kind, vs[0].perm)
        return
    act_first = not c.is_const(x)
    v0 = c.value(x if act_first else y, n)
    k = c.consts[y if act_first else x]
    vec, v = _per_channel(c, n, v0, k)
    if op == "Add":
        scale, shift = 1.0, vec
    elif op == "Sub":
        scale, shift = (1.0, -vec) if act_first else (-1.0, vec)
    elif op == "Mul":
        scale, shift = vec, 0.0
    else:
        if not act_first:
            raise c.fail(n, "constant / activation is not supported (not affine)")
        scale, shift = 1.0 / vec, 0.0
    ch = c.stored_shape(v)[-1]
    scale = numpy.broadcast_to(numpy.asarray(scale, dtype=numpy.float64), (ch,))
    shift = numpy.broadcast_to(numpy.asarray(shift, dtype=numpy.float64), (ch,))
    prod = c.layers.get(v.node)
    if (v is v0 and v.node in c.foldable_bias and numpy.all(scale == 1.0) and c.uses.get(x if act_first else y, 0) == 1
            and prod is not None and getattr(prod, "n", None) == ch):
        b = prod.bias
        prod.set_params(bias=(b.astype(numpy.float64) + shift).astype(b.dtype))
        c.values[n.output[0]] = v
        return
    # a quotient is kept in float64 (1/√2 in float32 would cost 1e-8 relative in float64 runs)
    dtype = numpy.float64 if numpy.asarray(k).dtype == numpy.float64 or op == "Div" else numpy.float32
    layer = BatchNorm(ch, gamma=scale.astype(dtype), beta=shift.astype(dtype), mean=numpy.zeros(ch, dtype),
                      var=numpy.ones(ch, dtype), eps=0.0)
    name = c.add(_base(n), layer, [v.node])
    c.values[n.output[0]] = Value(name, v.shape, v.kind, v.perm)


@handles("Concat")
def _concat(c: Converter, n: Any) -> None:
    vs = [c.value(i, n) for i in n.input]
    rank = len(vs[0].shape) + 1
    axis = int(_attrs(n).get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0 or not 0 < axis < rank:
        raise c.fail(n, f"concatenation along axis {axis} of rank-{rank} tensors is not supported")
    if any(len(v.shape) != rank - 1 for v in vs):
        raise c.fail(n, "inputs of different ranks", ShapeError)
    out_shape = list(vs[0].shape)
    out_shape[axis - 1] = sum(v.shape[axis - 1] for v in vs)
    if axis == 1 and all(v.kind == "flat" for v in vs) and all(all(s == 1 for s in v.shape[1:]) for v in vs):
        perms, off = [], 0
        for v in vs:
            size = v.shape[0]
            perms.append((numpy.arange(size) if v.perm is None else v.perm) + off)
            off += size
        name = c.add(_base(n), Concat(axis=1), [v.node for v in vs])
        c.values[n.output[0]] = c.flat(name, tuple(out_shape), numpy.concatenate(perms))
        return
    if rank == 4 and all(v.kind in ("nhwc", "flat") or len(v.shape) == 3 for v in vs):
        vs = [c.as_nhwc(v, f"{_base(n)}.in{k}", n) for k, v in enumerate(vs)]
        name = c.add(_base(n), Concat(axis={1: 3, 2: 1, 3: 2}[axis]), [v.node for v in vs])
        c.values[n.output[0]] = Value(name, tuple(out_shape), "nhwc")
        return
    vs = [c.as_plain(v, f"{_base(n)}.in{k}") for k, v in enumerate(vs)]
    name = c.add(_base(n), Concat(axis=axis), [v.node for v in vs])
    c.values[n.output[0]] = Value(name, tuple(out_shape), "plain")


# -- shape ---------------------------------------------------------------------


def _flatten_value(c: Converter, n: Any, v: Value) -> None:
    size = math.prod(v.shape)
    if v.kind == "nhwc":
        ch, h, w = v.shape
        name = c.add(_base(n), Flatten(), [v.node])
        perm = numpy.arange(size).reshape(ch, h, w).transpose(1, 2, 0).ravel()
        c.values[n.output[0]] = c.flat(name, (size,), perm)
    elif v.kind == "flat":
        c.alias(n.output[0], c.flat(v.node, (size,), v.perm))
    elif len(v.shape) == 1:
        c.alias(n.output[0], v)
    else:
        c.values[n.output[0]] = Value(c.add(_base(n), Flatten(), [v.node]), (size,))


@handles("Flatten")
def _flatten(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    axis = int(_attrs(n).get("axis", 1))
    axis = axis + len(v.shape) + 1 if axis < 0 else axis
    if axis != 1:
        raise c.fail(n, f"Flatten(axis={axis}) is not supported (only axis=1: keep the batch)")
    _flatten_value(c, n, v)


@handles("Reshape")
def _reshape(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    target = [int(s) for s in numpy.asarray(c.const(n.input[1], n, "the target shape")).ravel()]
    allowzero = int(_attrs(n).get("allowzero", 0))
    if not target:
        raise c.fail(n, "empty target shape")
    size = math.prod(v.shape)
    if len(target) == 1 and c.batch is not None and (target[0] == -1 or target[0] == c.batch * size):
        c.merged[n.output[0]] = c.as_plain(v, _base(n))  # the batch merged into one axis: only a Gather may follow
        return
    first, rest = target[0], target[1:]
    rest = [v.shape[i] if s == 0 and not allowzero and i < len(v.shape) else s for i, s in enumerate(rest, 0)]
    batch_ok = (first == 0 and not allowzero) or first == -1 or (c.batch is not None and first == c.batch)
    if first == -1 and -1 in rest:
        raise c.fail(n, f"target shape {target} leaves the batch axis undetermined")
    if not batch_ok:
        raise c.fail(n, f"target shape {target} changes the batch axis; lrpflow keeps the batch axis first")
    if rest.count(-1) > 1 or any(s < -1 or s == 0 for s in rest):
        raise c.fail(n, f"invalid target shape {target}", ModelFormatError)
    known = math.prod(s for s in rest if s != -1)
    if -1 in rest:
        if known == 0 or size % known:
            raise c.fail(n, f"cannot reshape {v.shape} to {target}", ShapeError)
        rest = [size // known if s == -1 else s for s in rest]
    elif known != size:
        raise c.fail(n, f"cannot reshape samples of shape {v.shape} ({size} values) to {target}", ShapeError)
    shape = tuple(rest)
    if shape == v.shape:
        c.alias(n.output[0], v)
        return
    if len(shape) == 1:
        _flatten_value(c, n, v)
        return
    if len(shape) == 3 and shape[0] == 1 and v.kind in ("plain", "flat") and v.perm is None and len(v.shape) == 1:
        name = c.add(_base(n), Reshape((shape[1], shape[2], 1)), [v.node])
        c.values[n.output[0]] = Value(name, shape, "nhwc")
        return
    v = c.as_plain(v, _base(n))
    c.values[n.output[0]] = Value(c.add(_base(n), Reshape(shape), [v.node]), shape, "plain")


@handles("Transpose")
def _transpose(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    rank = len(v.shape) + 1
    perm = [int(p) for p in _attrs(n).get("perm", range(rank - 1, -1, -1))]
    if sorted(perm) != list(range(rank)) or perm[0] != 0:
        raise c.fail(n, f"perm {perm} moves the batch axis; lrpflow keeps the batch axis first")
    axes = tuple(p - 1 for p in perm[1:])
    if axes == tuple(range(rank - 1)):
        c.alias(n.output[0], v)
        return
    shape = tuple(v.shape[a] for a in axes)
    if (v.kind == "nhwc" and axes == (1, 2, 0)) or (v.kind == "plain" and rank == 4 and axes == (2, 0, 1)):
        # NCHW -> NHWC (or back): only the bookkeeping changes, lrpflow already stores the data that way
        c.alias(n.output[0], Value(v.node, shape, "plain" if v.kind == "nhwc" else "nhwc"))
        return
    v = c.as_plain(v, _base(n))
    name = c.add(_base(n), Transpose(axes), [v.node])
    c.values[n.output[0]] = Value(name, shape, "plain")


@handles("Pad")
def _pad(c: Converter, n: Any) -> None:
    a = _attrs(n)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("constant", "reflect", "edge"):
        raise c.fail(n, f"mode={mode} is not supported (constant, reflect, edge)")
    if "pads" in a:
        pads = [int(p) for p in a["pads"]]
        value = float(a.get("value", 0.0))
    else:
        pads = [int(p) for p in numpy.asarray(c.const(n.input[1], n, "pads")).ravel()]
        value = 0.0
        if len(n.input) > 2 and n.input[2]:
            value = float(numpy.asarray(c.const(n.input[2], n, "constant_value")).ravel()[0])
        if len(n.input) > 3 and n.input[3]:
            axes = [int(x) for x in numpy.asarray(c.const(n.input[3], n, "axes")).ravel()]
            full = [0] * 8
            for k, ax in enumerate(axes):
                ax = ax % 4
                full[ax], full[ax + 4] = pads[k], pads[k + len(axes)]
            pads = full
    v = c.value(n.input[0], n)
    if len(v.shape) != 3 or len(pads) != 8:
        raise c.fail(n, f"only padding of (N, C, H, W) tensors is supported, got pads {pads} for sample shape {v.shape}")
    if (pads[1] or pads[5]) and not (pads[0] or pads[4] or pads[3] or pads[7]) and min(pads) >= 0:
        _pad_axes_1_2(c, n, v, pads, mode, value)  # e.g. (N, H, W, C) tensors (Swin pads to whole windows)
        return
    if pads[0] or pads[1] or pads[4] or pads[5]:
        raise c.fail(n, f"padding the batch or channel axis is not supported (pads {pads})")
    if min(pads) < 0:
        raise c.fail(n, f"negative pads (cropping) are not supported (pads {pads})")
    v = c.as_nhwc(v, _base(n), n)
    if mode != "constant":
        from lrpflow.layers import PadEdges

        layer: Any = PadEdges((pads[2], pads[6], pads[3], pads[7]), mode)
        if mode == "reflect" and (max(pads[2], pads[6]) >= v.shape[1] or max(pads[3], pads[7]) >= v.shape[2]):
            raise c.fail(n, f"reflect pads {pads} must be smaller than the image {v.shape[1:]}", ShapeError)
    else:
        layer = Pad((pads[2], pads[6], pads[3], pads[7]), value)
    name = c.add(_base(n), layer, [v.node])
    ch, h, w = v.shape
    c.values[n.output[0]] = Value(name, (ch, h + pads[2] + pads[6], w + pads[3] + pads[7]), "nhwc")


def _pad_axes_1_2(c: Converter, n: Any, v: Value, pads: list[int], mode: str, value: float) -> None:
    """Padding of ONNX axes 1 and 2 of a rank-4 tensor: those are the spatial axes of lrpflow's pad layers when
    the tensor is stored as in ONNX (``plain``), whatever the axes mean."""
    v = c.as_plain(v, _base(n))
    spec = (pads[1], pads[5], pads[2], pads[6])
    if mode != "constant":
        from lrpflow.layers import PadEdges

        if mode == "reflect" and (max(spec[:2]) >= v.shape[0] or max(spec[2:]) >= v.shape[1]):
            raise c.fail(n, f"reflect pads {pads} must be smaller than the padded axes {v.shape[:2]}", ShapeError)
        layer: Any = PadEdges(spec, mode)
    else:
        layer = Pad(spec, value)
    a, b, d = v.shape
    c.values[n.output[0]] = Value(c.add(_base(n), layer, [v.node]), (a + spec[0] + spec[1], b + spec[2] + spec[3], d),
                                  "plain")
