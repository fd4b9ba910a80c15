"""What an explanation starts from: target specs and the initial relevance R_init.

A target is ``"pred"`` (the argmax), ``"true"`` (needs labels), a class index, per-sample
class indices (N,), ``"topk:K"`` (the sum of the K best logits) or an explicit R_init
(N, C); ``"each:topk:K"`` and ``targets=[...]`` ask for one map per target. ``init`` is
``"logit"`` (R_init = the target logits, the toolbox's convention) or ``"one"`` (1 at
the target).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.errors import ConfigError, DataFormatError, ShapeError

INITS = ("logit", "one")

_TOPK = re.compile(r"^\s*topk\s*:\s*(\d+)\s*$", re.IGNORECASE)
_EACH_TOPK = re.compile(r"^\s*each\s*:\s*topk\s*:\s*(\d+)\s*$", re.IGNORECASE)


def is_multi_target(target: Any, targets: Any = None) -> bool:
    """Whether a call asks for one map per target (``targets=[...]`` or ``"each:topk:K"``)."""
    return targets is not None or (isinstance(target, str) and _EACH_TOPK.match(target) is not None)


def split_targets(logits: Any, target: Any, targets: Sequence[Any] | None) -> list[Any]:
    """The single-target specs of a multi-target call, in order.

    ``targets=[t1, t2, ...]``: each item is any single target (``"pred"``, a class, per-sample
    classes (N,), ...). ``"each:topk:K"``: the k-th best class of every sample, k = 1..K
    (per-sample class indices from the logits).
    """
    if targets is not None:
        if isinstance(targets, str) or not isinstance(targets, Sequence) or len(targets) == 0:
            raise ConfigError(f"targets must be a non-empty list of targets, got {targets!r}")
        for t in targets:
            if isinstance(t, str) and (_TOPK.match(t) or _EACH_TOPK.match(t)):
                raise ConfigError(f"targets: {t!r} is not a single target; give 'each:topk:K' as target= instead")
        return list(targets)
    k = int(_EACH_TOPK.match(target).group(1))  # type: ignore[union-attr]
    c = logits.shape[-1]
    if not 1 <= k <= c:
        raise ConfigError(f"target {target!r}: K must be between 1 and the number of classes {c}")
    xp = get_namespace(logits)
    idx = xp.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [xp.ascontiguousarray(idx[:, j]) for j in range(k)]


def initial_relevance(logits: Any, target: Any, init: str, labels: Any = None) -> tuple[Any, Any]:
    """``(R_init, target)`` for a target spec; see :func:`explain` for the forms a target takes."""
    xp = get_namespace(logits)
    n, c = logits.shape[0], logits.shape[-1]
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got {init!r}")

    def one_hot(idx: Any) -> Any:
        return (xp.arange(c)[None, :] == idx[:, None]).astype(logits.dtype)

    if isinstance(target, str) and target.lower() == "pred":
        idx = logits.argmax(axis=1)
        mask = one_hot(idx)
    elif isinstance(target, str) and target.lower() == "true":
        if labels is None:
            raise ConfigError("target 'true' needs labels=")
        lab = xp.asarray(labels)
        if lab.ndim == 2 and lab.shape == (n, c):
            lab = lab.argmax(axis=1)
        if lab.shape != (n,):
            raise ShapeError(f"labels must have shape ({n},) or ({n}, {c}), got {tuple(lab.shape)}")
        idx = lab.astype(numpy.int64)
        _check_classes(idx, c)
        mask = one_hot(idx)
    elif isinstance(target, str) and _TOPK.match(target):
        k = int(_TOPK.match(target).group(1))  # type: ignore[union-attr]
        if not 1 <= k <= c:
            raise ConfigError(f"target {target!r}: K must be between 1 and the number of classes {c}")
        idx = xp.argsort(-logits, axis=1)[:, :k]
        mask = one_hot(idx[:, 0])
        for j in range(1, k):
            mask = mask + one_hot(idx[:, j])
    elif isinstance(target, str):
        raise ConfigError(f"unknown target {target!r}; expected 'pred', 'true', 'topk:K', 'each:topk:K', a class index or an array")
    elif isinstance(target, (int, numpy.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < c:
            raise ConfigError(f"target class {target} out of range: the model has {c} outputs")
        idx = xp.full((n,), int(target), dtype=numpy.int64)
        mask = one_hot(idx)
    else:
        arr = xp.asarray(target)
        if arr.ndim == 1 and numpy.issubdtype(arr.dtype, numpy.integer):
            if arr.shape != (n,):
                raise ShapeError(f"per-sample target classes must have shape ({n},), got {tuple(arr.shape)}")
            _check_classes(arr, c)
            idx = arr
            mask = one_hot(idx)
        else:
            if tuple(arr.shape) != tuple(logits.shape):
                raise ShapeError(f"explicit R_init must have the logits' shape {tuple(logits.shape)}, got {tuple(arr.shape)}")
            r = arr.astype(logits.dtype)
            if not to_numpy(xp.isfinite(r).all()):  # an explicit host read, before the backward pass
                raise DataFormatError("explicit R_init contains NaN or Inf")
            return r, xp.full((n,), -1, dtype=numpy.int64)
    r = logits * mask if init == "logit" else mask
    return r, idx


def _check_classes(idx: Any, c: int) -> None:
    if not idx.size:
        return
    xp = get_namespace(idx)
    lo, hi = (int(v) for v in to_numpy(xp.stack([idx.min(), idx.max()])))  # one explicit host read
    if lo < 0 or hi >= c:
        raise ConfigError(f"target classes must lie in [0, {c}), got values from {lo} to {hi}")


def rows_of(value: Any, n: int, what: str) -> bool:
    """True if ``value`` holds one row per sample (an array to slice with the batch)."""
    if value is None or isinstance(value, (str, int, numpy.integer)):
        return False
    shape = getattr(value, "shape", None)
    if shape is None:
        value = numpy.asarray(value)
        shape = value.shape
    if len(shape) == 0:
        return False
    if shape[0] != n:
        raise ShapeError(f"{what} must have one row per sample ({n}), got shape {tuple(shape)}")
    return True
