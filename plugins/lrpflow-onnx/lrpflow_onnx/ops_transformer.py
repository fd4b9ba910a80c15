"""ONNX handlers for transformers: products of two activations (``MatMul``), Softmax on any axis,
token embeddings (``Gather`` from a constant matrix), constants that vary over several axes
(positional embeddings, additive masks), ``Where`` masks, ``Concat`` with constants (CLS tokens),
``Cast``, ``Pow`` by a constant, and the fused RMSNorm (:mod:`lrpflow_onnx.patterns`).

The handlers wrap the earlier ones (:mod:`lrpflow_onnx.ops_cnn`, :mod:`lrpflow_onnx.ops`) and fall
back to them for the cases those handle.
"""
from __future__ import annotations

import math
from typing import Any

import numpy

from lrpflow.layers import AddConstant, ConcatConstant, Embedding, MatMul, MulConstant, Power, RMSNorm, Where
from lrpflow_onnx.convert import HANDLERS, Converter, Value, _attrs, _base, handles
from lrpflow_onnx.ops_cnn import gemm_params

_matmul_weight = HANDLERS["MatMul"]
_arith_cnn = HANDLERS["Add"]
_gather_cnn = HANDLERS["Gather"]
_concat_cnn = HANDLERS["Concat"]


def _sample_const(c: Converter, n: Any, k: numpy.ndarray, rank: int, what: str) -> numpy.ndarray:
    """A constant broadcast against batched tensors of ``rank`` axes, as one sample (batch axis dropped);
    a constant that differs between samples is refused."""
    k = numpy.asarray(k)
    if k.ndim > rank:
        raise c.fail(n, f"{what} of shape {k.shape} has more axes than the rank-{rank} activation")
    k = k.reshape((1,) * (rank - k.ndim) + k.shape)
    if k.shape[0] != 1:
        if not all(numpy.array_equal(k[b], k[0]) for b in range(k.shape[0])):
            raise c.fail(n, f"{what} differs between the samples of the batch")
        k = k[:1]
    return k[0]


@handles("MatMul")
def _matmul(c: Converter, n: Any) -> None:
    if c.is_const(n.input[0]) or c.is_const(n.input[1]):
        _matmul_weight(c, n)
        return
    a, b = (c.as_plain(c.value(i, n), f"{_base(n)}.in{k}") for k, i in enumerate(n.input[:2]))
    if len(a.shape) < 2 or len(a.shape) != len(b.shape) or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise c.fail(n, f"product of activations of sample shapes {a.shape} and {b.shape}: expected (..., T, K) @ "
                        f"(..., K, S) with equal leading axes")
    name = c.add(_base(n), MatMul(), [a.node, b.node])
    c.values[n.output[0]] = Value(name, (*a.shape[:-1], b.shape[-1]), "plain")


@handles("Add", "Sub", "Mul", "Div")
def _arith(c: Converter, n: Any) -> None:
    x, y = n.input[0], n.input[1]
    if n.op_type in ("Add", "Sub") and (c.is_const(x) != c.is_const(y)):
        act = y if c.is_const(x) else x
        v = c.value(act, n)
        k = numpy.asarray(c.consts[x if c.is_const(x) else y])
        if k.size > 1 and sum(1 for d in k.shape if d != 1) > 1 or (k.size > 1 and not numpy.isfinite(k).all()):
            _add_full(c, n, v, k, negate_x=n.op_type == "Sub" and c.is_const(y) is False, negate_k=n.op_type == "Sub" and c.is_const(y))
            return
    if n.op_type in ("Mul", "Div") and c.is_const(y) != c.is_const(x) and (n.op_type == "Mul" or c.is_const(y)):
        k = numpy.asarray(c.consts[x if c.is_const(x) else y], dtype=numpy.float64)
        if k.size > 1 and sum(1 for d in k.shape if d != 1) > 1:
            v = c.as_plain(c.value(y if c.is_const(x) else x, n), _base(n))
            k = _sample_const(c, n, 1.0 / k if n.op_type == "Div" else k, len(v.shape) + 1, "the constant")
            dtype = numpy.float64 if numpy.asarray(c.consts[x if c.is_const(x) else y]).dtype == numpy.float64 \
                or n.op_type == "Div" else numpy.float32
            c.values[n.output[0]] = Value(c.add(_base(n), MulConstant(k.astype(dtype)), [v.node]), v.shape, "plain")
            return
    _arith_cnn(c, n)


@handles("Neg")
def _neg(c: Converter, n: Any) -> None:
    v = c.value(n.input[0], n)
    c.values[n.output[0]] = Value(c.add(_base(n), MulConstant(numpy.array(-1.0, numpy.float32)), [v.node]), v.shape,
                                  v.kind, v.perm)


