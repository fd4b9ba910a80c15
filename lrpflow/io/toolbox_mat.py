"""The LRP Toolbox's Matlab models: ``.mat`` files holding a MATLAB classdef (MCOS) ``modules.Sequential``.

The toolbox's Matlab code saves ``model`` (a ``modules.Sequential`` handle object whose
``modules`` property is a cell of ``modules.Linear``, ``Convolution``, ``SumPool``,
``MaxPool``, ``Flatten``, ``Rect``, ``Tanh``, ``SoftMax`` objects) with ``save``.
The PyPI package mat-io (``matio.load_from_mat``) decodes such objects; this module
maps their properties (``W``, ``B``, ``filtersize``, ``stride``, ``pool``, ``lrp_var``,
``lrp_param``) onto lrpflow layers. MATLAB drops trailing singleton dimensions
(a single-filter convolution's ``W`` is h×w×d); ``filtersize`` restores them.

Writing produces the same object structure (temporaries as empty matrices) in a
MAT 5 file via ``matio.save_to_mat``.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy

from lrpflow.errors import LrpflowError, ModelFormatError
from lrpflow.graph import Sequential
from lrpflow.io.files import MAX_LAYER_EXTENT, atomic_write, check_model_file
from lrpflow.io.hdf5_safety import check_contained, check_global_heaps
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh

LAYER_CLASSES = ("Linear", "Convolution", "SumPool", "MaxPool", "Flatten", "Rect", "Tanh", "SoftMax")


def _matio() -> Any:
    try:
        with warnings.catch_warnings():  # mat-io sets a pandas option that pandas 3 deprecates
            warnings.simplefilter("ignore")
            import matio
    except ImportError as err:  # pragma: no cover - a core dependency
        raise ModelFormatError("reading toolbox .mat models needs the package mat-io (pip install mat-io)") from err
    return matio


def _opaque_type() -> type:
    from matio.utils.matclass import MatlabOpaque

    return MatlabOpaque


def _num(props: dict[str, Any], key: str, where: str) -> numpy.ndarray:
    if key not in props:
        raise ModelFormatError(f"{where}: missing property {key!r}")
    v = props[key]
    if not isinstance(v, numpy.ndarray) or v.dtype.kind not in "fiub" or v.dtype.fields is not None:
        raise ModelFormatError(f"{where}: property {key!r} must be a numeric matrix, got {type(v).__name__}")
    v = numpy.ascontiguousarray(v, dtype=numpy.float64)
    if not numpy.isfinite(v).all():
        raise ModelFormatError(f"{where}: property {key!r} contains NaN or Inf")
    return v


def _ints(props: dict[str, Any], key: str, where: str, count: int) -> tuple[int, ...]:
    v = _num(props, key, where).ravel()
    if v.size != count or (v != numpy.round(v)).any() or (v < 1).any():
        raise ModelFormatError(f"{where}: property {key!r} must hold {count} positive integers, got {v.tolist()}")
    return tuple(int(a) for a in v)


def _linear(props: dict[str, Any], where: str) -> Linear:
    w = _num(props, "W", where)
    b = _num(props, "B", where).ravel()
    if w.ndim != 2:
        raise ModelFormatError(f"{where}: W must be a matrix, got shape {w.shape}")
    m, n = w.shape
    for key, value in (("m", m), ("n", n)):
        if key in props and numpy.asarray(props[key]).size:
            if _ints(props, key, where, 1)[0] != value:
                raise ModelFormatError(f"{where}: {key} does not match W of shape {w.shape}")
    if b.shape != (n,):
        raise ModelFormatError(f"{where}: B has {b.size} values, expected {n}")
    return Linear(m, n, weight=w, bias=b)


def _conv(props: dict[str, Any], where: str) -> Conv2d:
    w = _num(props, "W", where)
    fs = _ints(props, "filtersize", where, 4) if "filtersize" in props else tuple(w.shape) + (1,) * (4 - w.ndim)
    trimmed = list(fs)
    while len(trimmed) > 2 and trimmed[-1] == 1:
        trimmed.pop()
    if tuple(w.shape) not in (tuple(fs), tuple(trimmed)):
        raise ModelFormatError(f"{where}: W has shape {w.shape}, which does not match filtersize {list(fs)}")
    w = w.reshape(fs)
    b = _num(props, "B", where).ravel()
    if b.shape != (fs[3],):
        raise ModelFormatError(f"{where}: B has {b.size} values, expected {fs[3]}")
    return Conv2d(*fs, stride=_extent(props, "stride", where), weight=w, bias=b)


def _extent(props: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    v = _ints(props, key, where, 2)
    if max(v) > MAX_LAYER_EXTENT:
        raise ModelFormatError(f"{where}: property {key!r} {list(v)} exceeds {MAX_LAYER_EXTENT}")
    return v


def _pool(cls: type) -> Callable[[dict[str, Any], str], Any]:
    def make(props: dict[str, Any], where: str) -> Any:
        return cls(*_extent(props, "pool", where), stride=_extent(props, "stride", where))
    return make


CONVERTERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "Linear": _linear,
    "Convolution": _conv,
    "SumPool": _pool(SumPool),
    "MaxPool": _pool(MaxPool),
    "Flatten": lambda p, w: Flatten(),
    "Rect": lambda p, w: ReLU(),
    "Tanh": lambda p, w: Tanh(),
    "SoftMax": lambda p, w: SoftMax(),
}


def _preset(layer: Any, props: dict[str, Any]) -> None:
    var = props.get("lrp_var")
    if isinstance(var, numpy.ndarray) and var.dtype.kind == "U" and var.size:
        var = "".join(var.ravel().tolist())
    if isinstance(var, str) and var:
        param = props.get("lrp_param")
        p = None
        if isinstance(param, numpy.ndarray) and param.size == 1 and param.dtype.kind in "fiu":
            p = float(param.ravel()[0])
        layer.set_lrp_parameters(var, p)


def _is_hdf5(path: str) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except Exception:
        return False


def _check_hdf5(path: str) -> None:
    """Before mat-io reads every object of a v7.3 file: no outside data, sizes stored, global heaps sound."""
    import h5py

    check_global_heaps(path, ModelFormatError)  # mat-io may read variable-length data (libhdf5 can loop)
    try:
        f = h5py.File(path, "r")
    except Exception as err:
        raise ModelFormatError(f"{path}: not a readable MATLAB v7.3 file: {type(err).__name__}: {err}") from err
    try:
        with f:
            check_contained(f, path, ModelFormatError, sizes=True)
    except LrpflowError:
        raise
    except Exception as err:  # h5py/HDF5 errors on damaged files
        raise ModelFormatError(f"{path}: damaged MATLAB v7.3 file: {type(err).__name__}: {err}") from err


def _find_model(content: dict[str, Any], path: str) -> Any:
    opaque = _opaque_type()
    found = []
    for name, value in content.items():
        if name.startswith("__"):
            continue
        found.append(name)
        if isinstance(value, opaque) and value.classname == "modules.Sequential":
            return value
    raise ModelFormatError(f"{path}: no toolbox model (a modules.Sequential object) in the file; "
                           f"variables: {', '.join(found) or '(none)'}")


def to_sequential(seq: Any, path: str = "<mat>") -> Sequential:
    """Convert a decoded MATLAB ``modules.Sequential`` object to an lrpflow :class:`Sequential`."""
    opaque = _opaque_type()
    props = seq.properties if isinstance(seq.properties, dict) else {}
    cell = props.get("modules")
    if not isinstance(cell, numpy.ndarray) or cell.dtype != object or cell.size == 0:
        raise ModelFormatError(f"{path}: modules.Sequential has no cell of modules")
    layers = []
    for i, m in enumerate(cell.ravel(order="F")):
        cls = getattr(m, "classname", None) if isinstance(m, opaque) else None
        kind = cls[len("modules."):] if isinstance(cls, str) and cls.startswith("modules.") else None
        where = f"{path}, module {i + 1}"
        if kind not in CONVERTERS or not isinstance(m.properties, dict):
            raise ModelFormatError(f"{where}: {cls or type(m).__name__} is not a toolbox layer; "
                                   f"known: {', '.join('modules.' + k for k in CONVERTERS)}")
        layer = CONVERTERS[kind](m.properties, f"{where} ({cls})")
        _preset(layer, m.properties)
        layers.append(layer)
    return Sequential(layers)


def read(path: str | os.PathLike[str]) -> Sequential:
    """Read a toolbox Matlab model file (MCOS ``modules.Sequential``) into a :class:`Sequential`."""
    path = os.fspath(path)
    matio = _matio()
    check_model_file(path)
    if _is_hdf5(path):  # v7.3: mat-io reads every dataset; check links, external data and sizes first
        _check_hdf5(path)
    else:
        from lrpflow.io._mat5 import check_mat5

        check_mat5(path, ModelFormatError)  # mat-io's C reader crashes on some corrupt files
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            content = matio.load_from_mat(path)
    except LrpflowError:
        raise
    except RecursionError as err:
        raise ModelFormatError(f"{path}: not a readable MATLAB file (nesting too deep)") from err
    except Exception as err:
        raise ModelFormatError(f"{path}: not a readable MATLAB model file: {type(err).__name__}: {err}") from err
    if not isinstance(content, dict):
        raise ModelFormatError(f"{path}: not a readable MATLAB model file")
    try:
        return to_sequential(_find_model(content, path), path)
    except LrpflowError:
        raise
    except Exception as err:  # anything odd in a decoded object
        raise ModelFormatError(f"{path}: malformed toolbox model: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- writing

_EMPTY = numpy.zeros((0, 0))


def _props(layer: Any, where: str) -> tuple[str, dict[str, Any]]:
    from lrpflow.backend import to_numpy

    kind = getattr(layer, "toolbox_name", None)
    if kind not in CONVERTERS:
        raise ModelFormatError(f"{where}: {type(layer).__name__} has no toolbox Matlab form")
    e = _EMPTY
    if kind == "Linear":
        props = {"m": numpy.array([[float(layer.m)]]), "n": numpy.array([[float(layer.n)]]),
                 "B": numpy.array(to_numpy(layer.bias), dtype=numpy.float64)[None, :],
                 "W": numpy.array(to_numpy(layer.weight), dtype=numpy.float64), "X": e, "Y": e, "dW": e, "dB": e}
    elif kind == "Convolution":
        if any(layer.pads):
            raise ModelFormatError(f"{where}: the toolbox's Convolution has no padding")
        props = {"filtersize": numpy.array([[*layer.kernel, layer.d, layer.n]], dtype=numpy.float64),
                 "stride": numpy.array([layer.stride], dtype=numpy.float64),
                 "W": numpy.array(to_numpy(layer.weight), dtype=numpy.float64),
                 "B": numpy.array(to_numpy(layer.bias), dtype=numpy.float64)[None, :], "Y": e, "X": e, "DY": e}
    elif kind in ("SumPool", "MaxPool"):
        if any(layer.pads):
            raise ModelFormatError(f"{where}: the toolbox's {kind} has no padding")
        props = {"stride": numpy.array([layer.stride], dtype=numpy.float64),
                 "pool": numpy.array([layer.pool], dtype=numpy.float64), "Y": e, "X": e}
    elif kind == "Flatten":
        props = {"inputshape": e, "Y": e}
    else:
        props = {"Y": e}
    props["lrp_var"] = e if not layer.lrp_var else str(layer.lrp_var)
    props["lrp_param"] = e if layer.lrp_param is None else numpy.array([[float(layer.lrp_param)]])
    return kind, props


def write(model: Sequential, path: str | os.PathLike[str]) -> None:
    """Write a Sequential of toolbox layers as the toolbox's Matlab code saves it (MAT 5, MCOS objects)."""
    path = os.fspath(path)
    matio = _matio()
    opaque = _opaque_type()
    modules = getattr(model, "modules", None)
    if modules is None:
        raise ModelFormatError(f"{path}: the toolbox Matlab format holds a Sequential, got a {type(model).__name__}")
    cell = numpy.empty((1, len(modules)), dtype=object)
    for i, layer in enumerate(modules):
        kind, props = _props(layer, f"{path}, layer {i}")
        cell[0, i] = opaque(props, f"modules.{kind}")
    seq = opaque({"modules": cell, "lrp_var": _EMPTY, "lrp_param": _EMPTY}, "modules.Sequential")

    def save(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            matio.save_to_mat(tmp, {"model": seq}, version="v7")

    atomic_write(path, save, ModelFormatError, catch=(Exception,))  # mat-io raises more than OSError
