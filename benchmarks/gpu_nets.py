"""Networks for the GPU check, built in lrpflow with seeded random weights, and their PyTorch twins.

Nothing here reads a file: the GPU machine has no ``../shared``. Shapes follow the
LRP Toolbox's LeNet-5 (``models/MNIST/LeNet-5.txt``), the benchmark MLP
(784-1296-1296-1296-10) and torchvision's VGG-16; ``vgg_small`` and ``resnet_small``
are VGG- and ResNet-style nets small enough to compare every rule on numpy and cupy.
"""
from __future__ import annotations

from typing import Any

import numpy

import lrpflow
from lrpflow.graph import Model, Node
from lrpflow.layers import (
    Add, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool, ReLU, SumPool,
)

#: torchvision's VGG-16 ("D"): output channels of each 3×3 convolution, "M" a 2×2 max pool
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _conv(rng: numpy.random.Generator, k: int, cin: int, cout: int, dtype: Any, **kw: Any) -> Conv2d:
    w = rng.standard_normal((k, k, cin, cout), dtype=numpy.float32) * numpy.float32((2.0 / (k * k * cin)) ** 0.5)
    b = rng.normal(0.0, 0.05, cout).astype(numpy.float32)
    return Conv2d(k, k, cin, cout, weight=w.astype(dtype, copy=False), bias=b.astype(dtype), **kw)


def _dense(rng: numpy.random.Generator, m: int, n: int, dtype: Any) -> Linear:
    w = rng.standard_normal((m, n), dtype=numpy.float32) * numpy.float32((2.0 / m) ** 0.5)
    b = rng.normal(0.0, 0.05, n).astype(numpy.float32)
    return Linear(m, n, weight=w.astype(dtype, copy=False), bias=b.astype(dtype))


def lenet5(seed: int = 0, dtype: Any = numpy.float64) -> lrpflow.Sequential:
    """The toolbox's LeNet-5 layout, (N, 32, 32, 1) → 10, random weights."""
    rng = numpy.random.default_rng(seed)
    layers = [_conv(rng, 5, 1, 10, dtype), ReLU(), SumPool(2, 2),
              _conv(rng, 5, 10, 25, dtype), ReLU(), SumPool(2, 2),
              _conv(rng, 4, 25, 100, dtype), ReLU(), SumPool(2, 2),
              _conv(rng, 1, 100, 10, dtype), Flatten()]
    return lrpflow.Sequential(layers, input_shape=(32, 32, 1))


def mlp(sizes: tuple[int, ...] = (784, 1296, 1296, 1296, 10), seed: int = 0, dtype: Any = numpy.float64) -> lrpflow.Sequential:
    """Dense ReLU network, (N, sizes[0]) → sizes[-1]."""
    rng = numpy.random.default_rng(seed)
    layers: list[Any] = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(_dense(rng, m, n, dtype))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return lrpflow.Sequential(layers, input_shape=(sizes[0],))


def vgg(config: tuple[Any, ...] = VGG16, size: int = 224, channels: int = 3, hidden: int = 4096, classes: int = 1000,
        width: float = 1.0, seed: int = 0, dtype: Any = numpy.float32) -> lrpflow.Sequential:
    """VGG: 3×3 convolutions (padding 1) + ReLU, 2×2 max pools, then three dense layers.

    ``width`` scales every channel count (VGG-16 at ``width=1``, 224×224, 1000 classes).
    """
    rng = numpy.random.default_rng(seed)
    layers: list[Any] = []
    cin, s = channels, size
    for v in config:
        if v == "M":
            layers.append(MaxPool(2, 2))
            s //= 2
        else:
            cout = max(1, int(round(v * width)))
            layers += [_conv(rng, 3, cin, cout, dtype, padding=1), ReLU()]
            cin = cout
    layers += [Flatten(), _dense(rng, s * s * cin, hidden, dtype), ReLU(), _dense(rng, hidden, hidden, dtype), ReLU(),
               _dense(rng, hidden, classes, dtype)]
    return lrpflow.Sequential(layers, input_shape=(size, size, channels))


def vgg_small(seed: int = 0, dtype: Any = numpy.float64) -> lrpflow.Sequential:
    """A VGG-style net for agreement checks: (N, 32, 32, 3) → 10."""
    return vgg((16, 16, "M", 32, 32, "M", 64, "M"), size=32, hidden=64, classes=10, seed=seed, dtype=dtype)


