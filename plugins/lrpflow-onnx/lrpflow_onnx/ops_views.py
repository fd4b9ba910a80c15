"""Operators on ONNX tensors held as views of batch-first lrpflow tensors (:mod:`lrpflow_onnx.views`).

:func:`install` wraps every registered handler: a node with a view among its inputs, or a
Transpose/Reshape/Squeeze/Unsqueeze that moves or merges the batch axis of a batch-first value,
goes here; every other node to its handler as before. Bookkeeping operators change the view;
``Gemm`` becomes a Linear on the last axis; the operators of :data:`GENERIC` run their ordinary
handler on the canonical layout (batch first, one axis per ONNX axis), their axes and broadcast
constants mapped there; any other operator gets a batch-first value (:func:`views.materialize`)
or a refusal naming the node.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy

from lrpflow.errors import ShapeError, UnsupportedLayerError
from lrpflow_onnx.convert import HANDLERS, Converter, Value, _attrs, _base
from lrpflow_onnx.ops_cnn import gemm_params
from lrpflow_onnx.views import (
    BOOKKEEPING, axes_arg, canonical, e_axis, get, put, structure, target_shape, views_of,
)

# -- the other operators: the ordinary handler on the canonical layout --------------------------------------------

#: operators whose constant operands are laid out like the activation (remapped to the canonical layout)
BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Where", "PRelu", "Concat"})
#: operators run on the canonical layout (their axes mapped there); the others get a batch-first value or a refusal
GENERIC = BROADCAST | frozenset({
    "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "RMSNormalization", "Concat", "Split", "Gather", "Slice",
    "ReduceMean", "ReduceMax", "ReduceSum", "MatMul", "Relu", "LeakyRelu", "Tanh", "Sigmoid", "Erf", "Gelu",
    "HardSigmoid", "HardSwish", "Clip", "Cast", "Identity", "Dropout", "Neg", "Pow", "Sqrt", "Exp", "Abs"})


def _const_in(c: Converter, n: Any, k: numpy.ndarray, j: int | None, rank: int, pre: int, post: int) -> numpy.ndarray:
    """A constant broadcast against an ONNX tensor of ``rank`` axes whose axis ``j`` holds the batch (with
    ``pre``/``post`` values of other axes before/after it), in the canonical layout (batch axis of size 1)."""
    k = numpy.asarray(k)
    if k.ndim > rank:
        raise c.fail(n, f"constant of shape {k.shape} has more axes than the rank-{rank} activation", ShapeError)
    k = k.reshape((1,) * (rank - k.ndim) + k.shape)
    if j is None:  # a file of batch 1: the constant is per sample as it is
        return k[None]
    b = c.batch or 1
    if k.shape[j] == 1:
        k = k.reshape(k.shape[:j] + (1, 1, 1) + k.shape[j + 1:])
    else:
        if k.shape[j] != pre * b * post:
            raise c.fail(n, f"constant of shape {k.shape} does not broadcast on axis {j}", ShapeError)
        k = k.reshape(k.shape[:j] + (pre, b, post) + k.shape[j + 1:])
        if not all(numpy.array_equal(numpy.take(k, i, axis=j + 1), numpy.take(k, 0, axis=j + 1)) for i in range(b)):
            raise c.fail(n, "the constant differs between the samples of the batch")
        k = k[(slice(None),) * (j + 1) + (slice(0, 1),)]
    return numpy.moveaxis(k, j + 1, 0)  # (1, ..., pre, post, ...): the pre/post axes at j + 1, j + 2


def _remap_axis(c: Converter, n: Any, k: int, rank: int, j: int | None, pre: bool, post: bool) -> int:
    k = k + rank if k < 0 else k
    if not 0 <= k < rank:
        raise c.fail(n, f"axis {k} out of range for a rank-{rank} tensor", ShapeError)
    if k == j:
        raise c.fail(n, f"acts along ONNX axis {j}, which holds the batch (merged with other axes or moved); "
                        f"lrpflow keeps samples apart", UnsupportedLayerError)
    return e_axis(k, j, pre, post)


def _generic(c: Converter, n: Any, handler: Callable[[Converter, Any], None]) -> None:
    from onnx import helper

    acts = [k for k, i in enumerate(n.input) if i and not c.is_const(i)]
    first = get(c, n.input[acts[0]], n)
    rank, j = len(first.shape), first.batch_axis
    pre_n = post_n = 1
    if j is not None:
        batch_axes = first.axes()[j]
        pre_n = math.prod(first.atoms[a] for a in batch_axes[:batch_axes.index(0)])
        post_n = math.prod(first.atoms[a] for a in batch_axes[batch_axes.index(0) + 1:])
    inputs = list(n.input)
    base = _base(n)
    struct = None
    for k in acts:
        v = get(c, n.input[k], n)
        if len(v.shape) != rank or v.batch_axis != j:
            raise c.fail(n, f"operands of shapes {first.shape} and {v.shape} hold the batch on different axes",
                         UnsupportedLayerError)
        cv, pre, post = canonical(c, v, f"{base}.in{k}")
        if struct is None:
            struct = (pre, post)
        elif struct != (pre, post):
            raise c.fail(n, "operands merge the batch with different axes", UnsupportedLayerError)
        proxy = f"{n.input[k]}@{cv.node}"
        c.values[proxy] = Value(cv.node, cv.atoms[1:], "plain")
        c.uses[proxy] = c.uses.get(n.input[k], 0)
        inputs[k] = proxy
    pre, post = struct  # type: ignore[misc]
    for k, name in enumerate(n.input):
        if name and c.is_const(name) and n.op_type in BROADCAST:
            kk = _fit_const(_const_in(c, n, c.consts[name], j, rank, pre_n, post_n), pre, post, j)
            inputs[k] = f"{name}@{base}.{k}"
            c.consts[inputs[k]] = kk
    attrs = _attrs(n)
    drop: list[int] = []
    op = n.op_type
    if op in ("Softmax", "LayerNormalization", "RMSNormalization", "Concat", "Split", "Gather", "Hardmax", "LogSoftmax"):
        default = {"Softmax": -1 if c.opset >= 13 else 1, "LayerNormalization": -1, "RMSNormalization": -1, "Hardmax": -1,
                   "LogSoftmax": -1}.get(op, 0)
        if op == "Softmax" and c.opset < 13:
            raise c.fail(n, "Softmax below opset 13 flattens the axes after `axis`, batch included here")
        ax = int(attrs.get("axis", default))
        ax = ax + rank if ax < 0 else ax
        if op in ("LayerNormalization", "RMSNormalization") and j is not None and ax <= j:
            raise c.fail(n, f"normalises over ONNX axes {ax}.., which include the batch axis {j}", UnsupportedLayerError)
        attrs["axis"] = _remap_axis(c, n, ax, rank, j, pre, post)
        if op == "Gather" and numpy.asarray(c.const(n.input[1], n, "indices")).ndim == 0:
            drop = [ax]
    if op.startswith("Reduce") or op == "Slice":
        k_axes = 3 if op == "Slice" else 1
        if "axes" in attrs:
            axes = [int(x) for x in attrs["axes"]]
        elif len(n.input) > k_axes and n.input[k_axes]:
            axes = [int(x) for x in numpy.asarray(c.const(n.input[k_axes], n, "axes")).ravel()]
        elif op == "Slice":
            axes = list(range(numpy.asarray(c.const(n.input[1], n, "starts")).size))
        else:
            axes = [k for k in range(rank) if k != j] if not int(attrs.get("noop_with_empty_axes", 0)) else []
        axes = [a + rank if a < 0 else a for a in axes]
        if op == "Slice" and j is not None and j in axes:  # a full slice of the batch axis selects nothing
            starts, ends = (numpy.asarray(c.const(n.input[i], n, w)).ravel() for i, w in ((1, "starts"), (2, "ends")))
            steps = numpy.asarray(c.const(n.input[4], n, "steps")).ravel() if len(n.input) > 4 and n.input[4] else \
                numpy.ones(len(axes), numpy.int64)
            i = axes.index(j)
            if not (starts[i] == 0 and steps[i] == 1 and ends[i] >= first.shape[j]):
                raise c.fail(n, f"slices ONNX axis {j}, which holds the batch", UnsupportedLayerError)
        new = [_remap_axis(c, n, a, rank, j, pre, post) if a != j else 0 for a in axes]
        if op.startswith("Reduce") and not int(attrs.get("keepdims", 1)):
            drop = list(axes)
        if "axes" in attrs:
            attrs["axes"] = new
        else:
            inputs += [""] * (k_axes + 1 - len(inputs))
            inputs[k_axes] = f"{base}.axes@views"
            c.consts[inputs[k_axes]] = numpy.array(new, dtype=numpy.int64)
    if op == "MatMul":
        for k in acts:
            if j is not None and j >= rank - (2 if len(acts) == 2 else 1):
                raise c.fail(n, "the matrix product runs over the ONNX axis that holds the batch", UnsupportedLayerError)
    outs = [f"{o}@views" if o else "" for o in n.output]
    for o, p in zip(n.output, outs):
        if o:
            c.uses[p] = c.uses.get(o, 0)
    proxy = helper.make_node(op, inputs, outs, name=n.name or n.output[0], domain=n.domain, **attrs)
    handler(c, proxy)
    for o, p in zip(n.output, outs):
        if not o or p not in c.values:
            continue
        w = c.as_plain(c.values.pop(p), base)
        jj = None if j is None else j - sum(1 for d in drop if d < j)
        put(c, o, structure(w.node, (first.atoms[0], *w.shape), jj, pre, post))


def _fit_const(k: numpy.ndarray, pre: bool, post: bool, j: int | None) -> numpy.ndarray:
    """Drop the constant's pre/post axes the canonical layout does not have (they have size 1 there)."""
    if j is None:
        return k
    drop = []
    if not pre:
        drop.append(j + 1)
    if not post:
        drop.append(j + 2)
    return k.squeeze(tuple(drop)) if drop else k


