"""Crash recovery of an unfinished store: superblock repair, damage inspection, salvage.

A writer killed during a flush can leave the file with metadata past the end-of-allocation
address in its superblock (:func:`repair_eoa` raises it, as ``h5clear --increment`` does),
or with part of the killed batch's metadata: :func:`usable_rows` finds how many rows are
intact and :func:`salvage` rebuilds the file from them before the writer continues.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy

from lrpflow.errors import LrpflowError, StoreError
from lrpflow.store.layout import (
    _LIBVER, _MAX_CHUNK_BYTES, StoreLayout, _create_datasets, _dataset_props, _fsync, read_attr, read_attrs, set_attrs,
)

logger = logging.getLogger("lrpflow.store")


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5 metadata (``H5_checksum_lookup3``)."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    def word(i: int) -> int:
        return int.from_bytes(data[i:i + 4].ljust(4, b"\0"), "little")

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & mask
    i = 0
    while n > 12:
        a, b, c = (a + word(i)) & mask, (b + word(i + 4)) & mask, (c + word(i + 8)) & mask
        a = ((a - c) & mask) ^ rot(c, 4); c = (c + b) & mask  # noqa: E702 - the mix, step by step
        b = ((b - a) & mask) ^ rot(a, 6); a = (a + c) & mask  # noqa: E702
        c = ((c - b) & mask) ^ rot(b, 8); b = (b + a) & mask  # noqa: E702
        a = ((a - c) & mask) ^ rot(c, 16); c = (c + b) & mask  # noqa: E702
        b = ((b - a) & mask) ^ rot(a, 19); a = (a + c) & mask  # noqa: E702
        c = ((c - b) & mask) ^ rot(b, 4); b = (b + a) & mask  # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & mask
    b = (b + int.from_bytes(tail[4:8], "little")) & mask
    c = (c + int.from_bytes(tail[8:12], "little")) & mask
    c = ((c ^ b) - rot(b, 14)) & mask
    a = ((a ^ c) - rot(c, 11)) & mask
    b = ((b ^ a) - rot(a, 25)) & mask
    c = ((c ^ b) - rot(b, 16)) & mask
    a = ((a ^ c) - rot(c, 4)) & mask
    b = ((b ^ a) - rot(a, 14)) & mask
    c = ((c ^ b) - rot(b, 24)) & mask
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def repair_eoa(path: str) -> bool:
    """After a crash: let the superblock's end-of-allocation cover the whole file (``h5clear --increment``).

    A writer killed during a flush can leave metadata pointing past the end address
    recorded in the superblock ("addr overflow" on reopening). Raising that address to
    the file size only marks the tail as allocated. Handles the version 2/3 superblock
    at offset 0 with 8-byte addresses, the one lrpflow writes; returns True if it patched.
    """
    with open(path, "r+b") as fh:
        try:  # HDF5 holds a flock on files it has open: never patch a file a live writer holds
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        except BlockingIOError as err:
            raise LrpflowError(f"{path} is open in another process (is a run still writing it?)") from err
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(48)
        if len(head) < 48 or head[:8] != _SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
            return False
        if int.from_bytes(head[44:48], "little") != _lookup3(head[:44]):
            return False
        eoa = int.from_bytes(head[28:36], "little")
        if eoa >= size:
            return False
        patched = head[:28] + size.to_bytes(8, "little") + head[36:44]
        fh.seek(0)
        fh.write(patched + _lookup3(patched).to_bytes(4, "little"))
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("%s: end of allocation %d < file size %d after a crash; raised it", path, eoa, size)
    return True


def usable_rows(f: h5py.File, specs: Mapping[str, tuple[str, Any, Any, bool]], rows: int, align: int) -> int | None:
    """None if every dataset is exactly as the counter ``rows`` says; else the rows that can be kept.

    Checks each dataset's extent and that its chunk index holds exactly the chunks of
    the complete rows; the usable rows are those whose chunks are all present, rounded
    down to ``align`` (the commit alignment).
    """
    clean = True
    usable = rows
    for h5path, _, _, _ in specs.values():
        d = f[h5path]
        if d.chunks is None:  # a joined (virtual) store is never resumed
            continue
        step = int(d.chunks[0])
        expected = -(-rows // step)
        try:
            count = d.id.get_num_chunks()
        except Exception:  # noqa: BLE001 - any failure to read the chunk index means: rebuild
            count = -1
        if d.shape[0] == rows and count == expected:
            continue
        clean = False
        zeros = (0,) * (d.ndim - 1)
        for k in range(expected):
            try:
                info = d.id.get_chunk_info_by_coord((k * step, *zeros))
                present = info.byte_offset is not None
            except Exception:  # noqa: BLE001
                present = False
            if not present:
                usable = min(usable, k * step)
                break
    if clean:
        return None
    return usable - usable % align


def salvage(partial: str, rows: int, layout: StoreLayout) -> None:
    """Rebuild a partial store from its first ``rows`` rows (same attributes and dataset settings).

    Objects are reached by path only, and only the complete rows are read: the chunk
    index of the killed batch may be damaged, and walking the file would touch it.
    """
    tmp = f"{partial}.{os.getpid()}.salvage"
    logger.warning("%s was killed while writing; rebuilding it from its %d complete row(s)", partial, rows)
    try:
        with h5py.File(partial, "r") as src, h5py.File(tmp, "w", libver=_LIBVER) as dst:
            set_attrs(dst.attrs, read_attrs(src))
            specs = layout.datasets()
            props = {field: _dataset_props(src[h5path]) for field, (h5path, _, _, _) in specs.items()}
            _create_datasets(dst, layout, props, rows)
            for field, (h5path, shape, dt, _) in specs.items():
                chunk = int(props[field]["chunks"][0])
                row_bytes = max(1, dt.itemsize * int(numpy.prod(shape, dtype=numpy.int64)))
                step = max(1, _MAX_CHUNK_BYTES // (row_bytes * chunk)) * chunk  # whole chunks, ~16 MiB
                for a in range(0, rows, step):
                    dst[h5path][a:min(rows, a + step)] = src[h5path][a:min(rows, a + step)]
            dst.attrs["rows_complete"] = rows
            dst.attrs["complete"] = False
        _fsync(tmp)
        os.replace(tmp, partial)
    except LrpflowError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes h5py raise
        if os.path.exists(tmp):
            os.remove(tmp)
        raise StoreError(f"cannot recover the unfinished store {partial}: it is damaged within its first {rows} "
                         f"complete row(s) ({type(err).__name__}: {err}); store.overwrite=true starts again") from err
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def salvageable(path: str) -> str:
    """What of a damaged store can still be read: "its first K of N complete rows read back intact"."""
    try:
        with h5py.File(path, "r") as f:
            rows = int(read_attr(f, "rows_complete"))
            names = [k for k in ("relevance", "logits", "target", "label", "index", "conservation") if k in f]
            if "relevance" not in names:
                return "no rows can be salvaged (its datasets are gone); store.overwrite=true starts again"
            good = rows
            for name in names:
                d = f[name]
                step = int(d.chunks[0]) if d.chunks else max(1, rows)
                for a in range(0, min(good, d.shape[0]), step):
                    try:
                        d[a:min(good, a + step)]
                    except Exception:  # noqa: BLE001 - the first unreadable block ends what can be kept
                        good = a
                        break
                good = min(good, d.shape[0])
    except Exception:  # noqa: BLE001 - not even its header can be read
        return "nothing in it can be read back; store.overwrite=true starts again"
    return (f"its first {good} of {rows} complete row(s) read back intact (ResultStore.open(path).read(rows="
            f"slice(0, {good})) gets them); store.overwrite=true starts again")
