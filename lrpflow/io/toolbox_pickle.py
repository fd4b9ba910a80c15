"""The LRP Toolbox's pickled models (``.nn``, ``.pickle``, no suffix), read safely and written compatibly.

Reading never imports or calls anything a file names. :class:`RestrictedUnpickler`
resolves only

- the toolbox's module classes (``modules.Sequential``, ``Linear``, ``Convolution``,
  ``SumPool``, ``MaxPool``, ``Flatten``, ``Rect``, ``Tanh``, ``SoftMax``, under the
  paths the toolbox used: ``modules.<class>`` and ``modules.<class lower>.<class>``),
  to inert stand-ins that only store their attribute dict;
- what numpy arrays are pickled with (``numpy.core.multiarray._reconstruct``, its
  numpy 2 path ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``, ``numpy.core.multiarray.scalar``), each to an inert stand-in: an
  array is built only from the bytes its pickled state carries, after the declared
  shape was checked against them (``numpy.ndarray(shape)`` itself is refused), so no
  array is ever larger than the file; dtypes are plain numeric codes;
- ``_codecs.encode`` restricted to latin-1 (how Python 3 writes bytes in protocol 2)
  and ``copyreg._reconstructor`` restricted to the stand-ins (protocols 0 and 1).

Any other global is refused with a ModelFormatError naming it, before anything runs.
The stand-ins are then converted to lrpflow layers, checking every shape.

Writing produces what the toolbox's ``model_io.write(model, 'x.nn')`` produces: a
protocol-2 pickle of ``modules.sequential.Sequential`` holding ``modules.<kind>.<Kind>``
objects with the toolbox's attributes (``W``, ``B``, ``m``, ``n``, ``fh``, ``stride``, ...).
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
from collections.abc import Callable
from typing import Any

import numpy

from lrpflow.errors import LrpflowError, ModelFormatError
from lrpflow.graph import Sequential
from lrpflow.io.files import MAX_LAYER_EXTENT, read_model_file, write_file
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh

#: The toolbox's module classes.
KINDS = ("Sequential", "Linear", "Convolution", "SumPool", "MaxPool", "Flatten", "Rect", "Tanh", "SoftMax")


class ToolboxObject:
    """Inert stand-in for a toolbox module object: it only stores its pickled attributes."""

    kind = "?"

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self._state = dict(state or {})

    @property
    def state(self) -> dict[str, Any]:
        """The pickled attributes (empty if the pickle never set any)."""
        return self.__dict__.setdefault("_state", {})

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slot dict)
            merged: dict[Any, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        if not isinstance(state, dict):
            raise ModelFormatError(f"toolbox {self.kind} object has a state of type {type(state).__name__}, expected a dict")
        self._state = {str(k): v for k, v in state.items()}

    def __repr__(self) -> str:
        return f"<toolbox {self.kind}>"


def _stand_in(kind: str) -> type:
    return type(f"Toolbox{kind}", (ToolboxObject,), {"kind": kind, "__module__": __name__})


STAND_INS: dict[str, type] = {kind: _stand_in(kind) for kind in KINDS}

#: (module, name) → stand-in class: the old single-file ``modules.py`` and the ``modules/`` package.
ADMITTED_CLASSES: dict[tuple[str, str], type] = {}
for _kind, _cls in STAND_INS.items():
    ADMITTED_CLASSES[("modules", _kind)] = _cls
    ADMITTED_CLASSES[(f"modules.{_kind.lower()}", _kind)] = _cls


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes, restricted to latin-1 (no codec lookup by name)."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise ModelFormatError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` restricted to the stand-ins (protocol 0/1 objects)."""
    if not (isinstance(cls, type) and issubclass(cls, ToolboxObject)) or base is not object or state is not None:
        raise ModelFormatError("refused copyreg._reconstructor for anything but a toolbox module class")
    return cls.__new__(cls)


