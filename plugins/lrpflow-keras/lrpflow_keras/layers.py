"""Keras layers → lrpflow nodes: one converter per Keras class, and the tables of what is refused.

A converter gets a :class:`Ctx` (the layer's config, its weights, its input tensors) and adds
lrpflow nodes to the :class:`Builder`, returning the node that holds the layer's output. Layouts
stay Keras' channels-last; 1-D layers run as 2-D ones on a height-1 map between two reshapes;
``padding="same"`` pads like Keras (the odd extra row/column at the bottom/right).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy

from lrpflow.errors import LrpflowError, ModelFormatError, UnsupportedLayerError
from lrpflow.graph import Node
from lrpflow.layers import (
    ELU, SELU, Add, Average, AvgPool, BatchNorm, ClippedReLU, Concat, Conv2d, Crop, Embedding, Flatten, Gelu,
    GlobalAvgPool, HardSigmoid, HardSwish, LayerNorm, LeakyReLU, Linear, MaxPool, Multiply, Pad, Permute, PReLU,
    ReLU, Reshape, Resize, Sigmoid, SiLU, SoftMax, Softplus, Subtract, Tanh,
)
from lrpflow.layers.product import is_gate

# ------------------------------------------------------------------------------------
# Keras layers that wait for an lrpflow core layer: each is refused with this message.
# ONE table: wire an entry by moving it into CONVERTERS (layers) or ACTIVATIONS
# (activation names). Empty at present (every layer of the Keras issue is wired).
PENDING_LAYERS: dict[str, str] = {}
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

    def __init__(self, path: str, input_name: str, input_shape: tuple[int, ...], keras_major: int = 3,
                 product_rule: str = "gate") -> None:
        self.path = path
        #: the Keras major version that wrote the file (``hard_sigmoid`` changed between 2 and 3)
        self.keras_major = keras_major
        #: LRP of Multiply: ``"gate"`` (hold the gating operand constant) or ``"uniform"``
        self.product_rule = product_rule
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
    """``n`` positive ints from an int or a list of ``n`` ints (kernel sizes, strides, pool sizes)."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v] * n
    if (isinstance(v, (list, tuple)) and len(v) == n
            and all(isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= 1 << 20 for a in v)):
        return tuple(int(a) for a in v)
    raise ModelFormatError(f"{ctx.where}: {what} must be a positive int or {n} of them, got {v!r}")


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
    "swish": SiLU,
    "silu": SiLU,
    # keras.activations.gelu(x, approximate=False) is what the name "gelu" deserializes to in
    # Keras 2 and 3 (the tanh approximation needs a custom function, which a file cannot name)
    "gelu": lambda: Gelu("none"),
    "hard_swish": HardSwish,  # Keras 3: x · relu6(x + 3)/6
    "hard_silu": HardSwish,
    "hard_sigmoid": None,  # version-dependent, see _hard_sigmoid
}


def _hard_sigmoid(ctx: Ctx) -> HardSigmoid:
    """Keras 3: ``relu6(x + 3)/6`` (α = 1/6); Keras 2 / tf.keras: ``clip(0.2·x + 0.5, 0, 1)``."""
    return HardSigmoid(1 / 6, 0.5) if ctx.b.keras_major >= 3 else HardSigmoid(0.2, 0.5)


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
    if name == "hard_sigmoid":
        layer = _hard_sigmoid(ctx)
    elif factory is None:
        return x
    else:
        layer = factory()
    return ctx.b.add(f"{ctx.name}/{name}" if ctx.cls != "Activation" else ctx.name, layer, [x])


# --- converters -----------------------------------------------------------------------------


def _with_height1(ctx: Ctx, x: str, body: Callable[[str], str]) -> str:
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
    check_activation(ctx, ctx.get("activation"))
    x = ctx.one_input()
    use_bias = bool(ctx.get("use_bias", True))
    ws = ctx.vars(["kernel", "bias"] if use_bias else ["kernel"])
    kernel = ws[0]
    if kernel.ndim != rank + 2:
        raise ModelFormatError(f"{ctx.where}: kernel of shape {kernel.shape}, expected rank {rank + 2}")
    if rank == 1:
        kernel = kernel[None]
    kh, kw, dg, n = kernel.shape  # Keras' grouped kernel: (kh, kw, C_in/groups, filters), as lrpflow's
    d = dg * groups
    if groups < 1 or n % groups or ctx.b.shape(x)[-1] != d:
        raise ModelFormatError(f"{ctx.where}: kernel of shape {kernel.shape} with groups={groups} does not fit "
                               f"inputs of shape {ctx.b.shape(x)}")
    bias = ws[1] if use_bias else numpy.zeros(n, dtype=kernel.dtype)
    strides = _tuple(ctx.get("strides", 1), rank, "strides", ctx)
    strides2 = (1, strides[0]) if rank == 1 else strides

    if str(ctx.get("padding", "valid")).lower() == "causal" and rank != 1:
        raise ctx.fail("padding='causal' exists for Conv1D only")

    def body(h: str) -> str:
        pads = _pads2(ctx, ctx.b.shape(h)[:2], (kh, kw), strides2)
        layer = Conv2d(kh, kw, d, n, stride=strides2, padding=pads, weight=kernel, bias=bias, groups=groups)
        return ctx.b.add(ctx.name, layer, [h])

    y = _with_height1(ctx, x, body) if rank == 1 else body(x)
    return add_activation(ctx, ctx.get("activation"), y)


