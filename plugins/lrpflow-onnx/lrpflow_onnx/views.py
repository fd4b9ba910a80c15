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
from lrpflow.layers import Reshape
from lrpflow_onnx.convert import Converter, Value, _attrs, _base
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


def views_of(c: Converter) -> dict[str, View]:
    return c.views  # type: ignore[attr-defined]


def _batch(c: Converter, n: Any) -> int:
    if c.batch is None:
        raise c.fail(n, "moves the batch axis or merges it with others; lrpflow follows the batch through such "
                        "layouts at a known batch size: the file's batch axis is dynamic, pass batch_size=N "
                        "(e.g. load_model(path, batch_size=2)) or export with fixed shapes")
    return c.batch


def of_value(c: Converter, v: Value, n: Any) -> View:
    """A batch-first lrpflow value as a (plain) view."""
    v = c.as_plain(v, _base(n))
    r = len(v.shape) + 1
    if _batch(c, n) == 1:
        return View(v.node, (1, *v.shape), tuple(range(1, r)), (0,) + (1,) * (r - 1))
    return View(v.node, (c.batch, *v.shape), tuple(range(r)), (1,) * r)  # type: ignore[arg-type]


def get(c: Converter, name: str, n: Any) -> View:
    views = views_of(c)
    if name in views:
        return views[name]
    return of_value(c, c.value(name, n), n)


def put(c: Converter, name: str, view: View) -> None:
    """Record ONNX tensor ``name``: a plain value where the view is the lrpflow tensor itself."""
    if view.plain():
        c.values[name] = Value(view.node, view.atoms[1:], "plain")
    else:
        views_of(c)[name] = view


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
    v = views_of(c)[name]
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


def target_shape(c: Converter, n: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
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


def _refine(v: View, target: tuple[int, ...]) -> tuple[list[list[int]], list[int], list[int]] | None:
    """Split ``v``'s atoms so that each target axis is a run of pieces: (piece sizes per atom, number of pieces
    per target axis, the atom of each piece in memory order), or None where the target cuts an atom unevenly or
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
    return [pieces[a] for a in range(len(v.atoms))], counts, flat


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
    reshape_view(c, n, v, target_shape(c, n, v.shape), n.output[0])


def axes_arg(c: Converter, n: Any) -> list[int]:
    a = _attrs(n)
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    if len(n.input) > 1 and n.input[1]:
        return [int(x) for x in numpy.asarray(c.const(n.input[1], n, "axes")).ravel()]
    return []


def _squeeze(c: Converter, n: Any) -> None:
    v = get(c, n.input[0], n)
    shape = list(v.shape)
    axes = axes_arg(c, n)
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


#: operators that only change a view's bookkeeping (and may create one from a batch-first value)
BOOKKEEPING: dict[str, Callable[[Converter, Any], None]] = {
    "Transpose": _transpose, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _squeeze, "Flatten": _flatten,
}