def _numpy_global(module: str, name: str) -> Any:
    """numpy's own ``_reconstruct``/``scalar`` (the writer names them; the reader never calls them)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar}[name]


#: dtype codes an array or scalar in a toolbox pickle may have (numpy pickles ``dtype('f8', False, True)``)
NUMERIC_CODES = frozenset(f"{k}{n}" for k, sizes in (("b", (1,)), ("i", (1, 2, 4, 8)), ("u", (1, 2, 4, 8)),
                                                    ("f", (2, 4, 8))) for n in sizes)


def _raw_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, str):  # Python 2 ``str`` data, read with encoding="latin1"
        try:
            return data.encode("latin-1")
        except UnicodeEncodeError:
            raise ModelFormatError(f"{what}: data is not a byte string") from None
    if isinstance(data, bytes):
        return data
    raise ModelFormatError(f"{what}: data must be bytes, got {type(data).__name__} (object arrays are refused)")


class PickledDtype:
    """Stand-in for ``numpy.dtype(code, align, copy)`` + its state: only plain numeric codes and a byte order."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if isinstance(code, bytes):
            code = code.decode("latin-1")
        if not isinstance(code, str) or code not in NUMERIC_CODES:
            raise ModelFormatError(f"refused numpy dtype {code!r}: a toolbox pickle holds numeric arrays only "
                                   f"(one of {', '.join(sorted(NUMERIC_CODES))})")
        self.code = code
        self.order = "="

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise ModelFormatError(f"refused numpy dtype state {state!r:.80}")
        if any(part is not None for part in state[2:5]):  # subarray, names, fields
            raise ModelFormatError("refused numpy dtype with fields or a subarray")
        self.order = state[1]

    def resolve(self) -> numpy.dtype:
        return numpy.dtype(self.order.replace("|", "=") + self.code)


class PickledArray:
    """Stand-in for ``_reconstruct(ndarray, ...)`` + ``__setstate__``: becomes an array only from data the pickle holds.

    numpy's state is ``(version, shape, dtype, fortran, data)``; the declared shape is checked
    against the length of ``data`` before anything is allocated, so an array is never bigger
    than the bytes the file stores.
    """

    def __init__(self) -> None:
        self.array: numpy.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise ModelFormatError(f"refused numpy array state of type {type(state).__name__}")
        shape, dtype, fortran, data = state
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) > 8:
            raise ModelFormatError(f"refused numpy array shape {shape!r:.80}")
        if not isinstance(dtype, PickledDtype):
            raise ModelFormatError(f"refused numpy array dtype of type {type(dtype).__name__}")
        dt = dtype.resolve()
        raw = _raw_bytes(data, "numpy array")
        need = dt.itemsize * math.prod(shape)
        if need != len(raw):
            raise ModelFormatError(f"numpy array declares shape {shape} of {dt} ({need} bytes) but stores {len(raw)} bytes")
        self.array = numpy.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")


class _NdarrayName:
    """What ``numpy.ndarray`` resolves to: a name ``_reconstruct`` may be given, never a constructor."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise ModelFormatError("refused numpy.ndarray(...): arrays in a toolbox pickle must carry their data")


def _reconstruct(cls: Any, shape: Any = None, dtype: Any = None) -> PickledArray:
    """``numpy.core.multiarray._reconstruct`` restricted to ndarray: an empty stand-in (its data come in its state)."""
    if cls is not _NdarrayName:
        raise ModelFormatError("refused _reconstruct of anything but numpy.ndarray")
    return PickledArray()


def _scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: one value of a numeric dtype from exactly its bytes."""
    if not isinstance(dtype, PickledDtype):
        raise ModelFormatError(f"refused numpy scalar of dtype type {type(dtype).__name__}")
    dt = dtype.resolve()
    raw = _raw_bytes(data, "numpy scalar")
    if len(raw) != dt.itemsize:
        raise ModelFormatError(f"numpy scalar of {dt} needs {dt.itemsize} bytes, stores {len(raw)}")
    return numpy.frombuffer(raw, dtype=dt)[0]