def _depthwise_layer(ctx: Ctx, x: str, kernel: numpy.ndarray, bias: numpy.ndarray | None, name: str) -> str:
    """Keras' depthwise kernel ``(kh, kw, C, m)`` as ``Conv2d(groups=C)``: output channel ``c·m + j``
    is input channel ``c`` through ``kernel[..., c, j]``, which is the kernel reshaped to
    ``(kh, kw, 1, C·m)`` in lrpflow's grouped layout."""
    ctx.channels_last()
    _dilation(ctx, 2)
    if kernel.ndim != 4:
        raise ModelFormatError(f"{ctx.where}: depthwise kernel of shape {kernel.shape}, expected (kh, kw, C, m)")
    kh, kw, c, m = kernel.shape
    if ctx.b.shape(x)[-1:] != (c,) or len(ctx.b.shape(x)) != 3:
        raise ModelFormatError(f"{ctx.where}: depthwise kernel of shape {kernel.shape} does not fit inputs of "
                               f"shape {ctx.b.shape(x)}")
    strides = _tuple(ctx.get("strides", 1), 2, "strides", ctx)
    pads = _pads2(ctx, ctx.b.shape(x)[:2], (kh, kw), strides)
    b = numpy.zeros(c * m, dtype=kernel.dtype) if bias is None else bias
    layer = Conv2d(kh, kw, c, c * m, stride=strides, padding=pads, weight=kernel.reshape(kh, kw, 1, c * m),
                   bias=b, groups=c)
    return ctx.b.add(name, layer, [x])


def depthwise_conv(ctx: Ctx) -> str:
    """DepthwiseConv2D (``depth_multiplier`` m): one ``Conv2d(groups=C)`` with C·m outputs."""
    check_activation(ctx, ctx.get("activation"))
    x = ctx.one_input()
    use_bias = bool(ctx.get("use_bias", True))
    ws = ctx.vars(["depthwise_kernel", "bias"] if use_bias else ["depthwise_kernel"])
    y = _depthwise_layer(ctx, x, ws[0], ws[1] if use_bias else None, ctx.name)
    return add_activation(ctx, ctx.get("activation"), y)


def separable_conv(ctx: Ctx) -> str:
    """SeparableConv2D: the depthwise conv (strides, padding; no bias) as node ``<name>/depthwise``,
    then the 1×1 pointwise conv with the bias as node ``<name>`` (a following BN folds into it)."""
    check_activation(ctx, ctx.get("activation"))
    x = ctx.one_input()
    use_bias = bool(ctx.get("use_bias", True))
    ws = ctx.vars(["depthwise_kernel", "pointwise_kernel", "bias"] if use_bias
                  else ["depthwise_kernel", "pointwise_kernel"])
    dw, pw = ws[0], ws[1]
    h = _depthwise_layer(ctx, x, dw, None, f"{ctx.name}/depthwise")
    if pw.ndim != 4 or pw.shape[:3] != (1, 1, ctx.b.shape(h)[-1]):
        raise ModelFormatError(f"{ctx.where}: pointwise kernel of shape {pw.shape}, expected (1, 1, "
                               f"{ctx.b.shape(h)[-1]}, filters)")
    n = pw.shape[3]
    bias = ws[2] if use_bias else numpy.zeros(n, dtype=pw.dtype)
    y = ctx.b.add(ctx.name, Conv2d(1, 1, pw.shape[2], n, weight=pw, bias=bias), [h])
    return add_activation(ctx, ctx.get("activation"), y)


def multiply(ctx: Ctx) -> str:
    """Multiply: products of two activations, chained left to right for more inputs.

    LRP (``product_rule="gate"``, the default; the ONNX reader's convention): an operand produced
    by a sigmoid-like gate (:func:`lrpflow.layers.product.is_gate`) is held constant and
    relevance flows through the other one; with no gate or two, the uniform split.
    ``product_rule="uniform"``: each operand gets half (AttnLRP).
    """
    if len(ctx.inputs) < 2:
        raise ModelFormatError(f"{ctx.where}: needs at least two inputs, got {len(ctx.inputs)}")
    b = ctx.b
    acc = ctx.inputs[0]
    for k, other in enumerate(ctx.inputs[1:], start=1):
        gates = [is_gate(b.nodes, acc), is_gate(b.nodes, other)]
        gate = None if gates[0] == gates[1] or b.product_rule == "uniform" else (0 if gates[0] else 1)
        name = ctx.name if k == len(ctx.inputs) - 1 else f"{ctx.name}/{k}"
        acc = b.add(name, Multiply(gate=gate), [acc, other])
    return acc


