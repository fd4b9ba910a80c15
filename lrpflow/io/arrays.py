"""Block data files as the toolbox's ``data_io`` reads them: ``.npy``, ``.npz``, ``.mat`` (key ``data``), ``.txt``.

Every reader returns a lazy :class:`~lrpflow.io.source.DataSource`:

- ``.npy`` is memory-mapped;
- ``.npz`` members stored uncompressed are memory-mapped inside the archive, compressed
  members are streamed row range by row range (never decompressed whole);
- ``.mat`` v7.3 (HDF5) is read lazily through h5py; v4/v5 files (which store
  column-major, compressed blocks) are read whole by scipy;
- ``.txt`` is indexed by line once and parsed in row ranges; a bad token names its line.

Writers mirror the toolbox: ``numpy.save``, ``numpy.savez_compressed`` (key ``data``),
``scipy.io.savemat({'data': x})``, ``numpy.savetxt`` (lossless ``%.17g``).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy

from lrpflow.errors import DataFormatError, LrpflowError
from lrpflow.io.files import atomic_write
from lrpflow.io.hdf5_safety import check_contained, check_declared_size
from lrpflow.io.source import ArraySource, DataSource, check_sample_count

#: Files smaller than this are read into memory rather than memory-mapped.
MMAP_THRESHOLD = 1 << 20
#: dtype kinds a data reader hands out (bool, integers, floats).
NUMERIC_KINDS = "biuf"


def file_size(path: str) -> int:
    """Size of a data file; DataFormatError if it cannot be read."""
    try:
        if os.path.isdir(path):
            raise DataFormatError(f"{path}: is a directory, not a data file")
        return os.path.getsize(path)
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read data file: {err.strerror or err}") from err


def check_sample_size(path: str, shape: tuple[int, ...], what: str = "data") -> None:
    """Refuse samples of size 0 among a positive number of rows (``(10**12, 0)`` stores nothing but
    would make a run walk 10¹² empty rows)."""
    if len(shape) >= 2 and shape[0] > 0 and 0 in shape[1:]:
        raise DataFormatError(f"{path}: {what} has shape {shape}: {shape[0]} samples of size 0")


def check_dtype(path: str, dtype: numpy.dtype, what: str = "data") -> None:
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DataFormatError(f"{path}: {what} has dtype {dtype}, expected booleans, integers or floats")


# --------------------------------------------------------------------------- npy / npz


def _npy_header(fp: BinaryIO, path: str) -> tuple[tuple[int, ...], bool, numpy.dtype]:
    fmt = numpy.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fp)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fp)
    reader = getattr(fmt, "_read_array_header", None)
    if reader is None:
        raise DataFormatError(f"{path}: unsupported .npy format version {version}")
    return reader(fp, version)


class StreamSource(DataSource):
    """Rows of a C-ordered array at ``offset`` in a (compressed) stream, read by seeking."""

    def __init__(self, path: str, opener: Callable[[], BinaryIO], offset: int, shape: tuple[int, ...],
                 dtype: numpy.dtype) -> None:
        super().__init__(path)
        self._opener = opener
        self._offset = offset
        self._raw_shape = shape
        self._raw_dtype = dtype
        self._row_bytes = dtype.itemsize * int(numpy.prod(shape[1:], dtype=numpy.int64))
        self._fp: BinaryIO | None = None

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        count = max(0, stop - start)
        if count == 0 or self._row_bytes == 0:
            return numpy.zeros((count, *self._raw_shape[1:]), dtype=self._raw_dtype)
        try:
            if self._fp is None:
                self._fp = self._opener()
            self._fp.seek(self._offset + start * self._row_bytes)
            buf = self._fp.read(count * self._row_bytes)
        except LrpflowError:
            raise
        except Exception as err:  # zlib.error, EOFError, BadZipFile, OSError ...
            raise DataFormatError(f"{self.path}: cannot read rows {start}..{stop}: {err}") from err
        if len(buf) != count * self._row_bytes:
            raise DataFormatError(f"{self.path}: file ends early (rows {start}..{stop} incomplete)")
        return numpy.frombuffer(bytearray(buf), dtype=self._raw_dtype).reshape((count, *self._raw_shape[1:]))

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None


@contextlib.contextmanager
def _python2_headers_expected() -> Iterator[None]:
    """numpy's warning about a ``.npy`` header written by Python 2 (the LRP Toolbox's MNIST files are) is not
    shown: such headers are read deliberately."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Reading `\.npy` or `\.npz` file required additional header",
                                category=UserWarning)
        yield


