"""Caffe ``NetParameter`` → lrpflow :class:`~lrpflow.graph.Model`.

The net is read as Caffe's ``Net`` builds it in the TEST phase: layers are filtered by their
``include``/``exclude`` rules, net-level ``input:``/``input_shape``/``input_dim`` fields become an
``Input`` layer at index 0 (Caffe's ``UpgradeNetInput``), and Split layers are counted where a
blob feeds several layers (Caffe's ``InsertSplits``), so layer indices (``model.caffe.layers``)
are the ones Caffe's ``Net`` and the LRP Toolbox's demonstrator use. Weights are copied **by
layer name** (Caffe's ``CopyTrainedLayersFrom``): layers of the weights file that the net lacks
(a training snapshot's Data, loss and Split layers) are ignored.

Activations are NHWC inside; ``explain()`` takes and returns NCHW (the model's layout), like
Caffe's blobs. Convolution weights ``(out, in/group, kh, kw)`` become ``(kh, kw, in, out)``;
InnerProduct weights on a (C, H, W) input are permuted to lrpflow's (H, W, C) flattening.
BatchNorm (+ Scale) fold into the preceding convolution by default (``fold_batchnorm=True``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from lrpflow.errors import ModelFormatError, ShapeError, UnsupportedLayerError
from lrpflow.graph import Model, Node
from lrpflow.layers import (
    Add, BatchNorm, Concat, Conv2d, Dropout, Flatten, LeakyReLU, Linear, MaxPool, ReLU, Sigmoid, SoftMax, Tanh,
)
from lrpflow.layers.lrn import LRN

from lrpflow_caffe import protofiles
from lrpflow_caffe.layers import CaffeAvgPool, FlattenCHW, ScaledAdd, caffe_ave_divisor, pool_geometry

log = logging.getLogger("lrpflow_caffe")

TEST = 1  # caffe.Phase.TEST
DATA_LAYERS = frozenset({"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Python"})


@dataclass(frozen=True)
class CaffeLayer:
    """One layer of the Caffe net as Caffe indexes it: its node in the lrpflow model (None: no node)."""

    index: int
    name: str
    type: str
    node: str | None
    tops: tuple[str, ...] = ()
    group: int = 1  #: convolution groups (1 for other layers)


@dataclass
class CaffeInfo:
    """What the reader knows about the Caffe net (``model.caffe``)."""

    layers: list[CaffeLayer] = field(default_factory=list)
    input_blob: str = "data"
    input_chw: tuple[int, int, int] = (0, 0, 0)
    prototxt: str = ""
    weights: str | None = None

    def layer(self, index: int) -> CaffeLayer:
        if not 0 <= index < len(self.layers):
            raise ModelFormatError(f"{self.prototxt}: layer index {index} out of range: the net has {len(self.layers)} "
                                   "layers (Caffe's indexing, with Input and inserted Split layers)")
        return self.layers[index]


# --- reading -------------------------------------------------------------------------------


def read(path: str, weights: str | None = None, fold_batchnorm: bool = True, phase: str = "test") -> Model:
    """Read a ``.prototxt`` and copy the weights of ``weights`` (a ``.caffemodel``) by layer name.

    Without ``weights`` the prototxt's own ``blobs`` are used (a prototxt with weights in it).
    """
    if str(phase).lower() != "test":
        raise ModelFormatError(f"{path}: only the TEST phase can be explained, got phase={phase!r}")
    net = protofiles.read_net_text(str(path))
    blobs = protofiles.weights_by_name(protofiles.read_net_binary(str(weights)), str(weights)) if weights else {}
    return convert(net, blobs, path=str(path), weights_path=None if weights is None else str(weights),
                   fold_batchnorm=fold_batchnorm)


def _state_meets(rule: Any, phase: int, level: int, stages: Sequence[str]) -> bool:
    """Caffe's ``StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def _included(layer: Any, phase: int, level: int, stages: Sequence[str]) -> bool:
    """Caffe's ``FilterNet`` decision for one layer."""
    if layer.include:
        return any(_state_meets(r, phase, level, stages) for r in layer.include)
    return not any(_state_meets(r, phase, level, stages) for r in layer.exclude)


