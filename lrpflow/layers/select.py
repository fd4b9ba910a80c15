"""Selecting part of an activation: ``Slice`` (ONNX Slice/Split/Gather of one index on activations).

A shape layer: values are copied, relevance moves back to the selected positions
unchanged and the positions not selected get none.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ShapeError
from lrpflow.layers.base import Shape, ShapeLayer


class Slice(ShapeLayer):
    """``y = x[:, ...]`` with ``slices`` ``{axis: (start, stop, step)}`` or ``[(axis, start, stop, step), ...]``
    (sample axes, 0-based, without the batch axis)."""

    kinds = frozenset({"shape", "slice"})

    def __init__(self, slices: dict[int, Sequence[int]] | Sequence[Sequence[int]]) -> None:
        super().__init__()
        items = slices.items() if isinstance(slices, dict) else ((s[0], s[1:]) for s in slices)
        self.slices = {int(a): tuple(int(v) for v in spec) for a, spec in items}
        if any(len(v) != 3 for v in self.slices.values()):
            raise ShapeError(f"Slice: give (start, stop, step) per axis, got {slices!r}")
        for a, (start, stop, step) in self.slices.items():
            if a < 0 or step == 0:
                raise ShapeError(f"Slice: axis {a} must be ≥ 0 and step ≠ 0, got {(start, stop, step)}")

    def config(self) -> dict[str, Any]:
        return {"slices": [[a, *v] for a, v in self.slices.items()]}

    def _index(self, ndim: int) -> tuple[Any, ...]:
        idx = [slice(None)] * ndim
        for a, (start, stop, step) in self.slices.items():
            idx[a + 1] = slice(start, stop, step)
        return tuple(idx)

    def forward(self, *xs: Any) -> Any:
        return xs[0][self._index(xs[0].ndim)]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        out = get_namespace(g).zeros(xs[0].shape, dtype=g.dtype)
        out[self._index(g.ndim)] = g
        return [out]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = list(shapes[0])
        for a, (start, stop, step) in self.slices.items():
            if a >= len(s):
                raise ShapeError(f"Slice on axis {a} of samples of shape {tuple(shapes[0])}")
            s[a] = len(range(*slice(start, stop, step).indices(s[a])))
            if s[a] == 0:
                raise ShapeError(f"Slice {self.slices[a]} of axis {a} (size {shapes[0][a]}) is empty")
        return tuple(s)


class Take(ShapeLayer):
    """``y[n] = x[n].ravel()[index]`` (an ONNX ``Gather`` on a sample's values; ``index`` any shape).

    Relevance moves back to the positions it was taken from; a position taken twice gets both parts.
    """

    kinds = frozenset({"shape", "take", "gather"})

    def __init__(self, index: Any) -> None:
        super().__init__()
        import numpy

        self.index = numpy.asarray(index, dtype=numpy.int64)
        if self.index.size and self.index.min() < 0:
            raise ShapeError("Take: indices must be ≥ 0")
        self._unique = numpy.unique(self.index).size == self.index.size

    def config(self) -> dict[str, Any]:
        return {"index": self.index.tolist()}

    def forward(self, *xs: Any) -> Any:
        x = xs[0]
        idx = get_namespace(x).asarray(self.index.ravel())
        return x.reshape(x.shape[0], -1)[:, idx].reshape((x.shape[0], *self.index.shape))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        x = xs[0]
        out = xp.zeros((x.shape[0], x[0].size), dtype=g.dtype)
        idx = xp.asarray(self.index.ravel())
        flat = g.reshape(g.shape[0], -1)
        if self._unique:
            out[:, idx] = flat
        elif xp.__name__ == "numpy":
            xp.add.at(out, (slice(None), idx), flat)
        else:  # cupy
            import cupyx  # type: ignore[import-not-found]

            cupyx.scatter_add(out, (slice(None), idx), flat)
        return [out.reshape(x.shape)]

    def output_shape(self, *shapes: Shape) -> Shape:
        import math

        size = math.prod(shapes[0])
        if self.index.size and int(self.index.max()) >= size:
            raise ShapeError(f"Take: index {int(self.index.max())} out of range for samples of {size} values")
        return tuple(int(s) for s in self.index.shape)


def _edge_index(n: int, before: int, after: int, mode: str) -> Any:
    """Source row of each padded row: ``reflect`` mirrors without repeating the border, ``edge`` repeats it."""
    import numpy

    i = numpy.arange(-before, n + after)
    if mode == "edge":
        return numpy.clip(i, 0, n - 1)
    period = 2 * (n - 1)
    i = numpy.abs(i) % period if period else numpy.zeros_like(i)
    return numpy.where(i >= n, period - i, i)


class PadEdges(ShapeLayer):
    """Padding of the spatial axes of NHWC images by copies of the image: ``reflect`` or ``edge``.

    Values are copied, so relevance at a copy moves back to (adds up at) its source pixel.
    """

    kinds = frozenset({"shape", "pad"})

    def __init__(self, padding: Sequence[int], mode: str = "reflect") -> None:
        super().__init__()
        from lrpflow.layers import _windows as win

        self.pads = win.pads4(padding)
        if mode not in ("reflect", "edge") or min(self.pads) < 0:
            raise ShapeError(f"PadEdges: mode must be 'reflect' or 'edge' and padding ≥ 0, got {mode!r}, {padding!r}")
        self.mode = mode

    def config(self) -> dict[str, Any]:
        return {"padding": self.pads, "mode": self.mode}

    def _onehots(self, shape: tuple[int, ...], like: Any) -> tuple[Any, Any]:
        import numpy

        xp = get_namespace(like)
        t, b, l, r = self.pads
        ih, iw = _edge_index(shape[1], t, b, self.mode), _edge_index(shape[2], l, r, self.mode)
        return (xp.asarray(numpy.eye(shape[1])[ih], dtype=like.dtype), xp.asarray(numpy.eye(shape[2])[iw], dtype=like.dtype))

    def forward(self, *xs: Any) -> Any:
        x = xs[0]
        xp = get_namespace(x)
        t, b, l, r = self.pads
        ih = xp.asarray(_edge_index(x.shape[1], t, b, self.mode))
        iw = xp.asarray(_edge_index(x.shape[2], l, r, self.mode))
        return x[:, ih][:, :, iw]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        xp = get_namespace(g)
        ah, aw = self._onehots(xs[0].shape, g)
        return [xp.einsum("pi,npjc->nijc", ah, xp.einsum("qj,npqc->npjc", aw, g))]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        if len(s) != 3:
            raise ShapeError(f"PadEdges expects images H×W×C (without the batch axis), got shape {s}")
        t, b, l, r = self.pads
        if self.mode == "reflect" and (max(t, b) >= s[0] or max(l, r) >= s[1]):
            raise ShapeError(f"PadEdges: reflect padding {self.pads} must be smaller than the image {s[:2]}")
        return (s[0] + t + b, s[1] + l + r, s[2])