def upsampling(ctx: Ctx) -> str:
    """UpSampling2D: nearest (Keras repeats rows and columns) or bilinear (``ops.image.resize``
    with half-pixel centres, no antialiasing: TF's and torch's ``align_corners=False``)."""
    ctx.channels_last()
    x = ctx.one_input()
    shape = ctx.b.shape(x)
    if len(shape) != 3:
        raise ctx.fail(f"inputs of shape {shape}; UpSampling2D needs (H, W, C)")
    size = _tuple(ctx.get("size", 2), 2, "size", ctx)
    mode = str(ctx.get("interpolation", "nearest")).lower()
    out = (shape[0] * size[0], shape[1] * size[1])
    if mode == "nearest":
        layer = Resize(shape[:2], out, scale=size, mode="nearest", coordinates="asymmetric", nearest="floor")
    elif mode == "bilinear":
        layer = Resize(shape[:2], out, scale=size, mode="linear", coordinates="half_pixel")
    else:
        raise ctx.fail(f"interpolation={mode!r} is not supported (nearest, bilinear)")
    return ctx.b.add(ctx.name, layer, [x])


def layer_norm(ctx: Ctx) -> str:
    """LayerNormalization over trailing axes (``axis=-1``, or e.g. ``[1, 2, 3]``: all of a sample)."""
    x = ctx.one_input()
    shape = ctx.b.shape(x)
    rank = len(shape) + 1  # with the batch axis, as Keras counts
    axis = ctx.get("axis", -1)
    axes = axis if isinstance(axis, list) else [axis]
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise ModelFormatError(f"{ctx.where}: axis must be an int or a list of ints, got {axis!r}")
    norm = sorted({a + rank if a < 0 else a for a in axes})
    k = len(norm)
    if norm != list(range(rank - k, rank)) or norm[0] < 1:
        raise ctx.fail(f"axis={axis!r}: only trailing axes of a sample are supported (e.g. -1, or "
                       f"{list(range(1, rank))} for the whole sample)")
    if ctx.get("rms_scaling", False):
        raise ctx.fail("rms_scaling=True is not supported")
    scale, center = bool(ctx.get("scale", True)), bool(ctx.get("center", True))
    names = (["gamma"] if scale else []) + (["beta"] if center else [])
    ws = dict(zip(names, ctx.vars(names))) if names else {}
    nshape = tuple(shape[len(shape) - k:])
    gamma = ws.get("gamma", numpy.ones(nshape))
    beta = ws.get("beta", numpy.zeros(nshape))
    if tuple(gamma.shape) != nshape or tuple(beta.shape) != nshape:
        raise ModelFormatError(f"{ctx.where}: gamma/beta of shapes {gamma.shape}/{beta.shape}, expected {nshape}")
    return ctx.b.add(ctx.name, LayerNorm(nshape, gamma=gamma, beta=beta, eps=float(ctx.get("epsilon", 1e-3))), [x])


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
    out = None
    if isinstance(v, int):
        out = (v, v, v, v)
    elif isinstance(v, list) and len(v) == 2:
        if all(isinstance(a, int) for a in v):
            out = (v[0], v[0], v[1], v[1])
        elif all(isinstance(a, list) and len(a) == 2 and all(isinstance(c, int) for c in a) for a in v):
            out = (v[0][0], v[0][1], v[1][0], v[1][1])
    if out is not None and all(0 <= a <= 1 << 20 for a in out):
        return out
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
    "DepthwiseConv2D": depthwise_conv,
    "SeparableConv2D": separable_conv,
    "SeparableConvolution2D": separable_conv,
    "Multiply": multiply,
    "UpSampling2D": upsampling,
    "LayerNormalization": layer_norm,
}

#: every Keras class the reader accepts (for docs and error messages)
SUPPORTED_LAYERS: tuple[str, ...] = tuple(sorted({*CONVERTERS, *IDENTITY_LAYERS, "InputLayer", *MODEL_CLASSES}))


def convert_layer_body(b: Builder, cls: str, cfg: dict[str, Any], name: str, weights: Any, inputs: list[str]) -> str:
    """Add the nodes of one (non-model) Keras layer applied to ``inputs``; the output tensor's node name."""
    ctx = Ctx(b, cls, cfg, name, weights, inputs)
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
    except LrpflowError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
        raise ModelFormatError(f"{ctx.where}: bad config: {type(err).__name__}: {err}") from None
