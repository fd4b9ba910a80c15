"""Argument checks shared by the explanation metrics (:mod:`lrpflow.evaluate`, :mod:`lrpflow.perturbation`)."""
from __future__ import annotations

import numbers
from types import ModuleType
from typing import Any

import numpy

from lrpflow.backend import get_namespace
from lrpflow.errors import ConfigError, ShapeError
from lrpflow.graph import Model




def _check_model(model: Any) -> None:
    if not isinstance(model, Model):
        raise ConfigError(f"model must be an lrpflow Model, got {type(model).__name__}")


def _int_param(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_float(xp: ModuleType, a: Any, name: str) -> Any:
    try:
        a = xp.asarray(a)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} cannot be read as an array: {err}") from err
    if a.dtype.kind != "f":
        a = a.astype(numpy.float64)
    return a


def _flat(a: Any) -> Any:
    return a.reshape(a.shape[0], -1)


def _relevance_of(explanation: Any, name: str = "explanation") -> Any:
    r = getattr(explanation, "relevance", explanation)
    if not hasattr(r, "shape") or len(r.shape) < 2:
        raise ShapeError(f"{name}: expected an Explanation or a relevance batch (N, ...), got {type(explanation).__name__}")
    return r


def _batch(a: Any, name: str) -> Any:
    xp = get_namespace(a)
    a = _as_float(xp, a, name)
    if a.ndim < 2:
        raise ShapeError(f"{name} must be a batch (N, ...) with at least one feature axis, got shape {tuple(a.shape)}")
    return a

