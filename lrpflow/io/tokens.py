"""Pre-tokenised text: token-id sequences for language models (the ``tokens`` data reader, ``data=text``).

Files (the tokenizer is the user's; lrpflow reads ids, never text):

- ``.txt``: one sequence per line, whitespace-separated integer ids, lines of any length;
- ``.npy``: an integer ``(N, T)`` array;
- ``.npz``: ``ids`` (or ``data``) ``(N, T)``, optional ``mask`` ``(N, T)`` (1 = a real token), ``labels``
  and ``tokens`` ``(N, T)`` (the text of every token, a unicode array).

Shorter sequences are padded with ``pad_id`` to the longest one (or to ``length``); the source
carries ``mask`` (``(N, T)`` bool, True on real tokens) next to the ids, and ``tokens`` (the
text of each token, str ``(N, T)``) when the ``.npz`` holds them or a vocabulary is given
(``vocab=``: your tokenizer's ``vocab.txt``, ``vocab.json`` or ``tokenizer.json``, see
:func:`read_vocab`). The pipeline stores ids, mask and tokens next to the relevance.
"""
from __future__ import annotations

import os
from typing import Any

import numpy

from lrpflow.errors import DataFormatError
from lrpflow.io.source import ArraySource

#: at most this many ids in one file (the reader holds them in memory)
MAX_IDS = 1 << 28
#: largest vocabulary file read (bytes); the biggest public tokenizers are ~20 MB
MAX_VOCAB_BYTES = 256 << 20


def read_vocab(path: str) -> numpy.ndarray:
    """The text of every token id, from a tokenizer's vocabulary file: ``vocab[id]`` (str array).

    - ``.txt``: one token per line, the line number (from 0) is the id (BERT's ``vocab.txt``);
    - ``.json``: ``{"token": id, ...}`` (GPT-2's ``vocab.json``), or a Hugging Face ``tokenizer.json``
      (``model.vocab`` as that mapping or as ``[[token, score], ...]`` by id, plus ``added_tokens``).

    Ids the file does not name read as ``"[<id>]"``.
    """
    import json

    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: no such vocabulary file")
    if os.path.getsize(path) > MAX_VOCAB_BYTES:
        raise DataFormatError(f"{path}: larger than the vocabulary limit ({MAX_VOCAB_BYTES} bytes)")
    suffix = os.path.splitext(path)[1].lower()
    pairs: list[tuple[str, int]]
    if suffix == ".txt":
        with open(path, encoding="utf-8", newline="") as f:
            pairs = [(line.rstrip("\r\n"), i) for i, line in enumerate(f)]
    elif suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (ValueError, UnicodeDecodeError) as err:
            raise DataFormatError(f"{path}: not a JSON vocabulary: {err}") from err
        pairs = _json_vocab(doc, path)
    else:
        raise DataFormatError(f"{path}: vocabularies are read from .txt or .json files, got {suffix or 'no suffix'!r}")
    if not pairs:
        raise DataFormatError(f"{path}: the vocabulary is empty")
    size = max(i for _, i in pairs) + 1
    if size > 4 * len(pairs) + 1024:  # sparse ids would allocate far beyond the file
        raise DataFormatError(f"{path}: token ids up to {size - 1} for {len(pairs)} tokens; expected dense ids")
    vocab = numpy.array([f"[{i}]" for i in range(size)], dtype=object)
    for token, i in pairs:
        vocab[i] = token
    return vocab


