"""The store's schema and layout: attribute conventions, dataset specs, config text.

What a store holds per row is a :class:`StoreLayout`; :func:`check_schema` and
:meth:`StoreLayout.from_file` read it back from an open file (any damage is a
:class:`~lrpflow.errors.StoreError`). The helpers here are shared by the writer, the
reader and the join.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields as dc_fields
from typing import Any
from urllib.parse import quote

import h5py
import numpy

from lrpflow.errors import ConfigError, LrpflowError, StoreError

logger = logging.getLogger("lrpflow.store")

SCHEMA = "lrpflow-results"
SCHEMA_VERSION = 2
#: versions this lrpflow reads: 1 wrote variable-length strings, 2 writes only fixed-length ones
READABLE_VERSIONS = (1, 2)
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
#: bytes of UTF-8 text per row of the ``source`` dataset (fixed length: no global heap to damage)
SOURCE_BYTES = 1024
#: dtype of the ``source`` dataset
STRING = numpy.dtype(f"S{SOURCE_BYTES}")
#: bytes of UTF-8 text per token of the ``tokens`` dataset (longer tokens are cut at a character boundary)
TOKEN_BYTES = 128
#: dtype of the ``tokens`` dataset
TOKEN = numpy.dtype(f"S{TOKEN_BYTES}")


def cut_token(text: str, limit: int = TOKEN_BYTES) -> bytes:
    """A token's text as the ``tokens`` dataset keeps it: UTF-8, at most ``limit`` bytes, cut at a character boundary."""
    raw = text.encode("utf-8")
    return raw if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore").encode("utf-8")


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


@contextlib.contextmanager
def damaged(path: str, what: str) -> Iterator[None]:
    """Turn any failure of h5py/libhdf5 while reading ``what`` into a :class:`StoreError` naming ``path``.

    A damaged file makes h5py raise ``OSError``, ``KeyError``, ``RuntimeError``,
    ``ValueError`` and more; an :class:`LrpflowError` raised inside passes unchanged.
    """
    try:
        yield
    except LrpflowError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes h5py raise
        raise StoreError(f"{path}: {what} is damaged or unreadable ({type(err).__name__}: {err})") from err


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



