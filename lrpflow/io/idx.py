"""MNIST's IDX files (``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, optionally ``.gz``).

Layout: two zero bytes, a type byte, the number of dimensions, then one big-endian
uint32 per dimension, then the values in C order, big-endian::

    0x08 uint8 · 0x09 int8 · 0x0B int16 · 0x0C int32 · 0x0D float32 · 0x0E float64

Raw files are memory-mapped after the header; ``.gz`` files are streamed (gzip's
stored length is checked against the header before anything is allocated).
"""
from __future__ import annotations

import gzip
import os
import struct
from typing import Any, BinaryIO

import numpy

from lrpflow.errors import DataFormatError, LrpflowError
from lrpflow.io.arrays import MMAP_THRESHOLD, StreamSource, file_size
from lrpflow.io.files import atomic_write
from lrpflow.io.source import ArraySource, DataSource, check_sample_count

TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODES: dict[str, int] = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
#: deflate never compresses better than about 1032:1
MAX_DEFLATE_RATIO = 1032
#: File-name patterns the reader is chosen by (besides its name ``idx``).
PATTERNS = ("*-ubyte", "*-ubyte.gz", "*.idx", "*.idx.gz", "*.idx[1-9]", "*.idx[1-9].gz")


def _header(fp: BinaryIO, path: str) -> tuple[numpy.dtype, tuple[int, ...], int]:
    head = fp.read(4)
    if len(head) < 4:
        raise DataFormatError(f"{path}: not an IDX file: only {len(head)} bytes")
    if head[0] != 0 or head[1] != 0 or head[2] not in TYPES or not 1 <= head[3] <= 16:
        raise DataFormatError(f"{path}: bad IDX magic {head.hex()}: expected 0000 <type 08|09|0b|0c|0d|0e> <1..16 dims>")
    ndim = head[3]
    raw = fp.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataFormatError(f"{path}: IDX header ends early: {ndim} dimensions declared")
    dims = struct.unpack(f">{ndim}I", raw)
    return numpy.dtype(TYPES[head[2]]), tuple(int(d) for d in dims), 4 + 4 * ndim


def read_idx(path: str) -> DataSource:
    """An IDX file as a lazy source in its stored dtype (uint8 for MNIST), native byte order per batch."""
    size = file_size(path)
    gz = path.lower().endswith(".gz")
    try:
        if gz:
            with open(path, "rb") as raw:
                if raw.read(2) != b"\x1f\x8b":
                    raise DataFormatError(f"{path}: not a gzip file (bad magic)")
                raw.seek(-4, os.SEEK_END)
                stored = int.from_bytes(raw.read(4), "little")  # uncompressed size mod 2**32
            with gzip.open(path, "rb") as fp:
                dtype, dims, offset = _header(fp, path)
            need = dtype.itemsize * int(numpy.prod(dims, dtype=object))
            check_sample_count(path, dims, dtype.itemsize, MAX_DEFLATE_RATIO * size)
            if (need + offset) % (1 << 32) != stored:
                raise DataFormatError(f"{path}: header declares shape {dims} ({need} bytes), which does not match the "
                                      f"gzip length ({stored} bytes mod 2^32): truncated or corrupt")

            def opener() -> BinaryIO:
                return gzip.open(path, "rb")

            source: DataSource = _Native(StreamSource(path, opener, offset, dims, dtype))
        else:
            with open(path, "rb") as fp:
                dtype, dims, offset = _header(fp, path)
            check_sample_count(path, dims, dtype.itemsize, size - offset)
            need = dtype.itemsize * int(numpy.prod(dims, dtype=object))
            if size - offset != need:
                raise DataFormatError(f"{path}: header declares shape {dims} ({need} bytes) but {size - offset} bytes follow")
            if size >= MMAP_THRESHOLD and need > 0:
                arr: Any = numpy.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dims)
            else:
                with open(path, "rb") as fp:
                    fp.seek(offset)
                    arr = numpy.frombuffer(bytearray(fp.read(need)), dtype=dtype).reshape(dims)
            source = _Native(ArraySource(arr, path))
    except LrpflowError:
        raise
    except Exception as err:  # gzip/zlib errors, EOF, OS errors
        raise DataFormatError(f"{path}: not a readable IDX file: {err}") from err
    return source


class _Native(DataSource):
    """Big-endian rows converted to native byte order."""

    def __init__(self, inner: DataSource) -> None:
        super().__init__(inner.path)
        self.inner = inner
        self._raw_shape = inner._raw_shape
        self._raw_dtype = inner._raw_dtype.newbyteorder("=")

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        return self.inner._rows(start, stop).astype(self._raw_dtype, copy=False)

    def close(self) -> None:
        self.inner.close()


def write_idx(x: Any, path: str) -> None:
    """An array of uint8, int8, int16, int32, float32 or float64 as IDX (gzip-compressed if the name ends in .gz)."""
    arr = numpy.asarray(x)
    code = CODES.get(arr.dtype.str[1:])
    if code is None or arr.ndim == 0 or arr.ndim > 16 or max(arr.shape) >= 1 << 32:
        raise DataFormatError(f"{path}: IDX stores 1..16-D arrays of uint8, int8, int16, int32, float32 or float64, "
                              f"got {arr.dtype} of shape {arr.shape}")
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(arr.dtype.newbyteorder(">"), copy=False).tobytes()

    def write(tmp: str) -> None:
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(tmp, "wb") as f:
            f.write(payload)

    atomic_write(path, write)
