"""Keras model JSON + weights → an lrpflow :class:`~lrpflow.graph.Model` (no TensorFlow, no Keras).

Sequential and Functional models (any DAG of layers with one input and one output, shared
layers, nested models used as layers) become one lrpflow DAG. Keras layers map onto lrpflow
layers in the tables below; an ``activation=`` inside a layer becomes its own node
``"<layer>/<activation>"`` after the layer's node (named like the Keras layer). Layouts stay
Keras' own channels-last (``(N, H, W, C)``, ``(N, T, C)``, ``(N, F)``): 1-D layers run as their
2-D counterparts on a height-1 map between two reshapes. ``padding="same"`` pads like Keras
(the odd extra row/column at the bottom/right). BatchNormalization is folded into the
preceding Conv/Dense by default (``fold_batchnorm=False`` keeps it as an affine layer).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy

from lrpflow.errors import LrpflowError, ModelFormatError, UnsupportedLayerError
from lrpflow.graph import Model, Node
from lrpflow.layers import (
    ELU, SELU, Add, Average, AvgPool, BatchNorm, ClippedReLU, Concat, Conv2d, Crop, Embedding, Flatten,
    GlobalAvgPool, LeakyReLU, Linear, MaxPool, Pad, Permute, PReLU, ReLU, Reshape, Sigmoid, SoftMax, Softplus,
    Subtract, Tanh,
)
from lrpflow_keras.container import MAX_WEIGHTS_BYTES, open_keras_zip, open_legacy_h5
from lrpflow_keras.weights import Keras3Weights, LegacyWeights

#: deepest nesting of models inside models we follow
MAX_DEPTH = 32

# ------------------------------------------------------------------------------------
# Keras layers that need lrpflow core layers being added elsewhere (grouped/depthwise
# Conv2d, products of activations, Resize, LayerNorm, GELU/SiLU). Until they are wired
# here, each is refused with this message. ONE table: wire an entry by moving it into
# CONVERTERS (layers) or ACTIVATIONS (activation names).
PENDING_LAYERS: dict[str, str] = {
    "DepthwiseConv2D": "a depthwise Conv2d (lrpflow.layers.conv with groups)",
    "SeparableConv2D": "a depthwise Conv2d (lrpflow.layers.conv with groups) followed by a 1×1 conv",
    "Conv2D(groups>1)": "a grouped Conv2d (lrpflow.layers.conv with groups)",
    "Multiply": "a product-of-activations layer (gating)",
    "UpSampling2D": "a Resize/Upsample layer",
    "LayerNormalization": "a LayerNorm layer",
    "activation:swish": "a SiLU/Swish activation layer",
    "activation:silu": "a SiLU/Swish activation layer",
    "activation:gelu": "a GELU activation layer",
    "activation:hard_swish": "a HardSwish activation layer",
    "activation:hard_silu": "a HardSwish activation layer",
}
# ------------------------------------------------------------------------------------

#: layers refused for good (with the reason)
REFUSED: dict[str, str] = {
    "Lambda": "it holds Python code, which lrpflow never runs; rebuild the model without Lambda layers",
    "Conv2DTranspose": "transposed convolutions are not supported by the Keras reader",
    "TFOpLambda": "it holds a TensorFlow op, which lrpflow cannot run",
}

IDENTITY_LAYERS = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                             "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Masking"})
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})


def _pending(key: str, where: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{where}: {key.replace('activation:', 'activation ')!r} is not supported yet: "
                                 f"it needs {PENDING_LAYERS[key]} in lrpflow")


# --- graph builder ---------------------------------------------------------------------


class Builder:
    """Collects lrpflow nodes and the output shape of every tensor."""

    def __init__(self, path: str, input_name: str, input_shape: tuple[int, ...]) -> None:
        self.path = path
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {input_name: input_shape}
        self.input_name = input_name

    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.shapes:
            name = f"{base}#{k}"
            k += 1
        return name

    def add(self, name: str, layer: Any, inputs: list[str]) -> str:
        name = self.unique(name)
        try:
            shape = tuple(layer.output_shape(*(self.shapes[i] for i in inputs)))
        except LrpflowError as err:
            raise ModelFormatError(f"{self.path}: layer {name!r}: {err}") from None
        self.nodes.append(Node(name, layer, tuple(inputs)))
        self.shapes[name] = shape
        return name

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.shapes[tensor]


class Ctx:
    """One Keras layer being converted: its config, weights and place in the graph."""

    def __init__(self, b: Builder, cls: str, cfg: dict[str, Any], name: str, weights: Any, inputs: list[str]) -> None:
        self.b, self.cls, self.cfg, self.name, self.weights, self.inputs = b, cls, cfg, name, weights, inputs
        self.where = f"{b.path}: layer {name!r} ({cls})"

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(key, default)

    def vars(self, names: list[str]) -> list[numpy.ndarray]:
        return self.weights.get(self.name, names)

    def one_input(self) -> str:
        if len(self.inputs) != 1:
            raise ModelFormatError(f"{self.where}: expects one input, got {len(self.inputs)}")
        return self.inputs[0]

    def channels_last(self) -> None:
        fmt = self.get("data_format", "channels_last") or "channels_last"
        if fmt != "channels_last":
            raise UnsupportedLayerError(f"{self.where}: data_format={fmt!r}; only channels_last is supported")

    def fail(self, msg: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{self.where}: {msg}")


def _tuple(v: Any, n: int, what: str, ctx: Ctx) -> tuple[int, ...]:
    if isinstance(v, (int, float)):
        return (int(v),) * n
    if isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(a, (int, float)) for a in v):
        return tuple(int(a) for a in v)
    raise ModelFormatError(f"{ctx.where}: {what} must be an int or {n} ints, got {v!r}")


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """Keras/TF "same" padding: total ``max((⌈n/s⌉ − 1)·s + k − n, 0)``, the extra one at the end."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _pads2(ctx: Ctx, hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int]) -> tuple[int, int, int, int]:
    padding = str(ctx.get("padding", "valid")).lower()
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        t, b = same_pads(hw[0], kernel[0], strides[0])
        l, r = same_pads(hw[1], kernel[1], strides[1])
        return (t, b, l, r)
    if padding == "causal":
        return (0, 0, kernel[1] - 1, 0)
    raise ctx.fail(f"padding={padding!r} is not supported (valid, same, causal)")


