"""A stand-in for cupy on the CPU that fails on every device → host synchronisation.

:class:`DeviceArray` wraps a numpy array the way a cupy array wraps device memory:
arithmetic, indexing, methods and the functions of the stand-in namespace ``xp``
(:data:`stub`, registered with :func:`lrpflow.backend.register_array_type`) run "on the
device" and return device arrays; everything that would need the value on the host
raises :class:`HostSync`:

- implicit conversions: ``bool(a)``, ``float(a)``, ``int(a)``, ``a.__index__()``,
  ``a.item()``, ``a.tolist()``, ``a.tobytes()``, ``numpy.asarray(a)`` (``__array__``);
  so does a Python ``if`` on a device value;
- mixing a host ``numpy.ndarray`` into device arithmetic (cupy raises there too);
- an explicit copy ``a.get()`` (``lrpflow.backend.to_numpy``) while :attr:`Stub.strict`
  is set; otherwise it is counted in :attr:`Stub.transfers`.

Shapes, dtypes, strides and flags are host metadata (as on cupy) and read freely.
``flags`` has only cupy's three fields, so code that reads numpy-only flags fails here
as it would on a GPU.
"""
from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy
from numpy.lib.mixins import NDArrayOperatorsMixin


class HostSync(AssertionError):
    """A device value was needed on the host."""


class _Flags:
    """cupy's ``ndarray.flags``: c_contiguous, f_contiguous, owndata (no ``writeable``)."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: numpy.ndarray) -> None:
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)


class _Device:
    id = 0


def unwrap(v: Any) -> Any:
    """Device arrays → their numpy data (recursively in tuples, lists and dicts)."""
    if isinstance(v, DeviceArray):
        return v._a
    if isinstance(v, tuple):
        return tuple(unwrap(i) for i in v)
    if isinstance(v, list):
        return [unwrap(i) for i in v]
    if isinstance(v, dict):
        return {k: unwrap(i) for k, i in v.items()}
    return v


def wrap(v: Any) -> Any:
    """numpy results → device arrays (numpy scalars become 0-d device arrays, as on cupy)."""
    if isinstance(v, numpy.ndarray):
        return DeviceArray(v)
    if isinstance(v, numpy.generic) and not isinstance(v, (numpy.str_, numpy.bytes_)):
        return DeviceArray(numpy.asarray(v))
    if isinstance(v, tuple):
        return tuple(wrap(i) for i in v)
    if isinstance(v, list):
        return [wrap(i) for i in v]
    return v


def _no_host_arrays(args: Any, what: str) -> None:
    for a in args:
        if isinstance(a, numpy.ndarray):
            raise HostSync(f"{what}: a host numpy array {a.shape} mixed into device arithmetic (cupy raises here)")
        if isinstance(a, (tuple, list)):
            _no_host_arrays(a, what)


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device" (see the module docstring)."""

    __slots__ = ("_a",)

    def __init__(self, a: numpy.ndarray) -> None:
        self._a = a

    # -- host metadata -------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: _Flags(self._a))
    device = property(lambda self: _Device())
    base = property(lambda self: None if self._a.base is None else DeviceArray(self._a.base))
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    # -- synchronisations ------------------------------------------------------------
    def _sync(self, what: str) -> Any:
        raise HostSync(f"{what} of a device array {self.shape} {self.dtype} (a device → host synchronisation)")

    def __bool__(self) -> bool:
        return self._sync("bool()")

    def __float__(self) -> float:
        return self._sync("float()")

    def __int__(self) -> int:
        return self._sync("int()")

    def __index__(self) -> int:
        return self._sync("__index__")

    def __complex__(self) -> complex:
        return self._sync("complex()")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync("numpy.asarray()/__array__")

    def item(self, *args: Any) -> Any:
        return self._sync(".item()")

    def tolist(self) -> Any:
        return self._sync(".tolist()")

    def tobytes(self, *args: Any, **kwargs: Any) -> Any:
        return self._sync(".tobytes()")

    def get(self) -> numpy.ndarray:
        """The explicit copy to the host (cupy's ``.get()``)."""
        stub.transfers += 1
        if stub.strict:
            return self._sync(".get() inside the backward pass")
        return self._a.copy()

    # -- device computation -------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return wrap(self._a[unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        _no_host_arrays([value], "__setitem__")
        self._a[unwrap(key)] = unwrap(value)

    def __iter__(self) -> Any:
        return (DeviceArray(self._a[i]) for i in range(len(self._a)))

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _no_host_arrays(inputs, f"numpy.{ufunc.__name__}")
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*unwrap(inputs), **unwrap(kwargs))
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        # numpy.<function>(device array): cupy dispatches these to its own implementation
        if func in (numpy.asarray, numpy.array, numpy.asanyarray, numpy.ascontiguousarray):
            return self._sync(f"numpy.{func.__name__}()")
        _no_host_arrays(args, f"numpy.{func.__name__}")
        out = kwargs.get("out")
        result = func(*unwrap(args), **unwrap(kwargs))
        return out if out is not None else wrap(result)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__ / __array_struct__ / buffer: the host cannot see the data
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return wrap(attr)

        def method(*args: Any, **kwargs: Any) -> Any:
            _no_host_arrays(args, f".{name}()")
            out = kwargs.get("out")
            result = attr(*unwrap(args), **unwrap(kwargs))
            return out if out is not None else wrap(result)

        return method


