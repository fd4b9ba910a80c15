"""More layers that only move values: Crop (spatial cropping), Permute (axis permutation), Embedding."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import DataFormatError, ShapeError
from lrpflow.layers import _windows as win
from lrpflow.layers.base import Shape, ShapeLayer, check_rank


class Crop(ShapeLayer):
    """Remove ``(top, bottom, left, right)`` rows/columns of NHWC images; relevance is padded back with zeros."""

    kinds = frozenset({"shape", "crop"})

    def __init__(self, cropping: Any) -> None:
        super().__init__()
        self.crops = win.pads4(cropping)
        if min(self.crops) < 0:
            raise ShapeError(f"Crop: cropping must be ≥ 0, got {self.crops}")

    def config(self) -> dict[str, Any]:
        return {"cropping": self.crops}

    def forward(self, *xs: Any) -> Any:
        t, b, l, r = self.crops
        x = xs[0]
        return x[:, t : x.shape[1] - b, l : x.shape[2] - r, :]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [win.pad(g, self.crops)]

    def output_shape(self, *shapes: Shape) -> Shape:
        check_rank(shapes[0], 3, "Crop", "images H×W×C")
        t, b, l, r = self.crops
        h, w, c = shapes[0]
        if h - t - b < 1 or w - l - r < 1:
            raise ShapeError(f"Crop{self.crops} leaves nothing of an input of shape {shapes[0]}")
        return (h - t - b, w - l - r, c)


class Permute(ShapeLayer):
    """Permute the sample axes: ``dims`` is 1-based over the axes after the batch (Keras' ``Permute``)."""

    kinds = frozenset({"shape", "permute"})

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ShapeError(f"Permute: dims must be a permutation of 1..{len(self.dims)}, got {self.dims}")

    def config(self) -> dict[str, Any]:
        return {"dims": self.dims}

    def forward(self, *xs: Any) -> Any:
        return xs[0].transpose((0, *self.dims))

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        inverse = numpy.argsort((0, *self.dims))
        return [g.transpose(tuple(int(i) for i in inverse))]

    def output_shape(self, *shapes: Shape) -> Shape:
        s = shapes[0]
        if len(s) != len(self.dims):
            raise ShapeError(f"Permute{self.dims} expects samples with {len(self.dims)} axes, got shape {s}")
        return tuple(s[d - 1] for d in self.dims)


class Embedding(ShapeLayer):
    """Token ids ``(N, ...)`` → vectors ``(N, ..., D)``: row ``id`` of ``weight[V, D]``.

    Ids are integers, so there is no gradient with respect to them: the backward signal a
    token receives is the **sum over its vector** (the relevance, or gradient, arriving at
    the embedding output summed over D — iNNvestigate's convention for embeddings).
    """

    kinds = frozenset({"embedding", "gather"})
    keeps_nonneg = False
    param_names = ("weight",)

    def __init__(self, weight: Any) -> None:
        super().__init__()
        if len(getattr(weight, "shape", ())) != 2:
            raise ShapeError(f"Embedding: weight must be a (vocabulary, dim) matrix, got shape {getattr(weight, 'shape', None)}")
        self.weight = weight

    def forward(self, *xs: Any) -> Any:
        xp = get_namespace(xs[0])
        w = self.params_like(xs[0])["weight"] if xs[0].dtype.kind == "f" else xp.asarray(self.weight)
        ids = xs[0].astype(numpy.int64)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= w.shape[0] or bool((ids != xs[0]).any())):
            raise DataFormatError(f"Embedding: token ids must be integers in [0, {w.shape[0]}), "
                                  f"got values from {float(xs[0].min())} to {float(xs[0].max())}")
        return w[ids]

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        return [g.sum(axis=-1)]

    def output_shape(self, *shapes: Shape) -> Shape:
        return (*shapes[0], int(self.weight.shape[1]))