def _py(value: Any) -> Any:
    """An attribute value as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, numpy.ndarray):
        return [_py(v) for v in value.tolist()] if value.dtype.kind in "OS" else value.tolist()
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def _attr_value(key: str, value: Any) -> Any:
    """A user attribute in a form h5py can store (mappings become JSON text; text is fixed-length)."""
    if isinstance(value, Mapping):
        return fixed(json.dumps(value, sort_keys=True, default=str))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return _names_attr(value)
    if isinstance(value, str):
        return fixed(value)
    if isinstance(value, (bool, int, float, numpy.generic, numpy.ndarray)):
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
    """A list of names as a fixed-length UTF-8 string array (reading it never touches HDF5's global heap)."""
    encoded = [str(n).encode("utf-8") for n in names]
    return numpy.array(encoded, dtype=f"S{max([1, *map(len, encoded)])}")


def fixed(value: Any) -> Any:
    """A Python attribute value as HDF5 stores it without variable-length data (str → fixed-length bytes)."""
    if isinstance(value, str):
        return numpy.bytes_(value.encode("utf-8"))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return _names_attr(value)
    if isinstance(value, (list, tuple)):
        return numpy.asarray(value)
    return value


def _variable_length(tid: Any) -> bool:
    cls = tid.get_class()
    if cls == h5py.h5t.VLEN or cls == h5py.h5t.REFERENCE:
        return True
    if cls == h5py.h5t.STRING:
        return bool(tid.is_variable_str())
    if cls == h5py.h5t.ARRAY:
        return _variable_length(tid.get_super())
    if cls == h5py.h5t.COMPOUND:
        return any(_variable_length(tid.get_member_type(i)) for i in range(tid.get_nmembers()))
    return False


def _legacy(f: h5py.File) -> bool:
    """True for a version-1 store (it wrote variable-length strings, so they are read)."""
    if "schema_version" not in f.attrs:
        return True
    tid = h5py.h5a.open(f.id, b"schema_version").get_type()
    if tid.get_class() != h5py.h5t.INTEGER:
        return False
    return int(f.attrs["schema_version"]) == 1


def read_attr(obj: Any, name: str, default: Any = None, legacy: bool | None = None) -> Any:
    """One attribute of an HDF5 object as plain Python, or ``default`` if it is absent.

    In a version-2 store no attribute is variable-length: one that claims to be is damage
    (libhdf5 can loop forever reading a damaged global heap), so it raises
    :class:`StoreError` instead of being read. ``legacy``: whether the file is a version-1
    store, if the caller knows (else it is read from the file).
    """
    if name not in obj.attrs:
        return default
    if not (_legacy(obj.file) if legacy is None else legacy):
        tid = h5py.h5a.open(obj.id, name.encode("utf-8")).get_type()
        if _variable_length(tid):
            raise StoreError(f"{obj.file.filename}: attribute {name!r} of {obj.name} has a variable-length type; "
                             f"this store version writes none: the file is damaged")
    return _py(obj.attrs[name])


def read_attrs(obj: Any) -> dict[str, Any]:
    """Every attribute of an HDF5 object as plain Python (see :func:`read_attr`)."""
    legacy = _legacy(obj.file)
    return {name: read_attr(obj, name, legacy=legacy) for name in obj.attrs}


def set_attrs(attrs: Any, values: Mapping[str, Any]) -> None:
    """Write plain Python attribute values (as :func:`read_attrs` gives them) without variable-length data."""
    for key, value in values.items():
        attrs[key] = fixed(value)


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
    has_source: bool = False  #: a ``source`` dataset: the file each row was read from
    #: per-sample curves of metrics, ``metrics/<name>_curve`` (N, length) (pixel flipping's perturbation curve)
    curves: tuple[tuple[str, int], ...] = ()
    #: token-id inputs: ``input_ids`` and ``mask`` (1 on real tokens, 0 on padding), shaped like ``relevance``
    has_ids: bool = False
    #: ``tokens``: the text of every token (the user's vocabulary), shaped like ``relevance``
    has_tokens: bool = False

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
        object.__setattr__(self, "has_source", bool(self.has_source))
        object.__setattr__(self, "has_ids", bool(self.has_ids))
        object.__setattr__(self, "has_tokens", bool(self.has_tokens))
        if self.has_tokens and not self.has_ids:
            raise ConfigError("a store keeps tokens only with their ids (has_tokens needs has_ids)")
        curves = tuple((str(k), int(v)) for k, v in self.curves)
        if len({k for k, _ in curves}) != len(curves) or any(v < 1 for _, v in curves):
            raise ConfigError(f"curves must name each metric once with a positive length, got {list(curves)}")
        object.__setattr__(self, "curves", curves)
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
        for m, length in self.curves:
            out[f"metrics/{m}_curve"] = (f"metrics/{_h5name(m)}_curve", (length,), f8, False)
        if self.ledger_nodes:
            for side in ("entering", "leaving"):
                out[f"ledger/{side}"] = (f"ledger/{side}", (len(self.ledger_nodes),), f8, False)
        for node, shape in self.intermediate:
            out[f"intermediate/{node}"] = (f"intermediate/{_h5name(node)}", shape, rel, True)
        if self.has_source:
            out["source"] = ("source", (), STRING, True)
        if self.has_ids:
            out["input_ids"] = ("input_ids", self.input_shape, i8, False)
            out["mask"] = ("mask", self.input_shape, numpy.dtype("int8"), False)
        if self.has_tokens:
            out["tokens"] = ("tokens", self.input_shape, TOKEN, True)
        return out

    def differences(self, other: StoreLayout) -> list[str]:
        """``"field: mine <a>, other <b>"`` for every field where two layouts differ."""
        return [f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in dc_fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_file(cls, f: h5py.File, where: str = "") -> StoreLayout:
        """Read the layout of an open store (``where`` names it in errors)."""
        try:
            metrics = tuple(read_attr(f["metrics"], "names", [])) if "metrics" in f else ()
            nodes = tuple(read_attr(f["ledger"], "nodes", [])) if "ledger" in f else ()
            inter: list[tuple[str, tuple[int, ...]]] = []
            if "intermediate" in f:
                for node in read_attr(f["intermediate"], "nodes", []):
                    inter.append((node, tuple(f["intermediate"][_h5name(node)].shape[1:])))
            curves = tuple((m, int(f["metrics"][f"{_h5name(m)}_curve"].shape[1]))
                           for m in read_attr(f["metrics"], "curves", [])) if "metrics" in f else ()
            shape = read_attr(f, "input_shape")
            return cls(tuple(shape), int(read_attr(f, "n_classes")), nodes, tuple(inter), metrics,
                       int(read_attr(f, "target_width")), str(read_attr(f, "relevance_dtype")), "source" in f, curves,
                       "input_ids" in f, "tokens" in f)
        except Exception as err:  # noqa: BLE001 - h5py raises KeyError, OSError, RuntimeError... on damage
            raise StoreError(f"{where or f.filename}: not a valid {SCHEMA} store (layout: {err})") from err


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
    props = dict(chunks=d.chunks, compression=d.compression, compression_opts=d.compression_opts, shuffle=d.shuffle)
    if d.dtype.kind != "O":  # text (the source dataset) keeps HDF5's empty-string fill
        props["fillvalue"] = d.fillvalue
    return props


def create_groups(f: h5py.File, layout: StoreLayout) -> None:
    """The ``metrics``, ``ledger`` and ``intermediate`` groups with the name lists that declare their datasets."""
    f.create_group("metrics").attrs.create("names", _names_attr(layout.metrics))
    if layout.curves:
        f["metrics"].attrs.create("curves", _names_attr([k for k, _ in layout.curves]))
    f.create_group("ledger").attrs.create("nodes", _names_attr(layout.ledger_nodes))
    f.create_group("intermediate").attrs.create("nodes", _names_attr([k for k, _ in layout.intermediate]))


def _create_datasets(f: h5py.File, layout: StoreLayout, props: Mapping[str, Mapping[str, Any]],
                     rows: int = 0) -> None:
    """The groups (with their name lists) and the datasets (``rows`` long, growable) of a layout."""
    create_groups(f, layout)
    for field, (h5path, shape, dt, _) in layout.datasets().items():
        d = f.create_dataset(h5path, shape=(rows, *shape), maxshape=(None, *shape), dtype=dt, **props[field])
        if field.startswith(("metrics/", "intermediate/")):
            d.attrs["name"] = fixed(field.split("/", 1)[1])
        if field.startswith("ledger/"):
            d.attrs.create("nodes", _names_attr(layout.ledger_nodes))


def check_schema(f: h5py.File, where: str) -> None:
    """Refuse a file that is not an lrpflow store of this schema version (:class:`StoreError`)."""
    with damaged(where, "the schema attributes"):
        version = read_attr(f, "schema_version")
        schema = read_attr(f, "schema")
    if schema != SCHEMA:
        raise StoreError(f"{where}: not an lrpflow result store (schema attribute {schema!r}, expected {SCHEMA!r})")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"{where}: store schema version {version!r}; this lrpflow reads versions {list(READABLE_VERSIONS)}")

