"""Results read back as objects, and explanations written as stores: one world for CLI and API.

``lrpflow.load_results("results.h5")`` gives a :class:`Results` with the fields as
attributes (``.relevance``, ``.logits``, ``.target``, ``.label``, ``.index``,
``.conservation``, ``.source``, ``.metrics``, ``.ledger``, ``.intermediate``) and the run's
``.config``; ``for batch in results.batches(256)`` streams it with bounded memory.
``write_results(explanation, "results.h5")`` (also ``Explanation.to_results``) writes an
API explanation as the very store a CLI run writes.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy

from lrpflow.errors import ConfigError
from lrpflow.store.reader import StoreReader

#: batch size of ``iter(results)``
DEFAULT_BATCH = 256


class Results:
    """The rows of a result store (or a batch of them): fields as attributes, the run's metadata.

    Fields are read from the file when first used (a :class:`~lrpflow.errors.StoreError`
    names the file if it is damaged); a batch from :meth:`batches` holds its rows in memory.

    Attributes
    ----------
    path : str
        The store file.
    rows : slice
        The store rows these results cover.
    config : dict
        The resolved configuration the run stored (``{}`` for a store written without one).
    attrs : dict
        Every root attribute (``model_sha256``, ``backend``, ``dtype``, ``method``, ...).
    """

    def __init__(self, path: str | os.PathLike[str], rows: slice | None = None,
                 _data: Mapping[str, numpy.ndarray] | None = None, _meta: Any = None) -> None:
        self.path = os.fspath(path)
        if _meta is None:
            with StoreReader.open(self.path) as store:
                _meta = (store.layout, store.attrs, store.config_dict, len(store), tuple(store.fields))
        self._layout, self.attrs, self.config, total, self._fields = _meta
        self.rows = rows if rows is not None else slice(0, total)
        self._data: dict[str, numpy.ndarray] = dict(_data or {})

    def __len__(self) -> int:
        return self.rows.stop - self.rows.start

    def __repr__(self) -> str:
        return f"<Results {self.path!r} rows {self.rows.start}:{self.rows.stop} fields {list(self._fields)}>"

    @property
    def fields(self) -> tuple[str, ...]:
        """The stored fields (``relevance``, ``metrics/<name>``, ``ledger/entering``, ...)."""
        return self._fields

    @property
    def method(self) -> str:
        """The LRP method the run used, as stored (empty if unknown)."""
        return str(self.attrs.get("method", ""))

    def _field(self, name: str) -> numpy.ndarray:
        if name not in self._data:
            with StoreReader.open(self.path) as store:
                self._data[name] = store.read([name], self.rows)[name]
        return self._data[name]

    @property
    def relevance(self) -> numpy.ndarray:
        """(n, *input_shape) relevance maps, in the model's layout."""
        return self._field("relevance")

    @property
    def logits(self) -> numpy.ndarray:
        """(n, C) model outputs."""
        return self._field("logits")

    @property
    def target(self) -> numpy.ndarray:
        """(n,) explained class, (n, K) for ``topk:K``, −1 for an explicit initial relevance."""
        return self._field("target")

    @property
    def label(self) -> numpy.ndarray:
        """(n,) true class, −1 where unknown."""
        return self._field("label")

    @property
    def index(self) -> numpy.ndarray:
        """(n,) the dataset row of each result."""
        return self._field("index")

    @property
    def conservation(self) -> numpy.ndarray:
        """(n,) relative conservation error |ΣR_in − ΣR_init| / |ΣR_init| (NaN if not computed)."""
        return self._field("conservation")

    @property
    def source(self) -> numpy.ndarray | None:
        """(n,) the file each row was read from (str), or None if the data did not come from files."""
        return self._field("source") if "source" in self._fields else None

    @property
    def input_ids(self) -> numpy.ndarray | None:
        """(n, T) token ids of text inputs (int64), or None for other data."""
        return self._field("input_ids") if "input_ids" in self._fields else None

    @property
    def mask(self) -> numpy.ndarray | None:
        """(n, T) True on real tokens, False on padding (text inputs), or None for other data."""
        return self._field("mask").astype(bool) if "mask" in self._fields else None

    @property
    def tokens(self) -> numpy.ndarray | None:
        """(n, T) the text of every token (str; from the user's vocabulary), or None if not stored."""
        return self._field("tokens") if "tokens" in self._fields else None

    @property
    def metrics(self) -> dict[str, numpy.ndarray]:
        """Metric name → (n,) per-sample values."""
        return {m: self._field(f"metrics/{m}") for m in self._layout.metrics}

    @property
    def intermediate(self) -> dict[str, numpy.ndarray]:
        """Node → (n, *shape) relevance stored at that node."""
        return {k: self._field(f"intermediate/{k}") for k, _ in self._layout.intermediate}

    @property
    def ledger(self) -> dict[str, Any]:
        """Node → :class:`~lrpflow.explain.LedgerEntry` of (n,) entering/leaving sums ({} if none stored)."""
        from lrpflow.explain import LedgerEntry

        if not self._layout.ledger_nodes:
            return {}
        enter, leave = self._field("ledger/entering"), self._field("ledger/leaving")
        return {node: LedgerEntry(enter[:, j], leave[:, j]) for j, node in enumerate(self._layout.ledger_nodes)}

    def batches(self, batch_size: int = DEFAULT_BATCH) -> Iterator[Results]:
        """Consecutive :class:`Results` of at most ``batch_size`` rows each, read one at a time."""
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size!r}")
        meta = (self._layout, self.attrs, self.config, 0, self._fields)
        with StoreReader.open(self.path) as store:
            for a in range(self.rows.start, self.rows.stop, int(batch_size)):
                rows = slice(a, min(self.rows.stop, a + int(batch_size)))
                yield Results(self.path, rows, store.read(list(store._specs), rows), meta)

    def __iter__(self) -> Iterator[Results]:
        """``for batch in results``: batches of :data:`DEFAULT_BATCH` rows."""
        return self.batches()


