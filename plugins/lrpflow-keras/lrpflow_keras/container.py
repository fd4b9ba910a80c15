"""Safe access to Keras files: the ``.keras`` zip and the HDF5 weight stores.

Nothing is extracted to disk and nothing in a file is executed. Refused: zip members with
absolute or ``..`` names or duplicated names, members larger than the limits or more
compressed than deflate can achieve (zip bombs), HDF5 external or soft links, external or
virtual dataset storage, datasets that declare more data than they store, non-numeric weights.
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
from typing import Any

import numpy

from lrpflow.errors import ModelFormatError

#: largest config.json / metadata.json we read
MAX_JSON_BYTES = 64 << 20
#: largest weights file we read (bytes, uncompressed); ``read(..., max_bytes=)`` changes it
MAX_WEIGHTS_BYTES = 4 << 30
#: deflate never compresses better than about 1032:1
MAX_DEFLATE_RATIO = 1032
#: most HDF5 objects we walk in one file
MAX_OBJECTS = 1_000_000


def is_keras_h5(path: str) -> bool:
    """True if ``path`` is an HDF5 file with a Keras ``model_config`` attribute (cheap; never raises)."""
    try:
        import h5py

        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return False
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except Exception:
        return False


def _text(v: Any, where: str) -> str:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, numpy.ndarray) and v.shape == ():
        v = v.item()
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        raise ModelFormatError(f"{where}: expected text, got {type(v).__name__}")
    return v


def parse_json(text: str | bytes, where: str) -> Any:
    if len(text) > MAX_JSON_BYTES:
        raise ModelFormatError(f"{where}: {len(text)} bytes of JSON (limit {MAX_JSON_BYTES})")
    try:
        return json.loads(text)
    except RecursionError:
        raise ModelFormatError(f"{where}: JSON nested too deeply") from None
    except ValueError as err:
        raise ModelFormatError(f"{where}: not valid JSON: {err}") from None


# --- zip ---------------------------------------------------------------------------


def _check_member_name(name: str, path: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise ModelFormatError(f"{path}: refusing a .keras archive with the unsafe member name {name!r}")


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: str) -> bytes:
    if info.file_size > limit:
        raise ModelFormatError(f"{path}: member {info.filename!r} is {info.file_size} bytes (limit {limit}; "
                               f"pass max_bytes= to allow more)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1) + 4096:
        raise ModelFormatError(f"{path}: member {info.filename!r} claims a compression ratio above "
                               f"{MAX_DEFLATE_RATIO}:1 (a zip bomb?)")
    out = io.BytesIO()
    with z.open(info) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            if out.tell() > info.file_size or out.tell() > limit:
                raise ModelFormatError(f"{path}: member {info.filename!r} inflates beyond its declared size")
    return out.getvalue()


def open_keras_zip(path: str, max_bytes: int = MAX_WEIGHTS_BYTES) -> tuple[Any, Any, Any, int]:
    """``(config, metadata, h5py.File of the weights, its size)`` of a Keras 3 ``.keras`` file."""
    import h5py

    try:
        z = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelFormatError(f"{path}: not a readable .keras file (a zip archive): {err}") from None
    with z:
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in z.infolist():
            _check_member_name(info.filename, path)
            if info.filename in infos:
                raise ModelFormatError(f"{path}: member {info.filename!r} appears twice in the archive")
            infos[info.filename] = info
        if "config.json" not in infos:
            raise ModelFormatError(f"{path}: not a Keras 3 .keras archive: no config.json "
                                   f"(members: {', '.join(sorted(infos)[:10]) or '(none)'})")
        config = parse_json(_read_member(z, infos["config.json"], MAX_JSON_BYTES, path), f"{path}: config.json")
        metadata = {}
        if "metadata.json" in infos:
            metadata = parse_json(_read_member(z, infos["metadata.json"], MAX_JSON_BYTES, path), f"{path}: metadata.json")
        if "model.weights.h5" not in infos:
            other = [n for n in infos if n.startswith("model.weights")]
            raise ModelFormatError(f"{path}: no model.weights.h5 in the archive"
                                   + (f" (found {other}: sharded or npz weights are not supported)" if other else ""))
        data = _read_member(z, infos["model.weights.h5"], max_bytes, path)
    try:
        weights = h5py.File(io.BytesIO(data), "r")
    except Exception as err:
        raise ModelFormatError(f"{path}: model.weights.h5 is not a readable HDF5 file: {err}") from None
    check_h5(weights, f"{path}: model.weights.h5")
    return config, metadata, weights, len(data)


# --- HDF5 --------------------------------------------------------------------------


def check_h5(f: Any, where: str) -> None:
    """Refuse external/soft links and external/virtual storage anywhere in the file."""
    import h5py

    count = 0
    stack = [("", f)]
    while stack:
        prefix, group = stack.pop()
        for name in group:
            count += 1
            if count > MAX_OBJECTS:
                raise ModelFormatError(f"{where}: more than {MAX_OBJECTS} HDF5 objects")
            link = group.get(name, getlink=True)
            full = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise ModelFormatError(f"{where}: refusing the external link {full} -> {link.filename}:{link.path}")
            if isinstance(link, h5py.SoftLink):
                raise ModelFormatError(f"{where}: refusing the soft link {full} -> {link.path}")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                stack.append((full, obj))
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise ModelFormatError(f"{where}: dataset {full} keeps its data in external files {obj.external}")
                if obj.is_virtual:
                    raise ModelFormatError(f"{where}: dataset {full} is a virtual dataset (data outside the file)")


def read_dataset(ds: Any, where: str, file_size: int) -> numpy.ndarray:
    """A numeric dataset as an array, after checking it stores what it declares."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise ModelFormatError(f"{where}: not a dataset")
    if ds.dtype.kind not in "fiu" or ds.dtype.fields is not None:
        raise ModelFormatError(f"{where}: dtype {ds.dtype} is not numeric")
    nbytes = ds.dtype.itemsize * math.prod(ds.shape or ())
    stored = ds.id.get_storage_size()
    compressed = bool(ds.id.get_create_plist().get_nfilters())
    limit = stored * MAX_DEFLATE_RATIO + 4096 if compressed else max(stored, 0)
    if nbytes and (nbytes > limit or nbytes > MAX_DEFLATE_RATIO * max(file_size, 1)):
        raise ModelFormatError(f"{where}: declares shape {ds.shape} ({nbytes} bytes) but stores {stored} bytes")
    return numpy.asarray(ds[()])


def open_legacy_h5(path: str, max_bytes: int = MAX_WEIGHTS_BYTES) -> tuple[Any, Any]:
    """``(config, h5py.File)`` of a legacy Keras HDF5 model file."""
    import h5py

    size = os.path.getsize(path)
    if size > max_bytes:
        raise ModelFormatError(f"{path}: {size} bytes (limit {max_bytes}; pass max_bytes= to allow more)")
    try:
        f = h5py.File(path, "r")
    except Exception as err:
        raise ModelFormatError(f"{path}: not a readable HDF5 file: {err}") from None
    try:
        if "model_config" not in f.attrs:
            raise ModelFormatError(f"{path}: not a Keras HDF5 model: no 'model_config' attribute "
                                   f"(a weights-only file from save_weights() has no architecture)")
        config = parse_json(_text(f.attrs["model_config"], f"{path}: attribute model_config"), f"{path}: model_config")
        check_h5(f, path)
        if "model_weights" not in f and any(k for k in f if k != "optimizer_weights"):
            raise ModelFormatError(f"{path}: no 'model_weights' group")
    except Exception:
        f.close()
        raise
    return config, f