def _dilation(ctx: Ctx, n: int) -> None:
    d = ctx.get("dilation_rate", 1)
    if _tuple(d, n, "dilation_rate", ctx) != (1,) * n:
        raise ctx.fail(f"dilation_rate={d!r} is not supported (only 1)")


# --- activations ----------------------------------------------------------------------------


def _activation_name(act: Any, ctx: Ctx) -> str:
    if act is None:
        return "linear"
    if isinstance(act, dict):  # a serialized function: {"class_name": "function", "config": "relu"} or a layer
        inner = act.get("config")
        if isinstance(inner, str):
            return inner.lower()
        if isinstance(inner, dict) and isinstance(inner.get("name"), str) and act.get("class_name") in ("function", None):
            return inner["name"].lower()
        raise ctx.fail(f"activation {act!r} is not supported")
    return str(act).lower()


#: Keras activation names → lrpflow layer factories (None: no node)
ACTIVATIONS: dict[str, Callable[[], Any] | None] = {
    "linear": None,
    "relu": ReLU,
    "relu6": lambda: ClippedReLU(max_value=6.0),
    "softmax": SoftMax,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "elu": ELU,
    "selu": SELU,
    "softplus": Softplus,
    "leaky_relu": lambda: LeakyReLU(0.2),  # keras.activations.leaky_relu's default slope
}


def check_activation(ctx: Ctx, act: Any) -> str:
    """The activation's name, or the refusal (before any weight is read)."""
    name = _activation_name(act, ctx)
    if f"activation:{name}" in PENDING_LAYERS:
        raise _pending(f"activation:{name}", ctx.where)
    if name not in ACTIVATIONS:
        raise ctx.fail(f"activation {name!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})")
    return name


def add_activation(ctx: Ctx, act: Any, x: str) -> str:
    name = check_activation(ctx, act)
    factory = ACTIVATIONS[name]
    if factory is None:
        return x
    return ctx.b.add(f"{ctx.name}/{name}" if ctx.cls != "Activation" else ctx.name, factory(), [x])