def _input_layer(net: Any, path: str) -> Any:
    """Net-level input fields as the Input layer Caffe's ``UpgradeNetInput`` makes of them (or None)."""
    if not net.input:
        return None
    pb = protofiles.pb2()
    layer = pb.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    if net.input_shape:
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        dims = list(net.input_dim)
        if len(dims) != 4 * len(net.input):
            raise ModelFormatError(f"{path}: input_dim needs 4 values per input blob, got {len(dims)} for {len(net.input)}")
        shapes = [dims[4 * i : 4 * i + 4] for i in range(len(net.input))]
    else:
        raise ModelFormatError(f"{path}: net-level input {list(net.input)} has no input_shape or input_dim")
    for s in shapes:
        layer.input_param.shape.add().dim.extend(s)
    return layer


def _layers_with_splits(layers: Sequence[Any]) -> tuple[list[tuple[Any, int]], dict[tuple[int, int], int]]:
    """``[(layer or None for a Split, producing layer position)]`` in Caffe's order, and consumer counts per blob version."""
    last: dict[str, tuple[int, int]] = {}
    uses: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        for b in layer.bottom:
            if b in last:
                uses[last[b]] = uses.get(last[b], 0) + 1
        for j, t in enumerate(layer.top):
            last[t] = (i, j)
    order: list[tuple[Any, int]] = []
    for i, layer in enumerate(layers):
        order.append((layer, i))
        for j, _ in enumerate(layer.top):
            if uses.get((i, j), 0) > 1:
                order.append((None, i))
    return order, uses


# --- conversion ----------------------------------------------------------------------------


class _Builder:
    """State of one conversion: nodes, blob → node, blob → NHWC shape."""

    def __init__(self, path: str, weights: Mapping[str, list[numpy.ndarray]], weights_path: str | None) -> None:
        self.path = path
        self.weights = weights
        self.weights_path = weights_path
        self.nodes: dict[str, Node] = {}
        self.kind: dict[str, str] = {}  # node → Caffe type that made it
        self.blob_node: dict[str, str] = {}
        self.shape: dict[str, tuple[int, ...]] = {}  # node (or input) → sample shape, NHWC
        self.input_name: str | None = None
        self.input_shape: tuple[int, ...] | None = None

    def where(self, layer: Any) -> str:
        return f"{self.path}: layer {layer.name!r} ({layer.type})"

    def unique(self, name: str) -> str:
        base, k = name or "layer", 1
        out = base
        while out in self.nodes or out == self.input_name:
            k += 1
            out = f"{base}_{k}"
        return out

    def bottom(self, layer: Any, k: int = 0) -> str:
        try:
            return self.blob_node[layer.bottom[k]]
        except IndexError:
            raise ModelFormatError(f"{self.where(layer)}: needs bottom blob {k}") from None
        except KeyError:
            raise ModelFormatError(f"{self.where(layer)}: bottom blob {layer.bottom[k]!r} is produced by no earlier layer") from None

    def add(self, layer: Any, lrp_layer: Any, inputs: Sequence[str], name: str | None = None) -> str:
        name = self.unique(name or layer.name)
        try:
            out = lrp_layer.output_shape(*(self.shape[i] for i in inputs))
        except ShapeError as err:
            raise ModelFormatError(f"{self.where(layer)}: {err}") from err
        self.nodes[name] = Node(name, lrp_layer, tuple(inputs))
        self.shape[name] = tuple(out)
        self.kind[name] = layer.type
        return name

    def blobs(self, layer: Any, count: int, optional: int = 0) -> list[numpy.ndarray]:
        """The layer's weights (by name from the weights file, else its own), ``count`` required + ``optional``."""
        found = self.weights.get(layer.name)
        if found is None:
            found = [protofiles.blob_array(b, f"{self.where(layer)} blob {i}") for i, b in enumerate(layer.blobs)]
        if not found:
            src = self.weights_path or "the prototxt (no weights file given)"
            raise ModelFormatError(f"{self.where(layer)}: no weights for this layer in {src}")
        if not count <= len(found) <= count + optional:
            raise ModelFormatError(f"{self.where(layer)}: expected {count}{f'–{count + optional}' if optional else ''} "
                                   f"weight blobs, got {len(found)}")
        return [numpy.asarray(b, dtype=numpy.float64) for b in found]

    def check(self, layer: Any, arr: numpy.ndarray, shape: tuple[int, ...], what: str) -> numpy.ndarray:
        """``arr`` reshaped to ``shape``; legacy 4-D blobs (leading 1s) are accepted, anything else is an error."""
        squeeze = tuple(d for d in arr.shape if d != 1)
        if arr.shape != shape and (arr.size != math.prod(shape) or squeeze != tuple(d for d in shape if d != 1)):
            raise ModelFormatError(f"{self.where(layer)}: {what} blob has shape {arr.shape}, the prototxt needs {shape}")
        return arr.reshape(shape)