def _json_vocab(doc: Any, path: str) -> list[tuple[str, int]]:
    """(token, id) pairs of a ``vocab.json`` mapping or a ``tokenizer.json`` document."""
    def checked(token: Any, i: Any, where: str) -> tuple[str, int]:
        if not isinstance(token, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise DataFormatError(f"{path}: {where}: expected a token (text) and an id (integer ≥ 0), "
                                  f"got {token!r}: {i!r}")
        return token, i

    if isinstance(doc, dict) and isinstance(doc.get("model"), dict) and "vocab" in doc["model"]:
        vocab = doc["model"]["vocab"]
        if isinstance(vocab, dict):
            pairs = [checked(t, i, "model.vocab") for t, i in vocab.items()]
        elif isinstance(vocab, list):  # Unigram: [[token, score], ...] in id order
            pairs = []
            for i, entry in enumerate(vocab):
                if not isinstance(entry, list) or not entry:
                    raise DataFormatError(f"{path}: model.vocab[{i}]: expected [token, score], got {entry!r}")
                pairs.append(checked(entry[0], i, f"model.vocab[{i}]"))
        else:
            raise DataFormatError(f"{path}: model.vocab must be a mapping or a list, got {type(vocab).__name__}")
        for k, added in enumerate(doc.get("added_tokens") or []):
            if not isinstance(added, dict):
                raise DataFormatError(f"{path}: added_tokens[{k}]: expected an object")
            pairs.append(checked(added.get("content"), added.get("id"), f"added_tokens[{k}]"))
        return pairs
    if isinstance(doc, dict):
        return [checked(t, i, f"token {t!r}") for t, i in doc.items()]
    raise DataFormatError(f"{path}: expected a {{token: id}} mapping or a tokenizer.json document, "
                          f"got a JSON {type(doc).__name__}")


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


def read_tokens(path: str, pad_id: int = 0, length: int | None = None, key: str | None = None,
                vocab: str | None = None) -> ArraySource:
    """Token-id sequences from ``.txt``/``.npy``/``.npz`` (module doc), padded; ``source.mask`` marks real tokens,
    ``source.tokens`` (or None) holds the text of every token (from the ``.npz`` or the ``vocab`` file)."""
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: no such file")
    if os.path.getsize(path) > 8 * MAX_IDS:
        raise DataFormatError(f"{path}: larger than the token reader's limit ({8 * MAX_IDS} bytes)")
    suffix = os.path.splitext(path)[1].lower()
    labels = tokens = None
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
                tokens = data["tokens"] if "tokens" in data.files else None
        else:
            ids = data
        ids = _check_ids(numpy.asarray(ids), path)
        if mask is not None and mask.shape != ids.shape:
            raise DataFormatError(f"{path}: mask of shape {mask.shape} does not match ids of shape {ids.shape}")
        if mask is None:
            mask = numpy.ones(ids.shape, dtype=bool)
        if tokens is not None:
            if tokens.shape != ids.shape or tokens.dtype.kind != "U":
                raise DataFormatError(f"{path}: tokens must be a unicode array shaped like the ids {ids.shape}, "
                                      f"got {tokens.dtype} {tokens.shape}")
        if length is not None and int(length) != ids.shape[1]:
            if tokens is not None:
                tokens, _ = _pad_text([r[m] for r, m in zip(tokens, mask)], length)
            ids, mask = _pad([r[m] for r, m in zip(ids, mask)], path, pad_id, length)
    else:
        raise DataFormatError(f"{path}: token ids are read from .txt, .npy or .npz files, got {suffix or 'no suffix'!r}")
    if vocab is not None:
        table = read_vocab(str(vocab))
        if ids.size and int(ids.max()) >= len(table):
            raise DataFormatError(f"{path}: token id {int(ids.max())} is not in the vocabulary {vocab} "
                                  f"({len(table)} tokens)")
        tokens = table[ids]
    source = ArraySource(ids, path, labels=labels)
    source.mask = mask  # type: ignore[attr-defined]
    source.tokens = None if tokens is None else numpy.asarray(tokens, dtype=object)  # type: ignore[attr-defined]
    return source


def _pad_text(rows: list[numpy.ndarray], length: int) -> tuple[numpy.ndarray, None]:
    out = numpy.full((len(rows), int(length)), "", dtype=object)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[: int(length)]
    return out, None