# --- converters -----------------------------------------------------------------------------


def _with_height1(ctx: Ctx, x: str, body: Callable[[str], str], out_rank: int = 2) -> str:
    """Run a 2-D body on ``(T, C)`` as ``(1, T, C)`` and reshape back (1-D layers)."""
    b = ctx.b
    t, c = b.shape(x)
    h = b.add(f"{ctx.name}/to2d", Reshape((1, t, c)), [x])
    y = body(h)
    shape = b.shape(y)
    if len(shape) == 3:
        return b.add(f"{ctx.name}/to1d", Reshape(shape[1:]), [y])
    return y


def conv(ctx: Ctx, rank: int) -> str:
    ctx.channels_last()
    _dilation(ctx, rank)
    groups = int(ctx.get("groups", 1) or 1)
    if groups != 1:
        raise _pending("Conv2D(groups>1)", ctx.where)
    check_activation(ctx, ctx.get("activation"))
    x = ctx.one_input()
    use_bias = bool(ctx.get("use_bias", True))
    ws = ctx.vars(["kernel", "bias"] if use_bias else ["kernel"])
    kernel = ws[0]
    if kernel.ndim != rank + 2:
        raise ModelFormatError(f"{ctx.where}: kernel of shape {kernel.shape}, expected rank {rank + 2}")
    if rank == 1:
        kernel = kernel[None]
    kh, kw, d, n = kernel.shape
    bias = ws[1] if use_bias else numpy.zeros(n, dtype=kernel.dtype)
    strides = _tuple(ctx.get("strides", 1), rank, "strides", ctx)
    strides2 = (1, strides[0]) if rank == 1 else strides

    def body(h: str) -> str:
        hw = ctx.b.shape(h)[:2]
        if str(ctx.get("padding", "valid")).lower() == "causal" and rank != 1:
            raise ctx.fail("padding='causal' exists for Conv1D only")
        pads = _pads2(ctx, hw, (kh, kw), strides2)
        if rank == 1 and str(ctx.get("padding")).lower() == "same":
            pads = (0, 0, *same_pads(hw[1], kw, strides2[1]))
        layer = Conv2d(kh, kw, d, n, stride=strides2, padding=pads, weight=kernel, bias=bias)
        return ctx.b.add(ctx.name, layer, [h])

    y = _with_height1(ctx, x, body) if rank == 1 else body(x)
    return add_activation(ctx, ctx.get("activation"), y)


def dense(ctx: Ctx) -> str:
    check_activation(ctx, ctx.get("activation"))
    x = ctx.one_input()
    use_bias = bool(ctx.get("use_bias", True))
    ws = ctx.vars(["kernel", "bias"] if use_bias else ["kernel"])
    kernel = ws[0]
    if kernel.ndim != 2:
        raise ModelFormatError(f"{ctx.where}: kernel of shape {kernel.shape}, expected (inputs, units)")
    m, n = kernel.shape
    bias = ws[1] if use_bias else numpy.zeros(n, dtype=kernel.dtype)
    shape = ctx.b.shape(x)
    if len(shape) == 1:
        y = ctx.b.add(ctx.name, Linear(m, n, weight=kernel, bias=bias), [x])
    elif len(shape) in (2, 3):  # Dense on the last axis of a sequence/image: a 1×1 convolution
        def body(h: str) -> str:
            return ctx.b.add(ctx.name, Conv2d(1, 1, m, n, weight=kernel[None, None], bias=bias), [h])
        y = _with_height1(ctx, x, body) if len(shape) == 2 else body(x)
    else:
        raise ctx.fail(f"Dense on inputs of shape {shape} is not supported")
    return add_activation(ctx, ctx.get("activation"), y)