def _pair(values: Sequence[int], h: Any, w: Any, has_h: bool, default: int, what: str, where: str) -> tuple[int, int]:
    if has_h:
        return int(h), int(w)
    vals = [int(v) for v in values]
    if not vals:
        if default < 0:
            raise ModelFormatError(f"{where}: {what} is required")
        return default, default
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise ModelFormatError(f"{where}: {what} must have 1 or 2 values for a 2-D convolution, got {vals}")


def grouped_conv(weight: numpy.ndarray, bias: numpy.ndarray | None, group: int, stride: tuple[int, int],
                 pads: tuple[int, int, int, int]) -> Conv2d:
    """A Conv2d equal to Caffe's convolution with ``group`` groups (weight ``(out, in/group, kh, kw)``).

    ``Conv2d(groups=group)`` with the weight ``(kh, kw, in/group, out)``: output channels
    ``g·out/group …`` see input channels ``g·in/group …`` only, in Caffe's order. Every rule,
    ``flat`` included (ones on that weight are ones within each group), stays within the groups.
    """
    out, cin_g, kh, kw = weight.shape
    b = numpy.zeros(out, dtype=weight.dtype) if bias is None else bias
    return Conv2d(kh, kw, cin_g * group, out, stride=stride, padding=pads, weight=weight.transpose(2, 3, 1, 0),
                  bias=b, groups=group)


