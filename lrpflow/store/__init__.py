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
    /input_ids, /mask       (N, T)             int64, int8      optional: token-id data and its padding mask
    /tokens                 (N, T)             UTF-8 text       optional: the text of every token
    /source                 (N,)               UTF-8 text       optional: the file of each row

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

The package, one concept per module: :mod:`~lrpflow.store.layout` (schema, layout,
attributes), :mod:`~lrpflow.store.reader` (:class:`StoreReader`, :func:`load`),
:mod:`~lrpflow.store.writer` (:class:`ResultStore`: create, append, finish, resume),
:mod:`~lrpflow.store.recovery` (crash repair), :mod:`~lrpflow.store.join`,
:mod:`~lrpflow.store.results` (:func:`load_results`, :func:`write_results`),
:mod:`~lrpflow.store.lock` (:class:`RunLock`, one run per directory) and
:mod:`~lrpflow.store.faults` (fault injection for the crash tests). Every damaged or
unwritable store raises :class:`~lrpflow.errors.StoreError`.
"""
from __future__ import annotations

from lrpflow.errors import StoreError
from lrpflow.store.join import join, join_main, joined_rows
from lrpflow.store.layout import (
    COMPRESSIONS, PARTIAL_SUFFIX, SCHEMA, SCHEMA_VERSION, StoreLayout, config_diff, config_text, flatten_keys,
    sha256_file,
)
from lrpflow.store.lock import RunLock
from lrpflow.store.reader import StoreReader, load
from lrpflow.store.recovery import _lookup3, repair_eoa
from lrpflow.store.results import Results, load_results, write_results
from lrpflow.store.writer import ResultStore

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "PARTIAL_SUFFIX", "COMPRESSIONS", "ResultStore", "StoreReader", "StoreLayout",
    "StoreError", "Results", "RunLock", "load", "load_results", "write_results", "join", "join_main", "joined_rows",
    "sha256_file", "config_text", "config_diff", "flatten_keys", "repair_eoa", "_lookup3",
]
