"""Files on disk: atomic writes and the checked opening of model files."""
from __future__ import annotations

import os
from collections.abc import Callable

from lrpflow.errors import DataFormatError, LrpflowError, ModelFormatError

#: largest kernel, pool or stride extent a model file may declare (no image is 65536 pixels wide;
#: a sane bound turns ``MaxPool 1e9 1e9 1 1`` into an error naming the line, not a numpy crash later)
MAX_LAYER_EXTENT = 1 << 16


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None],
                 error: type[LrpflowError] = DataFormatError,
                 catch: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (same suffix), then rename it to ``path``.

    A failed write leaves neither a half-written ``path`` nor the temporary file;
    exceptions of the ``catch`` types become ``error("<path>: cannot write: ...")``.
    """
    path = os.fspath(path)
    base, ext = os.path.splitext(path)
    tmp = f"{base}.tmp-{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except catch as err:
        raise error(f"{path}: cannot write: {getattr(err, 'strerror', None) or err}") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_file(path: str | os.PathLike[str], data: bytes | str, error: type[LrpflowError] = DataFormatError) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_write`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)

    atomic_write(path, dump, error)


def check_model_file(path: str) -> int:
    """Size of a model file; ModelFormatError if it cannot be read or is empty."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise ModelFormatError(f"{path}: cannot read model file: {err.strerror or err}") from err
    if size == 0:
        raise ModelFormatError(f"{path}: empty model file")
    return size


def read_model_file(path: str) -> bytes:
    """The bytes of a model file; ModelFormatError if it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ModelFormatError(f"{path}: cannot read model file: {err.strerror or err}") from err
    if not data:
        raise ModelFormatError(f"{path}: empty model file")
    return data
