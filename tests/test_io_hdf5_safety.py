"""HDF5-based readers never pull other files into weights or data (external storage, external links, VDS)."""
from __future__ import annotations

import json

import h5py
import numpy
import pytest

import lrpflow
from lrpflow.io import load_data
from lrpflow.layers import Linear, ReLU

HOST_FILE = "/etc/passwd"  # any host file; the readers must never open it


def _native(tmp_path):
    path = tmp_path / "m.h5"
    lrpflow.save_model(lrpflow.Sequential([Linear(3, 2, rng=0), ReLU()]), path)
    return path


def _external_storage(f, name, shape=(3, 2), dtype="f8"):
    del f[name]
    nbytes = numpy.dtype(dtype).itemsize * int(numpy.prod(shape))
    f.create_dataset(name, shape=shape, dtype=dtype, external=[(HOST_FILE, 0, nbytes)])


def _external_link(f, name, other):
    with h5py.File(other, "w") as g:
        g["w"] = numpy.ones((3, 2))
    del f[name]
    f[name] = h5py.ExternalLink(str(other), "/w")


def _virtual(f, name, other, shape=(3, 2)):
    with h5py.File(other, "w") as g:
        g["w"] = numpy.ones(shape)
    layout = h5py.VirtualLayout(shape=shape, dtype="f8")
    layout[...] = h5py.VirtualSource(str(other), "w", shape=shape)
    del f[name]
    f.create_virtual_dataset(name, layout)


HOSTILE = {
    "external storage": (lambda f, n, o: _external_storage(f, n), r"stores its data in external file\(s\) /etc/passwd"),
    "external link": (_external_link, "is an external link to .*other.h5:/w"),
    "virtual dataset": (_virtual, "virtual dataset takes data from another file .*other.h5"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_native_model_refuses_data_from_other_files(tmp_path, kind):
    path = _native(tmp_path)
    make, match = HOSTILE[kind]
    with h5py.File(path, "r+") as f:
        make(f, "params/0/weight", tmp_path / "other.h5")
    with pytest.raises(lrpflow.ModelFormatError, match=match) as info:
        lrpflow.load_model(path)
    assert str(path) in str(info.value)


def test_native_model_refuses_an_unused_external_link(tmp_path):
    """Refused wherever it sits, not only where the reader happens to look."""
    path = _native(tmp_path)
    with h5py.File(path, "r+") as f:
        f["spare"] = h5py.ExternalLink(HOST_FILE, "/x")
    with pytest.raises(lrpflow.ModelFormatError, match="'spare' is an external link to /etc/passwd"):
        lrpflow.load_model(path)


def test_native_model_soft_links(tmp_path):
    """A soft link inside the file is fine; one to nowhere is refused."""
    path = _native(tmp_path)
    with h5py.File(path, "r+") as f:
        f["params/0"].move("weight", "w0")
        f["params/0/weight"] = h5py.SoftLink("/params/0/w0")
    lrpflow.load_model(path)
    with h5py.File(path, "r+") as f:
        f["dangling"] = h5py.SoftLink("/nowhere/at/all")
    with pytest.raises(lrpflow.ModelFormatError, match="soft link to '/nowhere/at/all', which is not in the file"):
        lrpflow.load_model(path)


def _mat73(path, data=None):
    """A MATLAB v7.3-style file (HDF5 with a 512-byte user block); ``data`` stored column-major as MATLAB does."""
    with h5py.File(path, "w", userblock_size=512) as f:
        if data is not None:
            f["data"] = numpy.asarray(data).T
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(116, b" "))


@pytest.mark.parametrize("kind", HOSTILE)
def test_mat73_data_refuses_data_from_other_files(tmp_path, kind):
    path = tmp_path / "x.mat"
    _mat73(path, numpy.ones((2, 3)))
    assert load_data(path).shape == (2, 3)
    make, match = HOSTILE[kind]
    with h5py.File(path, "r+") as f:
        make(f, "data", tmp_path / "other.h5")
    with pytest.raises(lrpflow.DataFormatError, match=match):
        load_data(path)


def test_mat73_model_refuses_data_from_other_files(tmp_path):
    path = tmp_path / "m.mat"
    _mat73(path, numpy.ones((2, 3)))
    with h5py.File(path, "r+") as f:
        f["#refs#/a"] = h5py.ExternalLink(HOST_FILE, "/x")
    pytest.importorskip("matio")
    with pytest.raises(lrpflow.ModelFormatError, match="external link to /etc/passwd"):
        lrpflow.load_model(path)
    _mat73(path, numpy.ones((2, 3)))
    with h5py.File(path, "r+") as f:
        _external_storage(f, "data", shape=(3, 2))
    with pytest.raises(lrpflow.ModelFormatError, match="external file"):
        lrpflow.load_model(path)


def test_mat73_declared_versus_stored_size(tmp_path):
    """A huge declared shape with nothing stored, and 10¹² samples of size 0, are refused before reading."""
    path = tmp_path / "x.mat"
    _mat73(path)
    with h5py.File(path, "a") as f:
        f.create_dataset("data", shape=(100000, 100000), dtype="f8", chunks=(100, 100))
    with pytest.raises(lrpflow.DataFormatError, match=r"declares shape \(100000, 100000\) .* but stores 0 bytes"):
        load_data(path)
    _mat73(path)
    with h5py.File(path, "a") as f:
        f.create_dataset("data", shape=(0, 10**12), dtype="f8")  # MATLAB (10**12, 0), column-major
    with pytest.raises(lrpflow.DataFormatError, match=r"shape \(1000000000000, 0\): 1000000000000 samples of size 0"):
        load_data(path)


def test_npy_and_mat5_samples_of_size_zero(tmp_path):
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        numpy.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 0)})
    with pytest.raises(lrpflow.DataFormatError, match="samples of size 0"):
        load_data(path)
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "x.mat", {"data": numpy.zeros((10**6, 0))})
    with pytest.raises(lrpflow.DataFormatError, match=r"shape \(1000000, 0\): 1000000 samples of size 0"):
        load_data(tmp_path / "x.mat")


def test_graph_dataset_larger_than_the_file_is_refused(tmp_path):
    path = _native(tmp_path)
    with h5py.File(path, "r+") as f:
        text = bytes(f["graph"][()])
        del f["graph"]
        f.create_dataset("graph", shape=(10**9,), dtype="u1", chunks=(1 << 16,))
        f["graph"][: len(text)] = numpy.frombuffer(text, dtype=numpy.uint8)
    with pytest.raises(lrpflow.ModelFormatError, match="dataset 'graph' declares 1000000000 bytes"):
        lrpflow.load_model(path)
    assert json.loads(text)["kind"] == "sequential"


def test_mat73_model_with_a_looping_global_heap_is_refused(tmp_path):
    """mat-io reads variable-length data; a heap object of size 0 would make libhdf5 loop forever."""
    import struct

    path = tmp_path / "m.mat"
    _mat73(path, numpy.ones((2, 3)))
    with h5py.File(path, "r+") as f:
        f["data"].attrs["MATLAB_class"] = "double"  # a variable-length string: stored in the global heap
    data = bytearray(path.read_bytes())
    heap = data.find(b"GCOL")
    assert heap > 0
    data[heap + 16 : heap + 32] = struct.pack("<HHIQ", 0, 0, 0, 0)
    path.write_bytes(bytes(data))
    pytest.importorskip("matio")
    with pytest.raises(lrpflow.ModelFormatError, match="damaged HDF5 global heap"):
        lrpflow.load_model(path)