def read_npy(path: str, mmap: bool = True) -> DataSource:
    """A ``.npy`` file, memory-mapped (no pickled object arrays)."""
    size = file_size(path)
    try:
        with _python2_headers_expected(), open(path, "rb") as f:
            shape, fortran, dtype = _npy_header(f, path)
            offset = f.tell()
        check_dtype(path, dtype)
        if len(shape) == 0:
            raise DataFormatError(f"{path}: holds a scalar, expected an array with a sample axis")
        check_sample_count(path, shape, dtype.itemsize, size - offset)
        check_sample_size(path, tuple(shape))
        if mmap and size >= MMAP_THRESHOLD:
            arr = numpy.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
        else:
            with _python2_headers_expected():
                arr = numpy.load(path, allow_pickle=False)
    except LrpflowError:
        raise
    except Exception as err:
        raise DataFormatError(f"{path}: not a readable .npy file: {err}") from err
    return ArraySource(arr, path)


def _npz_member(path: str, zf: zipfile.ZipFile, name: str, size: int) -> DataSource:
    info = zf.getinfo(name)
    with zf.open(info) as fp:
        shape, fortran, dtype = _npy_header(fp, f"{path}[{name}]")
        header = fp.tell()
    check_dtype(path, dtype, f"member {name!r}")
    if len(shape) == 0:
        raise DataFormatError(f"{path}: member {name!r} is a scalar, expected an array with a sample axis")
    check_sample_count(f"{path}[{name}]", shape, dtype.itemsize, info.file_size - header)
    check_sample_size(f"{path}[{name}]", tuple(shape))
    if fortran or info.file_size < MMAP_THRESHOLD:
        return ArraySource(_read_member(path, name[:-4]), path)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise DataFormatError(f"{path}: broken zip entry for member {name!r}")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        arr = numpy.memmap(path, dtype=dtype, mode="r", offset=start + header, shape=shape)
        return ArraySource(arr, path)

    def opener() -> BinaryIO:
        return zipfile.ZipFile(path).open(name)

    return StreamSource(path, opener, header, tuple(shape), dtype)


def _read_member(path: str, name: str) -> numpy.ndarray:
    with numpy.load(path, allow_pickle=False) as npz:
        return npz[name]