def _convolution(b: _Builder, layer: Any) -> tuple[Any, int]:
    p = layer.convolution_param
    where = b.where(layer)
    src = b.bottom(layer)
    shape = b.shape[src]
    if len(shape) != 3:
        raise ModelFormatError(f"{where}: expects a (C, H, W) input, got a sample of shape {shape} (NHWC)")
    if p.axis != 1:
        raise UnsupportedLayerError(f"{where}: only axis 1 (channels) is supported, got axis {p.axis}")
    if any(int(d) != 1 for d in p.dilation):
        raise UnsupportedLayerError(f"{where}: dilation {list(p.dilation)} is not supported (only 1)")
    kh, kw = _pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), -1, "kernel_size", where)
    ph, pw = _pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0, "pad", where)
    sh, sw = _pair(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1, "stride", where)
    group, cin, cout = int(p.group), shape[2], int(p.num_output)
    if group < 1 or cin % group or cout % group or cout < 1:
        raise ModelFormatError(f"{where}: {cin} input and {cout} output channels cannot be split into {group} groups")
    blobs = b.blobs(layer, 1 + int(p.bias_term))
    w = b.check(layer, blobs[0], (cout, cin // group, kh, kw), "weight")
    bias = b.check(layer, blobs[1], (cout,), "bias") if p.bias_term else None
    return grouped_conv(w, bias, group, (sh, sw), (ph, ph, pw, pw)), group


def _inner_product(b: _Builder, layer: Any) -> str:
    p = layer.inner_product_param
    where = b.where(layer)
    if p.axis != 1:
        raise UnsupportedLayerError(f"{where}: only axis 1 is supported, got axis {p.axis}")
    src = b.bottom(layer)
    shape = b.shape[src]
    n_in, n_out = math.prod(shape), int(p.num_output)
    blobs = b.blobs(layer, 1 + int(p.bias_term))
    w = b.check(layer, blobs[0], (n_in, n_out) if p.transpose else (n_out, n_in), "weight")
    w = w.T if not p.transpose else w  # (in, out), inputs in Caffe's C, H, W order
    if len(shape) == 3:  # permute rows to lrpflow's H, W, C flattening
        h, wd, c = shape
        w = w.reshape(c, h, wd, n_out).transpose(1, 2, 0, 3).reshape(n_in, n_out)
        src = b.add(layer, Flatten(), [src], name=f"{layer.name}/flatten")
    elif len(shape) != 1:
        raise ModelFormatError(f"{where}: expects a vector or a (C, H, W) input, got shape {shape}")
    bias = b.check(layer, blobs[1], (n_out,), "bias") if p.bias_term else numpy.zeros(n_out)
    return b.add(layer, Linear(n_in, n_out, weight=numpy.ascontiguousarray(w), bias=bias), [src])


def _pooling(b: _Builder, layer: Any) -> Any:
    p = layer.pooling_param
    where = b.where(layer)
    shape = b.shape[b.bottom(layer)]
    if len(shape) != 3:
        raise ModelFormatError(f"{where}: expects a (C, H, W) input, got shape {shape}")
    h, w, _ = shape
    if p.global_pooling:
        if p.pad or p.pad_h or p.pad_w or p.stride != 1 or p.HasField("stride_h"):
            raise ModelFormatError(f"{where}: global_pooling takes no pad and stride 1")
        (kh, kw), (ph, pw), (sh, sw) = (h, w), (0, 0), (1, 1)
    else:
        if p.HasField("kernel_size") == (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise ModelFormatError(f"{where}: give either kernel_size or kernel_h and kernel_w")
        kh, kw = (p.kernel_size, p.kernel_size) if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
        ph, pw = (p.pad_h, p.pad_w) if (p.HasField("pad_h") or p.HasField("pad_w")) else (p.pad, p.pad)
        sh, sw = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    kh, kw, ph, pw, sh, sw = (int(v) for v in (kh, kw, ph, pw, sh, sw))
    if min(kh, kw, sh, sw) < 1 or ph >= kh or pw >= kw:
        raise ModelFormatError(f"{where}: invalid window: kernel {kh}×{kw}, stride {sh}×{sw}, pad {ph}×{pw} (pad < kernel)")
    ceil = p.round_mode == 0
    oh, t, bt = pool_geometry(h, kh, sh, ph, ceil)
    ow, l, r = pool_geometry(w, kw, sw, pw, ceil)
    if oh < 1 or ow < 1:
        raise ModelFormatError(f"{where}: window {kh}×{kw} does not fit the input {h}×{w}")
    if p.pool == 0:
        return MaxPool(kh, kw, stride=(sh, sw), padding=(t, bt, l, r))
    if p.pool == 1:
        divisor = numpy.outer(caffe_ave_divisor(h, kh, sh, ph, oh), caffe_ave_divisor(w, kw, sw, pw, ow))
        return CaffeAvgPool(kh, kw, (sh, sw), (t, bt, l, r), (h, w), divisor)
    raise UnsupportedLayerError(f"{where}: STOCHASTIC pooling is not supported (only MAX and AVE)")


def _batchnorm(b: _Builder, layer: Any) -> BatchNorm:
    p = layer.batch_norm_param
    where = b.where(layer)
    if p.HasField("use_global_stats") and not p.use_global_stats:
        raise UnsupportedLayerError(f"{where}: use_global_stats: false normalises with batch statistics, which "
                                    "cannot be explained per sample; use the stored statistics (true)")
    c = b.shape[b.bottom(layer)][-1]
    mean, var, sf = b.blobs(layer, 3)
    if sf.size != 1:
        raise ModelFormatError(f"{where}: the third blob (scale factor) must hold 1 value, got shape {sf.shape}")
    factor = 0.0 if float(sf.ravel()[0]) == 0 else 1.0 / float(sf.ravel()[0])
    mean = b.check(layer, mean, (c,), "mean") * factor
    var = b.check(layer, var, (c,), "variance") * factor
    return BatchNorm(c, mean=mean, var=var, eps=float(p.eps))


def _scale(b: _Builder, layer: Any) -> tuple[Any, Any]:
    p = layer.scale_param
    where = b.where(layer)
    if len(layer.bottom) != 1:
        raise UnsupportedLayerError(f"{where}: Scale with a second bottom (a scale blob) is not supported")
    if p.axis != 1 or p.num_axes != 1:
        raise UnsupportedLayerError(f"{where}: only axis 1, num_axes 1 (one factor per channel) is supported")
    c = b.shape[b.bottom(layer)][-1]
    blobs = b.blobs(layer, 1 + int(p.bias_term))
    gamma = b.check(layer, blobs[0], (c,), "scale")
    beta = b.check(layer, blobs[1], (c,), "bias") if p.bias_term else numpy.zeros(c)
    return gamma, beta


def _flatten(b: _Builder, layer: Any) -> FlattenCHW:
    p = layer.flatten_param
    if p.axis != 1 or p.end_axis not in (-1, 3):
        raise UnsupportedLayerError(f"{b.where(layer)}: only Flatten from axis 1 to the last axis is supported")
    return FlattenCHW()


def _eltwise(b: _Builder, layer: Any) -> Any:
    p = layer.eltwise_param
    if p.operation != 1:
        raise UnsupportedLayerError(f"{b.where(layer)}: only Eltwise SUM is supported (not PROD or MAX)")
    coeffs = [float(c) for c in p.coeff]
    if coeffs and len(coeffs) != len(layer.bottom):
        raise ModelFormatError(f"{b.where(layer)}: {len(coeffs)} coefficients for {len(layer.bottom)} bottoms")
    return ScaledAdd(coeffs) if coeffs and any(c != 1.0 for c in coeffs) else Add()


def _simple(b: _Builder, layer: Any) -> Any:
    t, where = layer.type, b.where(layer)
    if t == "ReLU":
        slope = float(layer.relu_param.negative_slope)
        return LeakyReLU(slope) if slope != 0 else ReLU()
    if t == "Sigmoid":
        return Sigmoid()
    if t == "TanH":
        return Tanh()
    if t == "Dropout":
        return Dropout(float(layer.dropout_param.dropout_ratio))
    if t == "Softmax":
        shape = b.shape[b.bottom(layer)]
        if layer.softmax_param.axis not in (1, -len(shape) - 1) and not (len(shape) == 1 and layer.softmax_param.axis == -1):
            raise UnsupportedLayerError(f"{where}: only a Softmax over the channels (axis 1) is supported")
        return SoftMax()
    if t == "LRN":
        p = layer.lrn_param
        if p.norm_region != 0:
            raise UnsupportedLayerError(f"{where}: only ACROSS_CHANNELS LRN is supported (not WITHIN_CHANNEL)")
        return LRN(int(p.local_size), float(p.alpha), float(p.beta), float(p.k))
    if t == "Concat":
        p = layer.concat_param
        axis = p.axis if p.HasField("axis") else int(p.concat_dim)
        if axis != 1:
            raise UnsupportedLayerError(f"{where}: only Concat along the channels (axis 1) is supported, got axis {axis}")
        return Concat(axis=-1)
    if t == "Flatten":
        return _flatten(b, layer)
    if t == "Eltwise":
        return _eltwise(b, layer)
    if t == "Pooling":
        return _pooling(b, layer)
    return None


SUPPORTED = ("Input", "Convolution", "InnerProduct", "Pooling", "ReLU", "Sigmoid", "TanH", "LRN", "Dropout",
             "Softmax", "Concat", "Eltwise", "BatchNorm", "Scale", "Flatten", "Split")


def convert(net: Any, weights: Mapping[str, list[numpy.ndarray]] | None = None, *, path: str = "<net>",
            weights_path: str | None = None, fold_batchnorm: bool = True) -> Model:
    """An lrpflow Model (layout NCHW) of a parsed ``NetParameter`` with weights by layer name."""
    from lrpflow.io.canonize import fold_batchnorm as fold

    if net.layers:
        raise ModelFormatError(f"{path}: old V1 'layers' definitions are not supported; upgrade the net to 'layer'")
    phase = net.state.phase if net.HasField("state") else TEST
    if phase != TEST:
        raise ModelFormatError(f"{path}: the net's state asks for phase TRAIN; only TEST nets can be explained")
    level, stages = int(net.state.level), list(net.state.stage)
    layers = [lay for lay in net.layer if _included(lay, TEST, level, stages)]
    inp = _input_layer(net, path)
    if inp is not None:
        layers.insert(0, inp)
    order, uses = _layers_with_splits(layers)
    b = _Builder(path, weights or {}, weights_path)
    info = CaffeInfo(prototxt=path, weights=weights_path)
    version: dict[str, tuple[int, int]] = {}  # blob → (producing layer position, top index)
    producer_type: dict[tuple[int, int], str] = {}
    for pos_index, (layer, pos) in enumerate(order):
        if layer is None:  # a Split Caffe inserts: no node, the blobs keep their producer
            prev = info.layers[-1]
            info.layers.append(CaffeLayer(pos_index, f"{prev.name}_split", "Split", prev.node, prev.tops))
            continue
        t = layer.type
        where = b.where(layer)
        node: str | None = None
        group = 1
        if t in DATA_LAYERS:
            raise UnsupportedLayerError(f"{where}: data layers cannot be explained; use a deploy prototxt with an Input "
                                        "layer or input/input_shape fields")
        if t == "Input":
            if b.input_name is not None or len(layer.top) != 1:
                raise UnsupportedLayerError(f"{where}: exactly one input blob is supported")
            shapes = layer.input_param.shape
            if len(shapes) != 1:
                raise ModelFormatError(f"{where}: needs one input shape, got {len(shapes)}")
            dims = tuple(int(d) for d in shapes[0].dim)
            if len(dims) == 4:
                if min(dims[1:]) < 1:
                    raise ModelFormatError(f"{where}: input shape {dims} has empty dimensions")
                b.input_shape = (dims[2], dims[3], dims[1])
                info.input_chw = (dims[1], dims[2], dims[3])
            elif len(dims) == 2:
                b.input_shape = (dims[1],)
            else:
                raise UnsupportedLayerError(f"{where}: input shape {dims} must be (N, C, H, W) or (N, D)")
            b.input_name = layer.top[0]
            info.input_blob = layer.top[0]
            b.shape[b.input_name] = b.input_shape
            b.blob_node[layer.top[0]] = b.input_name
        elif b.input_name is None:
            raise ModelFormatError(f"{where}: comes before any Input layer or net-level input")
        elif t == "Split":
            src = b.bottom(layer)
            for top in layer.top:
                b.blob_node[top] = src
            node = src
        elif t == "Convolution":
            conv, group = _convolution(b, layer)
            node = b.add(layer, conv, [b.bottom(layer)])
        elif t == "InnerProduct":
            node = _inner_product(b, layer)
        elif t == "BatchNorm":
            node = b.add(layer, _batchnorm(b, layer), [b.bottom(layer)])
        elif t == "Scale":
            gamma, beta = _scale(b, layer)
            src = b.bottom(layer)
            ver = version.get(layer.bottom[0])
            if b.kind.get(src) == "BatchNorm" and ver is not None and uses.get(ver, 0) == 1 \
                    and producer_type.get(ver) == "BatchNorm":
                old = b.nodes[src].layer  # BatchNorm + Scale: one BatchNorm with γ and β
                merged = BatchNorm(old.channels, gamma=gamma, beta=beta, mean=old.mean, var=old.var, eps=old.eps)
                b.nodes[src] = Node(src, merged, b.nodes[src].inputs)
                b.kind[src] = "BatchNorm+Scale"
                node = src
            else:
                c = gamma.shape[0]
                node = b.add(layer, BatchNorm(c, gamma=gamma, beta=beta, eps=0.0), [src])
        else:
            lrp_layer = _simple(b, layer)
            if lrp_layer is None:
                raise UnsupportedLayerError(f"{where}: unsupported layer type {t!r}; supported: {', '.join(SUPPORTED)}")
            inputs = [b.bottom(layer, k) for k in range(len(layer.bottom))]
            if not inputs:
                raise ModelFormatError(f"{where}: has no bottom blob")
            node = b.add(layer, lrp_layer, inputs)
        if t not in ("Input", "Split"):
            if len(layer.top) != 1:
                raise UnsupportedLayerError(f"{where}: layers with {len(layer.top)} tops are not supported")
            b.blob_node[layer.top[0]] = node  # type: ignore[assignment]
        for j, top in enumerate(layer.top):
            version[top] = (pos, j)
            producer_type[(pos, j)] = t
        info.layers.append(CaffeLayer(pos_index, layer.name, t, node, tuple(layer.top), group))
    if b.input_name is None or b.input_shape is None:
        raise ModelFormatError(f"{path}: the net has no Input layer and no input/input_shape fields")
    if not b.nodes:
        raise ModelFormatError(f"{path}: the net has no layers after its input")
    last = next(lay for lay in reversed(info.layers) if lay.node is not None and lay.type != "Input")
    output = b.blob_node[last.tops[0]] if last.tops else last.node
    model = Model(list(b.nodes.values()), output=output, input_shape=b.input_shape, input_name=b.input_name,
                  layout="NCHW" if len(b.input_shape) == 3 else "NHWC")
    if fold_batchnorm:
        model = fold(model)
        names = {n.name for n in model.nodes}
        renamed = {part: n for n in names if "+" in n for part in n.split("+")}
        info.layers = [CaffeLayer(lay.index, lay.name, lay.type, renamed.get(lay.node, lay.node) if lay.node not in names
                                  else lay.node, lay.tops, lay.group) if lay.node is not None and lay.node != b.input_name
                       else lay for lay in info.layers]
    model.caffe = info  # type: ignore[attr-defined]
    return model
