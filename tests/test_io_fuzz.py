"""Every reader fed random bytes and mutated valid files: nothing but LrpflowError, and nothing hangs."""
from __future__ import annotations

import gzip
import itertools
import os
import pathlib
import time

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lrpflow
from lrpflow.io import load_data, save_data
from lrpflow.layers import BatchNorm, Conv2d, Flatten, Linear, MaxPool, ReLU, SoftMax, SumPool, Tanh

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,  # same examples on every run (CI is stable)
               suppress_health_check=[HealthCheck.too_slow])
#: one read of a small file must never take longer than this (a hang shows up as a failure, not a stuck run)
SLOW = 10.0
_counter = itertools.count()


def _small_net() -> lrpflow.Sequential:
    rng = numpy.random.default_rng(0)
    return lrpflow.Sequential([Conv2d(3, 3, 1, 2, rng=rng), ReLU(), SumPool(2, 2), MaxPool(1, 1, stride=(1, 1)),
                               Flatten(), Linear(8, 3, rng=rng), Tanh(), SoftMax()])


def _native_net() -> lrpflow.Model:
    rng = numpy.random.default_rng(1)
    return lrpflow.Sequential([Linear(4, 3, rng=rng), BatchNorm(3), ReLU()])


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """Small valid files of every readable format, as bytes (key: file suffix / name)."""
    d = tmp_path_factory.mktemp("valid")
    net = _small_net()
    out = {}
    for ext in ("txt", "nn", "mat"):
        lrpflow.save_model(net, d / f"m.{ext}")
        out[f"model.{ext}"] = (d / f"m.{ext}").read_bytes()
    lrpflow.save_model(_native_net(), d / "m.h5")
    out["model.h5"] = (d / "m.h5").read_bytes()
    # format_version 1 (variable-length strings in the global heap); hangs are hunted in test_io_native_fuzz.py
    out["model.v1.h5"] = (pathlib.Path(__file__).resolve().parent / "fixtures" / "native_v1.h5").read_bytes()
    x = numpy.arange(24, dtype=numpy.float32).reshape(4, 6) / 7
    for ext in ("npy", "npz", "mat", "txt"):
        save_data(x, d / f"x.{ext}")
        out[f"data.{ext}"] = (d / f"x.{ext}").read_bytes()
    save_data(numpy.arange(32, dtype=numpy.uint8).reshape(2, 4, 4), d / "x-ubyte")
    out["data-ubyte"] = (d / "x-ubyte").read_bytes()
    out["data-ubyte.gz"] = gzip.compress(out["data-ubyte"])
    save_data(numpy.arange(48, dtype=numpy.uint8).reshape(4, 4, 3), d / "x.png")
    out["data.png"] = (d / "x.png").read_bytes()
    try:
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(numpy.ones((3, 4), numpy.float32), "w")
        g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
        out["model.onnx"] = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    except ImportError:
        pass
    return out


def _read(tmp_dir, key: str, data: bytes) -> None:
    kind, _, suffix = key.partition(".") if not key.startswith("data-") else ("data", "", key[len("data"):])
    name = f"f{next(_counter)}" + (f".{suffix}" if not suffix.startswith("-") else suffix)
    path = os.path.join(tmp_dir, name)
    with open(path, "wb") as f:
        f.write(data)
    start = time.perf_counter()
    try:
        if kind == "model":
            lrpflow.load_model(path)
        else:
            load_data(path)
    except lrpflow.LrpflowError:
        pass
    finally:
        os.remove(path)
    assert time.perf_counter() - start < SLOW, f"reading {key} took too long"


MODEL_KEYS = ["model.txt", "model.nn", "model.mat", "model.h5", "model.v1.h5", "model.onnx"]
DATA_KEYS = ["data.npy", "data.npz", "data.mat", "data.txt", "data-ubyte", "data-ubyte.gz", "data.png"]


def _need(valid_files, key):
    if key not in valid_files:
        pytest.skip(f"{key}: its package is not installed")


@pytest.mark.parametrize("key", MODEL_KEYS + DATA_KEYS)
def test_valid_fixture_files_read(valid_files, tmp_path, key):
    _need(valid_files, key)
    path = tmp_path / ("x" + key[len(key.split(".")[0].split("-")[0]):])
    path.write_bytes(valid_files[key])
    (lrpflow.load_model if key.startswith("model") else load_data)(path)


@pytest.mark.parametrize("key", MODEL_KEYS + DATA_KEYS)
@FUZZ
@given(data=st.binary(min_size=0, max_size=600))
def test_random_bytes(valid_files, tmp_path_factory, key, data):
    _need(valid_files, key)
    _read(tmp_path_factory.getbasetemp(), key, data)


@st.composite
def mutations(draw, size: int):
    """Byte replacements, insertions, deletions and a truncation of a file of ``size`` bytes."""
    edits = draw(st.lists(st.tuples(st.sampled_from(["set", "insert", "delete"]),
                                    st.integers(0, max(0, size - 1)), st.integers(0, 255)), min_size=1, max_size=8))
    cut = draw(st.one_of(st.none(), st.integers(0, size)))
    return edits, cut


def _mutate(data: bytes, edits, cut) -> bytes:
    b = bytearray(data)
    for op, pos, val in edits:
        pos = min(pos, len(b))
        if op == "set" and pos < len(b):
            b[pos] = val
        elif op == "insert":
            b.insert(pos, val)
        elif op == "delete" and pos < len(b):
            del b[pos]
    return bytes(b if cut is None else b[:cut])


@pytest.mark.parametrize("key", MODEL_KEYS + DATA_KEYS)
@FUZZ
@given(data=st.data())
def test_mutated_valid_files(valid_files, tmp_path_factory, key, data):
    _need(valid_files, key)
    original = valid_files[key]
    edits, cut = data.draw(mutations(len(original)))
    _read(tmp_path_factory.getbasetemp(), key, _mutate(original, edits, cut))


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("LinearConvolutionSumPoolMaxRectTanhSoftMaxFlatten 0123456789.-e\n")),
                    max_size=300))
def test_text_models_from_token_soup(tmp_path_factory, text):
    _read(tmp_path_factory.getbasetemp(), "model.txt", text.encode())
