"""Lazy data sources: a dataset that is read in batches (memory-mapped or streamed), never all at once.

``open_data(path)`` returns a :class:`DataSource`; ``load_data(path)`` reads it whole.
A source knows its ``shape`` (N first) and ``dtype`` without reading the samples;
``source[a:b]`` reads rows ``a..b``; ``source.batches(64)`` streams :class:`Batch` es.
Preprocessing (:class:`Preprocess`: dtype, divide, scale, shift, reshape, spatial padding)
is applied batch by batch, so the toolbox's MNIST preparation (``x / 127.5 − 1``,
28×28×1, padded to 32×32 with −1) costs no extra memory.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy

from lrpflow.errors import DataFormatError


class Batch(NamedTuple):
    """Rows ``start .. start + len(x)`` of a source, with their labels (or None)."""

    start: int
    x: numpy.ndarray
    labels: numpy.ndarray | None


@dataclass(frozen=True)
class Preprocess:
    """Per-batch transformation ``pad(reshape(x / divide · scale + shift))`` in ``dtype``.

    Parameters
    ----------
    dtype : str, optional
        Result dtype (default: float32 when ``divide``/``scale``/``shift``/``pad`` is given, else unchanged).
    divide, scale, shift : float, optional
        ``x / divide · scale + shift``, each step only when given (``divide=127.5, shift=-1``
        maps 0..255 to −1..1 exactly as the toolbox's ``x / 127.5 − 1``).
    reshape : sequence of int, optional
        Shape of one sample after scaling (e.g. ``(28, 28, 1)``).
    pad : int, (rows, cols) or (top, bottom, left, right), optional
        Constant padding of the two spatial axes of (N, H, W, C) samples.
    pad_value : float
        The padding value.
    """

    dtype: str | None = None
    divide: float | None = None
    scale: float | None = None
    shift: float | None = None
    reshape: tuple[int, ...] | None = None
    pad: tuple[int, int, int, int] | None = None
    pad_value: float = 0.0

    @classmethod
    def from_options(cls, dtype: Any = None, divide: Any = None, scale: Any = None, shift: Any = None,
                     reshape: Any = None, pad: Any = None, pad_value: Any = 0.0) -> Preprocess | None:
        """A Preprocess from loose option values, or None when nothing is asked for."""
        if all(v is None for v in (dtype, divide, scale, shift, reshape, pad)):
            return None
        try:
            if dtype is not None:
                dtype = numpy.dtype(dtype).name
            rs = None if reshape is None else tuple(int(s) for s in reshape)
            pads = None
            if pad is not None:
                p = (int(pad),) if isinstance(pad, (int, numpy.integer)) else tuple(int(v) for v in pad)
                pads = {1: p * 4, 2: (p[0], p[0], p[1], p[1]) if len(p) == 2 else None, 4: p}.get(len(p))
                if pads is None or min(pads) < 0:
                    raise ValueError(f"pad must be an int, a pair or (top, bottom, left, right) of non-negative ints, got {pad!r}")
            if divide is not None and float(divide) == 0:
                raise ValueError("divide must not be 0")
            return cls(dtype, None if divide is None else float(divide), None if scale is None else float(scale),
                       None if shift is None else float(shift), rs, pads, float(pad_value))
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"invalid preprocessing option: {err}") from err

    def __call__(self, x: numpy.ndarray) -> numpy.ndarray:
        """One pass into one new buffer (the padded one when padding): each arithmetic step runs
        in ``dtype`` in place, so the result equals casting first, then each step in turn."""
        arithmetic = [(op, v) for op, v in ((numpy.divide, self.divide), (numpy.multiply, self.scale),
                                            (numpy.add, self.shift)) if v is not None]
        dtype = self.dtype
        if dtype is None and (arithmetic or self.pad is not None):
            dtype = "float32" if x.dtype.kind not in "f" else x.dtype.name
        shape = x.shape
        if self.reshape is not None:
            if math.prod(shape[1:]) != math.prod(self.reshape):
                raise DataFormatError(f"cannot reshape samples of shape {shape[1:]} to {self.reshape}")
            shape = (shape[0], *self.reshape)
        if self.pad is None and not arithmetic:
            return (x if dtype is None else x.astype(dtype, copy=False)).reshape(shape)
        if self.pad is None:
            out = target = numpy.empty(shape, dtype)
        else:
            if len(shape) != 4:
                raise DataFormatError(f"pad needs (N, H, W, C) samples, got shape {shape}; use reshape= first")
            t, b, l, r = self.pad
            out = numpy.empty((shape[0], shape[1] + t + b, shape[2] + l + r, shape[3]), dtype)
            h, w = shape[1] + t, shape[2] + l
            for border in (out[:, :t], out[:, h:], out[:, t:h, :l], out[:, t:h, w:]):  # the frame only
                border.fill(self.pad_value)
            target = out[:, t:h, l:w]
        src = x.reshape(shape)
        if not arithmetic:
            target[...] = src
        for op, value in arithmetic:
            op(src, numpy.asarray(value, dtype=out.dtype), out=target, dtype=out.dtype, casting="unsafe")
            src = target
        return out


class DataSource:
    """A dataset of N samples, read lazily in row ranges.

    Subclasses implement :meth:`_rows` (raw rows ``start..stop`` as an ndarray) and set
    ``_raw_shape`` and ``_raw_dtype``; everything else is shared.

    Attributes
    ----------
    path : str
        Where the data comes from (for messages).
    labels : ndarray or None
        One label per sample, if the format has them (npz ``labels``, the digits set) or
        they were given with ``labels=``.
    """

    _raw_shape: tuple[int, ...] = (0,)
    _raw_dtype: numpy.dtype = numpy.dtype("float64")

    def __init__(self, path: str = "<array>") -> None:
        self.path = path
        self.labels: numpy.ndarray | None = None
        self.preprocess: Callable[[numpy.ndarray], numpy.ndarray] | None = None
        self._shape: tuple[int, ...] | None = None
        self._dtype: numpy.dtype | None = None

    # -- to implement --------------------------------------------------------
    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        raise NotImplementedError

    def _take(self, index: numpy.ndarray) -> numpy.ndarray:
        """Rows at sorted unique positions (default: one contiguous read per run)."""
        if index.size == 0:
            return self._rows(0, 0)
        parts, run_start = [], 0
        for k in range(1, index.size + 1):
            if k == index.size or index[k] != index[k - 1] + 1:
                parts.append(self._rows(int(index[run_start]), int(index[k - 1]) + 1))
                run_start = k
        return numpy.concatenate(parts)

    def close(self) -> None:
        """Release open files (a closed source may be reopened implicitly by the next read)."""

    # -- shape and type --------------------------------------------------------
    def _finish(self, x: numpy.ndarray) -> numpy.ndarray:
        x = numpy.asarray(x)
        return self.preprocess(x) if self.preprocess is not None else x

    def _probe(self) -> None:
        if self._shape is None:
            empty = self._finish(numpy.empty((0, *self._raw_shape[1:]), dtype=self._raw_dtype))
            self._shape = (self._raw_shape[0], *empty.shape[1:])
            self._dtype = empty.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the whole dataset, N first (after preprocessing)."""
        self._probe()
        return self._shape  # type: ignore[return-value]

    @property
    def dtype(self) -> numpy.dtype:
        """dtype of the samples (after preprocessing)."""
        self._probe()
        return self._dtype  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self._raw_shape[0]

    # -- reading -----------------------------------------------------------------
    def __getitem__(self, index: Any) -> numpy.ndarray:
        """``source[i]`` one sample, ``source[a:b:s]`` rows, ``source[[i, j]]`` chosen rows."""
        n = len(self)
        if isinstance(index, (int, numpy.integer)):
            i = int(index) + (n if index < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(index)} out of range for {n} samples")
            return self._finish(self._rows(i, i + 1))[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return self._finish(self._rows(start, max(start, stop)))
            return self[numpy.arange(start, stop, step)]
        idx = numpy.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean index must have shape ({n},), got {idx.shape}")
            idx = numpy.flatnonzero(idx)
        if idx.ndim != 1 or not numpy.issubdtype(idx.dtype, numpy.integer):
            raise IndexError(f"index must be an int, a slice or a 1-D integer/boolean array, got {index!r}")
        idx = numpy.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for {n} samples")
        uniq, inverse = numpy.unique(idx, return_inverse=True)
        return self._finish(self._take(uniq))[inverse]

    def read(self) -> numpy.ndarray:
        """Every sample as one ndarray."""
        return self[:]

    def __array__(self, dtype: Any = None, copy: Any = None) -> numpy.ndarray:
        x = self.read()
        return x if dtype is None else x.astype(dtype)

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Rows ``start..stop`` in order, ``batch_size`` at a time, as :class:`Batch` (start, x, labels)."""
        if int(batch_size) < 1:
            raise DataFormatError(f"batch_size must be at least 1, got {batch_size}")
        n = len(self)
        stop = n if stop is None else min(int(stop), n)
        for a in range(max(0, int(start)), stop, int(batch_size)):
            b = min(stop, a + int(batch_size))
            yield Batch(a, self._finish(self._rows(a, b)), None if self.labels is None else self.labels[a:b])

    def __iter__(self) -> Iterator[numpy.ndarray]:
        for batch in self.batches(256):
            yield from batch.x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __enter__(self) -> DataSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ArraySource(DataSource):
    """A source over an array already in memory (or any array-like with shape and slicing)."""

    def __init__(self, array: Any, path: str = "<array>", labels: Any = None) -> None:
        super().__init__(path)
        if not hasattr(array, "shape") or not hasattr(array, "__getitem__"):
            array = numpy.asarray(array)
        if len(array.shape) == 0:
            raise DataFormatError(f"{path}: data must have a sample axis, got a scalar")
        self.array = array
        self._raw_shape = tuple(int(s) for s in array.shape)
        self._raw_dtype = numpy.dtype(array.dtype)
        if labels is not None:
            self.labels = numpy.asarray(labels)

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        return numpy.asarray(self.array[start:stop])

    def _take(self, index: numpy.ndarray) -> numpy.ndarray:
        if isinstance(self.array, numpy.ndarray):
            return self.array[index]
        return super()._take(index)


def attach_labels(source: DataSource, labels: Any) -> DataSource:
    """Give ``source`` labels: an array, or a path read with :func:`lrpflow.io.load_data`."""
    if labels is None:
        return source
    if isinstance(labels, (str, os.PathLike)):
        from lrpflow.io import load_data

        labels = load_data(labels)
    lab = numpy.asarray(labels)
    if lab.ndim == 2 and 1 in lab.shape:  # the toolbox's (N, 1) label columns
        lab = lab.ravel()
    if lab.shape[:1] != (len(source),):
        raise DataFormatError(f"{source.path}: {len(source)} samples but {lab.shape[0] if lab.ndim else 0} labels")
    source.labels = lab
    return source


def as_source(data: Any, path: str = "<array>") -> DataSource:
    """``data`` as a DataSource (a DataSource is returned as is)."""
    return data if isinstance(data, DataSource) else ArraySource(data, path)


def check_sample_count(path: str, declared: Sequence[int], itemsize: int, available: int, what: str = "data") -> None:
    """Raise DataFormatError if ``declared`` dims need more bytes than ``available`` (before allocating)."""
    need = itemsize
    for d in declared:
        need *= int(d)
    if need > available:
        raise DataFormatError(f"{path}: header declares shape {tuple(int(d) for d in declared)} ({need} bytes of {what}), "
                              f"but only {available} bytes follow")