def _resolve_arrays(obj: Any, depth: int = 0) -> Any:
    """Replace array stand-ins by their arrays throughout the unpickled tree (dicts, lists, tuples, module states)."""
    if depth > 64:
        raise ModelFormatError("nesting too deep")
    if isinstance(obj, PickledArray):
        if obj.array is None:
            raise ModelFormatError("numpy array without data")
        return obj.array
    if isinstance(obj, PickledDtype):
        return obj.resolve()
    if isinstance(obj, ToolboxObject):
        obj._state = {k: _resolve_arrays(v, depth + 1) for k, v in obj.state.items()}
        return obj
    if isinstance(obj, dict):
        return {k: _resolve_arrays(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve_arrays(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve_arrays(v, depth + 1) for v in obj)
    return obj


ADMITTED_FUNCTIONS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _scalar,
    ("numpy", "ndarray"): lambda: _NdarrayName,
    ("numpy", "dtype"): lambda: PickledDtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("copyreg", "_reconstructor"): lambda: _reconstructor,
    ("copy_reg", "_reconstructor"): lambda: _reconstructor,
    ("builtins", "object"): lambda: object,
    ("__builtin__", "object"): lambda: object,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the toolbox's module classes (as inert stand-ins) and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in ADMITTED_CLASSES:
            return ADMITTED_CLASSES[key]
        if key in ADMITTED_FUNCTIONS:
            return ADMITTED_FUNCTIONS[key]()
        raise ModelFormatError(f"refused global {module}.{name}: a toolbox model pickle may only reference the "
                               f"toolbox's module classes and numpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        raise ModelFormatError("refused persistent id: a toolbox model pickle has none")


def _scan(data: bytes, path: str) -> None:
    """Check the opcode stream before unpickling: memo indices must be small (a PUT at index 10⁹ alone
    would make the C unpickler allocate gigabytes)."""
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not (isinstance(arg, int) and 0 <= arg <= len(data)):
                raise ModelFormatError(f"{path}: not a toolbox model pickle: memo index {arg} at byte {pos} is out of range")
    except ModelFormatError:
        raise
    except Exception as err:  # unknown opcode, truncated stream, ...
        raise ModelFormatError(f"{path}: not a toolbox model pickle: {err}") from None


def unpickle(data: bytes, path: str = "<bytes>") -> Any:
    """The object tree of a toolbox pickle, with stand-ins for the module objects."""
    _scan(data, path)
    try:
        return _resolve_arrays(RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load())
    except ModelFormatError as err:
        raise ModelFormatError(f"{path}: {err}") from None
    except LrpflowError:
        raise
    except RecursionError as err:
        raise ModelFormatError(f"{path}: not a toolbox model pickle (nesting too deep)") from err
    except Exception as err:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        raise ModelFormatError(f"{path}: not a toolbox model pickle: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- stand-ins → layers


def _array(state: dict[str, Any], key: str, where: str, ndim: int) -> numpy.ndarray:
    if key not in state:
        raise ModelFormatError(f"{where}: missing attribute {key!r}")
    a = state[key]
    if not isinstance(a, numpy.ndarray) or a.dtype.kind not in "fiu":
        raise ModelFormatError(f"{where}: attribute {key!r} must be a numeric numpy array, got {type(a).__name__}"
                               f"{'' if not isinstance(a, numpy.ndarray) else ' of ' + str(a.dtype)}")
    a = numpy.array(a, dtype=a.dtype if a.dtype.kind == "f" else numpy.float64)
    if ndim == 1:
        if a.ndim == 2 and 1 in a.shape:
            a = a.ravel()
    if a.ndim != ndim:
        raise ModelFormatError(f"{where}: attribute {key!r} must have {ndim} dimensions, got shape {a.shape}")
    if not numpy.isfinite(a).all():
        raise ModelFormatError(f"{where}: attribute {key!r} contains NaN or Inf")
    return a


def _ints(state: dict[str, Any], key: str, where: str, default: Any = None) -> tuple[int, int]:
    v = state.get(key, default)
    try:
        vals = tuple(int(a) for a in (v if isinstance(v, (tuple, list, numpy.ndarray)) else (v, v)))
    except (TypeError, ValueError):
        raise ModelFormatError(f"{where}: attribute {key!r} must be a pair of integers, got {v!r}") from None
    if len(vals) != 2 or min(vals) < 1 or max(vals) > MAX_LAYER_EXTENT:
        raise ModelFormatError(f"{where}: attribute {key!r} must be a pair of integers from 1 to {MAX_LAYER_EXTENT}, "
                               f"got {v!r}")
    return vals  # type: ignore[return-value]


def _check_dim(state: dict[str, Any], key: str, value: int, where: str) -> None:
    if key in state and state[key] is not None:
        try:
            ok = int(state[key]) == value
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFormatError(f"{where}: attribute {key}={state[key]!r} does not match the weights ({value})")


def _linear(state: dict[str, Any], where: str) -> Linear:
    w = _array(state, "W", where, 2)
    b = _array(state, "B", where, 1)
    _check_dim(state, "m", w.shape[0], where)
    _check_dim(state, "n", w.shape[1], where)
    if b.shape != (w.shape[1],):
        raise ModelFormatError(f"{where}: B has shape {b.shape}, expected ({w.shape[1]},) for W of shape {w.shape}")
    return Linear(w.shape[0], w.shape[1], weight=w, bias=b)


def _conv(state: dict[str, Any], where: str) -> Conv2d:
    w = _array(state, "W", where, 4)
    b = _array(state, "B", where, 1)
    for key, value in zip(("fh", "fw", "fd", "n"), w.shape):
        _check_dim(state, key, value, where)
    if b.shape != (w.shape[3],):
        raise ModelFormatError(f"{where}: B has shape {b.shape}, expected ({w.shape[3]},) for W of shape {w.shape}")
    return Conv2d(*w.shape, stride=_ints(state, "stride", where, (2, 2)), weight=w, bias=b)


def _pool(cls: type) -> Callable[[dict[str, Any], str], Any]:
    def make(state: dict[str, Any], where: str) -> Any:
        return cls(*_ints(state, "pool", where, (2, 2)), stride=_ints(state, "stride", where, (2, 2)))
    return make


CONVERTERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "Linear": _linear,
    "Convolution": _conv,
    "SumPool": _pool(SumPool),
    "MaxPool": _pool(MaxPool),
    "Flatten": lambda s, w: Flatten(),
    "Rect": lambda s, w: ReLU(),
    "Tanh": lambda s, w: Tanh(),
    "SoftMax": lambda s, w: SoftMax(),
}


def _preset(layer: Any, state: dict[str, Any]) -> None:
    var = state.get("lrp_var")
    if isinstance(var, bytes):
        var = var.decode("latin-1")
    if isinstance(var, str) and var:
        param = state.get("lrp_param")
        layer.set_lrp_parameters(var, None if param is None else float(param))


def to_sequential(obj: Any, path: str = "<pickle>") -> Sequential:
    """Convert an unpickled toolbox ``Sequential`` stand-in to an lrpflow :class:`Sequential`."""
    if not isinstance(obj, STAND_INS["Sequential"]):
        what = obj.kind if isinstance(obj, ToolboxObject) else type(obj).__name__
        raise ModelFormatError(f"{path}: holds a {what}, expected a toolbox modules.Sequential")
    mods = obj.state.get("modules")
    if not isinstance(mods, (list, tuple)) or not mods:
        raise ModelFormatError(f"{path}: Sequential has no list of modules")
    layers = []
    for i, m in enumerate(mods):
        where = f"{path}, module {i}"
        if not isinstance(m, ToolboxObject) or m.kind not in CONVERTERS:
            raise ModelFormatError(f"{where}: {type(m).__name__ if not isinstance(m, ToolboxObject) else m.kind} "
                                   f"is not a toolbox layer; known: {', '.join(CONVERTERS)}")
        try:
            layer = CONVERTERS[m.kind](m.state, f"{where} ({m.kind})")
            _preset(layer, m.state)
        except LrpflowError as err:
            raise ModelFormatError(str(err) if str(err).startswith(path) else f"{where} ({m.kind}): {err}") from err
        except (TypeError, ValueError) as err:
            raise ModelFormatError(f"{where} ({m.kind}): {err}") from err
        layers.append(layer)
    return Sequential(layers)


def read(path: str | os.PathLike[str]) -> Sequential:
    """Read a toolbox pickle (``.nn``/``.pickle``) without executing anything it names."""
    path = os.fspath(path)
    tree = unpickle(read_model_file(path), path)
    try:
        return to_sequential(tree, path)
    except LrpflowError:
        raise
    except Exception as err:  # anything odd in a damaged object tree
        raise ModelFormatError(f"{path}: malformed toolbox model: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- writing


_MODULE_OF = {kind: f"modules.{kind.lower()}" for kind in KINDS}


class _ToolboxPickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Writes stand-ins as the toolbox's classes (``MARK GLOBAL OBJ`` + ``BUILD``, readable by Python 2 and 3)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, type) and issubclass(obj, ToolboxObject):
            self._raw_global(_MODULE_OF[obj.kind], obj.kind, obj)
        elif obj is _numpy_global("", "_reconstruct"):
            self._raw_global("numpy.core.multiarray", "_reconstruct", obj)
        elif obj is _numpy_global("", "scalar"):
            self._raw_global("numpy.core.multiarray", "scalar", obj)
        else:
            super().save_global(obj, name)

    def _raw_global(self, module: str, name: str, obj: Any) -> None:
        if id(obj) in self.memo:
            self.write(self.get(self.memo[id(obj)][0]))
            return
        self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
        self.memoize(obj)

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, ToolboxObject):
            memo = self.memo.get(id(obj))
            if memo is not None:
                self.write(self.get(memo[0]))
                return
            self.write(pickle.MARK)
            self.save_global(type(obj))
            self.write(pickle.OBJ)
            self.memoize(obj)
            self.save(obj.state)
            self.write(pickle.BUILD)
            return
        super().save(obj, save_persistent_id)


def _toolbox_state(layer: Any, where: str) -> tuple[str, dict[str, Any]]:
    from lrpflow.backend import to_numpy

    kind = getattr(layer, "toolbox_name", None)
    if kind not in CONVERTERS:
        raise ModelFormatError(f"{where}: {type(layer).__name__} has no toolbox pickle form")
    preset = {"lrp_var": layer.lrp_var, "lrp_param": 1.0 if layer.lrp_param is None else float(layer.lrp_param)}
    if kind == "Linear":
        w = numpy.array(to_numpy(layer.weight), dtype=numpy.float64)
        state = {"m": int(layer.m), "n": int(layer.n), "W": w, "B": numpy.array(to_numpy(layer.bias), dtype=numpy.float64),
                 "X": None, "Y": None, "dW": None, "dB": None}
    elif kind == "Convolution":
        if any(layer.pads):
            raise ModelFormatError(f"{where}: the toolbox's Convolution has no padding")
        h, w = layer.kernel
        state = {"fh": h, "fw": w, "fd": int(layer.d), "n": int(layer.n), "stride": tuple(layer.stride),
                 "W": numpy.array(to_numpy(layer.weight), dtype=numpy.float64),
                 "B": numpy.array(to_numpy(layer.bias), dtype=numpy.float64), "X": None, "Y": None, "DY": None}
    elif kind in ("SumPool", "MaxPool"):
        if any(layer.pads):
            raise ModelFormatError(f"{where}: the toolbox's {kind} has no padding")
        state = {"pool": tuple(layer.pool), "stride": tuple(layer.stride), "X": None, "Y": None}
    elif kind == "Flatten":
        state = {"inputshape": None, "Y": None}
    else:
        state = {"Y": None}
    state.update(preset)
    return kind, state


def write(model: Sequential, path: str | os.PathLike[str]) -> None:
    """Write a Sequential of toolbox layers as the toolbox pickles it (protocol 2, toolbox class paths)."""
    path = os.fspath(path)
    modules = getattr(model, "modules", None)
    if modules is None:
        raise ModelFormatError(f"{path}: the toolbox pickle format holds a Sequential, got a {type(model).__name__}")
    objs = []
    for i, layer in enumerate(modules):
        kind, state = _toolbox_state(layer, f"{path}, layer {i}")
        objs.append(STAND_INS[kind](state))
    seq = STAND_INS["Sequential"]({"modules": objs, "lrp_var": None, "lrp_param": 1.0})
    buf = io.BytesIO()
    _ToolboxPickler(buf, protocol=2).dump(seq)
    write_file(path, buf.getvalue(), ModelFormatError)