def load_results(path: str | os.PathLike[str]) -> Results:
    """Open a result store (a CLI run's ``results.h5``, or one written by :func:`write_results`).

    Parameters
    ----------
    path : str or path-like
        The store; an unfinished run's ``.partial`` store shows its complete rows.

    Returns
    -------
    Results
        Fields as attributes, read lazily; ``results.batches(n)`` streams them.

    Raises
    ------
    StoreError
        The file is not a readable store (the message names the damaged part).
    """
    return Results(path)


def write_results(explanation: Any, path: str | os.PathLike[str], *, label: Any = None, index: Any = None,
                  source: Sequence[str] | None = None, metrics: Mapping[str, Any] | None = None, config: Any = None,
                  model_sha256: str | None = None, overwrite: bool = False, input_ids: Any = None, mask: Any = None,
                  tokens: Any = None, **create: Any) -> str:
    """Write an :class:`~lrpflow.explain.Explanation` as a finished result store.

    Parameters
    ----------
    explanation : Explanation
        What ``explain()`` returned (relevance, logits, target, conservation, ledger, intermediate).
    path : str or path-like
        The store to write (e.g. ``results.h5``).
    label, index : array, optional
        (n,) true classes (default −1, unknown) and dataset rows (default 0..n-1).
    source : sequence of str, optional
        The file each row was read from; stored as the ``source`` dataset.
    metrics : mapping, optional
        Metric name → (n,) per-sample values (e.g. from :func:`lrpflow.evaluate.evaluate`).
    config : mapping or str, optional
        Stored as the ``config`` attribute (what :attr:`Results.config` returns).
    model_sha256 : str, optional
        Digest of the model file (:func:`lrpflow.store.sha256_file`).
    overwrite : bool
        Replace an existing store at ``path``.
    input_ids, mask, tokens : array, optional
        Token-id inputs (n, T) (relevance per token has the same shape), their padding mask
        (default: every token real) and the text of every token (str; needs ``input_ids``).
    **create
        Further keywords of :meth:`ResultStore.create` (``compression``, ``chunk_rows``, ``attrs``, ...).

    Returns
    -------
    str
        The path of the finished store; read it back with :func:`load_results`.
    """
    from lrpflow.backend import to_numpy
    from lrpflow.store.writer import ResultStore

    rel = to_numpy(explanation.relevance)
    target = to_numpy(explanation.target)
    metrics = {k: to_numpy(v) for k, v in (metrics or {}).items()}
    attrs = dict(create.pop("attrs", None) or {})
    if getattr(explanation, "method", "") and "method" not in attrs:
        attrs["method"] = explanation.method
    extras: dict[str, Any] = {"metrics": metrics}
    if label is not None:
        extras["label"] = label
    if index is not None:
        extras["index"] = index
    if source is not None:
        extras["source"] = list(source)
    if tokens is not None and input_ids is None:
        raise ConfigError("write_results(): tokens= needs input_ids=")
    if input_ids is not None:
        ids = numpy.asarray(to_numpy(input_ids))
        extras["input_ids"] = ids
        extras["mask"] = numpy.ones(ids.shape, dtype=numpy.int8) if mask is None else numpy.asarray(to_numpy(mask))
    if tokens is not None:
        extras["tokens"] = numpy.asarray(tokens, dtype=str)
    store = ResultStore.create(
        path, input_shape=rel.shape[1:], n_classes=to_numpy(explanation.logits).shape[1],
        ledger_nodes=list(explanation.ledger or {}),
        intermediate={k: tuple(to_numpy(v).shape[1:]) for k, v in (explanation.intermediate or {}).items()},
        metrics=list(metrics), config=config, model_sha256=model_sha256, attrs=attrs, expected_rows=len(rel),
        target_width=1 if target.ndim == 1 else target.shape[1], resume=False, overwrite=overwrite,
        source=source is not None, ids=input_ids is not None, tokens=tokens is not None, **create)
    with store:
        store.append(explanation, **extras)
        return store.finish()
