"""The HDF5 result store: one ``results.h5`` per job, written batch by batch, resumable.

Layout of a store (docs/results.md)::

    /relevance              (N, *input_shape)  float32, chunked per batch, compressed
    /logits                 (N, C)             float64
    /target                 (N,) or (N, K)     int64 (−1: explicit R_init)
    /label                  (N,)               int64 (−1: unknown)
    /index                  (N,)               int64, the dataset row of each sample
    /conservation           (N,)               float64
    /metrics/<name>         (N,)               float64          group attr ``names``
    /ledger/entering        (N, n_nodes)       float64          group attr ``nodes``
    /ledger/leaving         (N, n_nodes)       float64
    /intermediate/<node>    (N, *shape)        float32          group attr ``nodes``

Root attributes: ``schema`` (``"lrpflow-results"``), ``schema_version`` (1),
``config`` (the full resolved configuration as YAML text), ``lrpflow_version``,
``backend``, ``dtype``, ``model_sha256``, ``created`` (ISO 8601, UTC), the layout
(``input_shape``, ``n_classes``, ``target_width``, ``relevance_dtype``),
``rows_complete`` (the counter) and ``complete``.

Crash safety follows emcee's HDF backend: :meth:`ResultStore.append` resizes every
dataset, writes the rows and flushes, and only then bumps ``rows_complete`` and
flushes again, so the counter only ever counts completely written rows. A running
store lives at ``<path>.partial``; a resumed run reopens it, drops rows beyond the
counter (a batch killed half-written) and continues at :attr:`ResultStore.next_row`.
:meth:`ResultStore.finish` marks the store complete and renames it atomically to
``<path>``, so the final path only ever holds complete stores.

Two HDF5 details make that hold when a writer is killed at any moment:

* a compressed chunk that is rewritten moves in the file, and the space it leaves can
  be handed out again before the next flush, while the last flushed metadata still
  points at it. So rows are committed in whole chunks of the relevance datasets
  (``chunk_rows``; pass the batch size and every batch commits at once); a remainder
  waits in memory for the next batch or :meth:`ResultStore.finish`, and a resumed store
  restarts at a chunk boundary. The small per-row datasets are unfiltered (their chunks
  are rewritten in place).
* a kill during a flush can leave the file with metadata past the end-of-allocation
  address in its superblock, or with some of the killed batch's metadata. A resumed
  store raises that address to the file size (what ``h5clear --increment`` does) and,
  if any dataset holds more than the counter says, rebuilds the file from its complete
  rows before writing again.

The files use the HDF5 1.8 format as the low bound (superblock version 2): unlike the
1.10 format, a killed writer leaves no "file is open for write" flag that would make
the file unopenable without ``h5clear``.

Shard stores of one sharded run are joined by :func:`join` into a file of HDF5
virtual datasets that reference the shards' rows without copying them.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields as dc_fields
from typing import Any
from urllib.parse import quote

import h5py
import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError, LrpflowError, ShapeError

logger = logging.getLogger(__name__)

SCHEMA = "lrpflow-results"
SCHEMA_VERSION = 1
PARTIAL_SUFFIX = ".partial"
COMPRESSIONS = ("gzip", "lzf", None)

#: Superblock v2 (HDF5 1.8 format) as the low bound: large attributes work, and unlike
#: the 1.10 superblock a writer killed by a signal leaves no "file is open for write"
#: flag behind, so a crashed store reopens without ``h5clear``.
_LIBVER = ("v108", "latest")
_CHUNK_CACHE = 32 * 2**20
_BIG_CHUNK_BYTES = 2**20  # default chunk of relevance-like datasets: about 1 MiB
_MAX_CHUNK_BYTES = 16 * 2**20
_SMALL_CHUNK_BYTES = 64 * 2**10

#: Attributes the store manages itself; ``attrs=`` may not set them.
_RESERVED = frozenset({
    "schema", "schema_version", "config", "lrpflow_version", "backend", "dtype", "model_sha256", "created",
    "rows_complete", "complete", "finished", "resumes", "input_shape", "n_classes", "target_width",
    "relevance_dtype", "expected_rows", "chunk_rows", "shards", "shard_rows", "joined",
})
#: Batch keys that are accepted and not stored.
_IGNORED_KEYS = frozenset({"r_init", "method"})
_FLOAT_FILL = numpy.nan


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 2**20) -> str:
    """The SHA-256 hex digest of a file (e.g. the model file a store was computed with).

    Parameters
    ----------
    path : str or path-like
        The file to hash.
    chunk_size : int
        Bytes read at a time.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk_size), b""):
                digest.update(block)
    except OSError as err:
        raise LrpflowError(f"cannot hash {os.fspath(path)!r}: {err}") from err
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _h5name(name: str) -> str:
    """A node/metric name as one HDF5 link name (``/`` and ``%`` escaped; the attrs keep the original)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"store field names must be non-empty strings, got {name!r}")
    enc = quote(name, safe=" !\"#$&'()*+,-.:;<=>?@[]^_`{|}~")
    return enc.replace(".", "%2E") if enc in (".", "..") else enc


def _partial(path: str) -> str:
    return path + PARTIAL_SUFFIX


def _final(path: str) -> str:
    return path[: -len(PARTIAL_SUFFIX)] if path.endswith(PARTIAL_SUFFIX) else path


def _fsync(path: str) -> None:
    """Flush a file (or a folder entry) to the disk; best effort where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5 metadata (``H5_checksum_lookup3``)."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    def word(i: int) -> int:
        return int.from_bytes(data[i:i + 4].ljust(4, b"\0"), "little")

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & mask
    i = 0
    while n > 12:
        a, b, c = (a + word(i)) & mask, (b + word(i + 4)) & mask, (c + word(i + 8)) & mask
        a = ((a - c) & mask) ^ rot(c, 4); c = (c + b) & mask  # noqa: E702 - the mix, step by step
        b = ((b - a) & mask) ^ rot(a, 6); a = (a + c) & mask  # noqa: E702
        c = ((c - b) & mask) ^ rot(b, 8); b = (b + a) & mask  # noqa: E702
        a = ((a - c) & mask) ^ rot(c, 16); c = (c + b) & mask  # noqa: E702
        b = ((b - a) & mask) ^ rot(a, 19); a = (a + c) & mask  # noqa: E702
        c = ((c - b) & mask) ^ rot(b, 4); b = (b + a) & mask  # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & mask
    b = (b + int.from_bytes(tail[4:8], "little")) & mask
    c = (c + int.from_bytes(tail[8:12], "little")) & mask
    c = ((c ^ b) - rot(b, 14)) & mask
    a = ((a ^ c) - rot(c, 11)) & mask
    b = ((b ^ a) - rot(a, 25)) & mask
    c = ((c ^ b) - rot(b, 16)) & mask
    a = ((a ^ c) - rot(c, 4)) & mask
    b = ((b ^ a) - rot(a, 14)) & mask
    c = ((c ^ b) - rot(b, 24)) & mask
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _repair_eoa(path: str) -> bool:
    """After a crash: let the superblock's end-of-allocation cover the whole file (``h5clear --increment``).

    A writer killed during a flush can leave metadata pointing past the end address
    recorded in the superblock ("addr overflow" on reopening). Raising that address to
    the file size only marks the tail as allocated. Handles the version 2/3 superblock
    at offset 0 with 8-byte addresses, the one lrpflow writes; returns True if it patched.
    """
    with open(path, "r+b") as fh:
        try:  # HDF5 holds a flock on files it has open: never patch a file a live writer holds
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX
            pass
        except BlockingIOError as err:
            raise LrpflowError(f"{path} is open in another process (is a run still writing it?)") from err
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(48)
        if len(head) < 48 or head[:8] != _SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
            return False
        if int.from_bytes(head[44:48], "little") != _lookup3(head[:44]):
            return False
        eoa = int.from_bytes(head[28:36], "little")
        if eoa >= size:
            return False
        patched = head[:28] + size.to_bytes(8, "little") + head[36:44]
        fh.seek(0)
        fh.write(patched + _lookup3(patched).to_bytes(4, "little"))
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning("%s: end of allocation %d < file size %d after a crash; raised it", path, eoa, size)
    return True


