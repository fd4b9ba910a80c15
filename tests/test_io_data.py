"""Data readers and writers: npy, npz, mat, txt, MNIST IDX, images, the bundled digits; lazy sources; errors."""
from __future__ import annotations

import gzip
import struct

import h5py
import numpy
import pytest

import lrpflow
from lrpflow.io import DataSource, load_data, open_data, save_data
from lrpflow.io.arrays import MMAP_THRESHOLD, StreamSource


@pytest.fixture
def x(rng):
    return rng.normal(size=(7, 4, 3, 2))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", ["npy", "npz", "mat"])
def test_round_trip_is_exact(tmp_path, x, ext):
    save_data(x, tmp_path / f"d.{ext}")
    back = load_data(tmp_path / f"d.{ext}")
    assert back.dtype == x.dtype
    numpy.testing.assert_array_equal(back, x)


def test_txt_round_trip_is_lossless(tmp_path, x):
    save_data(x, tmp_path / "d.txt")
    flat = load_data(tmp_path / "d.txt")
    assert flat.shape == (7, 24) and flat.dtype == numpy.float64
    numpy.testing.assert_array_equal(load_data(tmp_path / "d.txt", reshape=(4, 3, 2)), x)


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "x.idx3-ubyte", "x.idx"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_round_trip(tmp_path, rng, name, dtype):
    a = (rng.normal(size=(5, 6, 3)) * 50).astype(dtype)
    save_data(a, tmp_path / name)
    back = load_data(tmp_path / name)
    assert back.dtype == numpy.dtype(dtype) and back.dtype.isnative
    numpy.testing.assert_array_equal(back, a)


def test_idx_layout_is_mnist(tmp_path):
    a = numpy.arange(2 * 3 * 4, dtype=numpy.uint8).reshape(2, 3, 4)
    save_data(a, tmp_path / "train-images-idx3-ubyte")
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", raw[4:16]) == (2, 3, 4) and raw[16:] == a.tobytes()


def test_png_round_trip(tmp_path, rng):
    img = rng.integers(0, 256, size=(5, 6, 3), dtype=numpy.uint8)
    save_data(img, tmp_path / "a.png")
    back = load_data(tmp_path / "a.png")
    assert back.shape == (1, 5, 6, 3) and back.dtype == numpy.float32
    numpy.testing.assert_array_equal(back[0], img)


def test_model_outputs_survive_data_round_trips(tmp_path, shared, mnist):
    """Inputs written and read back in every writable format give identical logits and relevance."""
    net = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    x = mnist[0][:3]
    ref = lrpflow.explain(net, x, rule="epsilon", epsilon=0.01, dtype="float64")
    for ext in ("npy", "npz", "mat", "txt", "idx"):
        save_data(x, tmp_path / f"x.{ext}", format="idx" if ext == "idx" else None)
        back = load_data(tmp_path / f"x.{ext}", format="idx" if ext == "idx" else None, reshape=(32, 32, 1))
        out = lrpflow.explain(net, back, rule="epsilon", epsilon=0.01, dtype="float64")
        numpy.testing.assert_array_equal(out.logits, ref.logits)
        numpy.testing.assert_array_equal(out.relevance, ref.relevance)


# --------------------------------------------------------------------------- lazy sources


