"""The example plugin's hook implementations: a rule, a colormap, a data reader and a step."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy

import lrpflow
from lrpflow.backend import get_namespace, to_numpy
from lrpflow.errors import ConfigError, DataFormatError
from lrpflow.rules import Rule
from lrpflow.rules.base import Contribution, modified_gradient


@dataclass(frozen=True)
class EpsilonStd(Rule):
    """LRP-ε with a data-dependent ε: ``ε_n = factor · std_j(z_nj)`` per layer and sample.

    Notes
    -----
    ``R_i = Σ_j z_ij / (z_j + ε_n·s(z_j)) · R_j``; Montavon et al. (2019) suggest ε ≈ 0.25 std.
    """

    factor: float = 0.25
    bias: bool = True

    def __post_init__(self) -> None:
        if not numpy.isfinite(self.factor) or self.factor < 0:
            raise ConfigError(f"rule 'epsilon_std': factor must be a finite number ≥ 0, got {self.factor}")

    def linear(self, layer: Any, xs: Sequence[Any], y: Any, r: Any, ctx: Any) -> list[Any]:
        factor = self.factor

        def divide(a: Any, z: Any) -> Any:
            xp = get_namespace(z)
            axes = tuple(range(1, z.ndim))
            eps = z.std(axis=axes, keepdims=True) * factor + xp.asarray(1e-12, dtype=z.dtype)
            return a / (z + xp.where(z >= 0, eps, -eps))

        bias = (lambda b: b) if self.bias else None
        return modified_gradient(layer, xs, r, [Contribution(bias=bias)], ctx, divide)


def cold_hot(t: Any) -> numpy.ndarray:
    """``t ∈ [−1, 1]`` → RGB: negative black→blue, positive black→orange→white.

    Notes
    -----
    ``t < 0``: ``(0, 0, |t|)``; ``t ≥ 0``: ``(min(1, 2t), max(0, 2t − 0.5)·(2/3), max(0, 2t − 1))``.
    """
    t = numpy.clip(numpy.asarray(t, dtype=float), -1.0, 1.0)
    pos = numpy.maximum(t, 0.0)
    neg = numpy.maximum(-t, 0.0)
    r = numpy.minimum(1.0, 2 * pos)
    g = numpy.maximum(0.0, 2 * pos - 0.5) * (2.0 / 3.0)
    b = numpy.maximum(0.0, 2 * pos - 1.0) + neg
    return numpy.stack([r, g, numpy.minimum(b, 1.0)], axis=-1)


def read_csv(path: str, *, delimiter: str = ",", header: bool | None = None, dtype: str = "float32") -> numpy.ndarray:
    """One sample per line; a first line that is not numeric is taken as a header."""
    rows: list[list[float]] = []
    try:
        with open(path, newline="") as f:
            for lineno, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    values = [float(c) for c in row]
                except ValueError:
                    if lineno == 1 and header is not False:
                        continue
                    raise DataFormatError(f"{path}, line {lineno}: non-numeric value in {row!r}") from None
                if rows and len(values) != len(rows[0]):
                    raise DataFormatError(f"{path}, line {lineno}: {len(values)} values, expected {len(rows[0])}")
                rows.append(values)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataFormatError(f"{path}: cannot read CSV: {err}") from err
    if not rows:
        raise DataFormatError(f"{path}: no samples")
    return numpy.asarray(rows, dtype=dtype)


class RelevanceStats:
    """Pipeline step: mean |R| per input feature over the whole run, saved as .npy and a PNG."""

    def setup(self, state: Any) -> None:
        self.total = None
        self.count = 0

    def process(self, state: Any) -> None:
        r = numpy.abs(to_numpy(state.explanation.relevance)).astype(numpy.float64)
        s = r.sum(axis=0)
        self.total = s if self.total is None else self.total + s
        self.count += r.shape[0]

    def finish(self, state: Any) -> None:
        if self.total is None:
            return
        mean = self.total / self.count
        out = os.path.join(state.output_dir, "relevance_stats.npy")
        numpy.save(out, mean)
        files = [out]
        img = mean.sum(axis=-1) if mean.ndim == 3 else mean
        if img.ndim == 1 and int(numpy.sqrt(img.size)) ** 2 == img.size:
            img = img.reshape(int(numpy.sqrt(img.size)), -1)
        if img.ndim == 2:
            png = os.path.join(state.output_dir, "relevance_stats.png")
            rgb = lrpflow.render.hm_to_rgb(img, scaling=4, cmap="cold_hot")
            lrpflow.render.save_image([rgb], png, gap=0)
            files.append(png)
        state.outputs["relevance_stats"] = files


@lrpflow.hookimpl
def lrpflow_register_rules(registry):  # noqa: ANN001
    registry.add("epsilon_std", EpsilonStd)


@lrpflow.hookimpl
def lrpflow_register_colormaps(registry):  # noqa: ANN001
    registry.add("cold_hot", cold_hot, aliases=("cold-hot",))


@lrpflow.hookimpl
def lrpflow_register_data_readers(registry):  # noqa: ANN001
    registry.add("csv", read_csv, suffixes=(".csv",))


@lrpflow.hookimpl
def lrpflow_register_steps(registry):  # noqa: ANN001
    registry.add("relevance_stats", RelevanceStats)
