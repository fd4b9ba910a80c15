"""Array backends: numpy on the CPU, cupy on a GPU, one code path for both.

The namespace always comes from the data (``xp = get_namespace(x)``); a backend is a
plain value (``"numpy"``, ``"cupy"``, ``"cupy:1"``) that fits in a YAML file.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy

from lrpflow.errors import BackendError

DTYPES = ("float32", "float64")


def _cupy() -> ModuleType | None:
    try:
        return importlib.import_module("cupy")
    except Exception:  # ImportError, or a CUDA runtime that fails to load
        return None


def cupy_available() -> bool:
    """True if cupy imports and sees at least one GPU."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


#: Array types of other device namespaces (array type → its module); see :func:`register_array_type`.
_DEVICE_TYPES: dict[type, ModuleType] = {}


def register_array_type(array_type: type, xp: ModuleType) -> Callable[[], None]:
    """Treat arrays of ``array_type`` as device arrays of the namespace ``xp``.

    ``xp`` must follow cupy's API, and its arrays copy to the host only through
    ``.get()`` (as cupy's do). Used by the tests' sync-checking stand-in for cupy
    (``tests/devicestub.py``). Returns a function that undoes the registration.
    """
    _DEVICE_TYPES[array_type] = xp
    return lambda: _DEVICE_TYPES.pop(array_type, None)  # type: ignore[func-returns-value]


def get_namespace(*arrays: Any) -> ModuleType:
    """The array module (numpy or cupy) of the given arrays; numpy for anything else."""
    for a in arrays:
        t = type(a)
        if t.__module__.startswith("cupy"):
            return _cupy()  # type: ignore[return-value]
        if _DEVICE_TYPES and t in _DEVICE_TYPES:
            return _DEVICE_TYPES[t]
    return numpy


def parse_backend(backend: str) -> tuple[str, int]:
    """Split ``"cupy:1"`` into ``("cupy", 1)``; ``"numpy"`` gives ``("numpy", 0)``."""
    name, _, dev = str(backend).partition(":")
    name = name.strip().lower()
    if name not in ("numpy", "cupy"):
        raise BackendError(f"unknown backend {backend!r}; expected 'numpy' or 'cupy[:<gpu index>]'")
    try:
        index = int(dev) if dev else 0
    except ValueError as err:
        raise BackendError(f"backend {backend!r}: device index must be an integer") from err
    return name, index


def namespace(backend: str) -> ModuleType:
    """The array module for a backend value; a clear error if cupy is missing."""
    name, index = parse_backend(backend)
    if name == "numpy":
        return numpy
    cp = _cupy()
    if cp is None:
        raise BackendError(
            "backend 'cupy' was requested but cupy is not installed or fails to import; "
            "install lrpflow[gpu] (a cupy-cuda* wheel matching your CUDA) or use backend='numpy'"
        )
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:
        raise BackendError(f"backend 'cupy' was requested but no CUDA device is usable: {err}") from err
    if index >= count:
        raise BackendError(f"backend {backend!r}: only {count} GPU(s) visible")
    cp.cuda.Device(index).use()
    return cp


def backend_of(x: Any) -> str:
    """The backend value an array lives on (``"numpy"`` or ``"cupy:<id>"``)."""
    xp = get_namespace(x)
    if xp is numpy:
        return "numpy"
    if type(x) in _DEVICE_TYPES:
        return xp.__name__
    return f"cupy:{x.device.id}"


def resolve_dtype(dtype: Any) -> numpy.dtype:
    """float32 or float64 as a numpy dtype; anything else is a BackendError."""
    try:
        dt = numpy.dtype(dtype)
    except TypeError as err:
        raise BackendError(f"unknown dtype {dtype!r}; expected one of {DTYPES}") from err
    if dt.name not in DTYPES:
        raise BackendError(f"unsupported dtype {dt.name!r}; expected one of {DTYPES}")
    return dt


def to_backend(x: Any, backend: str, dtype: Any | None = None) -> Any:
    """Move an array to a backend (and optionally cast it); no copy when nothing changes."""
    xp = namespace(backend)
    if xp is numpy:
        x = to_numpy(x)
        return numpy.asarray(x, dtype=dtype) if dtype is not None else numpy.asarray(x)
    return xp.asarray(x, dtype=dtype)


def to_numpy(x: Any) -> Any:
    """A numpy array of ``x`` (copied to the host if it lives on a GPU)."""
    if type(x).__module__.startswith("cupy") or type(x) in _DEVICE_TYPES:
        return x.get()
    return numpy.asarray(x)


# --- host allocator ---------------------------------------------------------------

#: glibc ``mallopt`` parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
_allocator_tuned: bool | None = None


def tune_host_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc keep freed blocks of up to ``mmap_threshold`` bytes for reuse (once per process).

    An explanation allocates and frees the same large temporaries (im2col patches,
    activations, relevance maps) batch after batch. By default glibc maps blocks above
    a few MiB fresh from the kernel and hands freed heap back, so every batch pays page
    faults on memory it just freed (a quarter of the time of LRP-ε on LeNet-5 on a
    2-core VM). With these settings a process keeps up to ``trim_threshold`` bytes of
    freed heap. Skipped when not on glibc, when the user set any ``MALLOC_*`` variable
    (:data:`_ALLOCATOR_ENV`), or when ``LRPFLOW_TUNE_MALLOC=0``. Returns True if applied.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("LRPFLOW_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(k in os.environ for k in _ALLOCATOR_ENV) or sys.platform != "linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (musl has no tunable thresholds)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = (libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1) and ok
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok


def can_overwrite(out: Any, *operands: Any) -> bool:
    """True if ``out op= operands`` can replace ``out op operands``: ``out`` is a writable C-contiguous
    array (cupy has no ``writeable`` flag) of the result's shape and dtype."""
    flags = getattr(out, "flags", None)
    if flags is None or not flags.c_contiguous or not getattr(flags, "writeable", True):
        return False
    shapes = [tuple(out.shape)] + [tuple(numpy.shape(o)) for o in operands]
    return tuple(out.shape) == numpy.broadcast_shapes(*shapes) and out.dtype == get_namespace(out).result_type(out, *operands)