def test_large_npy_is_memory_mapped_and_batched(tmp_path):
    a = numpy.arange(MMAP_THRESHOLD // 4, dtype=numpy.float64).reshape(-1, 8)
    numpy.save(tmp_path / "big.npy", a)
    src = open_data(tmp_path / "big.npy")
    assert isinstance(src.array, numpy.memmap) and len(src) == a.shape[0] and src.shape == a.shape
    starts = [b.start for b in src.batches(10000, start=5, stop=25000)]
    assert starts == [5, 10005, 20005]
    got = numpy.concatenate([b.x for b in src.batches(10000, start=5, stop=25000)])
    numpy.testing.assert_array_equal(got, a[5:25000])


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_are_read_lazily(tmp_path, compressed):
    a = numpy.arange(MMAP_THRESHOLD // 2, dtype=numpy.int32).reshape(-1, 16)
    labels = numpy.arange(a.shape[0]) % 10
    save_data(a, tmp_path / "d.npz", labels=labels, compressed=compressed)
    src = open_data(tmp_path / "d.npz")
    if compressed:
        assert isinstance(src, StreamSource)
    else:
        assert isinstance(src.array, numpy.memmap)
    numpy.testing.assert_array_equal(src[100:105], a[100:105])
    numpy.testing.assert_array_equal(src[[7, 3, 7]], a[[7, 3, 7]])
    numpy.testing.assert_array_equal(src[-1], a[-1])
    batch = list(src.batches(1000, start=2000, stop=2500))[0]
    numpy.testing.assert_array_equal(batch.labels, labels[2000:2500])
    src.close()


def test_mat_v73_is_read_lazily(tmp_path, rng):
    """MATLAB v7.3 files are HDF5 with the array transposed (column-major)."""
    a = rng.normal(size=(6, 5))
    path = tmp_path / "d.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        ds = f.create_dataset("data", data=a.T)
        ds.attrs["MATLAB_class"] = numpy.bytes_("double")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    src = open_data(path)
    assert src.shape == (6, 5) and type(src).__name__ == "H5MatSource"
    numpy.testing.assert_array_equal(src[1:3], a[1:3])
    numpy.testing.assert_array_equal(load_data(path), a)


def test_text_is_indexed_and_parsed_in_ranges(tmp_path):
    (tmp_path / "d.txt").write_text("# header comment\n1 2 3\n\n4 5 6  # trailing comment\n7 8 9\n")
    src = open_data(tmp_path / "d.txt")
    assert src.shape == (3, 3)
    numpy.testing.assert_array_equal(src[1:], [[4, 5, 6], [7, 8, 9]])


def test_data_source_indexing(rng):
    a = rng.normal(size=(10, 3))
    src = lrpflow.io.ArraySource(a, labels=numpy.arange(10))
    numpy.testing.assert_array_equal(src[::3], a[::3])
    numpy.testing.assert_array_equal(src[a[:, 0] > 0], a[a[:, 0] > 0])
    numpy.testing.assert_array_equal(numpy.asarray(src), a)
    assert len(list(src)) == 10
    with pytest.raises(IndexError):
        src[10]


def test_preprocessing_is_applied_per_batch(tmp_path, shared, mnist):
    """The toolbox's MNIST preparation as open_data options equals the conftest fixture."""
    src = open_data(shared / "data" / "MNIST" / "test_images.mat", dtype="float64", divide=127.5, shift=-1,
                    reshape=(28, 28, 1), pad=2, pad_value=-1, labels=shared / "data" / "MNIST" / "test_labels.npy")
    x, labels = mnist
    assert src.shape == x.shape and src.dtype == numpy.float64
    numpy.testing.assert_array_equal(src[:500], x[:500])
    numpy.testing.assert_array_equal(src.labels, labels)
    b = next(src.batches(64, start=9990))
    numpy.testing.assert_array_equal(b.x, x[9990:])
    numpy.testing.assert_array_equal(b.labels, labels[9990:])


def _stepwise(x, dtype, divide, scale, shift, reshape, pad, pad_value):
    """The preprocessing formula one step at a time: cast, ÷, ×, +, reshape, pad (slow reference)."""
    x = x.astype(dtype)
    for op, v in ((numpy.divide, divide), (numpy.multiply, scale), (numpy.add, shift)):
        if v is not None:
            x = op(x, numpy.asarray(v, dtype=dtype))
    x = x.reshape((len(x), *reshape))
    t, b, l, r = pad
    return numpy.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=pad_value)


@pytest.mark.parametrize("src_dtype", ["uint8", "int64", "float64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("steps", [(127.5, None, -1.0), (None, 0.3, None), (3.0, 0.7, 0.25)])
def test_one_pass_preprocessing_equals_the_stepwise_formula(rng, src_dtype, dtype, steps):
    from lrpflow.io import Preprocess

    x = (rng.random((5, 12)) * 255).astype(src_dtype)
    prep = Preprocess.from_options(dtype, *steps, reshape=(3, 4, 1), pad=(1, 2, 0, 3), pad_value=-1.0)
    got = prep(x)
    want = _stepwise(x, dtype, *steps, (3, 4, 1), (1, 2, 0, 3), -1.0)
    assert got.dtype == want.dtype and got.shape == (5, 6, 7, 1)
    numpy.testing.assert_array_equal(got, want)  # bitwise: each step rounds in dtype as the formula does


@pytest.mark.parametrize("compressed", [False, True])
def test_mat5_numeric_variables_equal_scipys(tmp_path, rng, compressed):
    """Plain numeric matrices are read from the checked (inflated) elements, others through scipy:
    the same values, dtype and shape as scipy.io.loadmat, as writable copies independent of the file."""
    import scipy.io

    from lrpflow.io._mat5 import read_mat5

    variables = {"f8": rng.random((5, 7)), "f4": rng.random((3, 4, 2)).astype("f4"), "u1": numpy.arange(6, dtype="u1"),
                 "i2": numpy.array([[-3, 4]], dtype="i2"), "u8": numpy.arange(4, dtype="u8").reshape(2, 2),
                 "b": numpy.eye(2, dtype=bool), "empty": numpy.zeros((0, 4)), "c": numpy.array([1 + 2j, 3j]),
                 "text": "abc"}
    path = tmp_path / "v.mat"
    scipy.io.savemat(path, variables, do_compression=compressed)
    reference = scipy.io.loadmat(path)
    found = read_mat5(str(path), list(variables), lrpflow.DataFormatError)
    assert set(found) == set(variables) - {"c", "text"}  # complex and char are left to scipy
    path.unlink()
    for name, arr in found.items():
        assert arr.dtype == reference[name].dtype and arr.flags.writeable and arr.flags.c_contiguous
        numpy.testing.assert_array_equal(arr, reference[name])
    scipy.io.savemat(path, variables, do_compression=compressed)
    numpy.testing.assert_array_equal(load_data(path, key="f4"), reference["f4"])
    with pytest.raises(lrpflow.DataFormatError, match="variable 'c' has dtype complex128"):  # read by scipy
        load_data(path, key="c")


def test_mnist_idx_files(tmp_path, shared):
    images = load_data(shared / "data" / "MNIST" / "test_images.mat")[:50].reshape(-1, 28, 28)
    labels = numpy.load(shared / "data" / "MNIST" / "test_labels.npy").ravel()[:50].astype(numpy.uint8)
    save_data(images, tmp_path / "t10k-images-idx3-ubyte.gz")
    save_data(labels, tmp_path / "t10k-labels-idx1-ubyte")
    src = open_data(tmp_path / "t10k-images-idx3-ubyte.gz", reshape=(28, 28, 1),
                    labels=tmp_path / "t10k-labels-idx1-ubyte")
    assert src.shape == (50, 28, 28, 1) and src.dtype == numpy.uint8
    numpy.testing.assert_array_equal(src[:], images[..., None])
    numpy.testing.assert_array_equal(src.labels, labels)


# --------------------------------------------------------------------------- images


@pytest.fixture
def image_folder(tmp_path, rng):
    folder = tmp_path / "imgs"
    folder.mkdir()
    imgs = [rng.integers(0, 256, size=(8, 10, 3), dtype=numpy.uint8) for _ in range(3)]
    for k, img in enumerate(imgs):
        save_data(img, folder / f"im{k}.png")
    save_data(imgs[0][:, :, 0], folder / "gray.png")
    (folder / "notes.txt").write_text("not an image")
    return folder, imgs


def test_images_from_a_folder_and_a_glob(image_folder):
    folder, imgs = image_folder
    src = open_data(folder, channels=3)
    assert len(src) == 4 and src.shape == (4, 8, 10, 3)
    numpy.testing.assert_array_equal(src[0], numpy.repeat(imgs[0][:, :, :1], 3, axis=2))  # gray.png first (sorted)
    globbed = load_data(str(folder / "im*.png"))
    numpy.testing.assert_array_equal(globbed, numpy.stack(imgs).astype(numpy.float32))


def test_image_resize_crop_pad_mean(image_folder):
    folder, imgs = image_folder
    f = str(folder / "im1.png")
    resized = load_data(f, size=(4, 5))
    assert resized.shape == (1, 4, 5, 3)
    cropped = load_data(f, crop=(4, 6))
    numpy.testing.assert_array_equal(cropped[0], imgs[1][2:6, 2:8])
    padded = load_data(f, crop=(10, 10), fill_value=-7)
    assert padded.shape == (1, 10, 10, 3) and (padded[0, 0] == -7).all()
    numpy.testing.assert_array_equal(padded[0, 1:9], imgs[1])
    mean = numpy.array([10.0, 20.0, 30.0])
    bgr = load_data(f, mean=mean, channel_swap=True)
    numpy.testing.assert_allclose(bgr[0], imgs[1][:, :, ::-1] - mean)
    big_mean = numpy.full((3, 12, 12), 5.0)  # Caffe (C, H, W) mean, centre-cropped to the image
    numpy.testing.assert_allclose(load_data(f, mean=big_mean)[0], imgs[1] - 5.0)
    base = load_data(f, base_size=12, crop=(10, 10))
    assert base.shape == (1, 10, 10, 3)
    gray = load_data(f, channels=1, scale=1 / 255)
    assert gray.shape == (1, 8, 10, 1) and gray.max() <= 1


def test_images_of_different_sizes_need_a_size(tmp_path, rng):
    save_data(rng.integers(0, 256, size=(8, 8), dtype=numpy.uint8), tmp_path / "a.png")
    save_data(rng.integers(0, 256, size=(6, 8), dtype=numpy.uint8), tmp_path / "b.png")
    with pytest.raises(lrpflow.DataFormatError, match=r"b.png.*pass size="):
        load_data(tmp_path)
    assert load_data(tmp_path, size=(5, 5)).shape == (2, 5, 5, 1)


# --------------------------------------------------------------------------- bundled data


def test_digits_are_bundled():
    src = open_data("digits")
    assert src.shape == (1797, 8, 8, 1) and src.dtype == numpy.float32
    x = src.read()
    assert x.min() == 0 and x.max() == 1
    assert sorted(set(src.labels.tolist())) == list(range(10)) and src.labels.dtype == numpy.int64
    assert len(open_data("digits", part="train")) == 1500 and len(load_data("digits", part="test")) == 297
    numpy.testing.assert_array_equal(load_data("whatever", format="digits")[:3], x[:3])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text,line,what", [
    ("1 2 3\n4 x 6\n", 2, "non-numeric token 'x'"),
    ("1 2 3\n4 5\n", 2, "expected 3 values, found 2"),
    ("# only a comment\n\n", None, "empty data file"),
    ("", None, "empty data file"),
])
def test_malformed_text_data_names_the_line(tmp_path, text, line, what):
    p = tmp_path / "d.txt"
    p.write_text(text)
    with pytest.raises(lrpflow.DataFormatError, match=what) as info:
        load_data(p)
    assert str(p) in str(info.value)
    if line is not None:
        assert f"line {line}:" in str(info.value)


def test_mat_without_the_data_key(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "d.mat", {"images": numpy.zeros((2, 2)), "y": numpy.ones(2)})
    with pytest.raises(lrpflow.DataFormatError, match=r"no variable 'data'; variables: images, y"):
        load_data(tmp_path / "d.mat")
    numpy.testing.assert_array_equal(load_data(tmp_path / "d.mat", key="images"), numpy.zeros((2, 2)))


def test_mat_that_is_not_a_mat_file(tmp_path):
    p = tmp_path / "d.mat"
    p.write_bytes(b"\x00" * 200)
    with pytest.raises(lrpflow.DataFormatError, match="not a MATLAB 5 or 7.3 file"):
        load_data(p)


def _idx_bytes(magic: bytes, dims, payload: bytes) -> bytes:
    return magic + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("name,data,match", [
    ("a-ubyte", _idx_bytes(b"\x00\x00\x08\x02", (2, 2), b"\x01\x02\x03\x04"), None),
    ("a-ubyte", _idx_bytes(b"\x08\x03\x00\x00", (2, 2), b"\x01\x02\x03\x04"), "bad IDX magic 08030000"),
    ("a-ubyte", _idx_bytes(b"\x00\x00\x07\x02", (2, 2), b"\x01\x02\x03\x04"), "bad IDX magic"),
    ("a-ubyte", _idx_bytes(b"\x00\x00\x08\x03", (1000000, 1000000, 1000000), b"\x00" * 8), "declares shape"),
    ("a-ubyte", _idx_bytes(b"\x00\x00\x08\x02", (2, 3), b"\x01\x02\x03\x04"), "declares shape"),
    ("a-ubyte", b"\x00\x00\x08\x02\x00\x00", "header ends early"),
    ("a-ubyte", b"", "not an IDX file"),
    ("a-ubyte.gz", gzip.compress(_idx_bytes(b"\x00\x00\x08\x02", (2, 3), b"\x01\x02\x03\x04")), "gzip length"),
    ("a-ubyte.gz", gzip.compress(_idx_bytes(b"\x00\x00\x08\x03", (4000000, 4000000, 4), b"")), "declares shape"),
    ("a-ubyte.gz", b"not gzip", "not a gzip file"),
])
def test_malformed_idx(tmp_path, name, data, match):
    p = tmp_path / name
    p.write_bytes(data)
    if match is None:
        assert load_data(p).shape == (2, 2)
        return
    with pytest.raises(lrpflow.DataFormatError, match=match) as info:
        load_data(p)
    assert str(p) in str(info.value)


def test_npy_refuses_objects_and_truncation(tmp_path):
    numpy.save(tmp_path / "o.npy", numpy.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(lrpflow.DataFormatError, match="dtype object"):
        load_data(tmp_path / "o.npy")
    numpy.save(tmp_path / "t.npy", numpy.zeros((100, 10)))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-8])
    with pytest.raises(lrpflow.DataFormatError, match="declares shape"):
        load_data(tmp_path / "t.npy")


