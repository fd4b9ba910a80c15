"""A structural check of MATLAB 5 (``.mat`` v5/v7) files before a C-accelerated reader sees them.

scipy's and mat-io's MAT 5 readers index type tables with the data type read from the
file; a corrupt type crashes the interpreter (SIGBUS/SIGSEGV) instead of raising. This
walk checks every data element's tag (type in range, small elements ≤ 4 bytes, sizes
inside their parent) through compressed elements, nested matrices and the MCOS
subsystem stream, so that a damaged file becomes an LrpflowError.

The walk inflates every compressed element once; :func:`read_mat5` keeps the plain
numeric matrices it found (real, dense, any integer or float storage type), so a reader
need not inflate them a second time.
"""
from __future__ import annotations

import mmap
import os
import struct
import zlib

import numpy

from lrpflow.errors import LrpflowError

try:  # Intel ISA-L's inflate (the ``fast`` extra): the same deflate streams, about 2x faster
    from isal import isal_zlib as _inflater
except ImportError:  # pragma: no cover - depends on the install
    _inflater = zlib

VALID_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18})
MI_INT8, MI_UINT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 2, 5, 6, 14, 15
#: storage type of a numeric data element -> numpy type code
NUMERIC_STORAGE = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
#: mxDOUBLE_CLASS .. mxUINT64_CLASS (6..15): the numeric array classes
NUMERIC_CLASSES = range(6, 16)
COMPLEX_FLAG = 0x800
MAX_DEPTH = 48
#: deflate never compresses better than about 1032:1
MAX_DEFLATE_RATIO = 1032


class _Bad(Exception):
    pass


def _inflate(data: bytes | memoryview) -> bytes:
    d = _inflater.decompressobj()
    try:
        out = d.decompress(data, MAX_DEFLATE_RATIO * len(data) + (1 << 20))
    except (zlib.error, _inflater.error) as err:
        raise _Bad(f"corrupt compressed element: {err}") from None
    if d.unconsumed_tail:
        raise _Bad("compressed element inflates beyond any valid size")
    return out


def _walk(buf: bytes | memoryview, pos: int, end: int, order: str, depth: int, top: bool) -> list[tuple[int, bytes]]:
    """Check the elements in ``buf[pos:end]``; return (type, payload) of each (payloads of compressed ones inflated)."""
    if depth > MAX_DEPTH:
        raise _Bad("elements nested too deeply")
    out = []
    while pos < end:
        if end - pos < 8:
            if top and not bytes(buf[pos:end]).strip(b"\0"):
                break  # trailing padding
            raise _Bad(f"truncated element tag at byte {pos}")
        first, second = struct.unpack_from(order + "II", buf, pos)
        if first >> 16:  # small data element: type and size packed in 4 bytes
            mtype, size = first & 0xFFFF, first >> 16
            if mtype not in VALID_TYPES or size > 4 or mtype in (MI_MATRIX, MI_COMPRESSED):
                raise _Bad(f"invalid small data element (type {mtype}, {size} bytes) at byte {pos}")
            out.append((mtype, buf[pos + 4 : pos + 4 + size]))
            pos += 8
            continue
        mtype, size = first, second
        if mtype not in VALID_TYPES:
            raise _Bad(f"invalid data type {mtype} at byte {pos}")
        start = pos + 8
        if size > end - start:
            raise _Bad(f"element at byte {pos} declares {size} bytes but only {end - start} remain")
        payload = buf[start : start + size]
        if mtype == MI_COMPRESSED:
            inner = memoryview(_inflate(payload))  # slices of a view do not copy the inflated data
            items = _walk(inner, 0, len(inner), order, depth + 1, False)
            if len(items) != 1:
                raise _Bad(f"compressed element at byte {pos} holds {len(items)} elements, expected 1")
            out.append(items[0])
        elif mtype == MI_MATRIX:
            _walk(payload, 0, len(payload), order, depth + 1, False)
            out.append((mtype, payload))
        else:
            out.append((mtype, payload))
        pos = start + size
        if mtype != MI_COMPRESSED:
            pos = min(end, pos + (-size % 8))  # 8-byte alignment (compressed elements are not padded)
    return out