def _py(value: Any) -> Any:
    """An attribute value as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, numpy.ndarray):
        return [_py(v) for v in value.tolist()] if value.dtype.kind == "O" else value.tolist()
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def _attr_value(key: str, value: Any) -> Any:
    """A user attribute in a form h5py can store (mappings become JSON text)."""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return numpy.array(value, dtype=h5py.string_dtype())
    if isinstance(value, (str, bool, int, float, numpy.generic, numpy.ndarray)):
        return value
    if isinstance(value, (list, tuple)):
        return numpy.asarray(value)
    raise ConfigError(f"store attribute {key!r}: cannot store a {type(value).__name__} in HDF5")


def _dtype_name(dtype: Any) -> str:
    try:
        return numpy.dtype(dtype).name
    except TypeError as err:
        raise ConfigError(f"unknown dtype {dtype!r}") from err


def _names_attr(names: Sequence[str]) -> numpy.ndarray:
    return numpy.array(list(names), dtype=h5py.string_dtype())


def config_text(config: Any) -> str:
    """The YAML text of a configuration (text, a mapping, or an OmegaConf ``DictConfig``, resolved).

    Parameters
    ----------
    config : str, mapping, DictConfig or None
        Text is stored as given; a mapping is dumped with its keys in order.

    Returns
    -------
    str
        YAML text (empty for None).
    """
    if config is None:
        return ""
    if isinstance(config, str):
        return config
    try:  # omegaconf is a dependency of lrpflow; only its config objects need it
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            return OmegaConf.to_yaml(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is installed with lrpflow
        pass
    if isinstance(config, Mapping):
        import yaml

        return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False)
    raise ConfigError(f"config must be YAML text, a mapping or a DictConfig, got {type(config).__name__}")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def flatten_keys(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (dotted keys of a nested mapping)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten_keys(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_diff(old: str, new: str, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys at which two YAML configurations differ (``[]``: the same).

    Parameters
    ----------
    old, new : str
        YAML texts.
    ignore : sequence of str
        Dotted keys (and everything below them) left out of the comparison.

    Returns
    -------
    list of str
        ``"key: stored <a>, this run <b>"`` descriptions, sorted by key.
    """
    import yaml

    try:
        a, b = yaml.safe_load(old) or {}, yaml.safe_load(new) or {}
    except yaml.YAMLError:
        return [] if old == new else ["<config text>: differs"]
    fa, fb = flatten_keys(a), flatten_keys(b)

    def ignored(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in ignore)

    missing = object()
    out = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if ignored(key) or va == vb:
            continue
        show = (lambda v: "<absent>" if v is missing else repr(v))
        out.append(f"{key or '<root>'}: stored {show(va)}, this run {show(vb)}")
    return out