def _add_full(c: Converter, n: Any, v: Value, k: numpy.ndarray, negate_x: bool, negate_k: bool) -> None:
    """``x + c`` (``x − c``) with a constant that varies over several sample axes: AddConstant, or a Where
    for an additive mask of 0 and −∞."""
    if negate_x:
        raise c.fail(n, "constant − activation with a constant that varies over several axes is not supported")
    v = c.as_plain(v, _base(n))
    k = _sample_const(c, n, -k if negate_k else k, len(v.shape) + 1, "the constant")
    if tuple(numpy.broadcast_shapes(k.shape, v.shape)) != v.shape:
        raise c.fail(n, f"constant of sample shape {k.shape} would grow activations of shape {v.shape}")
    if not numpy.isfinite(k).all():
        if not numpy.all((k == 0) | numpy.isneginf(k)):
            raise c.fail(n, "an additive constant with ±∞ must be a mask of 0 and −∞")
        layer: Any = Where(k == 0, -numpy.inf)
    else:
        dtype = numpy.float64 if k.dtype == numpy.float64 else numpy.float32
        layer = AddConstant(k.astype(dtype))
    c.values[n.output[0]] = Value(c.add(_base(n), layer, [v.node]), v.shape, "plain")


@handles("Where")
def _where(c: Converter, n: Any) -> None:
    cond, a, b = n.input[:3]
    if not c.is_const(cond) or c.is_const(a) == c.is_const(b):
        raise c.fail(n, "only Where with a constant condition choosing between one activation and a constant is supported")
    v = c.as_plain(c.value(b if c.is_const(a) else a, n), _base(n))
    rank = len(v.shape) + 1
    mask = _sample_const(c, n, numpy.asarray(c.consts[cond], dtype=bool), rank, "the condition")
    fill = _sample_const(c, n, numpy.asarray(c.consts[a if c.is_const(a) else b]), rank, "the constant")
    if c.is_const(a):
        mask = ~mask
    shape = tuple(numpy.broadcast_shapes(v.shape, mask.shape, fill.shape))
    if shape != v.shape:
        raise c.fail(n, f"the condition/constant would grow activations of shape {v.shape} to {shape}")
    c.values[n.output[0]] = Value(c.add(_base(n), Where(mask, fill), [v.node]), v.shape, "plain")


@handles("Gather")
def _gather(c: Converter, n: Any) -> None:
    if c.is_const(n.input[0]) and not c.is_const(n.input[1]):
        w = numpy.asarray(c.consts[n.input[0]])
        if w.ndim != 2 or int(_attrs(n).get("axis", 0)) != 0:
            raise c.fail(n, f"token embedding needs a (vocabulary, dim) matrix gathered on axis 0, got {w.shape}")
        v = c.as_plain(c.value(n.input[1], n), _base(n))
        name = c.add(_base(n), Embedding(w if w.dtype.kind == "f" else w.astype(numpy.float32)), [v.node])
        c.values[n.output[0]] = Value(name, (*v.shape, w.shape[1]), "plain")
        return
    _gather_cnn(c, n)


