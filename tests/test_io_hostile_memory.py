"""Model readers need memory bounded by the file: hostile pickles cannot allocate, text is parsed without token objects."""
from __future__ import annotations

import io
import re
import tracemalloc

import numpy
import pytest

import lrpflow
from lrpflow.io import toolbox_pickle
from lrpflow.io.toolbox_pickle import STAND_INS, _ToolboxPickler
from lrpflow.layers import Linear, ReLU

MIB = 1 << 20


def _peak(fn) -> tuple[int, BaseException | None]:
    """Peak traced bytes (numpy's buffers included) while ``fn()`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        err = None
    except BaseException as e:  # noqa: BLE001 - returned to the test
        err = e
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, err


class _Reduce:
    """Pickles as ``func(*args)`` (+ ``BUILD state``): how a hostile file names numpy's constructors."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _hostile_pickle(weight) -> bytes:
    lin = STAND_INS["Linear"]({"m": 1 << 14, "n": 1 << 11, "W": weight, "B": numpy.zeros(2)})
    buf = io.BytesIO()
    _ToolboxPickler(buf, protocol=2).dump(STAND_INS["Sequential"]({"modules": [lin]}))
    return buf.getvalue()


RECONSTRUCT = toolbox_pickle._numpy_global("", "_reconstruct")
HOSTILE = {
    # numpy.ndarray((2**14, 2**11), "f8"): 256 MiB, uninitialised, from ~200 bytes
    "ndarray constructor": (_Reduce(numpy.ndarray, ((1 << 14, 1 << 11), "f8")), r"refused numpy\.ndarray\(\.\.\.\)"),
    # _reconstruct(ndarray, (2**28,), b"b") without a state: 256 MiB of int8
    "reconstruct without data": (_Reduce(RECONSTRUCT, (numpy.ndarray, (1 << 28,), b"b")), "numpy array without data"),
    # the state declares 2**25 float64 (256 MiB) but carries 8 bytes
    "declared shape beyond data": (_Reduce(RECONSTRUCT, (numpy.ndarray, (0,), b"b"),
                                           (1, (1 << 25,), numpy.dtype("f8"), False, b"\0" * 8)),
                                   r"declares shape \(33554432,\) of float64 \(268435456 bytes\) but stores 8 bytes"),
    "object array": (_Reduce(RECONSTRUCT, (numpy.ndarray, (0,), b"b"),
                             (1, (2,), numpy.dtype("O"), False, [1, 2])), "refused numpy dtype 'O8'"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_pickle_is_refused_without_allocating(tmp_path, kind):
    weight, match = HOSTILE[kind]
    path = tmp_path / "hostile.nn"
    path.write_bytes(_hostile_pickle(weight))
    assert path.stat().st_size < 600
    with pytest.raises(lrpflow.ModelFormatError):  # warm up: plugin registries and imports load once
        lrpflow.load_model(path)
    peak, err = _peak(lambda: lrpflow.load_model(path))
    assert isinstance(err, lrpflow.ModelFormatError), err
    assert str(path) in str(err)
    assert re.search(match, str(err)), str(err)
    assert peak < 1 * MIB, f"loading a {path.stat().st_size}-byte file peaked at {peak / MIB:.1f} MiB"


def test_arrays_come_only_from_their_stored_bytes(tmp_path):
    """A genuine array (any byte order, Fortran order) still loads, exactly."""
    w = numpy.arange(6, dtype=">f8").reshape(2, 3, order="F") / 7
    lin = STAND_INS["Linear"]({"m": 2, "n": 3, "W": w, "B": numpy.arange(3, dtype="<f4")})
    buf = io.BytesIO()
    _ToolboxPickler(buf, protocol=2).dump(STAND_INS["Sequential"]({"modules": [lin, STAND_INS["Rect"]({})]}))
    path = tmp_path / "ok.nn"
    path.write_bytes(buf.getvalue())
    model = lrpflow.load_model(path)
    numpy.testing.assert_array_equal(model.modules[0].weight, w)
    numpy.testing.assert_array_equal(model.modules[0].bias, numpy.arange(3))


def test_numpy_scalar_needs_exactly_its_bytes(tmp_path):
    scalar = toolbox_pickle._numpy_global("", "scalar")
    lin = STAND_INS["Linear"]({"m": _Reduce(scalar, (numpy.dtype("i8"), b"\2\0\0\0")), "n": 1,
                               "W": numpy.ones((2, 1)), "B": numpy.zeros(1)})
    buf = io.BytesIO()
    _ToolboxPickler(buf, protocol=2).dump(STAND_INS["Sequential"]({"modules": [lin]}))
    with pytest.raises(lrpflow.ModelFormatError, match="numpy scalar of int64 needs 8 bytes, stores 4"):
        toolbox_pickle.unpickle(buf.getvalue())


def test_text_model_memory_is_a_small_multiple_of_the_file(tmp_path):
    """Parsing numbers with numpy from the file's bytes: no Python float per token (that needed ~28x the file)."""
    rng = numpy.random.default_rng(0)
    model = lrpflow.Sequential([Linear(400, 300, rng=rng), ReLU(), Linear(300, 10, rng=rng)])
    path = tmp_path / "m.txt"
    lrpflow.save_model(model, path)
    size = path.stat().st_size
    assert size > 2 * MIB
    peak, err = _peak(lambda: lrpflow.load_model(path))
    assert err is None
    assert peak < 4 * size, f"a {size / MIB:.1f} MiB text model peaked at {peak / MIB:.1f} MiB"
    back = lrpflow.load_model(path)
    numpy.testing.assert_array_equal(back.modules[0].weight, model.modules[0].weight)


def test_pickle_round_trip_is_unchanged(tmp_path):
    model = lrpflow.Sequential([Linear(5, 4, rng=0), ReLU()])
    lrpflow.save_model(model, tmp_path / "m.nn")
    back = lrpflow.load_model(tmp_path / "m.nn")
    numpy.testing.assert_array_equal(back.modules[0].weight, model.modules[0].weight)
