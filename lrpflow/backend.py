"""Array backends: numpy on the CPU, cupy on a GPU, one code path for both.

The namespace always comes from the data (``xp = get_namespace(x)``); a backend is a
plain value (``"numpy"``, ``"cupy"``, ``"cupy:1"``) that fits in a YAML file.
"""
from __future__ import annotations

import importlib
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


def get_namespace(*arrays: Any) -> ModuleType:
    """The array module (numpy or cupy) of the given arrays; numpy for anything else."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            return _cupy()  # type: ignore[return-value]
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
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return numpy.asarray(x)
