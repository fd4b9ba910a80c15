"""lrpflow's native model format: one HDF5 file, the graph as JSON, parameters as datasets.

Layout (``format_version`` 2)::

    /                    attrs: format = b"lrpflow-model", format_version = 2, lrpflow_version
                                (fixed-length byte strings and an integer)
    /graph               dataset: uint8, the graph as UTF-8 JSON (see below)
    /params/<k>/<name>   dataset: parameter ``name`` of node number k, stored in its own dtype

Nothing is stored as a variable-length string: those live in HDF5's global heap, on
which libhdf5 can loop forever when a file is damaged. The reader checks every size
against the file before reading (the graph's stored bytes, each dataset's declared
versus stored size) and refuses links, external storage and virtual datasets that
reach outside the file (:mod:`lrpflow.io.hdf5_safety`).

``format_version`` 1 files (written by lrpflow before 2) kept ``format`` and ``graph``
as variable-length string attributes; they are still read, after their global heaps
were checked from the raw bytes (:func:`~lrpflow.io.hdf5_safety.check_global_heaps`).

``graph`` JSON: ``{"kind": "sequential"|"model", "layout", "input_shape", "input_name",
"output", "canonizers", "nodes": [{"name", "type", "config", "inputs", "params",
"lrp_var", "lrp_param"}]}``; ``type`` is the layer's registry name (plugins' layers work
when their plugin is installed), ``config`` its constructor arguments (``Layer.config()``).
A layer is rebuilt as ``cls(**config, **params)``. Round trips are lossless.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy

from lrpflow.errors import LrpflowError, ModelFormatError
from lrpflow.graph import Model, Node, Sequential
from lrpflow.io.files import MAX_LAYER_EXTENT, atomic_write
from lrpflow.io.hdf5_safety import check_contained, check_dataset, check_declared_size, check_global_heaps

FORMAT = "lrpflow-model"
VERSION = 2
#: the oldest format_version this lrpflow reads
OLDEST = 1
#: HDF5's signature; lrpflow writes it at byte 0 (the superblock may also sit at 512, 1024, ...)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _layer_names() -> dict[type, str]:
    from lrpflow.plugins import registries

    out: dict[type, str] = {}
    for entry in registries().layers:
        out.setdefault(entry.impl, entry.name)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(a) for a in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(a) for k, a in v.items()}
    if isinstance(v, numpy.generic):
        return v.item()
    return v


def write(model: Model, path: str | os.PathLike[str]) -> None:
    """Write any lrpflow model (Sequential or DAG) losslessly."""
    import h5py

    from lrpflow import __version__
    from lrpflow.backend import to_numpy

    path = os.fspath(path)
    if not isinstance(model, Model):
        raise ModelFormatError(f"{path}: expected an lrpflow Model, got {type(model).__name__}")
    names = _layer_names()
    nodes, arrays = [], []
    for k, node in enumerate(model.nodes):
        layer = node.layer
        type_name = names.get(type(layer))
        if type_name is None:
            raise ModelFormatError(f"{path}: node {node.name!r}: layer class {type(layer).__module__}.{type(layer).__name__} "
                                   f"is not registered (no plugin provides it)")
        params = {p: to_numpy(v) for p, v in layer.params().items() if v is not None}
        config = _jsonable(layer.config())
        try:
            json.dumps(config)
        except TypeError as err:
            raise ModelFormatError(f"{path}: node {node.name!r}: config of {type_name} is not JSON: {err}") from err
        nodes.append({"name": node.name, "type": type_name, "config": config, "inputs": list(node.inputs),
                      "params": sorted(params), "lrp_var": layer.lrp_var,
                      "lrp_param": None if layer.lrp_param is None else float(layer.lrp_param)})
        arrays.append(params)
    graph = {
        "kind": "sequential" if isinstance(model, Sequential) else "model",
        "layout": model.layout,
        "input_shape": None if model.input_shape is None else list(model.input_shape),
        "input_name": model.input_name,
        "output": model.output if not isinstance(model, Sequential) else None,
        "canonizers": list(getattr(model, "canonizers", []) or []),
        "nodes": nodes,
    }

    def write_h5(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = numpy.bytes_(FORMAT)
            f.attrs["format_version"] = numpy.int64(VERSION)
            f.attrs["lrpflow_version"] = numpy.bytes_(__version__)
            f.create_dataset("graph", data=numpy.frombuffer(json.dumps(graph).encode("utf-8"), dtype=numpy.uint8))
            group = f.create_group("params")
            for k, params in enumerate(arrays):
                g = group.create_group(str(k))
                for p, v in params.items():
                    g.create_dataset(p, data=numpy.asarray(v))

    atomic_write(path, write_h5, ModelFormatError)


def _field(obj: dict[str, Any], key: str, types: Any, where: str, optional: bool = False) -> Any:
    if key not in obj:
        if optional:
            return None
        raise ModelFormatError(f"{where}: missing field {key!r}")
    v = obj[key]
    if v is None and optional:
        return None
    if not isinstance(v, types):
        raise ModelFormatError(f"{where}: field {key!r} has type {type(v).__name__}")
    return v


#: config keys that hold window, stride, padding or dilation extents (bounded by MAX_LAYER_EXTENT)
EXTENT_KEYS = frozenset({"h", "w", "hp", "wp", "kernel", "pool", "stride", "strides", "padding", "pads", "dilation",
                         "dilations"})


def _check_extents(config: dict[str, Any], where: str) -> None:
    """Absurd window sizes (``MaxPool`` of 10⁹) are a format error here, not a numpy error at the first forward."""
    for key, value in config.items():
        if key in EXTENT_KEYS:
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_LAYER_EXTENT for v in values):
                raise ModelFormatError(f"{where}: config {key}={value} exceeds {MAX_LAYER_EXTENT}")


def _read_param(ds: Any, where: str, file_size: int) -> numpy.ndarray:
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise ModelFormatError(f"{where}: not a dataset")
    check_dataset(ds, where, ModelFormatError)
    if ds.dtype.kind not in "fiub" or ds.dtype.fields is not None:
        raise ModelFormatError(f"{where}: dtype {ds.dtype} is not numeric")
    check_declared_size(ds, where, ModelFormatError, file_size)
    return numpy.asarray(ds[()])


class _Variable:
    """Marker: an attribute stored as a variable-length string (format_version 1)."""


def _check_signature(path: str) -> int:
    """The file's size; ModelFormatError unless it starts like an HDF5 file (read from the raw bytes)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(len(HDF5_SIGNATURE))
    except OSError as err:
        raise ModelFormatError(f"{path}: not a readable lrpflow model (HDF5) file: {err.strerror or err}") from err
    if head != HDF5_SIGNATURE:
        raise ModelFormatError(f"{path}: not a readable lrpflow model (HDF5) file: no HDF5 signature at byte 0")
    return size


