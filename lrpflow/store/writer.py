"""Writing a result store: :class:`ResultStore` (create, append, finish, resume after a crash).

Crash safety follows emcee's HDF backend: :meth:`ResultStore.append` resizes every
dataset, writes the rows and flushes, and only then bumps ``rows_complete`` and flushes
again, so the counter only ever counts completely written rows. A running store lives at
``<path>.partial``; a resumed run reopens it, drops rows beyond the counter (a batch
killed half-written; :mod:`lrpflow.store.recovery` repairs the rest) and continues at
:attr:`ResultStore.next_row`. :meth:`ResultStore.finish` marks the store complete and
renames it atomically to ``<path>``, so the final path only ever holds complete stores.

A write that fails (a full disk, a read-only folder) closes the store and raises a
:class:`~lrpflow.errors.StoreError` naming the file and the cause; the rows committed
before it stay, and a rerun resumes after them.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy

from lrpflow.backend import to_numpy
from lrpflow.errors import ConfigError, LrpflowError, ShapeError, StoreError
from lrpflow.store.faults import checkpoint
from lrpflow.store.files import abandon, close_quietly, publish, remove_quietly, write_error
from lrpflow.store.layout import (
    _CHUNK_CACHE, _FLOAT_FILL, _IGNORED_KEYS, _LIBVER, _RESERVED, COMPRESSIONS, SCHEMA,
    SCHEMA_VERSION, StoreLayout, _attr_value, _chunk_plan, _create_datasets, _dtype_name, _final, _fsync, _now,
    _partial, config_diff, config_text, cut_token, damaged, fixed, read_attr,
)
from lrpflow.store.reader import StoreReader
from lrpflow.store.recovery import repair_eoa, salvage, salvageable, usable_rows

logger = logging.getLogger("lrpflow.store")


class ResultStore(StoreReader):
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

    #: the open file the low-level dataset ids of :meth:`_row_writers` belong to, and those ids
    _writers_for: Any = None
    _writers: dict[str, Any] = {}

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, input_shape: Sequence[int], n_classes: int,
               ledger_nodes: Sequence[str] = (), intermediate: Mapping[str, Sequence[int]] | None = None,
               metrics: Sequence[str] = (), config: Any = None, model_sha256: str | None = None,
               backend: str | None = None, dtype: Any = None, attrs: Mapping[str, Any] | None = None,
               expected_rows: int | None = None, target_width: int = 1, chunk_rows: int | None = None,
               compression: str | None = "gzip", compression_opts: Any = None, relevance_dtype: Any = "float32",
               resume: bool = True, overwrite: bool = False, ignore_config_keys: Sequence[str] = (),
               source: bool = False, curves: Mapping[str, int] | None = None, ids: bool = False,
               tokens: bool = False) -> ResultStore:
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
        source : bool
            Store a ``source`` dataset: the file each row was read from (text; every batch
            then gives ``source=``).
        curves : mapping of str to int, optional
            Metrics with a per-sample curve of that length, stored as ``metrics/<name>_curve``
            (every batch then gives ``metrics={"<name>_curve": (n, length)}``).
        ids : bool
            Token-id inputs: store ``input_ids`` and ``mask`` (1 on real tokens, 0 on padding),
            both shaped like the relevance (every batch then gives ``input_ids=`` and ``mask=``).
        tokens : bool
            Also store ``tokens``, the text of every token (``tokens=`` per batch, str (n, T));
            a token longer than 128 bytes of UTF-8 is cut at a character boundary.

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
                             target_width, relevance_dtype, source, tuple((curves or {}).items()), ids, tokens)

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
                a["schema"] = fixed(SCHEMA)
                a["schema_version"] = SCHEMA_VERSION
                a["config"] = fixed(text)
                a["lrpflow_version"] = fixed(str(getattr(lrpflow, "__version__", "unknown")))
                a["backend"] = fixed(str(run_backend) if run_backend is not None else "")
                a["dtype"] = fixed(_dtype_name(run_dtype) if run_dtype is not None else "")
                a["model_sha256"] = fixed(str(sha) if sha is not None else "")
                a["created"] = fixed(_now())
                a["input_shape"] = numpy.asarray(layout.input_shape, dtype=numpy.int64)
                a["n_classes"] = layout.n_classes
                a["target_width"] = layout.target_width
                a["relevance_dtype"] = fixed(layout.relevance_dtype)
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
                                        compression_opts=opts if comp else None, shuffle=comp is not None)
                    props[field]["fillvalue"] = (-1 if dt.kind == "i" else b"" if dt.kind == "S" else
                                                 _FLOAT_FILL if not large else 0.0)
                _create_datasets(f, layout, props)
                a["rows_complete"] = 0
            _fsync(tmp)
            publish(tmp, partial)
        except LrpflowError:
            remove_quietly(tmp)
            raise
        except (OSError, RuntimeError) as err:
            remove_quietly(tmp)
            raise write_error(partial, err, "creating it") from err
        except BaseException:
            remove_quietly(tmp)
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
        if mode == "r":
            return super().open(path, "r")
        final, partial = _final(path), _partial(_final(path))
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
            repair_eoa(partial)
        except LrpflowError:
            raise
        except PermissionError as err:
            raise write_error(partial, err, "reopening it to resume") from err
        except OSError as err:
            raise StoreError(f"cannot resume {partial}: {err}") from err
        try:
            f = h5py.File(partial, "r")
        except Exception as err:  # noqa: BLE001 - a damaged header: OSError and others
            raise StoreError(f"cannot resume {partial}: not an HDF5 file or its header is damaged "
                             f"({type(err).__name__}: {err}); {salvageable(partial)}") from err
        try:
            probe = cls(f, partial, "r")
        except StoreError as err:
            f.close()
            raise StoreError(f"cannot resume: {err}; {salvageable(partial)}") from err
        except BaseException:
            f.close()
            raise
        with probe:
            if check is not None:
                probe._check_same(*check)
            with damaged(partial, "the chunk index"):
                usable = usable_rows(probe.file, probe._specs, probe.rows_complete, probe.chunk_rows)
        if usable is not None:
            salvage(partial, usable, probe.layout)
        try:
            f = h5py.File(partial, "a", libver=_LIBVER, rdcc_nbytes=_CHUNK_CACHE)
        except PermissionError as err:
            raise write_error(partial, err, "reopening it to resume") from err
        except Exception as err:  # noqa: BLE001
            if "errno = 13" in str(err) or "errno = 30" in str(err) or "Permission denied" in str(err):
                raise write_error(partial, err, "reopening it to resume") from err
            raise StoreError(f"cannot open unfinished store {partial} for writing ({type(err).__name__}: {err}); "
                             f"{salvageable(partial)}") from err
        try:
            store = cls(f, partial, "a")
            with store._writing("resuming it"):
                store._truncate()
                if count_resume:
                    f.attrs["resumes"] = int(read_attr(f, "resumes", 0)) + 1
                f.attrs["complete"] = False  # a partial file marked complete: finish() was killed before its rename
                f.flush()
        except BaseException:
            close_quietly(f)
            raise
        return store

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
            d = f[h5path]
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
        f = self._require_writable()
        if self._writers_for is not f and self.complete:  # read once per open file: only finish() completes a store
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

    def _writing(self, doing: str) -> Any:
        """Context: an OS/HDF5 failure closes the store and becomes a :class:`StoreError` (see :func:`write_error`)."""
        import contextlib

        @contextlib.contextmanager
        def guard() -> Any:
            try:
                yield
            except LrpflowError:
                raise
            except Exception as err:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... on failure
                if self._file is not None:
                    file, self._file, self._pending = self._file, None, {}
                    writers, self._writers, self._writers_for = list(self._writers.values()), {}, None
                    abandon(file, writers)
                raise write_error(self._path, err, doing) from err

        return guard()

    def _write(self, data: Mapping[str, numpy.ndarray]) -> None:
        """Write rows at the counter: resize, write, flush; then bump the counter and flush."""
        f = self._require_writable()
        n = int(next(iter(data.values())).shape[0])
        start, stop = self._rows, self._rows + n
        with self._writing(f"writing rows {start}:{stop}"):
            ids = self._row_writers(f)
            for field, (h5path, shape, dt, _) in self._specs.items():
                dsid = ids[h5path]
                dsid.set_extent((stop, *shape))
                rows = numpy.ascontiguousarray(data[field], dtype=dt)
                space = dsid.get_space()
                space.select_hyperslab((start,) + (0,) * len(shape), (n, *shape))
                dsid.write(h5py.h5s.create_simple(rows.shape), space, rows)
                dsid.flush()  # a write error (a full disk) surfaces here; f.flush() would not raise it (checked)
            checkpoint("write", self._path)
            f.flush()  # every row is in the file ...
            checkpoint("flush", self._path)
            self._commit(stop)  # ... before the counter says so
        logger.debug("%s: rows %d:%d written", self._path, start, stop)

    def _row_writers(self, f: h5py.File) -> dict[str, Any]:
        """Low-level ids of the row datasets, opened once per file without a chunk cache.

        Rows arrive in whole chunks (``chunk_rows``) or go straight to unfiltered chunks, so a
        cache only holds memory (an open dataset keeps up to 32 MiB); h5py's high-level
        indexing costs ~0.3 ms a call, a hyperslab write a fraction of it.
        """
        if self._writers_for is not f:
            dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            dapl.set_chunk_cache(0, 0, 1.0)
            self._writers = {h5path: h5py.h5d.open(f.id, h5path.encode("utf-8"), dapl=dapl)
                             for h5path, *_ in self._specs.values()}
            self._writers_for = f
        return self._writers

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
                elif field == "source":
                    raise ConfigError("append(): the store keeps the source file of every row; give source=")
                else:
                    raise ConfigError(f"append(): the batch has no {field!r} (the store declares it)")
            if field == "tokens":  # display text: cut, never refused
                arr = numpy.array([[cut_token(str(t), dt.itemsize) for t in row] for row in flat[field]], dtype=dt)
            elif dt.kind == "S":  # text: one UTF-8 str per row, at most dt.itemsize bytes
                encoded = [str(v).encode("utf-8") for v in flat[field]]
                long_ = [v for v in encoded if len(v) > dt.itemsize]
                if long_:
                    raise ConfigError(f"append() to {self._path}: a {field!r} entry is longer than {dt.itemsize} "
                                      f"bytes of UTF-8: {long_[0][:80]!r}...")
                arr = numpy.array(encoded, dtype=dt)
            else:
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
        with self._writing("finishing it"):
            expected = int(read_attr(f, "expected_rows", -1))
            if expected >= 0 and expected != self._rows:
                logger.warning("%s: finishing with %d rows, %d were expected", self._path, self._rows, expected)
            f.attrs["complete"] = True
            f.attrs["finished"] = fixed(_now())
            f.flush()
            checkpoint("finish", self._path)
            self.close()
            final = self.final_path
            if self._path != final:
                _fsync(self._path)
                os.replace(self._path, final)
                _fsync(os.path.dirname(os.path.abspath(final)))
                checkpoint("rename", final)
        logger.info("result store %s complete (%d rows)", final, self._rows)
        self._path, self._mode = final, "r"
        self._file = h5py.File(final, "r", rdcc_nbytes=_CHUNK_CACHE)
        return final