def batchnorm(ctx: Ctx) -> str:
    x = ctx.one_input()
    shape = ctx.b.shape(x)
    axis = ctx.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, len(shape)):
        raise ctx.fail(f"axis={axis!r}: only the last (channel) axis is supported")
    scale, center = bool(ctx.get("scale", True)), bool(ctx.get("center", True))
    names = (["gamma"] if scale else []) + (["beta"] if center else []) + ["moving_mean", "moving_variance"]
    ws = dict(zip(names, ctx.vars(names)))
    c = shape[-1]
    ones, zeros = numpy.ones(c), numpy.zeros(c)
    layer = BatchNorm(c, gamma=ws.get("gamma", ones), beta=ws.get("beta", zeros), mean=ws["moving_mean"],
                      var=ws["moving_variance"], eps=float(ctx.get("epsilon", 1e-3)))
    return ctx.b.add(ctx.name, layer, [x])


def pool(ctx: Ctx, rank: int, kind: str) -> str:
    ctx.channels_last()
    x = ctx.one_input()
    size = _tuple(ctx.get("pool_size", 2), rank, "pool_size", ctx)
    strides = ctx.get("strides")
    strides = size if strides is None else _tuple(strides, rank, "strides", ctx)
    size2, strides2 = ((1, size[0]), (1, strides[0])) if rank == 1 else (size, strides)

    def body(h: str) -> str:
        pads = _pads2(ctx, ctx.b.shape(h)[:2], size2, strides2)
        if kind == "avg":
            if any(pads):
                raise ctx.fail("padding='same' that pads is not supported for average pooling "
                               "(Keras leaves the padding out of the mean)")
            return ctx.b.add(ctx.name, AvgPool(*size2, stride=strides2), [h])
        return ctx.b.add(ctx.name, MaxPool(*size2, stride=strides2, padding=pads), [h])

    return _with_height1(ctx, x, body) if rank == 1 else body(x)


def global_pool(ctx: Ctx, rank: int, kind: str) -> str:
    ctx.channels_last()
    x = ctx.one_input()
    b = ctx.b
    h = b.add(f"{ctx.name}/to2d", Reshape((1, *b.shape(x))), [x]) if rank == 1 else x
    hh, ww, c = b.shape(h)
    if kind == "avg":
        y = b.add(ctx.name, GlobalAvgPool(), [h])
    else:
        y = b.add(ctx.name, MaxPool(hh, ww), [h])
        y = b.add(f"{ctx.name}/flat", Reshape((c,)), [y])
    if ctx.get("keepdims", False):
        y = b.add(f"{ctx.name}/keepdims", Reshape((1,) * rank + (c,)), [y])
    return y


def merge(ctx: Ctx, cls: Any) -> str:
    if len(ctx.inputs) < 2:
        raise ModelFormatError(f"{ctx.where}: needs at least two inputs, got {len(ctx.inputs)}")
    return ctx.b.add(ctx.name, cls(), ctx.inputs)


def concatenate(ctx: Ctx) -> str:
    return ctx.b.add(ctx.name, Concat(int(ctx.get("axis", -1))), ctx.inputs)


def relu_layer(ctx: Ctx) -> str:
    mv, ns, th = ctx.get("max_value"), float(ctx.get("negative_slope", 0.0) or 0.0), float(ctx.get("threshold", 0.0) or 0.0)
    layer = ReLU() if mv is None and ns == 0 and th == 0 else ClippedReLU(mv, ns, th)
    return ctx.b.add(ctx.name, layer, [ctx.one_input()])


def leaky_relu(ctx: Ctx) -> str:
    slope = ctx.get("negative_slope", ctx.get("alpha", 0.3))
    return ctx.b.add(ctx.name, LeakyReLU(float(slope)), [ctx.one_input()])


def prelu(ctx: Ctx) -> str:
    (alpha,) = ctx.vars(["alpha"])
    return ctx.b.add(ctx.name, PReLU(alpha), [ctx.one_input()])


def elu_layer(ctx: Ctx) -> str:
    return ctx.b.add(ctx.name, ELU(float(ctx.get("alpha", 1.0))), [ctx.one_input()])


def softmax_layer(ctx: Ctx) -> str:
    x = ctx.one_input()
    axis = ctx.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, len(ctx.b.shape(x))):
        raise ctx.fail(f"axis={axis!r}: only the last axis is supported")
    return ctx.b.add(ctx.name, SoftMax(), [x])


def activation_layer(ctx: Ctx) -> str:
    return add_activation(ctx, ctx.get("activation"), ctx.one_input())


