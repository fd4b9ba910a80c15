"""Datasets shipped inside lrpflow, readable offline by name.

``digits``: the optical recognition of handwritten digits set (UCI, 1797 8×8 images of
0..16, via scikit-learn's ``load_digits``; see ``lrpflow/io/bundled/README.md``), as
(N, 8, 8, 1) float32 in [0, 1] with integer labels 0..9.
"""
from __future__ import annotations

import os
import numpy

from lrpflow.errors import DataFormatError
from lrpflow.io.source import ArraySource, DataSource

BUNDLED = os.path.join(os.path.dirname(__file__), "bundled")


def bundled_path(name: str) -> str:
    """Path of a file shipped in ``lrpflow/io/bundled``."""
    path = os.path.join(BUNDLED, name)
    if not os.path.isfile(path):
        raise DataFormatError(f"bundled data file {name!r} is missing from the installation ({path}); "
                              f"reinstall lrpflow with its package data")
    return path


def read_digits(path: str | None = None, part: str = "all") -> DataSource:
    """The bundled digits: images (N, 8, 8, 1) float32 in [0, 1], ``labels`` (N,) int64.

    ``part``: ``"all"`` (1797), ``"train"`` (the first 1500) or ``"test"`` (the last 297).
    """
    with numpy.load(bundled_path("digits.npz"), allow_pickle=False) as npz:
        x = npz["images"].astype(numpy.float32)[..., None] / numpy.float32(16.0)
        y = npz["labels"].astype(numpy.int64)
    parts = {"all": slice(None), "train": slice(0, 1500), "test": slice(1500, None)}
    if part not in parts:
        raise DataFormatError(f"digits: part must be one of {', '.join(parts)}, got {part!r}")
    sl = parts[part]
    return ArraySource(x[sl], "digits", labels=y[sl])