def _gemm(c: Converter, n: Any) -> None:
    """``Gemm`` on a 2-D view: a Linear on the last axis of the canonical layout."""
    from lrpflow.layers import Linear

    a = _attrs(n)
    v = get(c, n.input[0], n)
    if int(a.get("transA", 0)) or len(v.shape) != 2 or v.batch_axis not in (0, None):
        raise c.fail(n, f"Gemm on a tensor of shape {v.shape} with the batch on axis {v.batch_axis} (transA="
                        f"{int(a.get('transA', 0))}) is not supported", UnsupportedLayerError)
    cv, pre, post = canonical(c, v, _base(n))
    w, bias = gemm_params(c, n, v.shape[1], "rows of width")
    name = c.add(_base(n), Linear(w.shape[0], w.shape[1], weight=numpy.ascontiguousarray(w), bias=bias), [cv.node])
    c.foldable_bias.add(name)
    put(c, n.output[0], structure(name, (*cv.atoms[:-1], w.shape[1]), v.batch_axis, pre, post))


def _pad(c: Converter, n: Any) -> bool:
    """A Pad that pads nothing is the identity (on any layout); True where handled."""
    a = _attrs(n)
    if "pads" in a:
        pads = [int(p) for p in a["pads"]]
    elif len(n.input) > 1 and n.input[1] and c.is_const(n.input[1]):
        pads = [int(p) for p in numpy.asarray(c.consts[n.input[1]]).ravel()]
    else:
        return False
    if any(pads):
        return False
    name = n.input[0]
    if name in views_of(c):
        views_of(c)[n.output[0]] = views_of(c)[name]
    else:
        c.alias(n.output[0], c.value(name, n))
    return True