def flatten(ctx: Ctx) -> str:
    ctx.channels_last()
    return ctx.b.add(ctx.name, Flatten(), [ctx.one_input()])


def reshape(ctx: Ctx) -> str:
    target = ctx.get("target_shape")
    if not isinstance(target, list) or not all(isinstance(a, int) for a in target):
        raise ModelFormatError(f"{ctx.where}: target_shape must be a list of ints, got {target!r}")
    return ctx.b.add(ctx.name, Reshape(target), [ctx.one_input()])


def permute(ctx: Ctx) -> str:
    return ctx.b.add(ctx.name, Permute(ctx.get("dims")), [ctx.one_input()])


def _pairs2(v: Any, ctx: Ctx, what: str) -> tuple[int, int, int, int]:
    if isinstance(v, int):
        return (v, v, v, v)
    if isinstance(v, list) and len(v) == 2:
        if all(isinstance(a, int) for a in v):
            return (v[0], v[0], v[1], v[1])
        if all(isinstance(a, list) and len(a) == 2 for a in v):
            return (int(v[0][0]), int(v[0][1]), int(v[1][0]), int(v[1][1]))
    raise ModelFormatError(f"{ctx.where}: {what} must be an int, 2 ints or 2 pairs, got {v!r}")


def zero_padding(ctx: Ctx) -> str:
    ctx.channels_last()
    return ctx.b.add(ctx.name, Pad(_pairs2(ctx.get("padding", 1), ctx, "padding")), [ctx.one_input()])


def cropping(ctx: Ctx) -> str:
    ctx.channels_last()
    return ctx.b.add(ctx.name, Crop(_pairs2(ctx.get("cropping", 0), ctx, "cropping")), [ctx.one_input()])


def embedding(ctx: Ctx) -> str:
    (w,) = ctx.vars(["embeddings"])
    if ctx.get("mask_zero", False):
        raise ctx.fail("mask_zero=True is not supported")
    return ctx.b.add(ctx.name, Embedding(w), [ctx.one_input()])


#: Keras class name → converter
CONVERTERS: dict[str, Callable[[Ctx], str]] = {
    "Dense": dense,
    "Conv1D": lambda c: conv(c, 1),
    "Conv2D": lambda c: conv(c, 2),
    "Convolution1D": lambda c: conv(c, 1),
    "Convolution2D": lambda c: conv(c, 2),
    "BatchNormalization": batchnorm,
    "MaxPooling1D": lambda c: pool(c, 1, "max"),
    "MaxPooling2D": lambda c: pool(c, 2, "max"),
    "MaxPool1D": lambda c: pool(c, 1, "max"),
    "MaxPool2D": lambda c: pool(c, 2, "max"),
    "AveragePooling1D": lambda c: pool(c, 1, "avg"),
    "AveragePooling2D": lambda c: pool(c, 2, "avg"),
    "AvgPool1D": lambda c: pool(c, 1, "avg"),
    "AvgPool2D": lambda c: pool(c, 2, "avg"),
    "GlobalAveragePooling1D": lambda c: global_pool(c, 1, "avg"),
    "GlobalAveragePooling2D": lambda c: global_pool(c, 2, "avg"),
    "GlobalAvgPool1D": lambda c: global_pool(c, 1, "avg"),
    "GlobalAvgPool2D": lambda c: global_pool(c, 2, "avg"),
    "GlobalMaxPooling1D": lambda c: global_pool(c, 1, "max"),
    "GlobalMaxPooling2D": lambda c: global_pool(c, 2, "max"),
    "GlobalMaxPool1D": lambda c: global_pool(c, 1, "max"),
    "GlobalMaxPool2D": lambda c: global_pool(c, 2, "max"),
    "Add": lambda c: merge(c, Add),
    "Subtract": lambda c: merge(c, Subtract),
    "Average": lambda c: merge(c, Average),
    "Concatenate": concatenate,
    "Activation": activation_layer,
    "ReLU": relu_layer,
    "LeakyReLU": leaky_relu,
    "PReLU": prelu,
    "ELU": elu_layer,
    "Softmax": softmax_layer,
    "Flatten": flatten,
    "Reshape": reshape,
    "Permute": permute,
    "ZeroPadding2D": zero_padding,
    "Cropping2D": cropping,
    "Embedding": embedding,
}