@handles("Concat")
def _concat(c: Converter, n: Any) -> None:
    consts = [i for i in n.input if c.is_const(i)]
    if not consts:
        _concat_cnn(c, n)
        return
    acts = [i for i in n.input if not c.is_const(i)]
    if len(acts) != 1 or len(consts) != 1 or n.input[0] not in (acts[0], consts[0]):
        raise c.fail(n, "Concat with constants: only one constant before or after one activation is supported")
    v = c.as_plain(c.value(acts[0], n), _base(n))
    rank = len(v.shape) + 1
    axis = int(_attrs(n).get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank:
        raise c.fail(n, f"concatenation along axis {axis} of rank-{rank} tensors is not supported")
    k = _sample_const(c, n, c.consts[consts[0]], rank, "the constant")
    layer = ConcatConstant(k.astype(numpy.float64 if k.dtype == numpy.float64 else numpy.float32), axis - 1,
                           first=n.input[0] == consts[0])
    shape = layer.output_shape(v.shape)
    c.values[n.output[0]] = Value(c.add(_base(n), layer, [v.node]), shape, "plain")


@handles("Cast")
def _cast(c: Converter, n: Any) -> None:
    c.alias(n.output[0], c.value(n.input[0], n))  # lrpflow computes in the explainer's dtype


@handles("Pow")
def _pow(c: Converter, n: Any) -> None:
    p = numpy.asarray(c.const(n.input[1], n, "the exponent")).ravel()
    if p.size != 1:
        raise c.fail(n, f"exponent of shape {p.shape}: only a scalar exponent is supported")
    v = c.value(n.input[0], n)
    c.values[n.output[0]] = Value(c.add(_base(n), Power(float(p[0])), [v.node]), v.shape, v.kind, v.perm)


@handles("RMSNormalization")
def _rms_norm(c: Converter, n: Any) -> None:
    a = _attrs(n)
    v = c.as_plain(c.value(n.input[0], n), _base(n))
    if int(a.get("axis", -1)) not in (-1, len(v.shape)):
        raise c.fail(n, "RMSNorm over other than the last axis is not supported")
    name = c.add(_base(n), RMSNorm(float(a.get("epsilon", 1e-5))), [v.node])
    scale = numpy.asarray(c.const(n.input[1], n, "scale"))
    out = Value(name, v.shape, "plain")
    if not numpy.all(scale == 1):
        from lrpflow.layers import BatchNorm

        d = v.shape[-1]
        s = numpy.broadcast_to(scale.astype(numpy.float64), (d,))
        layer = BatchNorm(d, gamma=s.astype(scale.dtype), beta=numpy.zeros(d, scale.dtype), mean=numpy.zeros(d, scale.dtype),
                          var=numpy.ones(d, scale.dtype), eps=0.0)
        out = Value(c.add(f"{_base(n)}.scale", layer, [name]), v.shape, "plain")
    c.values[n.output[0]] = out


# -- token rows: Reshape (N, ..., D) → (N·..., D), Gemm, Reshape back (GPT-2's Conv1D) -----------------------

_reshape_cnn = HANDLERS["Reshape"]
_gemm_cnn = HANDLERS["Gemm"]


def _rows(c: Converter) -> dict[str, Value]:
    """Tensors whose batch a Reshape merged with the token axes, keeping the last axis: name → the unmerged value."""
    if not hasattr(c, "token_rows"):
        c.token_rows = {}  # type: ignore[attr-defined]
    return c.token_rows  # type: ignore[attr-defined]


@handles("Reshape")
def _reshape(c: Converter, n: Any) -> None:
    rows = _rows(c)
    target = [int(s) for s in numpy.asarray(c.const(n.input[1], n, "the target shape")).ravel()]
    if n.input[0] in rows:
        v = rows[n.input[0]]
        rest = target[1:]
        if target[0] in (-1, c.batch) and -1 not in rest and 0 not in rest and math.prod(rest) == math.prod(v.shape):
            shape = tuple(rest)
            if shape == v.shape:
                c.alias(n.output[0], v)
            else:
                from lrpflow.layers import Reshape

                c.values[n.output[0]] = Value(c.add(_base(n), Reshape(shape), [v.node]), shape, "plain")
            return
        raise c.fail(n, f"reshaping merged token rows to {target}: only back to (batch, ...) is supported")
    v = c.values.get(n.input[0])
    size = math.prod(v.shape) if v is not None else 0
    if v is not None and len(v.shape) >= 2 and len(target) == 2 and 0 < target[1] < size and size % target[1] == 0 and \
            (target[0] == -1 or (c.batch is not None and target[0] == c.batch * size // target[1])):
        # (N, ...) → (N·T, D) is, per sample, (...) → (T, D): the next Gemm acts token-wise
        v = c.as_plain(v, _base(n))
        shape = (size // target[1], target[1])
        if shape != v.shape:
            from lrpflow.layers import Reshape

            v = Value(c.add(_base(n), Reshape(shape), [v.node]), shape, "plain")
        rows[n.output[0]] = v
        return
    _reshape_cnn(c, n)


@handles("Gemm")
def _gemm(c: Converter, n: Any) -> None:
    rows = _rows(c)
    if n.input[0] not in rows:
        _gemm_cnn(c, n)
        return
    from lrpflow.layers import Linear

    a = _attrs(n)
    v = rows[n.input[0]]
    if int(a.get("transA", 0)):
        raise c.fail(n, "transA=1 is not supported")
    w, bias = gemm_params(c, n, v.shape[-1], "tokens of width")
    name = c.add(_base(n), Linear(w.shape[0], w.shape[1], weight=numpy.ascontiguousarray(w), bias=bias), [v.node])
    rows[n.output[0]] = Value(name, (*v.shape[:-1], w.shape[1]), "plain")


@handles("Expand")
def _expand(c: Converter, n: Any) -> None:
    """``Expand`` of an activation to a constant shape (the batch axis kept): a :class:`~lrpflow.layers.Broadcast`."""
    from lrpflow.layers import Broadcast

    v = c.as_plain(c.value(n.input[0], n), _base(n))
    target = [int(s) for s in numpy.asarray(c.const(n.input[1], n, "the shape")).ravel()]
    batch = c.batch or 1
    try:
        full = tuple(int(d) for d in numpy.broadcast_shapes((batch, *v.shape), tuple(target)))
    except ValueError:
        raise c.fail(n, f"samples of shape {v.shape} do not broadcast to {target}") from None
    if len(full) != len(v.shape) + 1 or full[0] != batch:
        raise c.fail(n, f"Expand to {target} adds axes before or grows the batch axis; lrpflow keeps the batch axis first")
    shape = full[1:]
    if shape == v.shape:
        c.alias(n.output[0], v)
        return
    c.values[n.output[0]] = Value(c.add(_base(n), Broadcast(shape), [v.node]), shape, "plain")