def test_npz_key_selection(tmp_path):
    numpy.savez(tmp_path / "d.npz", a=numpy.zeros(3), b=numpy.ones(3))
    with pytest.raises(lrpflow.DataFormatError, match="pass key= one of a, b"):
        load_data(tmp_path / "d.npz")
    numpy.testing.assert_array_equal(load_data(tmp_path / "d.npz", key="b"), numpy.ones(3))
    with pytest.raises(lrpflow.DataFormatError, match="no array 'c'; arrays: a, b"):
        load_data(tmp_path / "d.npz", key="c")


def test_unknown_suffix_lists_readers(tmp_path):
    (tmp_path / "d.xyz").write_text("1")
    with pytest.raises(lrpflow.DataFormatError, match=r"no data reader for suffix '.xyz'.*\.npy.*format= one of"):
        load_data(tmp_path / "d.xyz")
    with pytest.raises(lrpflow.UnknownNameError, match="unknown data_reader .no_such_format."):
        load_data(tmp_path / "d.xyz", format="no_such_format")
    with pytest.raises(lrpflow.DataFormatError, match="missing.npy"):
        load_data(tmp_path / "missing.npy")


def test_bad_options_are_data_format_errors(tmp_path, x):
    save_data(x, tmp_path / "d.npy")
    with pytest.raises(lrpflow.DataFormatError, match="cannot reshape"):
        open_data(tmp_path / "d.npy", reshape=(5, 5))
    with pytest.raises(lrpflow.DataFormatError, match=r"invalid options \['sise'\]"):
        open_data(tmp_path / "d.npy", sise=(3, 3))  # a typo is an error, not silently ignored
    with pytest.raises(lrpflow.DataFormatError, match="7 samples but 3 labels"):
        open_data(tmp_path / "d.npy", labels=[1, 2, 3])