def _device_function(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        _no_host_arrays(args, f"xp.{name}")
        out = kwargs.get("out")
        result = fn(*unwrap(args), **unwrap(kwargs))
        return out if out is not None else wrap(result)

    call.__name__ = name
    return call


class _Namespace(types.ModuleType):
    """Functions of a numpy namespace, run "on the device"."""

    def __init__(self, name: str, host: Any) -> None:
        super().__init__(name)
        self._host = host

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._host, name)
        if isinstance(attr, types.ModuleType):
            sub = _Namespace(f"{self.__name__}.{name}", attr)
            setattr(self, name, sub)
            return sub
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, finfo, constants
        fn = _UFunc(attr) if isinstance(attr, numpy.ufunc) else _device_function(attr, name)
        setattr(self, name, fn)
        return fn


class _UFunc:
    """A numpy ufunc on device arrays (calls and ``.reduce``/``.at``/... alike)."""

    def __init__(self, ufunc: numpy.ufunc) -> None:
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _device_function(self._u, self.__name__)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._u, name)
        return _device_function(attr, f"{self.__name__}.{name}") if callable(attr) else attr


class _RandomState:
    def __init__(self, seed: Any = None) -> None:
        self._rs = numpy.random.RandomState(seed)

    def __getattr__(self, name: str) -> Any:
        return _device_function(getattr(self._rs, name), name)


class Stub(_Namespace):
    """The stand-in namespace: ``xp.asarray`` uploads host data; everything else as in numpy."""

    ndarray = DeviceArray

    def __init__(self) -> None:
        super().__init__("cupy_standin", numpy)
        #: explicit ``.get()`` copies so far
        self.transfers = 0
        #: True: ``.get()`` raises too (set around the backward pass)
        self.strict = False
        self.random = types.SimpleNamespace(RandomState=_RandomState)

    def asarray(self, a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or numpy.dtype(dtype) == a.dtype else DeviceArray(a._a.astype(dtype))
        return DeviceArray(numpy.array(a, dtype=dtype, order=order))  # upload (a copy, as cupy makes)

    def array(self, a: Any, dtype: Any = None, copy: bool = True, order: Any = "K") -> DeviceArray:
        if isinstance(a, DeviceArray):
            return DeviceArray(numpy.array(a._a, dtype=dtype, copy=copy, order=order))
        return DeviceArray(numpy.array(a, dtype=dtype, order=order))

    def asnumpy(self, a: Any) -> numpy.ndarray:
        return a.get() if isinstance(a, DeviceArray) else numpy.asarray(a)


#: the one stand-in namespace
stub = Stub()


def to_device(a: Any) -> DeviceArray:
    return stub.asarray(a)