def _attr(f: Any, name: str, path: str) -> Any:
    """A small fixed-size root attribute (None if absent, :class:`_Variable` if variable-length), never a heap read."""
    import h5py

    if name not in f.attrs:
        return None
    aid = h5py.h5a.open(f.id, name.encode("ascii"))
    dtype = aid.dtype
    if dtype.kind == "O" or h5py.check_vlen_dtype(dtype) is not None:
        return _Variable
    if aid.shape not in ((), (1,)) or dtype.itemsize > 256 or dtype.kind not in "SUiu":
        raise ModelFormatError(f"{path}: attribute {name!r} must be a short string or an integer, "
                               f"got {dtype} of shape {aid.shape}")
    value = f.attrs[name]
    if isinstance(value, numpy.ndarray):
        value = value.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _read_graph(f: Any, path: str, size: int) -> str:
    """The graph JSON of a version-2 file: a contiguous uint8 dataset whose stored bytes are checked first."""
    import h5py

    link = f.get("graph", getlink=True)
    if link is None:
        raise ModelFormatError(f"{path}: missing dataset 'graph'")
    if not isinstance(link, h5py.HardLink) or not isinstance(f["graph"], h5py.Dataset):
        raise ModelFormatError(f"{path}: 'graph' must be a dataset")
    ds = f["graph"]
    check_dataset(ds, f"{path}: dataset 'graph'", ModelFormatError)
    if ds.dtype != numpy.uint8 or ds.ndim != 1:
        raise ModelFormatError(f"{path}: dataset 'graph' must be uint8 bytes, got {ds.dtype} of shape {ds.shape}")
    n = int(ds.shape[0])
    filtered = ds.id.get_create_plist().get_nfilters() > 0
    if n == 0 or n > size or filtered or ds.id.get_storage_size() != n:
        raise ModelFormatError(f"{path}: dataset 'graph' declares {n} bytes but stores {ds.id.get_storage_size()} "
                               f"(expected the JSON stored plainly, at most the file's {size} bytes)")
    try:
        return bytes(ds[()]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFormatError(f"{path}: dataset 'graph' is not UTF-8 text (byte {err.start})") from err


def _read_header(f: Any, path: str, size: int) -> Any:
    """Check ``format``/``format_version`` and return the parsed graph JSON."""
    version = _attr(f, "format_version", path)
    if version is None:
        raise ModelFormatError(f"{path}: an HDF5 file but not an lrpflow model (no 'format_version' attribute)")
    if not isinstance(version, (int, numpy.integer)) or not OLDEST <= int(version) <= VERSION:
        shown = int(version) if isinstance(version, (int, numpy.integer)) else repr(version)
        raise ModelFormatError(f"{path}: unsupported format_version {shown} (this lrpflow reads {OLDEST} to {VERSION})")
    version = int(version)
    if version == 1:  # variable-length strings in the global heap: check its raw bytes before libhdf5 walks it
        check_global_heaps(path, ModelFormatError)
        fmt = f.attrs.get("format")
        text = f.attrs.get("graph")
    else:
        fmt = _attr(f, "format", path)
        if fmt is _Variable:
            raise ModelFormatError(f"{path}: format_version 2 stores attribute 'format' as a fixed-length string, "
                                   f"found a variable-length one")
        text = None
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT:
        raise ModelFormatError(f"{path}: not an lrpflow model file (attribute format={fmt!r}, expected {FORMAT!r})")
    if version >= 2:
        text = _read_graph(f, path, size)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise ModelFormatError(f"{path}: attribute 'graph' is missing or not text")
    try:
        return json.loads(text)
    except ValueError as err:
        raise ModelFormatError(f"{path}: graph is not valid JSON: {err}") from err


def read(path: str | os.PathLike[str]) -> Model:
    """Read a native lrpflow model file."""
    import h5py

    from lrpflow.plugins import registries

    path = os.fspath(path)
    size = _check_signature(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ModelFormatError(f"{path}: not a readable lrpflow model (HDF5) file: {err}") from err
    except Exception as err:
        raise ModelFormatError(f"{path}: not a readable lrpflow model (HDF5) file: {type(err).__name__}: {err}") from err
    try:
        with f:
            check_contained(f, path, ModelFormatError)
            graph = _read_header(f, path, size)
            if not isinstance(graph, dict):
                raise ModelFormatError(f"{path}: attribute 'graph' must be a JSON object")
            nodes_json = _field(graph, "nodes", list, f"{path}: graph")
            layers_reg = registries().layers
            nodes = []
            for k, spec in enumerate(nodes_json):
                where = f"{path}: node {k}"
                if not isinstance(spec, dict):
                    raise ModelFormatError(f"{where}: must be a JSON object")
                name = _field(spec, "name", str, where)
                where = f"{path}: node {k} ({name!r})"
                type_name = _field(spec, "type", str, where)
                config = _field(spec, "config", dict, where)
                inputs = _field(spec, "inputs", list, where)
                pnames = _field(spec, "params", list, where)
                if not all(isinstance(i, str) for i in inputs) or not all(isinstance(p, str) for p in pnames):
                    raise ModelFormatError(f"{where}: inputs and params must be lists of names")
                try:
                    cls = layers_reg.get(type_name)
                except LrpflowError as err:
                    raise ModelFormatError(f"{where}: {err}") from err
                _check_extents(config, where)
                missing = [p for p in getattr(cls, "param_names", ()) if p not in pnames]
                if missing:  # never let a constructor draw (possibly huge) random parameters
                    raise ModelFormatError(f"{where}: {type_name} needs parameters {missing}")
                params = {}
                for p in pnames:
                    key = f"params/{k}/{p}"
                    if key not in f:
                        raise ModelFormatError(f"{where}: missing dataset {key}")
                    params[p] = _read_param(f[key], f"{where}: dataset {key}", size)
                try:
                    layer = cls(**config, **params)
                except LrpflowError as err:
                    raise ModelFormatError(f"{where}: {type_name}: {err}") from err
                except (TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
                    raise ModelFormatError(f"{where}: cannot build {type_name} from config {config}: {err}") from err
                lrp_var = spec.get("lrp_var")
                if lrp_var is not None:
                    lrp_param = spec.get("lrp_param")
                    if not isinstance(lrp_var, str) or not isinstance(lrp_param, (int, float, type(None))):
                        raise ModelFormatError(f"{where}: lrp_var/lrp_param have the wrong types")
                    layer.set_lrp_parameters(lrp_var, lrp_param)
                nodes.append(Node(name, layer, tuple(inputs)))
            kind = graph.get("kind", "model")
            layout = graph.get("layout", "NHWC")
            input_shape = graph.get("input_shape")
            if input_shape is not None and (not isinstance(input_shape, list)
                                            or not all(isinstance(s, int) and s > 0 for s in input_shape)):
                raise ModelFormatError(f"{path}: graph input_shape must be a list of positive integers")
            if kind == "sequential":
                model: Model = Sequential([n.layer for n in nodes], input_shape=input_shape, layout=layout)
                for want, got in zip(model.nodes, nodes):
                    if (want.name, want.inputs) != (got.name, got.inputs):
                        raise ModelFormatError(f"{path}: sequential graph: node {got.name!r} <- {list(got.inputs)} "
                                               f"breaks the chain (expected {want.name!r} <- {list(want.inputs)})")
            elif kind == "model":
                input_name = graph.get("input_name", "input")
                output = graph.get("output")
                if not isinstance(input_name, str) or not isinstance(output, (str, type(None))):
                    raise ModelFormatError(f"{path}: graph input_name/output must be names")
                model = Model(nodes, output=output, input_shape=input_shape, input_name=input_name, layout=layout)
            else:
                raise ModelFormatError(f"{path}: graph kind must be 'sequential' or 'model', got {kind!r}")
            canonizers = graph.get("canonizers") or []
            if canonizers:
                if not isinstance(canonizers, list) or not all(isinstance(c, str) for c in canonizers):
                    raise ModelFormatError(f"{path}: graph canonizers must be a list of strings")
                model.canonizers = list(canonizers)  # type: ignore[attr-defined]
            return model
    except ModelFormatError:
        raise
    except LrpflowError as err:
        raise ModelFormatError(f"{path}: {err}") from err
    except RecursionError as err:
        raise ModelFormatError(f"{path}: graph nested too deeply") from err
    except Exception as err:  # h5py/HDF5 errors on damaged files
        raise ModelFormatError(f"{path}: damaged lrpflow model file: {type(err).__name__}: {err}") from err