def resnet_small(seed: int = 0, dtype: Any = numpy.float64) -> Model:
    """A ResNet-style net: stem, two residual blocks (conv-BN-ReLU-conv-BN + skip), GAP, dense; (N, 16, 16, 3) → 10."""
    rng = numpy.random.default_rng(seed)

    def bn(c: int) -> BatchNorm:
        return BatchNorm(c, gamma=rng.uniform(0.5, 1.5, c), beta=rng.normal(0, 0.1, c), mean=rng.normal(0, 0.1, c),
                         var=rng.uniform(0.5, 1.5, c))

    nodes = [Node("stem", _conv(rng, 3, 3, 16, dtype, padding=1), ("input",)), Node("stem_relu", ReLU(), ("stem",))]
    prev, c = "stem_relu", 16
    for i, (cout, stride) in enumerate(((16, 1), (32, 2))):
        p = f"b{i}"
        nodes += [Node(f"{p}_c1", _conv(rng, 3, c, cout, dtype, padding=1, stride=stride), (prev,)),
                  Node(f"{p}_bn1", bn(cout), (f"{p}_c1",)), Node(f"{p}_r1", ReLU(), (f"{p}_bn1",)),
                  Node(f"{p}_c2", _conv(rng, 3, cout, cout, dtype, padding=1), (f"{p}_r1",)),
                  Node(f"{p}_bn2", bn(cout), (f"{p}_c2",))]
        skip = prev
        if stride != 1 or cout != c:
            nodes.append(Node(f"{p}_proj", _conv(rng, 1, c, cout, dtype, stride=stride), (prev,)))
            skip = f"{p}_proj"
        nodes += [Node(f"{p}_add", Add(), (f"{p}_bn2", skip)), Node(f"{p}_out", ReLU(), (f"{p}_add",))]
        prev, c = f"{p}_out", cout
    nodes += [Node("gap", GlobalAvgPool(), (prev,)), Node("fc", _dense(rng, c, 10, dtype), ("gap",))]
    return Model(nodes, input_shape=(16, 16, 3))


# --- PyTorch twins -------------------------------------------------------------------------


def to_torch(model: lrpflow.Sequential, torch: Any, device: Any, dtype: Any) -> Any:
    """The same network in PyTorch (NCHW), weights copied; SumPool = 2×2 AvgPool with its factor
    folded into the next weighted layer; the first Linear after a Flatten gets its rows
    permuted from NHWC to NCHW order."""
    nn = torch.nn
    mods: list[Any] = []
    scale = 1.0
    shapes = model.infer_shapes(tuple(model.input_shape))
    flat_from: tuple[int, ...] | None = None
    prev_shape = tuple(model.input_shape)
    for node in model.nodes:
        layer = node.layer
        name = type(layer).__name__
        if name == "Conv2d":
            kh, kw = layer.kernel
            m = nn.Conv2d(layer.d, layer.n, (kh, kw), stride=layer.stride, padding=(layer.pads[0], layer.pads[2]))
            w = numpy.asarray(lrpflow.backend.to_numpy(layer.weight), dtype=numpy.float64).transpose(3, 2, 0, 1) * scale
            m.weight.data = torch.as_tensor(w, dtype=dtype)
            m.bias.data = torch.as_tensor(numpy.asarray(lrpflow.backend.to_numpy(layer.bias), dtype=numpy.float64), dtype=dtype)
            if layer.pads[0] != layer.pads[1] or layer.pads[2] != layer.pads[3]:
                raise ValueError("asymmetric padding has no PyTorch Conv2d twin")
            mods.append(m)
            scale = 1.0
        elif name == "Linear":
            w = numpy.asarray(lrpflow.backend.to_numpy(layer.weight), dtype=numpy.float64) * scale
            if flat_from is not None and len(flat_from) == 3:
                h, wd, c = flat_from
                w = w.reshape(h, wd, c, -1).transpose(2, 0, 1, 3).reshape(h * wd * c, -1)
            m = nn.Linear(layer.m, layer.n)
            m.weight.data = torch.as_tensor(w.T.copy(), dtype=dtype)
            m.bias.data = torch.as_tensor(numpy.asarray(lrpflow.backend.to_numpy(layer.bias), dtype=numpy.float64), dtype=dtype)
            mods.append(m)
            flat_from, scale = None, 1.0
        elif name == "ReLU":
            mods.append(nn.ReLU())
        elif name == "MaxPool":
            mods.append(nn.MaxPool2d(layer.pool, layer.stride))
        elif name == "SumPool":
            mods.append(nn.AvgPool2d(layer.pool, layer.stride))
            scale *= (layer.pool[0] * layer.pool[1]) ** 0.5
        elif name == "Flatten":
            mods.append(nn.Flatten())
            flat_from = prev_shape
        else:
            raise ValueError(f"no PyTorch twin for {name}")
        prev_shape = shapes[node.name]
    return nn.Sequential(*mods).to(device=device, dtype=dtype).eval()


def nhwc_to_nchw(x: numpy.ndarray) -> numpy.ndarray:
    return numpy.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x