def npz_keys(path: str) -> list[str]:
    """Array names in an ``.npz`` archive."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except Exception as err:
        raise DataFormatError(f"{path}: not a readable .npz archive: {err}") from err


def read_npz(path: str, key: str | None = None, labels_key: str | None = "labels") -> DataSource:
    """One array of an ``.npz`` archive: ``key``, else ``data``, else the only array besides the labels.

    ``labels_key`` (default ``"labels"``) names an array of per-sample labels, attached
    to the source when present.
    """
    size = file_size(path)
    keys = npz_keys(path)
    if key is None:
        others = [k for k in keys if k != labels_key]
        key = "data" if "data" in keys else (others[0] if len(others) == 1 else None)
        if key is None:
            raise DataFormatError(f"{path}: cannot tell which array is the data; pass key= one of {', '.join(keys) or '(none)'}")
    if key not in keys:
        raise DataFormatError(f"{path}: no array {key!r}; arrays: {', '.join(keys) or '(none)'}")
    try:
        with zipfile.ZipFile(path) as zf:
            source = _npz_member(path, zf, key + ".npy", size)
            if labels_key and labels_key in keys and labels_key != key:
                labels = numpy.asarray(_read_member(path, labels_key))
                if labels.ndim == 2 and 1 in labels.shape:
                    labels = labels.ravel()
                if labels.shape[:1] != (len(source),):
                    raise DataFormatError(f"{path}: {len(source)} samples in {key!r} but {len(labels)} labels in {labels_key!r}")
                source.labels = labels
    except LrpflowError:
        raise
    except Exception as err:
        raise DataFormatError(f"{path}: not a readable .npz archive: {err}") from err
    return source


def write_npy(x: Any, path: str) -> None:
    arr = numpy.asarray(x)
    atomic_write(path, lambda tmp: numpy.save(tmp, arr, allow_pickle=False))


def write_npz(x: Any, path: str, labels: Any = None, compressed: bool = True) -> None:
    """``data`` (and ``labels``, if given) in an ``.npz`` archive."""
    arrays = {"data": numpy.asarray(x)}
    if labels is not None:
        arrays["labels"] = numpy.asarray(labels)
    save = numpy.savez_compressed if compressed else numpy.savez

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            save(f, **arrays)

    atomic_write(path, write)


# --------------------------------------------------------------------------- mat


class H5MatSource(DataSource):
    """A MATLAB v7.3 variable (HDF5, column-major): MATLAB rows are the last HDF5 axis."""

    def __init__(self, path: str, key: str) -> None:
        import h5py

        super().__init__(path)
        self._key = key
        self._file = h5py.File(path, "r")
        try:
            ds = self._open(path, key)
        except BaseException:
            self._file.close()
            raise
        self._ds = ds
        self._raw_shape = tuple(int(s) for s in ds.shape[::-1])
        self._raw_dtype = ds.dtype

    def _open(self, path: str, key: str) -> Any:
        """The variable's dataset, after the file was checked to hold its own data and the size it declares."""
        import h5py

        check_contained(self._file, path, DataFormatError)
        ds = self._file.get(key)
        if ds is None or not isinstance(ds, h5py.Dataset):
            names = ", ".join(k for k in self._file.keys() if not k.startswith("#")) or "(none)"
            raise DataFormatError(f"{path}: no MATLAB variable {key!r}; variables: {names}")
        dtype = ds.dtype
        check_dtype(path, dtype, f"variable {key!r}")
        if ds.ndim == 0:
            raise DataFormatError(f"{path}: variable {key!r} is a scalar")
        check_declared_size(ds, f"{path}: variable {key!r}", DataFormatError, file_size(path))
        check_sample_size(path, tuple(int(s) for s in ds.shape[::-1]), f"variable {key!r}")
        return ds

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        try:
            block = self._ds[..., start:stop]
        except Exception as err:
            raise DataFormatError(f"{self.path}: cannot read variable {self._key!r}: {err}") from err
        return numpy.ascontiguousarray(block.transpose())

    def close(self) -> None:
        self._file.close()


def _is_hdf5(path: str) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except Exception:
        return False


def read_mat(path: str, key: str = "data", labels_key: str | None = None) -> DataSource:
    """Variable ``key`` (default ``data``, as the toolbox writes) of a MATLAB ``.mat`` file."""
    file_size(path)
    if _is_hdf5(path):
        try:
            source: DataSource = H5MatSource(path, key)
        except LrpflowError:
            raise
        except Exception as err:
            raise DataFormatError(f"{path}: not a readable MATLAB v7.3 file: {err}") from err
    else:
        import scipy.io

        from lrpflow.io._mat5 import read_mat5

        names = [key] + ([labels_key] if labels_key else [])
        # checked first: scipy's C reader crashes on some corrupt files; plain matrices come back read
        content: dict[str, Any] = read_mat5(path, names, DataFormatError)
        if any(name not in content for name in names):
            try:
                content = scipy.io.loadmat(path, variable_names=names)
            except Exception as err:
                raise DataFormatError(f"{path}: not a readable .mat file: {err}") from err
        if key not in content:
            try:
                found = [w[0] for w in scipy.io.whosmat(path)]
            except Exception:
                found = []
            raise DataFormatError(f"{path}: no variable {key!r}; variables: {', '.join(found) or '(none)'}")
        arr = content[key]
        if not isinstance(arr, numpy.ndarray):
            raise DataFormatError(f"{path}: variable {key!r} is not a numeric array")
        check_dtype(path, arr.dtype, f"variable {key!r}")
        check_sample_size(path, arr.shape, f"variable {key!r}")
        source = ArraySource(arr, path)
        if labels_key and labels_key in content:
            from lrpflow.io.source import attach_labels

            attach_labels(source, content[labels_key])
    return source