# -- dispatch -------------------------------------------------------------------------------------------------------


def _creates_view(c: Converter, n: Any) -> bool:
    """A node on batch-first values whose ONNX result moves or merges the batch axis."""
    if not n.input or n.input[0] not in c.values:
        return False
    v = c.values[n.input[0]]
    if n.op_type == "Transpose":
        perm = [int(p) for p in _attrs(n).get("perm", range(len(v.shape), -1, -1))]
        return bool(perm) and perm[0] != 0
    if n.op_type == "Unsqueeze":
        return 0 in [x + len(v.shape) + 1 + len(axes_arg(c, n)) if x < 0 else x for x in axes_arg(c, n)]
    if n.op_type == "Squeeze":  # the batch axis of a file of batch 1 (an ordinary axis of size 1 there)
        return c.batch == 1 and 0 in [x + len(v.shape) + 1 if x < 0 else x for x in axes_arg(c, n)]
    if n.op_type == "Reshape" and c.batch is not None and c.is_const(n.input[1]):
        rows = getattr(c, "token_rows", {})
        if n.input[0] in rows:
            return False
        target = [int(s) for s in numpy.asarray(c.consts[n.input[1]]).ravel()]
        size = math.prod(v.shape)
        if len(target) == 1:
            return False  # the batch merged into one axis: only a Gather that selects per sample may follow
        try:
            full = target_shape(c, n, (c.batch, *v.shape))
        except Exception:  # noqa: BLE001 - the ordinary handler reports it
            return False
        return not (full[0] == c.batch and math.prod(full[1:]) == size)
    return False


SPECIAL: dict[str, Callable[[Converter, Any], None]] = {**BOOKKEEPING, "Gemm": _gemm}


def install() -> None:
    """Wrap every registered handler: nodes on views (or creating one) go here, the others as before."""
    for op, handler in list(HANDLERS.items()):
        if getattr(handler, "_views", False):
            continue

        def wrapped(c: Converter, n: Any, _h: Callable[[Converter, Any], None] = handler, _op: str = op) -> None:
            if not hasattr(c, "views"):
                c.views = {}  # type: ignore[attr-defined]
            if not hasattr(c, "view_cache"):
                c.view_cache = {}  # type: ignore[attr-defined]
            if _op == "Pad" and _pad(c, n):
                return
            on_view = any(i in c.views for i in n.input if i)
            if on_view or (_op in SPECIAL and _creates_view(c, n)):
                if _op in SPECIAL:
                    SPECIAL[_op](c, n)
                    return
                if _op in GENERIC:
                    _generic(c, n, _h)
                    return
            _h(c, n)

        wrapped._views = True  # type: ignore[attr-defined]
        HANDLERS[op] = wrapped
