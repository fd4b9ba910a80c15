"""Built-in model and data readers/writers, registered like any plugin.

Models: ``load_model(path, format=None)`` / ``save_model(model, path, format=None)``
pick a reader/writer by registered name (``format=``) or by file suffix:

==================  =========================  =====================================
name                suffixes                   what
==================  =========================  =====================================
``toolbox_txt``     ``.txt``                   the toolbox's plain text (current + legacy)
``toolbox_pickle``  ``.nn .pickle`` (none)     the toolbox's pickles, restricted unpickler
``toolbox_mat``     ``.mat``                   the toolbox's Matlab (MCOS) models
``native``          ``.h5 .hdf5``              lrpflow's HDF5 format (any DAG)
==================  =========================  =====================================

Data: ``open_data(path)`` returns a lazy :class:`DataSource` (``len``, ``shape``,
``source[a:b]``, ``source.batches(n)``, ``labels``); ``load_data(path)`` reads it whole;
``save_data(x, path)`` writes. Readers: ``npy``, ``npz``, ``mat`` (key ``data``), ``txt``,
``idx`` (MNIST ``*-ubyte``, ``.gz``), ``images`` (a file, a folder or a glob), and the
bundled ``digits`` dataset (no file needed: ``load_data("digits")``).

A data reader is ``read(path, **options) -> ndarray | DataSource``. Registrations may carry
``suffixes=``, ``no_suffix=True`` (takes files without a suffix), ``patterns=`` (file-name
globs, e.g. ``"*-ubyte"``), ``directories=True`` and ``globs=True`` (the reader takes
folders / glob patterns) and ``dataset=True`` (a named dataset that needs no file).
Unknown reader options are an error naming them, never silently ignored.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Any

import numpy

from lrpflow.errors import DataFormatError, LrpflowError, ModelFormatError
from lrpflow.hookspecs import hookimpl
from lrpflow.io import arrays, datasets, idx, images, native, tokens, toolbox_mat, toolbox_pickle, toolbox_txt
from lrpflow.io.canonize import fold_batchnorm
from lrpflow.io.source import ArraySource, Batch, DataSource, Preprocess, as_source, attach_labels

__all__ = [
    "load_model", "save_model", "load_data", "save_data", "open_data",
    "DataSource", "ArraySource", "Batch", "Preprocess", "fold_batchnorm",
]


@hookimpl
def lrpflow_register_model_readers(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("toolbox_txt", toolbox_txt.read, suffixes=(".txt",))
    registry.add("toolbox_pickle", toolbox_pickle.read, aliases=("pickle", "pickled", "nn"),
                 suffixes=(".nn", ".pickle", ".pickled"), no_suffix=True)
    registry.add("toolbox_mat", toolbox_mat.read, suffixes=(".mat",))
    registry.add("native", native.read, aliases=("lrpflow", "hdf5"), suffixes=(".h5", ".hdf5"))


@hookimpl
def lrpflow_register_model_writers(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("toolbox_txt", toolbox_txt.write, suffixes=(".txt",))
    registry.add("toolbox_pickle", toolbox_pickle.write, aliases=("pickle", "pickled", "nn"),
                 suffixes=(".nn", ".pickle", ".pickled"), no_suffix=True)
    registry.add("toolbox_mat", toolbox_mat.write, suffixes=(".mat",))
    registry.add("native", native.write, aliases=("lrpflow", "hdf5"), suffixes=(".h5", ".hdf5"))


@hookimpl
def lrpflow_register_data_readers(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("npy", arrays.read_npy, suffixes=(".npy",))
    registry.add("npz", arrays.read_npz, suffixes=(".npz",))
    registry.add("mat", arrays.read_mat, suffixes=(".mat",))
    registry.add("txt", arrays.read_txt, aliases=("text",), suffixes=(".txt",))
    registry.add("idx", idx.read_idx, aliases=("mnist_idx", "ubyte"), patterns=idx.PATTERNS)
    registry.add("images", images.read_images, aliases=("image",), suffixes=images.SUFFIXES,
                 directories=True, globs=True)
    registry.add("digits", datasets.read_digits, dataset=True)
    registry.add("tokens", tokens.read_tokens, aliases=("token_ids",))


@hookimpl
def lrpflow_register_data_writers(registry):  # noqa: ANN001 - typed in the hookspec
    registry.add("npy", arrays.write_npy, suffixes=(".npy",))
    registry.add("npz", arrays.write_npz, suffixes=(".npz",))
    registry.add("mat", arrays.write_mat, suffixes=(".mat",))
    registry.add("txt", arrays.write_txt, aliases=("text",), suffixes=(".txt",))
    registry.add("idx", idx.write_idx, aliases=("mnist_idx", "ubyte"), patterns=idx.PATTERNS)
    registry.add("images", images.write_image, aliases=("image",),
                 suffixes=(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))


def _suffix_list(registry: Any) -> str:
    found = sorted({s for e in registry for s in e.meta.get("suffixes", ())})
    return ", ".join(found) + (", (none)" if any(e.meta.get("no_suffix") for e in registry) else "")


def _pick(registry: Any, path: str, format: str | None, what: str, error: type[LrpflowError] = ModelFormatError,
          data: bool = False) -> Any:
    """The implementation for ``format`` (a name) or else for the path: pattern, folder/glob, suffix."""
    if format is not None:
        return registry.get(format)
    name = os.path.basename(path.rstrip("/\\")).lower()
    for e in registry:
        if any(fnmatch.fnmatchcase(name, p.lower()) for p in e.meta.get("patterns", ())):
            return e.impl
    if data:
        if os.path.isdir(path):
            found = [e for e in registry if e.meta.get("directories")]
            if found:
                return found[0].impl
        elif not os.path.exists(path):
            if any(c in path for c in "*?["):
                found = [e for e in registry if e.meta.get("globs")]
                if found:
                    return found[0].impl
            if path in registry and registry.entry(path).meta.get("dataset"):
                return registry.get(path)
    suffix = os.path.splitext(name)[1]
    found = registry.by_meta("suffixes", suffix) if suffix else [e for e in registry if e.meta.get("no_suffix")]
    if not found:
        raise error(f"{path}: no {what} for suffix {suffix or '(none)'!r}; known suffixes: {_suffix_list(registry)}; "
                    f"or pass format= one of {', '.join(registry.names())}")
    return found[0].impl


def _call(fn: Any, error: type[LrpflowError], path: str, options: dict[str, Any], *first: Any) -> Any:
    """``fn(*first, path, **options)``; a TypeError from unknown options becomes ``error`` naming them."""
    if options:
        import inspect

        try:
            inspect.signature(fn).bind(*first, path, **options)
        except TypeError as err:
            raise error(f"{path}: invalid options {sorted(options)} for {getattr(fn, '__module__', '')}."
                        f"{getattr(fn, '__qualname__', fn)}: {err}") from None
        except ValueError:  # no signature (a builtin or C function): let the call decide
            pass
    return fn(*first, path, **options)


def _by_content(registry: Any, path: str, reader: Any) -> tuple[Any, list[str]]:
    """Among model readers sharing the path's suffix, the one whose ``sniff(path)`` recognises the file.

    A registration may carry ``sniff=`` (a cheap content test, e.g. the Keras reader's "HDF5
    with a ``model_config`` attribute") and ``describe=`` (the format in words). Without a
    match the first reader without a sniff reads the file (``.h5``: the native format); its
    error then also names the formats the sniffing readers looked for.
    """
    suffix = os.path.splitext(os.path.basename(path.rstrip("/\\")).lower())[1]
    found = registry.by_meta("suffixes", suffix) if suffix else []
    if len(found) < 2:
        return reader, []
    for e in found:
        sniff = e.meta.get("sniff")
        if sniff is not None and sniff(path):
            return e.impl, []
    plain = [e for e in found if e.meta.get("sniff") is None]
    others = [str(e.meta.get("describe", e.name)) for e in found if e.meta.get("sniff") is not None]
    return (plain[0].impl if plain else reader), others


def load_model(path: str | os.PathLike[str], format: str | None = None, *, fold_batchnorm: bool | None = None,
               **options: Any) -> Any:
    """Read a model; the reader is chosen by ``format`` (a registered name), else by the file suffix
    and, where several readers share the suffix (``.h5``), by content (see :func:`_by_content`).

    ``fold_batchnorm``: merge every BatchNorm into the Conv/Linear that feeds it, in float64
    (:func:`lrpflow.io.canonize.fold_batchnorm`; the field's convention); the merges are
    listed in ``model.canonizers``. Default (None): fold for every format but lrpflow's own
    HDF5 files, which are read exactly as saved (a model saved folded stays folded).
    False keeps BatchNorm as its own affine layer. A reader that takes ``fold_batchnorm``
    itself (it merges format-specific pairs first, e.g. Caffe's BatchNorm + Scale) is given it.
    """
    import inspect

    from lrpflow.graph import Model
    from lrpflow.io.canonize import fold_batchnorm as fold
    from lrpflow.layers import BatchNorm
    from lrpflow.plugins import registries

    path = os.fspath(path)
    reader = _pick(registries().model_readers, path, format, "model reader")
    others: list[str] = []
    if format is None:
        reader, others = _by_content(registries().model_readers, path, reader)
    if fold_batchnorm is None:
        fold_batchnorm = reader is not native.read
    try:
        if "fold_batchnorm" in inspect.signature(reader).parameters:
            options["fold_batchnorm"] = fold_batchnorm
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        pass
    try:
        model = _call(reader, ModelFormatError, path, options)
    except ModelFormatError as err:
        if others:
            raise ModelFormatError(f"{err}; nor is it {' or '.join(others)}") from err
        raise
    if isinstance(model, Model):
        if fold_batchnorm and any(isinstance(layer, BatchNorm) for layer in model.layers):
            model = fold(model)
        if not isinstance(getattr(model, "canonizers", None), list):
            model.canonizers = []
    return model


def save_model(model: Any, path: str | os.PathLike[str], format: str | None = None, **options: Any) -> None:
    """Write a model; the writer is chosen by ``format`` or by the file suffix."""
    from lrpflow.plugins import registries

    path = os.fspath(path)
    writer = _pick(registries().model_writers, path, format, "model writer")
    _call(writer, ModelFormatError, path, options, model)


def open_data(path: str | os.PathLike[str], format: str | None = None, *, labels: Any = None, dtype: Any = None,
              divide: float | None = None, scale: float | None = None, shift: float | None = None,
              reshape: Any = None, pad: Any = None, pad_value: float = 0.0, **options: Any) -> DataSource:
    """Open a dataset lazily; the reader is chosen by ``format`` or by the path (pattern, folder, suffix).

    Parameters
    ----------
    path : str or PathLike
        A file, a folder or glob pattern of images, or a bundled dataset's name (``"digits"``).
    format : str, optional
        A registered data reader name (``npy``, ``npz``, ``mat``, ``txt``, ``idx``, ``images``, ``digits``).
    labels : array or path, optional
        Per-sample labels to attach (a path is read with :func:`load_data`).
    dtype, divide, scale, shift, reshape, pad, pad_value
        Per-batch preprocessing ``pad(reshape(x / divide · scale + shift))``, see :class:`Preprocess`;
        the toolbox's MNIST preparation is ``divide=127.5, shift=-1, reshape=(28, 28, 1), pad=2, pad_value=-1``.
    **options
        Reader options (``key=`` for npz/mat, ``size=``/``crop=``/``fill_value=``/``mean=`` for images, ...).

    Returns
    -------
    DataSource
        ``len(src)``, ``src.shape``, ``src[a:b]``, ``src.batches(n)``, ``src.labels``.
    """
    from lrpflow.plugins import registries

    path = os.fspath(path)
    reader = _pick(registries().data_readers, path, format, "data reader", DataFormatError, data=True)
    source = as_source(_call(reader, DataFormatError, path, options), path)
    prep = Preprocess.from_options(dtype, divide, scale, shift, reshape, pad, pad_value)
    if prep is not None:
        source.preprocess = prep if source.preprocess is None else _chain(source.preprocess, prep)
        source._shape = None
        source.shape  # validate the options against the sample shape now
    return attach_labels(source, labels)


def _chain(first: Any, second: Any) -> Any:
    return lambda x: second(first(x))


def load_data(path: str | os.PathLike[str], format: str | None = None, **options: Any) -> numpy.ndarray:
    """Read a whole dataset as one writable, in-memory ndarray (same arguments as :func:`open_data`)."""
    with open_data(path, format, **options) as source:
        x = source.read()
    return x if x.flags.writeable and not isinstance(x.base, numpy.memmap) and not isinstance(x, numpy.memmap) \
        else numpy.array(x)


def save_data(array: Any, path: str | os.PathLike[str], format: str | None = None, **options: Any) -> None:
    """Write an array; the writer is chosen by ``format`` or by the path's suffix/pattern."""
    from lrpflow.backend import to_numpy
    from lrpflow.plugins import registries

    path = os.fspath(path)
    writer = _pick(registries().data_writers, path, format, "data writer", DataFormatError)
    x = array.read() if isinstance(array, DataSource) else to_numpy(array)
    _call(writer, DataFormatError, path, options, numpy.asarray(x))