#: every Keras class the reader accepts (for docs and error messages)
SUPPORTED_LAYERS: tuple[str, ...] = tuple(sorted({*CONVERTERS, *IDENTITY_LAYERS, "InputLayer", *MODEL_CLASSES}))


# --- models ---------------------------------------------------------------------------------


def _layer_cfg(entry: dict[str, Any], where: str) -> tuple[str, dict[str, Any], str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ModelFormatError(f"{where}: a layer entry must be an object with 'class_name'")
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{where}: layer {entry.get('class_name')!r} has no config object")
    name = entry.get("name") or cfg.get("name")
    if not isinstance(name, str) or not name:
        raise ModelFormatError(f"{where}: a {entry['class_name']} layer has no name")
    return entry["class_name"], cfg, name


def _input_shape(cfg: dict[str, Any], where: str) -> tuple[int, ...]:
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if not isinstance(shape, list) or len(shape) < 2:
        raise ModelFormatError(f"{where}: InputLayer {cfg.get('name')!r} has no batch_shape")
    sample = shape[1:]
    if not all(isinstance(s, int) and s > 0 for s in sample):
        raise UnsupportedLayerError(f"{where}: input {cfg.get('name')!r} has shape {shape}: lrpflow needs every "
                                    "dimension but the batch to be known; rebuild the model with a fixed input shape")
    return tuple(sample)


def convert_layer(b: Builder, cls: str, cfg: dict[str, Any], name: str, weights: Any, inputs: list[str],
                  depth: int) -> str:
    """Add the nodes of one Keras layer applied to ``inputs``; the output tensor's node name."""
    ctx = Ctx(b, cls, cfg, name, weights, inputs)
    if cls in MODEL_CLASSES:
        if depth >= MAX_DEPTH:
            raise ModelFormatError(f"{b.path}: models nested deeper than {MAX_DEPTH}")
        return convert_model({"class_name": cls, "config": cfg}, b, weights.child(name), inputs, f"{name}/", depth + 1)
    if cls in IDENTITY_LAYERS:
        return ctx.one_input()
    if cls in PENDING_LAYERS:
        raise _pending(cls, ctx.where)
    if cls in REFUSED:
        raise ctx.fail(f"not supported: {REFUSED[cls]}")
    fn = CONVERTERS.get(cls)
    if fn is None:
        raise ctx.fail(f"unsupported Keras layer class {cls!r}; supported: {', '.join(SUPPORTED_LAYERS)}")
    try:
        return fn(ctx)
    except (LrpflowError, KeyError):
        raise
    except (TypeError, ValueError, IndexError) as err:
        raise ModelFormatError(f"{ctx.where}: bad config: {type(err).__name__}: {err}") from None


def _history(t: Any, where: str) -> tuple[str, int, int]:
    """``(layer, node_index, tensor_index)`` of one inbound tensor (Keras 3 dict or Keras 2 list)."""
    if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__":
        h = (t.get("config") or {}).get("keras_history")
    elif isinstance(t, list) and len(t) >= 3 and isinstance(t[0], str):
        h = t[:3]
    else:
        h = None
    if not (isinstance(h, list) and len(h) == 3 and isinstance(h[0], str)
            and isinstance(h[1], int) and isinstance(h[2], int)):
        raise ModelFormatError(f"{where}: cannot read an inbound tensor {str(t)[:200]}")
    return h[0], h[1], h[2]


def _inbound(node: Any, where: str) -> list[tuple[str, int, int]]:
    if isinstance(node, dict):  # Keras 3: {"args": [tensor | [tensors]], "kwargs": {...}}
        args = node.get("args") or []
        if not args:
            raise ModelFormatError(f"{where}: an inbound node without arguments")
        first = args[0]
        tensors = first if isinstance(first, list) and first and not isinstance(first[0], str) else [first]
        return [_history(t, where) for t in tensors]
    if isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
        return [_history(t, where) for t in node]
    raise ModelFormatError(f"{where}: cannot read inbound node {str(node)[:200]}")


def _io_list(v: Any, where: str) -> list[tuple[str, int, int]]:
    if isinstance(v, list) and len(v) == 3 and isinstance(v[0], str):
        v = [v]
    if not isinstance(v, list):
        raise ModelFormatError(f"{where}: input_layers/output_layers must be lists")
    return [_history(t, where) for t in v]


def convert_model(config: dict[str, Any], b: Builder | None, weights: Any, inputs: list[str] | None, prefix: str,
                  depth: int = 0, path: str = "") -> Any:
    """Convert a Sequential/Functional config; at the top (``b is None``) return ``(Builder, output)``."""
    cls, cfg = config.get("class_name"), config.get("config")
    top = b is None
    where = path or (b.path if b else "")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
        raise ModelFormatError(f"{where}: model {cls!r} has no list of layers")
    entries = cfg["layers"]
    weights.bind(entries)
    parsed = [_layer_cfg(e, where) for e in entries]
    if cls == "Sequential":
        x = None
        rest = parsed
        if parsed and parsed[0][0] == "InputLayer":
            shape = _input_shape(parsed[0][1], where)
            rest = parsed[1:]
            in_name = parsed[0][2]
        else:
            first_cfg = parsed[0][1] if parsed else {}
            batch = first_cfg.get("batch_input_shape", first_cfg.get("batch_shape", cfg.get("build_input_shape")))
            shape = _input_shape({"batch_shape": batch, "name": "input"}, where)
            in_name = "input"
        if b is None:
            b = Builder(where, in_name, shape)
            x = in_name
        else:
            if inputs is None or len(inputs) != 1:
                raise ModelFormatError(f"{where}: a nested Sequential takes one input")
            x = inputs[0]
            if tuple(b.shape(x)) != shape:
                raise ModelFormatError(f"{where}: nested model {cfg.get('name')!r} expects inputs of shape {shape}, "
                                       f"gets {b.shape(x)}")
        for lcls, lcfg, lname in rest:
            if lcls in MODEL_CLASSES:
                x = convert_layer(b, lcls, lcfg, lname, weights, [x], depth)
            else:
                x = _convert_named(b, lcls, lcfg, lname, prefix + lname, weights, [x], depth)
        return (b, x) if top else x
    if cls not in ("Functional", "Model"):
        raise UnsupportedLayerError(f"{where}: model class {cls!r} is not supported (Sequential, Functional)")
    ins = _io_list(cfg.get("input_layers"), where)
    outs = _io_list(cfg.get("output_layers"), where)
    if len(ins) != 1 or len(outs) != 1:
        raise UnsupportedLayerError(f"{where}: model {cfg.get('name')!r} has {len(ins)} inputs and {len(outs)} outputs; "
                                    "lrpflow models take one input and give one output")
    by_name = {p[2]: p for p in parsed}
    tensors: dict[tuple[str, int, int], str] = {}
    in_layer = by_name.get(ins[0][0])
    if in_layer is None or in_layer[0] != "InputLayer":
        raise ModelFormatError(f"{where}: input layer {ins[0][0]!r} is not an InputLayer of the model")
    shape = _input_shape(in_layer[1], where)
    if b is None:
        b = Builder(where, in_layer[2], shape)
        tensors[(in_layer[2], 0, 0)] = in_layer[2]
    else:
        if inputs is None or len(inputs) != 1:
            raise ModelFormatError(f"{where}: a nested model takes one input")
        if tuple(b.shape(inputs[0])) != shape:
            raise ModelFormatError(f"{where}: nested model {cfg.get('name')!r} expects inputs of shape {shape}, "
                                   f"gets {b.shape(inputs[0])}")
        tensors[(in_layer[2], 0, 0)] = inputs[0]
    pending = []
    for entry, (lcls, lcfg, lname) in zip(entries, parsed):
        if lcls == "InputLayer":
            if lname != in_layer[2]:
                raise UnsupportedLayerError(f"{where}: a second input {lname!r}; lrpflow models take one input")
            continue
        nodes = entry.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise ModelFormatError(f"{where}: layer {lname!r}: inbound_nodes must be a list")
        for k, node in enumerate(nodes):
            pending.append((lcls, lcfg, lname, k, _inbound(node, f"{where}: layer {lname!r}")))
    while pending:  # in dependency order (a shared layer's later calls may come after other layers)
        progress, later = False, []
        for lcls, lcfg, lname, k, hist in pending:
            if not all(h in tensors for h in hist):
                later.append((lcls, lcfg, lname, k, hist))
                continue
            ins_ = [tensors[h] for h in hist]
            node_name = prefix + lname + (f"#{k}" if k else "")
            if lcls in MODEL_CLASSES:
                out = convert_layer(b, lcls, lcfg, lname, weights, ins_, depth)
            else:
                out = _convert_named(b, lcls, lcfg, lname, node_name, weights, ins_, depth)
            tensors[(lname, k, 0)] = out
            progress = True
        if not progress:
            missing = sorted({h[0] for *_, hist in later for h in hist if h not in tensors})
            raise ModelFormatError(f"{where}: layers {sorted({p[2] for p in later})} wait for tensors of "
                                   f"{missing} that nothing produces (a cycle or a missing layer)")
        pending = later
    out_key = outs[0]
    if out_key not in tensors:
        raise ModelFormatError(f"{where}: output {out_key} is not produced by any layer")
    return (b, tensors[out_key]) if top else tensors[out_key]


def _convert_named(b: Builder, cls: str, cfg: dict[str, Any], lname: str, node_name: str, weights: Any,
                   inputs: list[str], depth: int) -> str:
    ctx_weights = _NameMap(weights, node_name, lname)
    return convert_layer(b, cls, cfg, node_name, ctx_weights, inputs, depth)


class _NameMap:
    """Look weights up by the Keras layer name, whatever the node is called."""

    def __init__(self, inner: Any, node_name: str, layer_name: str) -> None:
        self.inner, self.node_name, self.layer_name = inner, node_name, layer_name

    def get(self, name: str, names: list[str]) -> Any:
        return self.inner.get(self.layer_name if name == self.node_name else name, names)

    def child(self, name: str) -> Any:
        return self.inner.child(self.layer_name if name == self.node_name else name)


# --- reading ----------------------------------------------------------------------------------


def _model_config(config: Any, path: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: the model config must be a JSON object")
    if config.get("class_name") not in MODEL_CLASSES:
        raise UnsupportedLayerError(f"{path}: model class {config.get('class_name')!r} is not supported "
                                    "(Sequential, Functional); subclassed models have no graph to read")
    return config


def read(path: str | os.PathLike[str], fold_batchnorm: bool = True, max_bytes: int = MAX_WEIGHTS_BYTES) -> Model:
    """Read a Keras 3 ``.keras`` file or a legacy Keras/tf.keras HDF5 ``.h5`` model file.

    ``fold_batchnorm``: merge each BatchNormalization into the Conv/Dense before it (exact, see
    :func:`lrpflow.io.canonize.fold_batchnorm`); ``max_bytes``: the largest weights file accepted.
    """
    import zipfile

    from lrpflow.io.canonize import fold_batchnorm as fold

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        config, _, f = open_keras_zip(path, max_bytes)
        weights: Any = Keras3Weights(f, path, max_bytes)
    else:
        config, f = open_legacy_h5(path, max_bytes)
        weights = LegacyWeights(f.get("model_weights", f), path, os.path.getsize(path))
    try:
        with f:
            config = _model_config(config, path)
            try:
                b, out = convert_model(config, None, weights, None, "", 0, path)
            except RecursionError:
                raise ModelFormatError(f"{path}: model config nested too deeply") from None
    except (OSError, RuntimeError) as err:
        raise ModelFormatError(f"{path}: damaged Keras file: {type(err).__name__}: {err}") from None
    nodes = b.nodes
    if out == b.input_name or not nodes:
        raise ModelFormatError(f"{path}: the model has no layers lrpflow computes")
    model = Model(nodes, output=out, input_shape=b.shapes[b.input_name], input_name=b.input_name, layout="NHWC")
    model.source_format = "keras"  # type: ignore[attr-defined]
    return fold(model) if fold_batchnorm else model
