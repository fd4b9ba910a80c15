"""Reading a result store: :class:`StoreReader` (the read side of every store) and :func:`load`.

A reader never trusts the file: the schema, the layout and every dataset's extent, row
shape and dtype are checked when it opens, rows are read only up to ``rows_complete``, and
whatever a damaged file makes h5py raise becomes a :class:`~lrpflow.errors.StoreError`
naming the file and the damaged part.
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import h5py
import numpy

from lrpflow.errors import ConfigError, LrpflowError, ShapeError, StoreError
from lrpflow.store.layout import (
    _CHUNK_CACHE, PARTIAL_SUFFIX, SCHEMA, StoreLayout, _final, _partial, check_schema, damaged, read_attr, read_attrs,
)

logger = logging.getLogger("lrpflow.store")


class StoreReader:
    """The read side of a result store (docs/results.md): fields, attributes, layout, batches.

    :class:`~lrpflow.store.ResultStore` adds writing and resuming. Open one with
    :meth:`open`; a reader is a context manager (leaving the block closes the file).
    """

    def __init__(self, file: h5py.File, path: str, mode: str) -> None:
        """Wrap an open h5py file and check it; use :meth:`open` (or ``ResultStore.create``) instead."""
        self._file: h5py.File | None = file
        self._path = path
        self._mode = mode
        self._pending: dict[str, numpy.ndarray] = {}
        check_schema(file, path)
        self.layout = StoreLayout.from_file(file, path)
        self._specs = self.layout.datasets()
        with damaged(path, "the rows_complete attribute"):
            rows = read_attr(file, "rows_complete")
            if rows is None:
                raise StoreError(f"{path}: no rows_complete attribute; not a valid {SCHEMA} store")
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise StoreError(f"{path}: rows_complete is {rows!r}, not a row count")
            self._rows = rows
        for field, (h5path, shape, dt, _) in self._specs.items():
            with damaged(path, f"dataset {h5path!r}"):
                if h5path not in file or not isinstance(file[h5path], h5py.Dataset):
                    raise StoreError(f"{path}: dataset {h5path!r} ({field}) is missing")
                d = file[h5path]
                if d.shape[1:] != shape or d.dtype != dt or not d.shape:
                    raise StoreError(f"{path}: dataset {h5path!r} has rows of shape {d.shape[1:]} {d.dtype}, "
                                     f"the layout says {shape} {dt}")
                if d.shape[0] < self._rows:
                    raise StoreError(f"{path}: dataset {h5path!r} has {d.shape[0]} rows but rows_complete is "
                                     f"{self._rows}; rows {d.shape[0]}:{self._rows} are lost")
        with damaged(path, "dataset 'relevance'"):
            chunks = file["relevance"].chunks
            self._align = int(chunks[0]) if chunks else 1

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r", **kw: Any) -> Any:
        """Open a store to read: the final file if it exists, else the running ``.partial`` one.

        Parameters
        ----------
        path : str or path-like
            The final name (``results.h5``) or the running name (``results.h5.partial``);
            a partial store (a run in progress or killed) shows its complete rows.
        mode : {"r"}
            Read-only (``ResultStore.open`` also takes ``"a"``, to resume).

        Returns
        -------
        StoreReader

        Raises
        ------
        StoreError
            The file is not a readable store (the message names the damaged part).
        """
        if mode != "r" or kw:
            raise ConfigError(f"StoreReader.open reads only (mode='r'); got mode={mode!r} {sorted(kw)}")
        path = os.fspath(path)
        final, partial = _final(path), _partial(_final(path))
        target = path if path.endswith(PARTIAL_SUFFIX) else (final if os.path.exists(final) else partial)
        if not os.path.exists(target):
            raise StoreError(f"no result store at {path} (nor {partial})")
        try:
            f = h5py.File(target, "r", rdcc_nbytes=_CHUNK_CACHE)
        except Exception as err:  # noqa: BLE001 - OSError for most damage, others for some
            raise StoreError(f"cannot open result store {target}: not an HDF5 file or its header is damaged "
                             f"({type(err).__name__}: {err})") from err
        try:
            store = cls(f, target, "r")
            store._check_sources()
        except BaseException:
            f.close()
            raise
        return store

    def _check_sources(self) -> None:
        """For a joined store: every shard its virtual datasets read must be reachable (HDF5 would read fill values)."""
        shards = self.attrs.get("shards")
        if shards is None or (isinstance(shards, list) and not shards):
            return
        if not isinstance(shards, list) or not all(isinstance(n, str) and n for n in shards):
            raise StoreError(f"{self._path}: the shards attribute is damaged ({shards!r} is not a list of paths)")
        base = os.path.dirname(os.path.abspath(self._path))
        prefixes = [p for p in os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep) if p]
        for name in shards:
            candidates = [name] if os.path.isabs(name) else [os.path.join(base, name), *[
                os.path.join(p, name) for p in prefixes], name]
            if not any(os.path.exists(c) for c in candidates):
                raise StoreError(f"{self._path} is a joined store, but its shard {name!r} is missing "
                                 f"(looked in {candidates}); keep the shards where join() found them, "
                                 f"relative to the joined file")

    # -- context manager / lifetime ---------------------------------------------------------------
    def __enter__(self) -> StoreReader:
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
        return f"<{type(self).__name__} {self._path!r} mode={self._mode!r} rows={self._rows} {state}>"

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
        with damaged(self._path, "the complete attribute"):
            return bool(read_attr(self._require_open(), "complete", False))

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes as plain Python values (read once while the store is open read-only)."""
        if self._mode == "r" and getattr(self, "_attrs_read", None) is not None and self._attrs_read[0] is self._file:
            return copy.deepcopy(self._attrs_read[1])
        with damaged(self._path, "the root attributes"):
            values = read_attrs(self._require_open())
        if self._mode == "r":
            self._attrs_read = (self._file, values)
        return copy.deepcopy(values)

    @property
    def config(self) -> str:
        """The resolved configuration of the run, as YAML text."""
        with damaged(self._path, "the config attribute"):
            return str(read_attr(self._require_open(), "config", ""))

    @property
    def config_dict(self) -> Any:
        """The configuration parsed from YAML (a dict; ``{}`` if none was stored)."""
        import yaml

        try:
            cfg = yaml.safe_load(self.config) or {}
        except yaml.YAMLError as err:
            raise StoreError(f"{self._path}: the config attribute is not valid YAML ({err})") from err
        if not isinstance(cfg, dict):
            raise StoreError(f"{self._path}: the config attribute is not a mapping")
        return cfg

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
            with damaged(self._path, f"dataset {h5path!r}"):
                d = f[h5path]
                if isinstance(sel, numpy.ndarray) and sel.size == 0:
                    arr = numpy.empty((0, *shape), dtype=dt)
                else:
                    arr = numpy.asarray(d[sel])
                if dt.kind in "SO":  # text (the source dataset) as str
                    arr = numpy.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                       for v in arr.reshape(-1)], dtype=object).reshape(arr.shape)
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
    """Read a store's fields (default all) as numpy arrays; see :meth:`StoreReader.read`.

    Raises :class:`~lrpflow.errors.StoreError` naming the file and the damaged part if the
    file is not a readable store.
    """
    with StoreReader.open(path, "r") as store:
        return store.read(fields, rows)
