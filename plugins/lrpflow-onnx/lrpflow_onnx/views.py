"""ONNX tensors whose layout moves or merges the batch axis, held as *views* of batch-first lrpflow tensors.

lrpflow keeps the batch as axis 0 of every tensor; exporters do not always: ``nn.MultiheadAttention``
runs sequence-first ``(T, N, D)`` and merges the batch with the heads ``(N·H, T, d)``, Swin merges it
with the window count ``(N·W, t, C)``. Such an ONNX tensor ``X`` is recorded as a :class:`View` of an
lrpflow tensor ``E`` (batch first, stored plain): ``E``'s axes are *atoms*, ``X`` lists them in its
memory order (``order``) and each ONNX axis is a run of consecutive atoms (``groups``)::

    X = E.transpose(order).reshape(X.shape)        # row-major: (N·H, T, d) is (N, H, T, d) in memory

Transpose, Squeeze/Unsqueeze and Reshape only change the bookkeeping (a Reshape may split atoms,
an exact per-sample reshape of ``E``); a Reshape that would split the batch atom is refused. Every
other operator gets ``E`` in its *canonical* layout — batch first, then one axis per ONNX axis, the
ONNX axis holding the batch split into the atoms before and after it — and the ordinary handler runs
on it with its axes and constants mapped there, so the lrpflow graph keeps samples apart and its
rules are those of the batch-first model. An operator acting along the axis that holds the batch
(a reduction, softmax, slice or matrix product over it) mixes samples and is refused, naming the
node. Views need the batch size the file was exported with. In a file exported with a batch of 1 every
ONNX tensor is one sample: its batch axis of size 1 is an ordinary axis, the batch atom is in no
ONNX axis (``batch_axis`` None), and nothing can mix samples.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from lrpflow.errors import ShapeError, UnsupportedLayerError
from lrpflow.layers import Reshape, Slice
from lrpflow_onnx.convert import HANDLERS, Converter, Value, _attrs, _base
from lrpflow_onnx.layers import Transpose


@dataclass(frozen=True)
class View:
    """ONNX tensor = ``E.transpose(order).reshape(shape)``; ``E`` (lrpflow node ``node``) has axes ``atoms``
    (``atoms[0]``: the batch), ``groups[k]`` consecutive atoms of ``order`` make ONNX axis ``k``."""

    node: str
    atoms: tuple[int, ...]
    order: tuple[int, ...]
    groups: tuple[int, ...]

    def axes(self) -> list[list[int]]:
        """Per ONNX axis, its atoms (axes of ``E``) in memory order."""
        out, k = [], 0
        for g in self.groups:
            out.append(list(self.order[k:k + g]))
            k += g
        return out

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(math.prod(self.atoms[a] for a in ax) for ax in self.axes())

    @property
    def batch_axis(self) -> int | None:
        """The ONNX axis holding the batch; None in a file exported with a batch of 1 (each ONNX tensor is one
        sample, its batch axis of size 1 an ordinary axis, and the batch atom in no ONNX axis)."""
        return next((k for k, ax in enumerate(self.axes()) if 0 in ax), None)

    def plain(self) -> bool:
        """``E`` is the ONNX tensor itself (with a batch of 1: the ONNX tensor is ``E``'s sample with an axis of 1 before)."""
        n = len(self.atoms)
        if 0 in self.order:
            return self.order == tuple(range(n)) and self.groups == (1,) * n
        return self.order == tuple(range(1, n)) and self.groups == (0,) + (1,) * (n - 1)


def _views(c: Converter) -> dict[str, View]:
    return c.views  # type: ignore[attr-defined]


def _batch(c: Converter, n: Any) -> int:
    if c.batch is None:
        raise c.fail(n, "moves the batch axis or merges it with others; lrpflow follows the batch through such "
                        "layouts when the file fixes the batch size (export with fixed shapes)")
    return c.batch


def of_value(c: Converter, v: Value, n: Any) -> View:
    """A batch-first lrpflow value as a (plain) view."""
    v = c.as_plain(v, _base(n))
    r = len(v.shape) + 1
    if _batch(c, n) == 1:
        return View(v.node, (1, *v.shape), tuple(range(1, r)), (0,) + (1,) * (r - 1))
    return View(v.node, (c.batch, *v.shape), tuple(range(r)), (1,) * r)  # type: ignore[arg-type]


def get(c: Converter, name: str, n: Any) -> View:
    views = _views(c)
    if name in views:
        return views[name]
    return of_value(c, c.value(name, n), n)


def put(c: Converter, name: str, view: View) -> None:
    """Record ONNX tensor ``name``: a plain value where the view is the lrpflow tensor itself."""
    if view.plain():
        c.values[name] = Value(view.node, view.atoms[1:], "plain")
    else:
        _views(c)[name] = view


def _reshape_node(c: Converter, node: str, old: tuple[int, ...], new: tuple[int, ...], base: str) -> str:
    return node if tuple(old) == tuple(new) else c.add(base, Reshape(new), [node])


def canonical(c: Converter, v: View, base: str) -> tuple[View, bool, bool]:
    """``v`` with ``E`` laid out batch first, then one axis per ONNX axis (the batch axis' atoms before and
    after the batch merged into one axis each, where there are any): ``(view, has_pre, has_post)``."""
    axes = v.axes()
    j = v.batch_axis
    cache = c.view_cache  # type: ignore[attr-defined]
    key = ("canonical", v)
    hit = cache.get(key)
    if hit is None:
        node = v.node
        perm = [a for a in v.order if a != 0]
        if perm != sorted(perm):
            node = c.add(f"{base}.to_onnx_order", Transpose([a - 1 for a in perm]), [node])
        before = tuple(v.atoms[a] for a in perm)
        sizes, pre, post = [], False, False
        for k, ax in enumerate(axes):
            if k != j:
                sizes.append(math.prod(v.atoms[a] for a in ax))
                continue
            i = ax.index(0)
            if i > 0:
                sizes.append(math.prod(v.atoms[a] for a in ax[:i]))
                pre = True
            if i < len(ax) - 1:
                sizes.append(math.prod(v.atoms[a] for a in ax[i + 1:]))
                post = True
        node = _reshape_node(c, node, before, tuple(sizes), f"{base}.merge")
        hit = (structure(node, (v.atoms[0], *sizes), j, pre, post), pre, post)
        cache[key] = hit
    return hit


def structure(node: str, atoms: Sequence[int], j: int | None, pre: bool, post: bool) -> View:
    """The canonical view of ``E`` = ``node`` (axes ``atoms``) whose ONNX axis ``j`` holds the batch."""
    if j is None:
        return View(node, tuple(int(a) for a in atoms), tuple(range(1, len(atoms))), (1,) * (len(atoms) - 1))
    rank = len(atoms) - 1 - pre - post + 1
    order, groups, e = [], [], 1
    for k in range(rank):
        if k != j:
            order.append(e)
            groups.append(1)
            e += 1
            continue
        g = 1
        if pre:
            order.append(e)
            e += 1
            g += 1
        order.append(0)
        if post:
            order.append(e)
            e += 1
            g += 1
        groups.append(g)
    return View(node, tuple(int(a) for a in atoms), tuple(order), tuple(groups))


def e_axis(k: int, j: int | None, pre: bool, post: bool) -> int:
    """Axis of the canonical ``E`` (batch at 0) that holds ONNX axis ``k`` ≠ ``j``."""
    return k + 1 if j is None or k < j else k + pre + post


def materialize(c: Converter, name: str, n: Any) -> Value:
    """ONNX tensor ``name`` as a batch-first lrpflow value, for handlers that know no views; refused where
    the batch is not the ONNX tensor's leading axis of its own."""
    v = _views(c)[name]
    if v.batch_axis is None:  # a file of batch 1: the leading ONNX axis must be the (size-1) batch
        if not v.shape or v.shape[0] != 1:
            raise c.fail(n, f"input {name!r} of shape {v.shape} does not lead with the batch axis (size 1 in this "
                            f"file); lrpflow cannot apply {n.op_type} there", UnsupportedLayerError)
        cv, _, _ = canonical(c, v, _base(n))
        return Value(_reshape_node(c, cv.node, cv.atoms[1:], cv.atoms[2:], f"{_base(n)}.batch_first"), cv.atoms[2:],
                     "plain")
    if v.batch_axis != 0 or v.axes()[0] != [0]:
        raise c.fail(n, f"input {name!r} has its batch axis at ONNX axis {v.batch_axis} of shape {v.shape}"
                        f"{' merged with other axes' if len(v.axes()[v.batch_axis]) > 1 else ''}; lrpflow keeps "
                        f"samples apart and cannot apply {n.op_type} there", UnsupportedLayerError)
    cv, _, _ = canonical(c, v, _base(n))
    return Value(cv.node, cv.atoms[1:], "plain")


# -- pure bookkeeping: Transpose, Reshape, Squeeze/Unsqueeze -------------------------------------------------


def _transpose(c: Converter, n: Any) -> None:
    v = get(c, n.input[0], n)
    axes = v.axes()
    perm = [int(p) for p in _attrs(n).get("perm", range(len(axes) - 1, -1, -1))]
    if sorted(perm) != list(range(len(axes))):
        raise c.fail(n, f"perm {perm} is not a permutation of {len(axes)} axes", ShapeError)
    put(c, n.output[0], View(v.node, v.atoms, tuple(a for p in perm for a in axes[p]), tuple(len(axes[p]) for p in perm)))


def _target(c: Converter, n: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Reshape target with 0 (copy) and -1 (infer) resolved against the ONNX shape ``shape``."""
    target = [int(s) for s in numpy.asarray(c.const(n.input[1], n, "the target shape")).ravel()]
    if not int(_attrs(n).get("allowzero", 0)):
        target = [shape[i] if s == 0 and i < len(shape) else s for i, s in enumerate(target)]
    size = math.prod(shape)
    known = math.prod(s for s in target if s != -1)
    if target.count(-1) > 1 or any(s < -1 for s in target) or (-1 in target and (known <= 0 or size % known)):
        raise c.fail(n, f"invalid target shape {target} for a tensor of shape {shape}", ShapeError)
    out = tuple(size // known if s == -1 else s for s in target)
    if math.prod(out) != size:
        raise c.fail(n, f"cannot reshape {shape} to {out}", ShapeError)
    return out


def _refine(v: View, target: tuple[int, ...]) -> tuple[list[list[int]], list[int]] | None:
    """Split ``v``'s atoms so that each target axis is a run of pieces: (pieces per atom, pieces per target
    axis as indices into the memory-ordered piece list), or None where the target cuts an atom unevenly or
    splits the batch. Atoms of size 1 (never the batch) are dropped."""
    seq = [a for a in v.order if a == 0 or v.atoms[a] != 1]
    pieces: dict[int, list[int]] = {a: [] for a in range(len(v.atoms))}
    flat: list[int] = []  # atom of each piece, memory order
    counts = []
    i, rem = 0, v.atoms[seq[0]] if seq else 1
    for t in target:
        need, cnt = t, 0
        while need > 1:
            if i >= len(seq):
                return None
            a = seq[i]
            if rem <= need:
                if need % rem:
                    return None
                pieces[a].append(rem)
                need //= rem
                i += 1
                rem = v.atoms[seq[i]] if i < len(seq) else 1
            else:
                if rem % need or a == 0:
                    return None
                pieces[a].append(need)
                rem //= need
                need = 1
            flat.append(a)
            cnt += 1
        counts.append(cnt)
    if i != len(seq):
        return None
    return [pieces[a] for a in range(len(v.atoms))], counts, flat  # type: ignore[return-value]


def _apply_refinement(c: Converter, v: View, ref: Any, base: str) -> View:
    per_atom, counts, flat = ref
    if 0 not in flat:  # a file of batch 1: the batch keeps its own axis of E
        per_atom[0] = [v.atoms[0]]
    first = {}  # atom → index of its first new axis
    new_atoms: list[int] = []
    for a, ps in enumerate(per_atom):
        first[a] = len(new_atoms)
        new_atoms.extend(ps)
    seen: dict[int, int] = {}
    order = []
    for a in flat:
        order.append(first[a] + seen.get(a, 0))
        seen[a] = seen.get(a, 0) + 1
    node = _reshape_node(c, v.node, v.atoms[1:], tuple(new_atoms[1:]), base)
    return View(node, tuple(new_atoms), tuple(order), tuple(counts))


def _coarse(c: Converter, v: View, base: str) -> View:
    """``E`` in the ONNX tensor's memory order, batch first, the atoms before and after the batch merged."""
    perm = [a for a in v.order if a != 0]
    node = v.node
    if perm != sorted(perm):
        node = c.add(f"{base}.to_onnx_order", Transpose([a - 1 for a in perm]), [node])
    if 0 not in v.order:  # a file of batch 1: one axis of everything
        size = math.prod(v.atoms[1:])
        node = _reshape_node(c, node, tuple(v.atoms[a] for a in perm), (size,), f"{base}.merge")
        return View(node, (v.atoms[0], size), (1,), (1,))
    i = v.order.index(0)
    pre = math.prod(v.atoms[a] for a in v.order[:i])
    post = math.prod(v.atoms[a] for a in v.order[i + 1:])
    sizes = (pre, post)
    node = _reshape_node(c, node, tuple(v.atoms[a] for a in perm), sizes, f"{base}.merge")
    return View(node, (v.atoms[0], *sizes), (1, 0, 2), (3,))


def reshape_view(c: Converter, n: Any, v: View, target: tuple[int, ...], out: str) -> None:
    ref = _refine(v, target)
    if ref is None:
        v = _coarse(c, v, _base(n))
        ref = _refine(v, target)
    if ref is None:
        raise c.fail(n, f"reshaping {v.shape} to {target} splits the batch axis (size {v.atoms[0]}) or mixes it "
                        f"with other data; lrpflow keeps samples apart", UnsupportedLayerError)
    put(c, out, _apply_refinement(c, v, ref, _base(n)))


def _reshape(c: Converter, n: Any) -> None:
    v = get(c, n.input[0], n)
    reshape_view(c, n, v, _target(c, n, v.shape), n.output[0])


def _axes_arg(c: Converter, n: Any) -> list[int]:
    a = _attrs(n)
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    if len(n.input) > 1 and n.input[1]:
        return [int(x) for x in numpy.asarray(c.const(n.input[1], n, "axes")).ravel()]
    return []


def _squeeze(c: Converter, n: Any) -> None:
    v = get(c, n.input[0], n)
    shape = list(v.shape)
    axes = _axes_arg(c, n)
    if n.op_type == "Squeeze":
        drop = {x + len(shape) if x < 0 else x for x in axes} if axes else {k for k, d in enumerate(shape) if d == 1}
        if any(shape[k] != 1 for k in drop):
            raise c.fail(n, f"squeezing axes {sorted(drop)} of size ≠ 1 (shape {tuple(shape)})", ShapeError)
        target = tuple(d for k, d in enumerate(shape) if k not in drop)
    else:
        rank = len(shape) + len(axes)
        for x in sorted(x + rank if x < 0 else x for x in axes):
            shape.insert(x, 1)
        target = tuple(shape)
    reshape_view(c, n, v, target, n.output[0])


def _flatten(c: Converter, n: Any) -> None:
    v = get(c, n.input[0], n)
    axis = int(_attrs(n).get("axis", 1))
    axis = axis + len(v.shape) if axis < 0 else axis
    reshape_view(c, n, v, (math.prod(v.shape[:axis]), math.prod(v.shape[axis:])), n.output[0])


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
    b = numpy.asarray(c.const(n.input[1], n, "B (the weights)"))
    w = b.T if int(a.get("transB", 0)) else b
    if w.ndim != 2 or w.shape[0] != v.shape[1]:
        raise c.fail(n, f"weights of shape {b.shape} do not fit rows of width {v.shape[1]}", ShapeError)
    dtype = w.dtype if w.dtype.kind == "f" else numpy.dtype("float32")
    w = (w.astype(numpy.float64) * float(a.get("alpha", 1.0))).astype(dtype)
    bias = numpy.zeros(w.shape[1], dtype=dtype)
    if len(n.input) > 2 and n.input[2]:
        cc = numpy.asarray(c.const(n.input[2], n, "C (the bias)"))
        if cc.size not in (1, w.shape[1]):
            raise c.fail(n, f"C of shape {cc.shape} is not a bias of {w.shape[1]} outputs")
        bias = (numpy.broadcast_to(cc.astype(numpy.float64).ravel(), (w.shape[1],)) * float(a.get("beta", 1.0))).astype(dtype)
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
    if name in _views(c):
        _views(c)[n.output[0]] = _views(c)[name]
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
        return 0 in [x + len(v.shape) + 1 + len(_axes_arg(c, n)) if x < 0 else x for x in _axes_arg(c, n)]
    if n.op_type == "Squeeze":  # the batch axis of a file of batch 1 (an ordinary axis of size 1 there)
        return c.batch == 1 and 0 in [x + len(v.shape) + 1 if x < 0 else x for x in _axes_arg(c, n)]
    if n.op_type == "Reshape" and c.batch is not None and c.is_const(n.input[1]):
        rows = getattr(c, "token_rows", {})
        if n.input[0] in rows:
            return False
        target = [int(s) for s in numpy.asarray(c.consts[n.input[1]]).ravel()]
        size = math.prod(v.shape)
        if len(target) == 1:
            return False  # the batch merged into one axis: only a Gather that selects per sample may follow
        try:
            full = _target(c, n, (c.batch, *v.shape))
        except Exception:  # noqa: BLE001 - the ordinary handler reports it
            return False
        return not (full[0] == c.batch and math.prod(full[1:]) == size)
    return False


SPECIAL: dict[str, Callable[[Converter, Any], None]] = {
    "Transpose": _transpose, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _squeeze, "Gemm": _gemm,
    "Flatten": _flatten,
}


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
