"""Caffe's files through the ``protobuf`` library and the shipped schema (``caffe_subset.proto``).

- ``.prototxt``: a text-format ``NetParameter`` (``google.protobuf.text_format``);
- ``.caffemodel``: a binary ``NetParameter`` (``ParseFromString``); its layers' ``blobs`` hold the weights;
- ``.binaryproto``: one binary ``BlobProto`` (e.g. ILSVRC's ``imagenet_mean.binaryproto``).

Files larger than the limits below are refused before they are read, and every blob is
checked against its declared shape (``shape.dim`` or the legacy num/channels/height/width).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy

from lrpflow.errors import ModelFormatError

#: size limits (bytes) of the files read; hostile or mistaken inputs fail before parsing
MAX_TEXT_BYTES = 16 << 20
MAX_BINARY_BYTES = (2 << 30) - 1  # protobuf's own message limit
MAX_BLOB_BYTES = 64 << 20

_V1_LAYERS = re.compile(r"^[ \t]*layers[ \t]*\{", re.MULTILINE)


def pb2() -> Any:
    """The generated message classes (imported lazily: protobuf loads only when a Caffe file is read)."""
    from lrpflow_caffe import caffe_subset_pb2

    return caffe_subset_pb2


def _read(path: str, limit: int, what: str) -> bytes:
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise ModelFormatError(f"{path}: {what} of {size} bytes exceeds the limit of {limit} bytes")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise ModelFormatError(f"{path}: cannot read {what}: {err.strerror or err}") from err
    if not data:
        raise ModelFormatError(f"{path}: empty {what}")
    if len(data) > limit:
        raise ModelFormatError(f"{path}: {what} exceeds the limit of {limit} bytes")
    return data


def read_net_text(path: str) -> Any:
    """A ``NetParameter`` from a text ``.prototxt``; ModelFormatError naming the file and line on a bad file."""
    from google.protobuf import text_format

    raw = _read(path, MAX_TEXT_BYTES, "prototxt")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFormatError(f"{path}: a prototxt must be UTF-8 text ({err})") from err
    match = _V1_LAYERS.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise ModelFormatError(f"{path}:{line}: old V1 'layers {{ ... }}' definitions are not supported; upgrade the "
                               "file to 'layer { ... }' with Caffe's tools/upgrade_net_proto_text")
    net = pb2().NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as err:
        line = getattr(err, "GetLine", lambda: None)()
        where = f"{path}:{line}" if line else path
        raise ModelFormatError(f"{where}: not a Caffe NetParameter this reader understands: {err}") from err
    return net


def read_net_binary(path: str) -> Any:
    """A ``NetParameter`` from a binary ``.caffemodel``."""
    from google.protobuf.message import DecodeError

    data = _read(path, MAX_BINARY_BYTES, "caffemodel")
    net = pb2().NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelFormatError(f"{path}: not a binary Caffe NetParameter (.caffemodel): {err}") from err
    if not net.layer and not net.layers:
        raise ModelFormatError(f"{path}: the caffemodel holds no layers")
    return net


def read_blob_binary(path: str) -> numpy.ndarray:
    """The array of a binary ``BlobProto`` file (``.binaryproto``), shaped by its declared dimensions."""
    from google.protobuf.message import DecodeError

    data = _read(path, MAX_BLOB_BYTES, "binaryproto")
    blob = pb2().BlobProto()
    try:
        blob.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ModelFormatError(f"{path}: not a binary Caffe BlobProto (.binaryproto): {err}") from err
    return blob_array(blob, f"{path}")


def blob_shape(blob: Any) -> tuple[int, ...]:
    """The declared shape: ``shape.dim`` if present, else the legacy (num, channels, height, width)."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))


def blob_array(blob: Any, where: str) -> numpy.ndarray:
    """A ``BlobProto`` as an array (float32; float64 for double_data) of its declared shape; ModelFormatError naming ``where`` if they disagree."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise ModelFormatError(f"{where}: blob has negative dimensions {shape}")
    count = math.prod(shape)
    values = blob.double_data if len(blob.double_data) else blob.data
    if len(values) != count:
        raise ModelFormatError(f"{where}: blob declares shape {shape} ({count} values) but stores {len(values)} values")
    arr = numpy.asarray(values, dtype=numpy.float64 if len(blob.double_data) else numpy.float32).reshape(shape)
    if not numpy.isfinite(arr).all():
        raise ModelFormatError(f"{where}: blob contains NaN or Inf values")
    return arr


def weights_by_name(net: Any, path: str) -> dict[str, list[numpy.ndarray]]:
    """Layer name → its blobs, as Caffe's ``CopyTrainedLayersFrom`` sees them (V1 and current layers)."""
    out: dict[str, list[numpy.ndarray]] = {}
    for layer in list(net.layer) + list(net.layers):
        if layer.blobs:
            out[layer.name] = [blob_array(b, f"{path}: layer {layer.name!r} blob {i}") for i, b in enumerate(layer.blobs)]
    return out