def check_mat5(path: str, error: type[LrpflowError]) -> None:
    """Raise ``error`` naming ``path`` unless it is a structurally sound MATLAB 5 file."""
    read_mat5(path, (), error)


def read_mat5(path: str, names: tuple[str, ...] | list[str], error: type[LrpflowError]) -> dict[str, numpy.ndarray]:
    """Check ``path`` (as :func:`check_mat5`) and return those of the variables ``names`` that are
    plain numeric matrices, as row-major arrays of their stored type (the values and dtype
    ``scipy.io.loadmat`` returns by default); the others are left to a full reader."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 128:
                raise error(f"{path}: not a MATLAB 5 file ({size} bytes, shorter than the 128-byte header)")
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise error(f"{path}: cannot read file: {err.strerror or err}") from err
    view = memoryview(mapped)
    problem, found = None, {}
    try:
        items, order = _check(view)
        found = _numeric(items, order, set(names)) if names else {}
        del items
    except (_Bad, struct.error) as err:  # keep only the text: the traceback holds views of the mapping
        problem = str(err)
    view.release()
    mapped.close()
    if problem is not None:
        raise error(f"{path}: {problem}")
    return found


def _numeric(items: list[tuple[int, bytes]], order: str, names: set[str]) -> dict[str, numpy.ndarray]:
    """Copies of the real dense numeric matrices among top-level ``items`` whose name is in ``names``."""
    out = {}
    for mtype, payload in items:
        if mtype != MI_MATRIX:
            continue
        parts = _walk(payload, 0, len(payload), order, 1, False)
        if len(parts) != 4 or [p[0] for p in parts[:3]] != [MI_UINT32, MI_INT32, MI_INT8]:
            continue  # complex, sparse, cell, struct, char, object: not a plain matrix
        name = bytes(parts[2][1]).decode("latin-1")
        flags = struct.unpack_from(order + "I", parts[0][1], 0)[0]
        storage, data = parts[3]
        if name not in names or flags & COMPLEX_FLAG or flags & 0xFF not in NUMERIC_CLASSES:
            continue
        if storage not in NUMERIC_STORAGE or len(parts[1][1]) % 4:
            continue
        dims = numpy.frombuffer(parts[1][1], dtype=order + "i4")
        dtype = numpy.dtype(order + NUMERIC_STORAGE[storage])
        if dims.size < 2 or dims.min() < 0 or len(data) != int(numpy.prod(dims, dtype=object)) * dtype.itemsize:
            continue
        arr = numpy.frombuffer(data, dtype=dtype).reshape(tuple(int(d) for d in dims), order="F")
        # always a copy (never a view of the file's mapping), row-major so that rows read fast
        out[name] = numpy.array(arr, dtype=dtype.newbyteorder("="), order="C", copy=True)
    return out


def _check(buf: memoryview) -> tuple[list[tuple[int, bytes]], str]:
    """The top-level elements of a MATLAB 5 file (compressed ones inflated) and its byte order."""
    marker = bytes(buf[126:128])
    if marker not in (b"IM", b"MI"):
        raise _Bad("not a MATLAB 5 or 7.3 file (no MAT-file header; MATLAB 4 files are not supported)")
    order = "<" if marker == b"IM" else ">"
    try:
        subsys = struct.unpack_from(order + "Q", buf, 116)[0]
        items = _walk(buf, 128, len(buf), order, 0, True)
        if 128 <= subsys < len(buf):
            sub = _walk(buf, subsys, len(buf), order, 0, True)  # the subsystem (MCOS) data, walked again from its offset
            if sub and sub[0][0] == MI_MATRIX:
                parts = _walk(sub[0][1], 0, len(sub[0][1]), order, 1, False)
                if len(parts) >= 4 and parts[3][0] == MI_UINT8:
                    stream = parts[3][1]
                    if len(stream) >= 8:
                        inner_marker = bytes(stream[2:4])
                        if inner_marker not in (b"IM", b"MI"):
                            raise _Bad("subsystem stream has no byte-order marker")
                        _walk(stream, 8, len(stream), "<" if inner_marker == b"IM" else ">", 1, True)
    except (_Bad, struct.error) as err:
        raise _Bad(f"damaged MATLAB file: {err}") from None
    return items, order