# --------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreLayout:
    """What a store holds per row: shapes, names and the relevance dtype.

    Two stores can be resumed into each other or joined only if their layouts are equal.
    """

    input_shape: tuple[int, ...]
    n_classes: int
    ledger_nodes: tuple[str, ...] = ()
    intermediate: tuple[tuple[str, tuple[int, ...]], ...] = ()
    metrics: tuple[str, ...] = ()
    target_width: int = 1
    relevance_dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ConfigError(f"input_shape must be a non-empty tuple of positive sizes, got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)
        if int(self.n_classes) < 1:
            raise ConfigError(f"n_classes must be positive, got {self.n_classes!r}")
        object.__setattr__(self, "n_classes", int(self.n_classes))
        if int(self.target_width) < 1:
            raise ConfigError(f"target_width must be positive, got {self.target_width!r}")
        object.__setattr__(self, "target_width", int(self.target_width))
        for what in ("ledger_nodes", "metrics"):
            names = tuple(str(n) for n in getattr(self, what))
            if len(set(names)) != len(names):
                raise ConfigError(f"{what} lists a name twice: {list(names)}")
            object.__setattr__(self, what, names)
        inter = tuple((str(k), tuple(int(s) for s in v)) for k, v in self.intermediate)
        if len({k for k, _ in inter}) != len(inter):
            raise ConfigError(f"intermediate lists a node twice: {[k for k, _ in inter]}")
        for k, v in inter:
            if not v or any(s < 1 for s in v):
                raise ConfigError(f"intermediate[{k!r}]: shape must be a non-empty tuple of positive sizes, got {v}")
        object.__setattr__(self, "intermediate", inter)
        dt = numpy.dtype(self.relevance_dtype)
        if dt.kind != "f":
            raise ConfigError(f"relevance_dtype must be a float dtype, got {dt.name!r}")
        object.__setattr__(self, "relevance_dtype", dt.name)
        for name in self.metrics + tuple(k for k, _ in inter):
            _h5name(name)

    def datasets(self) -> dict[str, tuple[str, tuple[int, ...], numpy.dtype, bool]]:
        """Field name → (HDF5 path, row shape, dtype, is-large) for every stored dataset."""
        f8, i8, rel = numpy.dtype("float64"), numpy.dtype("int64"), numpy.dtype(self.relevance_dtype)
        out: dict[str, tuple[str, tuple[int, ...], numpy.dtype, bool]] = {
            "relevance": ("relevance", self.input_shape, rel, True),
            "logits": ("logits", (self.n_classes,), f8, False),
            "target": ("target", () if self.target_width == 1 else (self.target_width,), i8, False),
            "label": ("label", (), i8, False),
            "index": ("index", (), i8, False),
            "conservation": ("conservation", (), f8, False),
        }
        for m in self.metrics:
            out[f"metrics/{m}"] = (f"metrics/{_h5name(m)}", (), f8, False)
        if self.ledger_nodes:
            for side in ("entering", "leaving"):
                out[f"ledger/{side}"] = (f"ledger/{side}", (len(self.ledger_nodes),), f8, False)
        for node, shape in self.intermediate:
            out[f"intermediate/{node}"] = (f"intermediate/{_h5name(node)}", shape, rel, True)
        return out

    def differences(self, other: StoreLayout) -> list[str]:
        """``"field: mine <a>, other <b>"`` for every field where two layouts differ."""
        return [f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in dc_fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_file(cls, f: h5py.File, where: str = "") -> StoreLayout:
        """Read the layout of an open store (``where`` names it in errors)."""
        a = f.attrs
        try:
            metrics = tuple(_py(f["metrics"].attrs["names"])) if "metrics" in f else ()
            nodes = tuple(_py(f["ledger"].attrs["nodes"])) if "ledger" in f else ()
            inter: list[tuple[str, tuple[int, ...]]] = []
            if "intermediate" in f:
                for node in _py(f["intermediate"].attrs["nodes"]):
                    inter.append((node, tuple(f["intermediate"][_h5name(node)].shape[1:])))
            return cls(tuple(_py(a["input_shape"])), int(a["n_classes"]), nodes, tuple(inter), metrics,
                       int(a["target_width"]), str(_py(a["relevance_dtype"])))
        except (KeyError, ValueError, TypeError, LrpflowError) as err:
            raise LrpflowError(f"{where or f.filename}: not a valid {SCHEMA} store (layout: {err})") from err


def _chunk_plan(layout: StoreLayout, chunk_rows: int | None, expected_rows: int | None) -> tuple[int, dict[str, int]]:
    """(rows per chunk of the compressed datasets, field → chunk rows) for a new store.

    Relevance and intermediate relevance share one chunk length (the commit alignment);
    the small per-row datasets get chunks of about 64 KiB.
    """
    specs = layout.datasets()
    row_bytes = {k: max(1, int(numpy.prod(shape, dtype=numpy.int64)) * dt.itemsize)
                 for k, (_, shape, dt, _) in specs.items()}
    widest = max(row_bytes[k] for k, (_, _, _, large) in specs.items() if large)
    align = int(chunk_rows) if chunk_rows else max(1, _BIG_CHUNK_BYTES // widest)
    cap = max(1, _MAX_CHUNK_BYTES // widest)
    if align > cap:
        logger.info("chunk_rows=%d would make %d-byte chunks; using %d rows", align, align * widest, cap)
        align = cap
    if expected_rows:
        align = min(align, int(expected_rows))
    align = max(1, align)
    plan = {}
    for k, (_, _, _, large) in specs.items():
        rows = align if large else max(align, min(16384, _SMALL_CHUNK_BYTES // row_bytes[k]))
        plan[k] = max(1, min(rows, int(expected_rows)) if expected_rows else rows)
    return align, plan


def _dataset_props(d: h5py.Dataset) -> dict[str, Any]:
    """The creation settings of a dataset, as keywords of ``create_dataset``."""
    return dict(chunks=d.chunks, compression=d.compression, compression_opts=d.compression_opts, shuffle=d.shuffle,
                fillvalue=d.fillvalue)


def _create_datasets(f: h5py.File, layout: StoreLayout, props: Mapping[str, Mapping[str, Any]],
                     rows: int = 0) -> None:
    """The groups (with their name lists) and the datasets (``rows`` long, growable) of a layout."""
    f.create_group("metrics").attrs.create("names", _names_attr(layout.metrics))
    f.create_group("ledger").attrs.create("nodes", _names_attr(layout.ledger_nodes))
    f.create_group("intermediate").attrs.create("nodes", _names_attr([k for k, _ in layout.intermediate]))
    for field, (h5path, shape, dt, _) in layout.datasets().items():
        d = f.create_dataset(h5path, shape=(rows, *shape), maxshape=(None, *shape), dtype=dt, **props[field])
        if field.startswith(("metrics/", "intermediate/")):
            d.attrs["name"] = field.split("/", 1)[1]
        if field.startswith("ledger/"):
            d.attrs.create("nodes", _names_attr(layout.ledger_nodes))


def _check_schema(f: h5py.File, where: str) -> None:
    schema = _py(f.attrs.get("schema"))
    if schema != SCHEMA:
        raise LrpflowError(f"{where}: not an lrpflow result store (schema attribute {schema!r}, expected {SCHEMA!r})")
    version = _py(f.attrs.get("schema_version"))
    if version != SCHEMA_VERSION:
        raise LrpflowError(f"{where}: store schema version {version!r}; this lrpflow reads version {SCHEMA_VERSION}")


# --------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------
class ResultStore:
    """An HDF5 result store (docs/results.md); make one with :meth:`create`, open one with :meth:`open`.

    A store is a context manager; leaving the ``with`` block closes it (it does not
    finish it: an unfinished store stays at ``<path>.partial``, ready to resume).

    Examples
    --------
    >>> with ResultStore.create("results.h5", input_shape=(28, 28, 1), n_classes=10,
    ...                         config=cfg, model_sha256=sha256_file(model_path)) as store:
    ...     for start in range(store.next_row, n, batch):        # 0, or where a killed run stopped
    ...         out = explainer(x[start:start + batch])
    ...         store.append(out, label=y[start:start + batch], index=numpy.arange(start, start + len(out.relevance)))
    ...     store.finish()                                        # -> results.h5, atomically
    >>> data = load("results.h5", fields=["relevance", "target"])
    """

    def __init__(self, file: h5py.File, path: str, mode: str) -> None:
        """Wrap an open h5py file; use :meth:`create` or :meth:`open` instead."""
        self._file: h5py.File | None = file
        self._path = path
        self._mode = mode
        _check_schema(file, path)
        self.layout = StoreLayout.from_file(file, path)
        self._specs = self.layout.datasets()
        try:
            self._rows = int(file.attrs["rows_complete"])
        except KeyError:
            raise LrpflowError(f"{path}: no rows_complete attribute; not a valid {SCHEMA} store") from None
        rel = file["relevance"]
        self._align = int(rel.chunks[0]) if rel.chunks else 1
        self._pending: dict[str, numpy.ndarray] = {}

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, input_shape: Sequence[int], n_classes: int,
               ledger_nodes: Sequence[str] = (), intermediate: Mapping[str, Sequence[int]] | None = None,
               metrics: Sequence[str] = (), config: Any = None, model_sha256: str | None = None,
               backend: str | None = None, dtype: Any = None, attrs: Mapping[str, Any] | None = None,
               expected_rows: int | None = None, target_width: int = 1, chunk_rows: int | None = None,
               compression: str | None = "gzip", compression_opts: Any = None, relevance_dtype: Any = "float32",
               resume: bool = True, overwrite: bool = False, ignore_config_keys: Sequence[str] = ()) -> ResultStore:
        """Start a store at ``path`` (written at ``path + ".partial"`` until :meth:`finish`), or resume one.

        Parameters
        ----------
        path : str or path-like
            The final file name, e.g. ``results.h5``.
        input_shape : sequence of int
            Shape of one input (and relevance map) without the batch axis.
        n_classes : int
            Number of logits.
        ledger_nodes : sequence of str
            Nodes whose per-sample ledger (relevance entering/leaving) is stored; () stores none.
        intermediate : mapping of str to shape, optional
            Nodes whose relevance is stored, with the per-sample shape.
        metrics : sequence of str
            Names of per-sample metrics (``metrics/<name>``) every batch must give.
        config : str, mapping or DictConfig, optional
            The full resolved configuration; stored as YAML text in the ``config`` attribute.
        model_sha256 : str, optional
            Digest of the model file (:func:`sha256_file`).
        backend, dtype : str, optional
            The backend and compute dtype the run used (attributes).
        attrs : mapping, optional
            Further attributes (mappings are stored as JSON text). May also hold
            ``config``, ``model_sha256``, ``backend`` and ``dtype`` instead of the keywords.
        expected_rows : int, optional
            Rows the finished store will have, if known (caps the chunk size; :meth:`finish`
            warns if it differs).
        target_width : int
            1 for one target class per sample, K for ``topk:K`` (target is then (N, K)).
        chunk_rows : int, optional
            Rows per chunk of the relevance datasets (best: the batch size); default ~1 MiB chunks.
        compression : {"gzip", "lzf", None}
            Filter of the relevance and intermediate datasets (gzip is readable everywhere;
            lzf is faster, h5py only). The small per-row datasets are stored unfiltered, so
            that rewriting their last, partly filled chunk happens in place.
        compression_opts : optional
            Filter option (gzip level, default 4).
        relevance_dtype : dtype
            Storage dtype of relevance and intermediate relevance (float32).
        resume : bool
            If ``path + ".partial"`` exists (a killed run), continue it: it must have been
            written with the same layout, config and model, else an :class:`LrpflowError`
            names the differing field.
        overwrite : bool
            Discard an existing partial store that cannot be resumed (or ``resume=False``),
            and allow replacing an existing final ``path`` when this store finishes.
        ignore_config_keys : sequence of str
            Dotted config keys that may differ between the killed and the resuming run.

        Returns
        -------
        ResultStore
            Open for appending; :attr:`next_row` is 0 for a new store.
        """
        final = _final(os.fspath(path))
        partial = _partial(final)
        meta = dict(attrs or {})
        config_given = config is not None or meta.get("config") is not None
        for key, value in (("config", config), ("model_sha256", model_sha256), ("backend", backend),
                           ("dtype", dtype)):
            if value is not None:
                if key in meta:
                    raise ConfigError(f"{key!r} given both as a keyword and in attrs=")
                meta[key] = value
        text = config_text(meta.pop("config", None))
        sha = meta.pop("model_sha256", None)
        run_backend = meta.pop("backend", None)
        run_dtype = meta.pop("dtype", None)
        bad = sorted(set(meta) & _RESERVED)
        if bad:
            raise ConfigError(f"attrs= may not set the store's own attributes {bad}")
        if compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise ConfigError(f"chunk_rows must be positive, got {chunk_rows!r}")
        if expected_rows is not None and int(expected_rows) < 0:
            raise ConfigError(f"expected_rows must be non-negative, got {expected_rows!r}")
        layout = StoreLayout(tuple(input_shape), n_classes, tuple(ledger_nodes),
                             tuple((k, tuple(v)) for k, v in (intermediate or {}).items()), tuple(metrics),
                             target_width, relevance_dtype)

        if os.path.exists(partial):
            if resume:
                try:
                    store = cls._open_append(partial, check=(layout, text if config_given else None, sha,
                                                             tuple(ignore_config_keys)))
                except LrpflowError as err:
                    if not overwrite:
                        raise
                    logger.warning("%s; overwrite=True: starting again", err)
                else:
                    logger.info("resuming %s at row %d", partial, store.next_row)
                    return store
            elif not overwrite:
                raise LrpflowError(f"{partial} exists (an unfinished run); pass resume=True to continue it "
                                   f"or overwrite=True to start again")
            os.remove(partial)
        if os.path.exists(final) and not overwrite:
            raise LrpflowError(f"{final} exists (a finished store); pass overwrite=True to replace it")

        # write the header to a temporary name, then rename: a .partial file always has a full header
        tmp = f"{partial}.{os.getpid()}.tmp"
        try:
            with h5py.File(tmp, "w", libver=_LIBVER) as f:
                import lrpflow

                a = f.attrs
                a["schema"] = SCHEMA
                a["schema_version"] = SCHEMA_VERSION
                a["config"] = text
                a["lrpflow_version"] = str(getattr(lrpflow, "__version__", "unknown"))
                a["backend"] = str(run_backend) if run_backend is not None else ""
                a["dtype"] = _dtype_name(run_dtype) if run_dtype is not None else ""
                a["model_sha256"] = str(sha) if sha is not None else ""
                a["created"] = _now()
                a["input_shape"] = numpy.asarray(layout.input_shape, dtype=numpy.int64)
                a["n_classes"] = layout.n_classes
                a["target_width"] = layout.target_width
                a["relevance_dtype"] = layout.relevance_dtype
                a["expected_rows"] = int(expected_rows) if expected_rows is not None else -1
                a["resumes"] = 0
                a["complete"] = False
                for key, value in meta.items():
                    if value is not None:
                        a[key] = _attr_value(key, value)
                opts = compression_opts if compression_opts is not None else (4 if compression == "gzip" else None)
                align, plan = _chunk_plan(layout, chunk_rows, expected_rows)
                a["chunk_rows"] = align
                props = {}
                for field, (_, shape, dt, large) in layout.datasets().items():
                    comp = compression if large else None
                    props[field] = dict(chunks=(plan[field], *shape), compression=comp,
                                        compression_opts=opts if comp else None, shuffle=comp is not None,
                                        fillvalue=-1 if dt.kind == "i" else (_FLOAT_FILL if not large else 0.0))
                _create_datasets(f, layout, props)
                a["rows_complete"] = 0
            _fsync(tmp)
            os.replace(tmp, partial)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        logger.info("created result store %s", partial)
        return cls._open_append(partial, count_resume=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r", *, config: Any = None,
             model_sha256: str | None = None, ignore_config_keys: Sequence[str] = ()) -> ResultStore:
        """Open a store to read (``mode="r"``) or to resume writing (``mode="a"``).

        Parameters
        ----------
        path : str or path-like
            The final name (``results.h5``) or the running name (``results.h5.partial``).
            ``"r"`` opens the final file if it exists, else the partial one (a run in
            progress or killed: :meth:`read` sees its complete rows). ``"a"`` opens the
            partial one.
        mode : {"r", "a"}
            ``"r"``: read-only, every write raises :class:`LrpflowError`. ``"a"``: resume:
            rows beyond ``rows_complete`` (a batch killed half-written) are dropped, as are
            the rows of an incomplete last chunk, and :attr:`next_row` says where to continue.
        config, model_sha256 : optional
            With ``mode="a"``: the new run's configuration and model digest; resuming
            refuses (naming the field) if they differ from the stored ones.
        ignore_config_keys : sequence of str
            Dotted config keys left out of that comparison.

        Returns
        -------
        ResultStore
        """
        path = os.fspath(path)
        if mode not in ("r", "a"):
            raise ConfigError(f"mode must be 'r' (read) or 'a' (resume), got {mode!r}; use ResultStore.create to start")
        final, partial = _final(path), _partial(_final(path))
        if mode == "r":
            target = path if path.endswith(PARTIAL_SUFFIX) else (final if os.path.exists(final) else partial)
            if not os.path.exists(target):
                raise LrpflowError(f"no result store at {path} (nor {partial})")
            try:
                f = h5py.File(target, "r", rdcc_nbytes=_CHUNK_CACHE)
            except OSError as err:
                raise LrpflowError(f"cannot open result store {target}: {err}") from err
            try:
                store = cls(f, target, "r")
                store._check_sources()
            except BaseException:
                f.close()
                raise
            return store
        if not os.path.exists(partial):
            if os.path.exists(final):
                raise LrpflowError(f"{final} is a finished store; there is nothing to resume "
                                   f"(ResultStore.create(..., overwrite=True) starts again)")
            raise LrpflowError(f"no unfinished result store {partial} to resume")
        return cls._open_append(partial, check=(None, None if config is None else config_text(config),
                                                model_sha256, tuple(ignore_config_keys)))

    @classmethod
    def _open_append(cls, partial: str, count_resume: bool = True,
                     check: tuple[StoreLayout | None, str | None, str | None, tuple[str, ...]] | None = None
                     ) -> ResultStore:
        """Open a partial store for writing.

        First read-only: check it against the new run (nothing is changed if that fails)
        and inspect it. A store killed while a batch was being written (datasets longer
        than the counter, or chunk entries the counter does not cover) is rebuilt from
        its complete rows (:meth:`_salvage`) instead of being edited in place: HDF5 may
        have flushed only part of that batch's metadata, and freeing its chunks can fail.
        """
        try:
            _repair_eoa(partial)
            f = h5py.File(partial, "r")
        except OSError as err:
            raise LrpflowError(f"cannot open unfinished store {partial} (damaged?): {err}; "
                               f"overwrite=True starts again") from err
        try:
            probe = cls(f, partial, "r")
        except BaseException:
            f.close()
            raise
        with probe:
            if check is not None:
                probe._check_same(*check)
            usable = probe._usable_rows()
        if usable is not None:
            cls._salvage(partial, usable, probe.layout)
        try:
            f = h5py.File(partial, "a", libver=_LIBVER, rdcc_nbytes=_CHUNK_CACHE)
        except OSError as err:
            raise LrpflowError(f"cannot open unfinished store {partial} for writing: {err}") from err
        try:
            store = cls(f, partial, "a")
            store._truncate()
            if count_resume:
                f.attrs["resumes"] = int(f.attrs.get("resumes", 0)) + 1
            f.attrs["complete"] = False  # a partial file marked complete: finish() was killed before its rename
            f.flush()
        except BaseException:
            f.close()
            raise
        return store

    def _usable_rows(self) -> int | None:
        """None if every dataset is exactly as the counter says; else the rows that can be kept.

        Checks each dataset's extent and that its chunk index holds exactly the chunks of
        the complete rows; the usable rows are those whose chunks are all present.
        """
        f = self._require_open()
        rows = self._rows
        clean = True
        usable = rows
        for h5path, _, _, _ in self._specs.values():
            d = f[h5path]
            if d.chunks is None:  # a joined (virtual) store is never resumed
                continue
            step = int(d.chunks[0])
            expected = -(-rows // step)
            try:
                count = d.id.get_num_chunks()
            except Exception:  # noqa: BLE001 - any failure to read the chunk index means: rebuild
                count = -1
            if d.shape[0] == rows and count == expected:
                continue
            clean = False
            zeros = (0,) * (d.ndim - 1)
            for k in range(expected):
                try:
                    info = d.id.get_chunk_info_by_coord((k * step, *zeros))
                    present = info.byte_offset is not None
                except Exception:  # noqa: BLE001
                    present = False
                if not present:
                    usable = min(usable, k * step)
                    break
        if clean:
            return None
        return usable - usable % self._align

    @classmethod
    def _salvage(cls, partial: str, rows: int, layout: StoreLayout) -> None:
        """Rebuild a partial store from its first ``rows`` rows (same attributes and dataset settings).

        Objects are reached by path only, and only the complete rows are read: the chunk
        index of the killed batch may be damaged, and walking the file would touch it.
        """
        tmp = f"{partial}.{os.getpid()}.salvage"
        logger.warning("%s was killed while writing; rebuilding it from its %d complete row(s)", partial, rows)
        try:
            with h5py.File(partial, "r") as src, h5py.File(tmp, "w", libver=_LIBVER) as dst:
                for key, value in src.attrs.items():
                    dst.attrs[key] = value
                specs = layout.datasets()
                props = {field: _dataset_props(src[h5path]) for field, (h5path, _, _, _) in specs.items()}
                _create_datasets(dst, layout, props, rows)
                for field, (h5path, shape, dt, _) in specs.items():
                    chunk = int(props[field]["chunks"][0])
                    row_bytes = max(1, dt.itemsize * int(numpy.prod(shape, dtype=numpy.int64)))
                    step = max(1, _MAX_CHUNK_BYTES // (row_bytes * chunk)) * chunk  # whole chunks, ~16 MiB
                    for a in range(0, rows, step):
                        dst[h5path][a:min(rows, a + step)] = src[h5path][a:min(rows, a + step)]
                dst.attrs["rows_complete"] = rows
                dst.attrs["complete"] = False
            _fsync(tmp)
            os.replace(tmp, partial)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise LrpflowError(f"cannot recover the unfinished store {partial} (damaged: {err}); "
                               f"overwrite=True starts again") from err
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def _truncate(self) -> None:
        """Drop rows beyond the counter (a batch killed half-written), and back to a chunk boundary.

        Writes only ever fill whole compressed chunks, except the last one in :meth:`finish`:
        rewriting a compressed chunk moves it in the file, and if the process dies before
        the next flush the old place may already hold other data. So a resumed store drops
        the committed rows of an incomplete last chunk (they are recomputed) before it
        writes again.
        """
        f = self._require_open()
        keep = self._rows - self._rows % self._align
        if keep != self._rows:
            logger.info("%s: resuming at the chunk boundary %d (rows %d:%d are written again)", self._path, keep,
                        keep, self._rows)
            f.attrs["rows_complete"] = keep  # the counter shrinks before the data does
            f.flush()
            self._rows = keep
        dropped = 0
        for field, (h5path, shape, _, _) in self._specs.items():
            if h5path not in f:
                raise LrpflowError(f"{self._path}: dataset {h5path!r} is missing")
            d = f[h5path]
            if d.shape[0] < self._rows:
                raise LrpflowError(f"{self._path}: dataset {h5path!r} has {d.shape[0]} rows but rows_complete is "
                                   f"{self._rows}: the file is damaged")
            if d.shape[0] > self._rows:
                dropped = max(dropped, d.shape[0] - self._rows)
                d.resize((self._rows, *shape))
        if dropped:
            logger.warning("%s: dropped %d half-written row(s) beyond rows_complete=%d", self._path, dropped,
                           self._rows)

    def _check_same(self, layout: StoreLayout | None, config: str | None, sha: str | None,
                    ignore: Sequence[str]) -> None:
        where = f"cannot resume {self._path}"
        if layout is not None and layout != self.layout:
            raise LrpflowError(f"{where}: the layout differs ({'; '.join(self.layout.differences(layout))}; "
                               f"stored vs this run); overwrite=True starts again")
        a = self.attrs
        if sha is not None and a.get("model_sha256", "") != sha:
            raise LrpflowError(f"{where}: model_sha256 differs (stored {a.get('model_sha256')!r}, this run {sha!r}): "
                               f"it was computed with another model file; overwrite=True starts again")
        if config is not None:
            diff = config_diff(self.config, config, ignore)
            if diff:
                raise LrpflowError(f"{where}: config differs at {'; '.join(diff)}; overwrite=True starts again")

    def _check_sources(self) -> None:
        """For a joined store: every shard its virtual datasets read must be reachable (HDF5 would read fill values)."""
        shards = self.attrs.get("shards")
        if not shards:
            return
        base = os.path.dirname(os.path.abspath(self._path))
        prefixes = [p for p in os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep) if p]
        for name in shards:
            candidates = [name] if os.path.isabs(name) else [os.path.join(base, name), *[
                os.path.join(p, name) for p in prefixes], name]
            if not any(os.path.exists(c) for c in candidates):
                raise LrpflowError(f"{self._path} is a joined store, but its shard {name!r} is missing "
                                   f"(looked in {candidates}); keep the shards where join() found them, "
                                   f"relative to the joined file")

    # -- context manager / lifetime ---------------------------------------------------------------
    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self._mode == "a" and self._file is not None:
            logger.warning("%s left unfinished (%d rows complete); it resumes from there", self._path, self._rows)
        self.close()

    def close(self) -> None:
        """Close the file (idempotent). An unfinished store stays at ``<path>.partial``.

        Rows still waiting for a full chunk (:attr:`pending_rows`) are not written; a
        resumed run computes them again from :attr:`next_row`.
        """
        if self._pending and self._file is not None:
            logger.warning("%s: closing with %d row(s) not yet written (waiting for a full chunk); "
                           "a resumed run recomputes them", self._path, self.pending_rows)
        self._pending = {}
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __repr__(self) -> str:
        state = "closed" if self._file is None else ("complete" if self.complete else "unfinished")
        return f"<ResultStore {self._path!r} mode={self._mode!r} rows={self._rows} {state}>"

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise LrpflowError(f"result store {self._path} is closed")
        return self._file

    def _require_writable(self) -> h5py.File:
        f = self._require_open()
        if self._mode != "a":
            raise LrpflowError(f"result store {self._path} is open read-only; open it with mode='a' to write")
        return f

    # -- properties -------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The file this store is open on (``<final>.partial`` while unfinished)."""
        return self._path

    @property
    def final_path(self) -> str:
        """Where the store lands when finished."""
        return _final(self._path)

    @property
    def mode(self) -> str:
        """``"r"`` (read-only) or ``"a"`` (writable)."""
        return self._mode

    @property
    def writable(self) -> bool:
        """True if :meth:`append` and :meth:`finish` are allowed."""
        return self._mode == "a" and self._file is not None

    @property
    def next_row(self) -> int:
        """The row the next :meth:`append` starts at: rows complete plus rows pending.

        On a freshly opened (resumed) store this is ``rows_complete``: where to continue.
        """
        return self._rows + self.pending_rows

    @property
    def rows_complete(self) -> int:
        """Rows completely written to the file (the counter attribute); :meth:`read` sees these."""
        return self._rows

    @property
    def pending_rows(self) -> int:
        """Rows appended but held in memory until they fill a whole chunk (written by :meth:`finish`)."""
        return int(next(iter(self._pending.values())).shape[0]) if self._pending else 0

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk of the relevance datasets; rows are committed in multiples of it."""
        return self._align

    def __len__(self) -> int:
        """The number of complete (readable) rows."""
        return self._rows

    @property
    def complete(self) -> bool:
        """True once :meth:`finish` ran."""
        return bool(self._require_open().attrs.get("complete", False))

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes as plain Python values."""
        return {k: _py(v) for k, v in self._require_open().attrs.items()}

    @property
    def config(self) -> str:
        """The resolved configuration of the run, as YAML text."""
        return str(_py(self._require_open().attrs.get("config", "")))

    @property
    def config_dict(self) -> Any:
        """The configuration parsed from YAML (a dict; ``{}`` if none was stored)."""
        import yaml

        return yaml.safe_load(self.config) or {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one relevance map (no batch axis)."""
        return self.layout.input_shape

    @property
    def n_classes(self) -> int:
        """Number of logits per row."""
        return self.layout.n_classes

    @property
    def ledger_nodes(self) -> tuple[str, ...]:
        """Nodes of the stored ledger, in column order of ``ledger/*``."""
        return self.layout.ledger_nodes

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names of the stored per-sample metrics."""
        return self.layout.metrics

    @property
    def intermediate_nodes(self) -> tuple[str, ...]:
        """Nodes whose relevance is stored under ``intermediate/``."""
        return tuple(k for k, _ in self.layout.intermediate)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field :meth:`read` knows (``ledger/absorbed`` is computed)."""
        names = tuple(self._specs)
        return names + (("ledger/absorbed",) if self.layout.ledger_nodes else ())

    @property
    def file(self) -> h5py.File:
        """The open h5py file (for inspection; write through :meth:`append` only)."""
        return self._require_open()

    # -- writing ----------------------------------------------------------------------------------
    def append(self, batch: Any, **extras: Any) -> slice:
        """Add one batch of rows; the counter moves only after every dataset holds them.

        Parameters
        ----------
        batch : Explanation or mapping
            An :class:`~lrpflow.explain.Explanation` (relevance, logits, target, conservation,
            ledger, intermediate are taken from it), or a mapping with keys ``relevance``
            (required), ``logits``, ``target`` (required), ``label``, ``index``,
            ``conservation``, ``metrics`` (name → (n,)), ``ledger`` (node → LedgerEntry or
            ``(entering, leaving)``), ``intermediate`` (node → array); the flat keys
            :meth:`read` returns (``metrics/<name>``, ``ledger/entering``, ...) work too.
            Arrays may live on the GPU.
        **extras
            More of those keys, typically ``label=``, ``index=`` and ``metrics=``.

        Returns
        -------
        slice
            The rows this batch occupies.

        Notes
        -----
        ``label`` defaults to −1 (unknown), ``index`` to the store rows, ``conservation``
        to NaN. Every declared metric, ledger node and intermediate node must be given;
        ledger nodes and intermediates the store does not declare are not stored.

        Rows are written in whole chunks of :attr:`chunk_rows` (pass the batch size as
        ``chunk_rows`` to :meth:`create` and every batch is written at once); a remainder
        waits in memory for the next batch or :meth:`finish`. Each write resizes every
        dataset, writes the rows and flushes, and only then bumps ``rows_complete`` and
        flushes again, so the counter only counts rows that are completely in the file.
        """
        self._require_writable()
        if self.complete:
            raise LrpflowError(f"result store {self._path} is finished; it takes no more rows")
        data = self._rows_of(batch, extras)
        n = int(next(iter(data.values())).shape[0])
        first = self.next_row
        if n == 0:
            return slice(first, first)
        if self._pending:
            data = {k: numpy.concatenate([self._pending[k], v]) for k, v in data.items()}
        total = int(next(iter(data.values())).shape[0])
        whole = (self._rows + total) // self._align * self._align - self._rows
        if whole > 0:
            self._write({k: v[:whole] for k, v in data.items()})
        self._pending = {k: v[whole:] for k, v in data.items()} if whole < total else {}
        return slice(first, first + n)

    def _write(self, data: Mapping[str, numpy.ndarray]) -> None:
        """Write rows at the counter: resize, write, flush; then bump the counter and flush."""
        f = self._require_writable()
        n = int(next(iter(data.values())).shape[0])
        start, stop = self._rows, self._rows + n
        for field, (h5path, shape, _, _) in self._specs.items():
            d = f[h5path]
            d.resize((stop, *shape))
            d[start:stop] = data[field]
        f.flush()  # every row is in the file ...
        self._commit(stop)  # ... before the counter says so
        logger.debug("%s: rows %d:%d written", self._path, start, stop)

    def _commit(self, rows: int) -> None:
        f = self._require_open()
        f.attrs["rows_complete"] = int(rows)
        f.flush()
        self._rows = int(rows)

    def _rows_of(self, batch: Any, extras: Mapping[str, Any]) -> dict[str, numpy.ndarray]:
        """Normalise a batch into field → numpy array with n rows, validating shapes."""
        if isinstance(batch, Mapping):
            given = dict(batch)
        elif hasattr(batch, "relevance"):
            given = {k: getattr(batch, k) for k in ("relevance", "logits", "target", "conservation", "ledger",
                                                   "intermediate") if getattr(batch, k, None) is not None}
        else:
            raise ConfigError(f"append() takes an Explanation or a mapping, got {type(batch).__name__}")
        twice = sorted(set(given) & set(extras))
        if twice:
            raise ConfigError(f"append(): {twice} given both in the batch and as keywords")
        given.update(extras)
        for key in _IGNORED_KEYS:
            given.pop(key, None)

        flat: dict[str, Any] = {}
        for key, value in given.items():
            if key in ("metrics", "intermediate") and isinstance(value, Mapping):
                for name, arr in value.items():
                    flat[f"{key}/{name}"] = arr
            elif key == "ledger" and isinstance(value, Mapping):
                flat.update(self._ledger_rows(value))
            elif key in self._specs or key.startswith(("metrics/", "intermediate/")) or key == "ledger/absorbed":
                flat[key] = value
            else:
                raise ConfigError(f"append(): unknown field {key!r}; expected one of {list(self._specs)} "
                                  f"or metrics=, ledger=, intermediate=")
        flat.pop("ledger/absorbed", None)
        unknown_metrics = sorted(k for k in flat if k.startswith("metrics/") and k not in self._specs)
        if unknown_metrics:
            raise ConfigError(f"append(): metrics {unknown_metrics} were not declared when the store was created "
                              f"(declared: {list(self.layout.metrics)})")
        for k in [k for k in flat if k.startswith("intermediate/") and k not in self._specs]:
            logger.debug("append(): %s not declared; not stored", k)
            del flat[k]

        for required in ("relevance", "target"):
            if required not in flat:
                raise ConfigError(f"append(): the batch has no {required!r}")
        rel = to_numpy(flat["relevance"])
        n = int(rel.shape[0]) if rel.ndim else -1
        out: dict[str, numpy.ndarray] = {}
        for field, (_, shape, dt, _) in self._specs.items():
            if field not in flat:
                if field == "label":
                    flat[field] = numpy.full((n,), -1, dtype=numpy.int64)
                elif field == "index":
                    flat[field] = numpy.arange(self.next_row, self.next_row + n, dtype=numpy.int64)
                elif field == "conservation":
                    flat[field] = numpy.full((n,), numpy.nan)
                else:
                    raise ConfigError(f"append(): the batch has no {field!r} (the store declares it)")
            arr = numpy.asarray(to_numpy(flat[field]))
            if arr.shape != (n, *shape):
                raise ShapeError(f"append() to {self._path}: {field!r} has shape {arr.shape}, expected {(n, *shape)}")
            if dt.kind == "i" and not (numpy.issubdtype(arr.dtype, numpy.integer) or arr.dtype == bool):
                raise ShapeError(f"append() to {self._path}: {field!r} must hold integers, got {arr.dtype}")
            out[field] = arr.astype(dt, copy=False)
        return out

    def _ledger_rows(self, ledger: Mapping[str, Any]) -> dict[str, Any]:
        nodes = self.layout.ledger_nodes
        if not nodes:
            return {}
        missing = [n for n in nodes if n not in ledger]
        if missing:
            raise ConfigError(f"append(): the ledger has no entry for declared node(s) {missing}")
        enter, leave = [], []
        for node in nodes:
            entry = ledger[node]
            if hasattr(entry, "entering"):
                e, l_ = entry.entering, entry.leaving
            else:
                e, l_ = entry
            enter.append(numpy.asarray(to_numpy(e), dtype=numpy.float64).reshape(-1))
            leave.append(numpy.asarray(to_numpy(l_), dtype=numpy.float64).reshape(-1))
        return {"ledger/entering": numpy.stack(enter, axis=1), "ledger/leaving": numpy.stack(leave, axis=1)}

    def finish(self) -> str:
        """Mark the store complete and move it atomically to its final path.

        After this the store stays open read-only on the final file.

        Returns
        -------
        str
            The final path.
        """
        f = self._require_writable()
        if self._pending:
            pending, self._pending = self._pending, {}
            self._write(pending)
        expected = int(f.attrs.get("expected_rows", -1))
        if expected >= 0 and expected != self._rows:
            logger.warning("%s: finishing with %d rows, %d were expected", self._path, self._rows, expected)
        f.attrs["complete"] = True
        f.attrs["finished"] = _now()
        f.flush()
        self.close()
        final = self.final_path
        if self._path != final:
            _fsync(self._path)
            os.replace(self._path, final)
            _fsync(os.path.dirname(os.path.abspath(final)))
        logger.info("result store %s complete (%d rows)", final, self._rows)
        self._path, self._mode = final, "r"
        self._file = h5py.File(final, "r", rdcc_nbytes=_CHUNK_CACHE)
        return final

    # -- reading ----------------------------------------------------------------------------------
    def _field_spec(self, field: str) -> tuple[str, tuple[int, ...], numpy.dtype, bool]:
        try:
            return self._specs[field]
        except KeyError:
            raise LrpflowError(f"{self._path} has no field {field!r}; it has {list(self.fields)}") from None

    def _row_index(self, rows: Any) -> tuple[Any, numpy.ndarray | None]:
        """(selection for h5py, inverse permutation or None) for ``rows`` within the complete rows."""
        n = self._rows
        if rows is None:
            return slice(0, n), None
        if isinstance(rows, slice):
            r = range(n)[rows]
            if r.step > 0:
                return slice(r.start, r.stop, r.step), None
            rows = numpy.asarray(r, dtype=numpy.int64)
        idx = numpy.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise ShapeError(f"a boolean row mask must have shape ({n},), got {idx.shape}")
            idx = numpy.flatnonzero(idx)
        if not numpy.issubdtype(idx.dtype, numpy.integer):
            raise ConfigError(f"rows must be a slice, integers or a boolean mask, got {idx.dtype}")
        scalar = idx.ndim == 0
        idx = idx.reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise LrpflowError(f"{self._path}: rows out of range (the store has {n} complete rows)")
        idx = numpy.where(idx < 0, idx + n, idx)
        uniq, inverse = numpy.unique(idx, return_inverse=True)
        if scalar:
            return int(uniq[0]), None
        return uniq, inverse

    def read(self, fields: str | Iterable[str] | None = None, rows: Any = None) -> dict[str, numpy.ndarray]:
        """Read fields of the complete rows as numpy arrays.

        Parameters
        ----------
        fields : str or iterable of str, optional
            Names from :attr:`fields` (``"relevance"``, ``"metrics/<name>"``,
            ``"ledger/entering"``, ``"ledger/absorbed"``, ``"intermediate/<node>"``, ...); default all.
        rows : slice, int, integer array or boolean mask, optional
            Which rows (default all complete rows; rows beyond ``rows_complete`` are never read).

        Returns
        -------
        dict of str to numpy.ndarray
        """
        f = self._require_open()
        names = list(self.fields) if fields is None else ([fields] if isinstance(fields, str) else list(fields))
        sel, inverse = self._row_index(rows)
        out: dict[str, numpy.ndarray] = {}
        for name in names:
            if name == "ledger/absorbed":
                part = self.read(["ledger/entering", "ledger/leaving"], rows)
                out[name] = part["ledger/entering"] - part["ledger/leaving"]
                continue
            h5path, shape, dt, _ = self._field_spec(name)
            d = f[h5path]
            if isinstance(sel, numpy.ndarray) and sel.size == 0:
                arr = numpy.empty((0, *shape), dtype=dt)
            else:
                arr = d[sel]
            out[name] = arr[inverse] if inverse is not None else arr
        return out

    def __getitem__(self, field: str) -> numpy.ndarray:
        """``store["relevance"]``: one field, all complete rows."""
        return self.read([field])[field]

    def read_ledger(self, rows: Any = None) -> dict[str, Any]:
        """The stored ledger as node → :class:`~lrpflow.explain.LedgerEntry` of (n,) arrays."""
        from lrpflow.explain import LedgerEntry

        if not self.layout.ledger_nodes:
            return {}
        part = self.read(["ledger/entering", "ledger/leaving"], rows)
        return {node: LedgerEntry(part["ledger/entering"][..., j], part["ledger/leaving"][..., j])
                for j, node in enumerate(self.layout.ledger_nodes)}

    def iter_batches(self, batch_size: int, fields: str | Iterable[str] | None = None
                     ) -> Iterator[tuple[slice, dict[str, numpy.ndarray]]]:
        """Yield ``(rows, data)`` for consecutive batches of complete rows (bounded memory)."""
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size!r}")
        fields = list(self.fields) if fields is None else ([fields] if isinstance(fields, str) else list(fields))
        for start in range(0, self._rows, int(batch_size)):
            rows = slice(start, min(start + int(batch_size), self._rows))
            yield rows, self.read(fields, rows)


def load(path: str | os.PathLike[str], fields: str | Iterable[str] | None = None,
         rows: Any = None) -> dict[str, numpy.ndarray]:
    """Read a store's fields (default all) as numpy arrays; see :meth:`ResultStore.read`."""
    with ResultStore.open(path, "r") as store:
        return store.read(fields, rows)


# --------------------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------------------
def join(paths: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str], *, relative: bool = True,
         overwrite: bool = False) -> str:
    """Join finished shard stores into one store of HDF5 virtual datasets (no data is copied).

    Parameters
    ----------
    paths : sequence of path
        The shard stores, in shard order (their rows are concatenated in this order).
    out_path : path
        The joined store; written to ``out_path + ".partial"`` and renamed when complete.
    relative : bool
        Reference the shards by their path relative to the folder of ``out_path``
        (default: the joined file and its shards can move together, and the joined
        file opens from any working directory). False stores absolute paths (the
        joined file can move alone, the shards cannot).
    overwrite : bool
        Replace an existing ``out_path``.

    Returns
    -------
    str
        ``out_path``.

    Notes
    -----
    Every shard must be complete and have the same schema, layout and model digest;
    an :class:`LrpflowError` names the first file that does not. The joined file takes
    its attributes from the first shard and adds ``shards`` (the referenced paths, as
    stored) and ``shard_rows``. Reading it needs the shards where they were; opening a
    joined store whose shard is missing raises instead of reading fill values.
    """
    out = os.path.abspath(os.fspath(out_path))
    srcs = [os.path.abspath(os.fspath(p)) for p in paths]
    if not srcs:
        raise ConfigError("join() needs at least one shard store")
    if len(set(srcs)) != len(srcs):
        dup = sorted({p for p in srcs if srcs.count(p) > 1})
        raise LrpflowError(f"join(): shard(s) given twice: {dup}")
    if out in srcs or _partial(out) in srcs:
        raise LrpflowError(f"join(): the output {out} is one of the shards")
    if os.path.exists(out) and not overwrite:
        raise LrpflowError(f"{out} exists; pass overwrite=True to replace it")

    first_layout: StoreLayout | None = None
    first_attrs: dict[str, Any] = {}
    first_raw: dict[str, Any] = {}
    rows: list[int] = []
    for p in srcs:
        if p.endswith(PARTIAL_SUFFIX) or (not os.path.exists(p) and os.path.exists(_partial(p))):
            raise LrpflowError(f"join(): shard {p} is incomplete (its run has not finished; only a "
                               f"{PARTIAL_SUFFIX} file exists)")
        if not os.path.exists(p):
            raise LrpflowError(f"join(): shard {p} does not exist")
        try:
            f = h5py.File(p, "r")
        except OSError as err:
            raise LrpflowError(f"join(): cannot open shard {p}: {err}") from err
        with f:
            _check_schema(f, p)
            if not bool(f.attrs.get("complete", False)):
                raise LrpflowError(f"join(): shard {p} is incomplete (complete attribute is false)")
            layout = StoreLayout.from_file(f, p)
            n = int(f.attrs["rows_complete"])
            for field, (h5path, _, dt, _) in layout.datasets().items():
                d = f[h5path]
                if d.shape[0] != n or d.dtype != dt:
                    raise LrpflowError(f"join(): shard {p}: dataset {h5path!r} has {d.shape[0]} rows of {d.dtype}, "
                                       f"expected {n} of {dt}")
            attrs = {k: _py(v) for k, v in f.attrs.items()}
            if first_layout is None:
                first_layout, first_attrs = layout, attrs
                first_raw = dict(f.attrs.items())
            else:
                diff = first_layout.differences(layout)
                if diff:
                    raise LrpflowError(f"join(): shard {p} has another layout than {srcs[0]}: {'; '.join(diff)}")
                if attrs.get("model_sha256", "") != first_attrs.get("model_sha256", ""):
                    raise LrpflowError(f"join(): shard {p} was computed with another model (model_sha256 "
                                       f"{attrs.get('model_sha256')!r}, first shard {first_attrs.get('model_sha256')!r})")
                diff_cfg = config_diff(first_attrs.get("config", ""), attrs.get("config", ""),
                                       ("data.shard", "data.num_shards"))
                if diff_cfg:
                    logger.warning("join(): shard %s has another config than %s: %s", p, srcs[0], "; ".join(diff_cfg))
            rows.append(n)
    assert first_layout is not None
    names = [os.path.relpath(p, os.path.dirname(out)) if relative else p for p in srcs]
    total = sum(rows)

    tmp = _partial(out)
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        with h5py.File(tmp, "w", libver=_LIBVER) as f:
            for key, value in first_raw.items():
                f.attrs[key] = value
            f.attrs["rows_complete"] = total
            f.attrs["complete"] = True
            f.attrs["shards"] = _names_attr(names)
            f.attrs["shard_rows"] = numpy.asarray(rows, dtype=numpy.int64)
            f.attrs["joined"] = _now()
            f.create_group("metrics").attrs.create("names", _names_attr(first_layout.metrics))
            f.create_group("ledger").attrs.create("nodes", _names_attr(first_layout.ledger_nodes))
            f.create_group("intermediate").attrs.create("nodes",
                                                        _names_attr([k for k, _ in first_layout.intermediate]))
            for field, (h5path, shape, dt, _) in first_layout.datasets().items():
                vl = h5py.VirtualLayout(shape=(total, *shape), dtype=dt, maxshape=(total, *shape))
                offset = 0
                for name, n in zip(names, rows):
                    if n:
                        # "%" starts a printf-like block specifier in VDS names; "%%" is a literal "%"
                        vl[offset:offset + n] = h5py.VirtualSource(name.replace("%", "%%"), h5path.replace("%", "%%"),
                                                                   shape=(n, *shape))
                    offset += n
                fill = -1 if dt.kind == "i" else _FLOAT_FILL
                d = f.create_virtual_dataset(h5path, vl, fillvalue=fill)
                if field.startswith(("metrics/", "intermediate/")):
                    d.attrs["name"] = field.split("/", 1)[1]
                if field.startswith("ledger/"):
                    d.attrs.create("nodes", _names_attr(first_layout.ledger_nodes))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("joined %d shard(s), %d rows, into %s", len(srcs), total, out)
    return out


def join_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``lrpflow-join OUT IN...``: join finished shard stores.

    Returns
    -------
    int
        0 on success, 2 on an error (message on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="lrpflow-join",
        description="Join finished lrpflow shard result stores into one HDF5 file of virtual datasets "
                    "(rows concatenated in the order given; no data is copied).")
    parser.add_argument("out", help="the joined store to write")
    parser.add_argument("inputs", nargs="+", help="shard stores, in shard order")
    parser.add_argument("--absolute", action="store_true",
                        help="reference shards by absolute path (default: relative to OUT's folder, "
                             "so OUT and its shards can move together)")
    parser.add_argument("-f", "--overwrite", action="store_true", help="replace OUT if it exists")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse wrote the message
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        join(args.inputs, args.out, relative=not args.absolute, overwrite=args.overwrite)
    except (LrpflowError, OSError) as err:
        sys.stderr.write(f"lrpflow-join: error: {err}\n")
        return 2
    return 0


__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "PARTIAL_SUFFIX", "ResultStore", "StoreLayout", "load", "join", "join_main",
    "sha256_file", "config_text", "config_diff",
]
