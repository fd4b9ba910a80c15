"""HDF5 files that stay inside themselves, checked before any reader takes data from them.

HDF5 can make a dataset read bytes from *other* files: external raw storage
(``create_dataset(..., external=[("/etc/passwd", 0, 48)])``), external links
(``h5py.ExternalLink``) and virtual datasets whose sources lie in another file. A model
or data file must never pull host files into weights or data, so every HDF5-based reader
(native models, MATLAB v7.3 models and data) opens files through :func:`open_contained`,
which walks every link of the file once and refuses

- external links (and soft links whose target does not resolve inside the file),
- datasets with external storage,
- virtual datasets with a source outside the file (any source file name but ``"."``),

with the reader's error class, naming the file and the object. Nothing is read from a
dataset during the walk; external links are never followed.

:func:`check_global_heaps` validates the global heap collections (``GCOL``) of a file
from its raw bytes: libhdf5 loops forever on a collection holding a free-space object of
size 0, and variable-length strings live there.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from typing import Any

from lrpflow.errors import LrpflowError

#: deflate never compresses better than about 1032:1 (bound for a declared dataset size)
MAX_DEFLATE_RATIO = 1032
#: object-header bytes of a global heap object: index (2), reference count (2), reserved (4), size (8)
_GHEAP_OBJECT_HEADER = 16
#: ``GCOL`` signature (4), version (1), reserved (3), collection size (8)
_GHEAP_COLLECTION_HEADER = 16


def check_dataset(ds: Any, where: str, error: type[LrpflowError]) -> None:
    """Refuse a dataset whose data live outside its file (external storage, virtual sources elsewhere)."""
    import h5py

    dcpl = ds.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        names = [dcpl.get_external(i)[0] for i in range(min(dcpl.get_external_count(), 3))]
        shown = ", ".join(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)
        raise error(f"{where}: dataset stores its data in external file(s) {shown}; "
                    f"a model or data file must hold its own data")
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        for i in range(dcpl.get_virtual_count()):
            source = dcpl.get_virtual_filename(i)
            if source != ".":
                raise error(f"{where}: virtual dataset takes data from another file {source!r}; "
                            f"a model or data file must hold its own data")


def check_declared_size(ds: Any, where: str, error: type[LrpflowError], file_size: int) -> None:
    """Refuse a dataset that declares more bytes than it can hold: more than it stores (or, when
    compressed, more than deflate's ~1032:1 bound of what it stores), or more than that bound of the file."""
    nbytes = ds.dtype.itemsize * math.prod(ds.shape or ())
    stored = ds.id.get_storage_size()
    filtered = bool(ds.id.get_create_plist().get_nfilters())
    limit = stored * MAX_DEFLATE_RATIO + 4096 if filtered else stored
    if nbytes > limit or nbytes > MAX_DEFLATE_RATIO * max(file_size, 1):
        raise error(f"{where}: declares shape {ds.shape} ({nbytes} bytes) but stores {stored} bytes")


def check_contained(f: Any, path: str, error: type[LrpflowError], sizes: bool = False) -> None:
    """Walk every link of the open HDF5 file ``f``; raise ``error`` on anything reaching outside it.

    ``sizes=True`` also applies :func:`check_declared_size` to every dataset (for readers that
    hand the whole file to a library which reads everything).
    """
    import h5py

    problems: list[str] = []
    file_size = os.path.getsize(path) if sizes else 0

    def visit(name: str, link: Any) -> None:
        if problems:
            return
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{path}: {name!r} is an external link to {link.filename}:{link.path}; "
                            f"links to other files are refused")
        elif isinstance(link, h5py.SoftLink):
            target = link.path
            if f.get(target, getlink=True) is None:
                problems.append(f"{path}: {name!r} is a soft link to {target!r}, which is not in the file")
        else:
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset):
                try:
                    check_dataset(obj, f"{path}: {name!r}", error)
                    if sizes:
                        check_declared_size(obj, f"{path}: {name!r}", error, file_size)
                except LrpflowError as err:
                    problems.append(str(err))

    f.visititems_links(visit)  # h5py >= 3.11; never follows external links
    if problems:
        raise error(problems[0])


def check_global_heaps(path: str, error: type[LrpflowError]) -> None:
    """Refuse a file with a global heap collection libhdf5 would loop on (checked from the raw bytes).

    A collection is ``GCOL``, version 1, its size, then objects ``(index, refs, size, data)``
    padded to 8 bytes; libhdf5 advances by ``16 + align8(size)`` per object, but by ``size``
    alone for the free-space object (index 0), so a free-space object of size 0 never advances.
    """
    try:
        with open(path, "rb") as fh:
            length = os.fstat(fh.fileno()).st_size
            if length == 0:
                return
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise error(f"{path}: cannot read file: {err.strerror or err}") from err
    problem = None
    try:
        pos = buf.find(b"GCOL")
        while pos >= 0 and problem is None:
            problem = _check_collection(buf, pos, length)
            pos = buf.find(b"GCOL", pos + 1)
    finally:
        buf.close()
    if problem is not None:
        raise error(f"{path}: damaged HDF5 global heap: {problem}")


def _check_collection(buf: Any, pos: int, length: int) -> str | None:
    if pos + _GHEAP_COLLECTION_HEADER > length or buf[pos + 4] != 1:
        return None  # not a collection libhdf5 would accept (it checks the version)
    size = struct.unpack_from("<Q", buf, pos + 8)[0]
    end = min(pos + size, length)
    p = pos + _GHEAP_COLLECTION_HEADER
    while p < end:
        if p + _GHEAP_OBJECT_HEADER > end:
            break  # trailing free space too small for an object header
        index, _, _, obj_size = struct.unpack_from("<HHIQ", buf, p)
        step = _GHEAP_OBJECT_HEADER + (-(-obj_size // 8) * 8) if index > 0 else obj_size
        if step <= 0:
            return f"collection at byte {pos}: object {index} at byte {p} has size 0 (libhdf5 would never finish)"
        p += step  # past ``end`` libhdf5 stops (or fails): no loop
    return None