def test_sources_are_data_sources(tmp_path, x):
    save_data(x, tmp_path / "d.npy")
    with open_data(tmp_path / "d.npy") as src:
        assert isinstance(src, DataSource) and "shape=(7, 4, 3, 2)" in repr(src)


def test_python2_npy_headers_are_read_without_a_warning(shared):
    """The toolbox's MNIST label files carry a header written by Python 2; numpy warns, lrpflow reads them quietly."""
    import warnings

    path = shared / "data" / "MNIST" / "test_labels.npy"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        numpy.load(path)
    assert any("created on Python 2" in str(w.message) for w in seen)  # the file really has such a header
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = load_data(path)
    assert len(labels) == 10000 and numpy.array_equal(numpy.asarray(labels[:]), numpy.load(path))


@pytest.mark.parametrize("inflater", ["default", "zlib"])
def test_mat5_with_a_corrupt_compressed_element_is_refused(tmp_path, rng, monkeypatch, inflater):
    """A damaged deflate stream is one DataFormatError naming the file, with ISA-L's inflate or zlib's."""
    import zlib

    import scipy.io

    from lrpflow.io import _mat5

    if inflater == "zlib":
        monkeypatch.setattr(_mat5, "_inflater", zlib)
    path = tmp_path / "c.mat"
    scipy.io.savemat(path, {"data": rng.random((40, 30))}, do_compression=True)
    numpy.testing.assert_array_equal(load_data(path), scipy.io.loadmat(path)["data"])
    raw = bytearray(path.read_bytes())
    raw[150:170] = bytes(20)  # inside the first compressed element's deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(lrpflow.DataFormatError, match=r"c\.mat: damaged MATLAB file: corrupt compressed element"):
        load_data(path)
