"""Built-in model and data readers/writers, registered like any plugin.

``load_model(path, format=None)`` picks a reader by name or by file suffix.
"""
from __future__ import annotations

import os
from typing import Any

from lrpflow.errors import ModelFormatError
from lrpflow.hookspecs import hookimpl
from lrpflow.io import toolbox_txt


@hookimpl
def lrpflow_register_model_readers(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("toolbox_txt", toolbox_txt.read, suffixes=(".txt",))


@hookimpl
def lrpflow_register_model_writers(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("toolbox_txt", toolbox_txt.write, suffixes=(".txt",))


def _pick(registry: Any, path: str, format: str | None, what: str) -> Any:
    if format is not None:
        return registry.get(format)
    suffix = os.path.splitext(path)[1].lower()
    found = registry.by_meta("suffixes", suffix)
    if not found:
        known = sorted({s for e in registry for s in e.meta.get("suffixes", ())})
        raise ModelFormatError(f"{path}: no {what} for suffix {suffix or '(none)'!r}; known suffixes: {', '.join(known)}; "
                               f"or pass format= one of {', '.join(registry.names())}")
    return found[0].impl


def load_model(path: str | os.PathLike[str], format: str | None = None, **options: Any) -> Any:
    """Read a model; the reader is chosen by ``format`` (a registered name) or by the file suffix."""
    from lrpflow.plugins import registries

    path = os.fspath(path)
    return _pick(registries().model_readers, path, format, "model reader")(path, **options)


def save_model(model: Any, path: str | os.PathLike[str], format: str | None = None, **options: Any) -> None:
    """Write a model; the writer is chosen by ``format`` or by the file suffix."""
    from lrpflow.plugins import registries

    path = os.fspath(path)
    _pick(registries().model_writers, path, format, "model writer")(model, path, **options)
