"""Pre-tokenised text: token-id sequences for language models (the ``tokens`` data reader, ``data=text``).

Files (the tokenizer is the user's; lrpflow reads ids, never text):

- ``.txt``: one sequence per line, whitespace-separated integer ids, lines of any length;
- ``.npy``: an integer ``(N, T)`` array;
- ``.npz``: ``ids`` (or ``data``) ``(N, T)``, optional ``mask`` ``(N, T)`` (1 = a real token) and ``labels``.

Shorter sequences are padded with ``pad_id`` to the longest one (or to ``length``); the source
carries ``mask`` (``(N, T)`` bool, True on real tokens) next to the ids.
"""
from __future__ import annotations

import os
from typing import Any

import numpy

from lrpflow.errors import DataFormatError
from lrpflow.io.source import ArraySource

#: at most this many ids in one file (the reader holds them in memory)
MAX_IDS = 1 << 28


def _pad(rows: list[numpy.ndarray], path: str, pad_id: int, length: int | None) -> tuple[numpy.ndarray, numpy.ndarray]:
    if not rows:
        raise DataFormatError(f"{path}: no sequences")
    t = max(len(r) for r in rows) if length is None else int(length)
    if t < 1:
        raise DataFormatError(f"{path}: sequences must hold at least one token")
    ids = numpy.full((len(rows), t), int(pad_id), dtype=numpy.int64)
    mask = numpy.zeros((len(rows), t), dtype=bool)
    for i, r in enumerate(rows):
        if len(r) > t:
            raise DataFormatError(f"{path}: sequence {i + 1} has {len(r)} tokens, more than length={t}")
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
    return ids, mask


def _check_ids(ids: numpy.ndarray, path: str) -> numpy.ndarray:
    if ids.ndim != 2:
        raise DataFormatError(f"{path}: token ids must be an (N, T) array, got shape {ids.shape}")
    if ids.dtype.kind == "f":
        if not numpy.isfinite(ids).all() or (ids != numpy.round(ids)).any():
            raise DataFormatError(f"{path}: token ids must be integers")
    elif ids.dtype.kind not in "iu":
        raise DataFormatError(f"{path}: token ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise DataFormatError(f"{path}: token ids must be ≥ 0, got {int(ids.min())}")
    return ids.astype(numpy.int64)


def read_tokens(path: str, pad_id: int = 0, length: int | None = None, key: str | None = None) -> ArraySource:
    """Token-id sequences from ``.txt``/``.npy``/``.npz`` (module doc), padded; ``source.mask`` marks real tokens."""
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: no such file")
    if os.path.getsize(path) > 8 * MAX_IDS:
        raise DataFormatError(f"{path}: larger than the token reader's limit ({8 * MAX_IDS} bytes)")
    suffix = os.path.splitext(path)[1].lower()
    labels = None
    if suffix == ".txt":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(numpy.array([int(t) for t in line.split()], dtype=numpy.int64))
                except ValueError:
                    raise DataFormatError(f"{path}, line {n}: expected whitespace-separated integer token ids") from None
                if rows[-1].size and rows[-1].min() < 0:
                    raise DataFormatError(f"{path}, line {n}: token ids must be ≥ 0")
        ids, mask = _pad(rows, path, pad_id, length)
    elif suffix in (".npy", ".npz"):
        try:
            data = numpy.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file
            raise DataFormatError(f"{path}: not a numpy file: {err}") from err
        mask = None
        if suffix == ".npz":
            with data:
                k = key or ("ids" if "ids" in data.files else "data" if "data" in data.files else None)
                if k is None or k not in data.files:
                    raise DataFormatError(f"{path}: no array {key or 'ids/data'}; it has {', '.join(data.files)}")
                ids = data[k]
                mask = numpy.asarray(data["mask"], dtype=bool) if "mask" in data.files else None
                labels = data["labels"] if "labels" in data.files else None
        else:
            ids = data
        ids = _check_ids(numpy.asarray(ids), path)
        if mask is not None and mask.shape != ids.shape:
            raise DataFormatError(f"{path}: mask of shape {mask.shape} does not match ids of shape {ids.shape}")
        if mask is None:
            mask = numpy.ones(ids.shape, dtype=bool)
        if length is not None and int(length) != ids.shape[1]:
            ids, mask = _pad([r[m] for r, m in zip(ids, mask)], path, pad_id, length)
    else:
        raise DataFormatError(f"{path}: token ids are read from .txt, .npy or .npz files, got {suffix or 'no suffix'!r}")
    source = ArraySource(ids, path, labels=labels)
    source.mask = mask  # type: ignore[attr-defined]
    return source
