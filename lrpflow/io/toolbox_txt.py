"""The LRP Toolbox's plain-text model format (current and legacy layout), read and written.

Current layout: one header line per layer, parameters on the following lines::

    Linear m n            + one line of m·n weights (C order of W[m, n]) + one line of n biases
    Convolution h w d n s0 s1  + one line of h·w·d·n weights (C order of W[h, w, d, n]) + one line of n biases
    SumPool hp wp s0 s1 | MaxPool hp wp s0 s1 | Rect | Tanh | SoftMax | Flatten

Legacy layout (Linear/Rect/Tanh/SoftMax only): ``Linear m n`` followed by m lines, one row
of W each, and a bias line. The layout of each Linear block is recognised by the number
of values on its first parameter line. Unlike the toolbox, a blank line or an unknown
layer name is an error naming the line, never a silent truncation or a fallback.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy

from lrpflow.errors import ModelFormatError
from lrpflow.graph import Sequential
from lrpflow.io.files import MAX_LAYER_EXTENT, read_model_file, write_file
from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh


class _Lines:
    """A cursor over the lines of a model file (bytes) that reports positions in errors.

    Parameter lines are parsed by numpy straight from the file's bytes: no Python object
    per number, so reading needs about twice the file's size plus the parameters.
    """

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        self.pos = 0
        self.i = 0  # number of the last line returned (1-based)

    def error(self, msg: str, line: int | None = None) -> ModelFormatError:
        n = self.i if line is None else line
        return ModelFormatError(f"{self.path}, line {n}: {msg}")

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def next_bytes(self, what: str) -> bytes:
        if self.done():
            raise self.error(f"unexpected end of file; expected {what}", self.i + 1)
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end
        line = self.data[self.pos : end]
        self.pos = end + 1
        self.i += 1
        return line

    def next(self, what: str) -> str:
        line = self.next_bytes(what)
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.error(f"not a text model file (byte {err.start} of the line is not UTF-8)") from err

    def numbers(self, what: str, count: int | None = None) -> numpy.ndarray:
        line = self.next_bytes(what)
        values = _parse_numbers(line) if line.strip() else numpy.zeros(0)
        if values is None:
            bad = next((t for t in line.split() if not _is_float(t)), line.split()[0])
            raise self.error(f"non-numeric token {bad[:40].decode('utf-8', 'replace')!r} in {what}") from None
        if count is not None and values.size != count:
            raise self.error(f"{what}: expected {count} values, found {values.size}")
        if not numpy.isfinite(values).all():
            raise self.error(f"{what} contains NaN or Inf")
        return values


def _parse_numbers(line: bytes) -> numpy.ndarray | None:
    """The whitespace-separated numbers of ``line`` (None if a token is not a number)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy < 2.3 only warns on a bad token
        try:
            return numpy.fromstring(line, dtype=numpy.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None


def _is_float(t: bytes) -> bool:
    try:
        numpy.fromstring(t, dtype=numpy.float64, sep=" ")
        return True
    except (ValueError, DeprecationWarning):
        return False


def _ints(cur: _Lines, header: list[str], n: int, name: str) -> list[int]:
    args = header[1:]
    if len(args) != n:
        raise cur.error(f"{name} header needs {n} integers, got {' '.join(args) or 'none'}")
    try:
        vals = [int(a) for a in args]
    except ValueError:
        raise cur.error(f"{name} header needs integers, got {' '.join(args)}") from None
    if any(v <= 0 for v in vals):
        raise cur.error(f"{name} header values must be positive, got {' '.join(args)}")
    if name in ("Convolution", "SumPool", "MaxPool"):
        extents = vals[:2] + vals[-2:]  # kernel or pool, and stride
        if max(extents) > MAX_LAYER_EXTENT:
            raise cur.error(f"{name} window/stride {' '.join(map(str, extents))} exceeds {MAX_LAYER_EXTENT}")
    return vals


def _linear(cur: _Lines, header: list[str]) -> Linear:
    m, n = _ints(cur, header, 2, "Linear")
    first = cur.numbers("Linear weights")
    if first.size == m * n:  # current layout: W on one line
        weight = first.reshape(m, n)
    elif first.size == n:  # legacy layout: m rows of n values
        rows = [first] + [cur.numbers(f"Linear weight row {k + 1} of {m}", n) for k in range(1, m)]
        weight = numpy.stack(rows)
    else:
        raise cur.error(f"Linear {m} {n}: expected {m * n} weights on one line (or {n} per row), found {first.size}")
    bias = cur.numbers("Linear biases", n)
    return Linear(m, n, weight=weight, bias=bias)


def _conv(cur: _Lines, header: list[str]) -> Conv2d:
    h, w, d, n, s0, s1 = _ints(cur, header, 6, "Convolution")
    weight = cur.numbers("Convolution weights", h * w * d * n).reshape(h, w, d, n)
    bias = cur.numbers("Convolution biases", n)
    return Conv2d(h, w, d, n, stride=(s0, s1), weight=weight, bias=bias)


def _pool(cls: type) -> Callable[[_Lines, list[str]], Any]:
    def read(cur: _Lines, header: list[str]) -> Any:
        hp, wp, s0, s1 = _ints(cur, header, 4, cls.toolbox_name)
        return cls(hp, wp, stride=(s0, s1))
    return read


def _plain(cls: type) -> Callable[[_Lines, list[str]], Any]:
    def read(cur: _Lines, header: list[str]) -> Any:
        if len(header) != 1:
            raise cur.error(f"{header[0]} takes no arguments, got {' '.join(header[1:])}")
        return cls()
    return read


READERS: dict[str, Callable[[_Lines, list[str]], Any]] = {
    "Linear": _linear,
    "Convolution": _conv,
    "SumPool": _pool(SumPool),
    "MaxPool": _pool(MaxPool),
    "Rect": _plain(ReLU),
    "Tanh": _plain(Tanh),
    "SoftMax": _plain(SoftMax),
    "Flatten": _plain(Flatten),
}


def parse(text: str | bytes, path: str = "<string>") -> Sequential:
    """A toolbox text model from its contents (text or UTF-8 bytes)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if not data.strip():
        raise ModelFormatError(f"{path}: empty model file")
    cur = _Lines(path, data)
    layers = []
    while not cur.done():
        line = cur.next("a layer header")
        if not line.strip():
            raise cur.error("blank line where a layer header was expected")
        header = line.split()
        reader = READERS.get(header[0])
        if reader is None:
            raise cur.error(f"unknown layer {header[0][:40]!r}; known: {', '.join(READERS)}")
        layers.append(reader(cur, header))
    return Sequential(layers)


def read(path: str | os.PathLike[str], **_: Any) -> Sequential:
    """Read a toolbox plain-text model file into a :class:`Sequential` (float64 parameters)."""
    path = os.fspath(path)
    data = read_model_file(path)
    if not data.isascii():  # the writer writes ASCII
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelFormatError(f"{path}: not a text model file (byte {err.start} is not UTF-8)") from err
    return parse(data, path)


def _fmt(values: Any) -> str:
    return " ".join(repr(float(v)) for v in numpy.asarray(values, dtype=numpy.float64).ravel())


def write(model: Sequential, path: str | os.PathLike[str], **_: Any) -> None:
    """Write a Sequential of toolbox layers in the current text layout (floats via repr: lossless)."""
    from lrpflow.backend import to_numpy

    out = []
    for i, layer in enumerate(getattr(model, "modules", model.layers)):
        name = getattr(layer, "toolbox_name", None)
        if name is None:
            raise ModelFormatError(f"{os.fspath(path)}: layer {i} ({layer.type_name}) has no toolbox text form")
        if isinstance(layer, Linear):
            out += [f"Linear {layer.m} {layer.n}", _fmt(to_numpy(layer.weight)), _fmt(to_numpy(layer.bias))]
        elif isinstance(layer, Conv2d):
            if any(layer.pads):
                raise ModelFormatError(f"{os.fspath(path)}: layer {i}: the toolbox format has no convolution padding")
            h, w = layer.kernel
            out += [f"Convolution {h} {w} {layer.d} {layer.n} {layer.stride[0]} {layer.stride[1]}",
                    _fmt(to_numpy(layer.weight)), _fmt(to_numpy(layer.bias))]
        elif isinstance(layer, (SumPool, MaxPool)):
            if any(layer.pads):
                raise ModelFormatError(f"{os.fspath(path)}: layer {i}: the toolbox format has no pooling padding")
            out.append(f"{name} {layer.pool[0]} {layer.pool[1]} {layer.stride[0]} {layer.stride[1]}")
        else:
            out.append(name)
    write_file(path, "\n".join(out) + "\n", ModelFormatError)