def write_mat(x: Any, path: str, key: str = "data") -> None:
    """``scipy.io.savemat(path, {'data': x})`` (MATLAB 5 format, as the toolbox writes)."""
    import scipy.io

    arr = numpy.asarray(x)
    atomic_write(path, lambda tmp: scipy.io.savemat(tmp, {key: arr}, appendmat=False))


# --------------------------------------------------------------------------- txt


class TextSource(DataSource):
    """A whitespace-separated numeric matrix, one sample per line (``#`` comments, blank lines skipped)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        offsets, numbers = [], []
        pos = 0
        try:
            with open(path, "rb") as f:
                for n, line in enumerate(f, 1):
                    body = line.split(b"#", 1)[0].strip()
                    if body:
                        offsets.append(pos)
                        numbers.append(n)
                    pos += len(line)
        except OSError as err:
            raise DataFormatError(f"{path}: cannot read data file: {err.strerror or err}") from err
        if not offsets:
            raise DataFormatError(f"{path}: empty data file (no numeric lines)")
        self._offsets = numpy.asarray(offsets + [pos], dtype=numpy.int64)
        self._lines = numpy.asarray(numbers, dtype=numpy.int64)
        first = self._parse(0, 1)
        self._cols = first.shape[1]
        self._raw_shape = (len(offsets), self._cols)
        self._raw_dtype = numpy.dtype("float64")

    def _parse(self, start: int, stop: int) -> numpy.ndarray:
        with open(self.path, "rb") as f:
            f.seek(int(self._offsets[start]))
            chunk = f.read(int(self._offsets[stop] - self._offsets[start]))
        rows = []
        for k, line in enumerate(chunk.split(b"\n")):
            body = line.split(b"#", 1)[0].strip()
            if not body:
                continue
            lineno = int(self._lines[start + len(rows)])
            tokens = body.split()
            try:
                rows.append([float(t) for t in tokens])
            except ValueError:
                bad = next(t for t in tokens if not _is_float(t))
                raise DataFormatError(f"{self.path}, line {lineno}: non-numeric token "
                                      f"{bad[:40].decode('utf-8', 'replace')!r}") from None
            want = getattr(self, "_cols", len(tokens))
            if len(tokens) != want:
                raise DataFormatError(f"{self.path}, line {lineno}: expected {want} values, found {len(tokens)}")
        return numpy.asarray(rows, dtype=numpy.float64).reshape(len(rows), -1)

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        if stop <= start:
            return numpy.zeros((0, self._cols))
        with open(self.path, "rb") as f:
            f.seek(int(self._offsets[start]))
            chunk = f.read(int(self._offsets[stop] - self._offsets[start]))
        try:  # fast path; the slow one below names the offending line
            rows = numpy.loadtxt(io.BytesIO(chunk), ndmin=2, comments="#", dtype=numpy.float64)
            if rows.shape == (stop - start, self._cols):
                return rows
        except Exception:
            pass
        return self._parse(start, stop)


def _is_float(t: bytes) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def read_txt(path: str) -> DataSource:
    """A plain-text matrix (``numpy.loadtxt`` layout): (N, D) float64, N lines of D values."""
    file_size(path)
    return TextSource(path)


def write_txt(x: Any, path: str) -> None:
    """One sample per line (samples flattened), floats with 17 significant digits (lossless)."""
    arr = numpy.asarray(x)
    if arr.ndim == 0:
        raise DataFormatError(f"{path}: cannot write a scalar as a text matrix")
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    fmt = "%d" if arr.dtype.kind in "biu" else "%.17g"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            buf = io.StringIO()
            numpy.savetxt(buf, flat, fmt=fmt)
            f.write(buf.getvalue())

    atomic_write(path, write)
