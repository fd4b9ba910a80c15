"""Small random networks for tests (chains, residual DAGs, concat DAGs)."""
from __future__ import annotations

import numpy

import lrpflow
from lrpflow.graph import Model, Node
from lrpflow.layers import (
    Add, AvgPool, BatchNorm, Concat, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool, ReLU, SumPool, Tanh,
)


def randomize_biases(model, rng, scale=0.3, zero=False):
    for layer in model.layers:
        if "bias" in layer.param_names:
            layer.set_params(bias=numpy.zeros_like(layer.bias) if zero else rng.normal(0, scale, layer.bias.shape))
    return model


def mlp(rng, sizes=(6, 8, 5, 3), act=ReLU):
    layers = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(m, n, rng=rng))
        if i < len(sizes) - 2:
            layers.append(act())
    return lrpflow.Sequential(layers)


def cnn(rng, channels=2, size=10, classes=4, pool=MaxPool):
    layers = [Conv2d(3, 3, channels, 4, padding=1, rng=rng), ReLU(), pool(2, 2),
              Conv2d(3, 3, 4, 6, stride=2, rng=rng), ReLU(), Flatten()]
    net = lrpflow.Sequential(layers)
    flat = net.infer_shapes((size, size, channels))[net.nodes[-1].name][0]
    layers.append(Linear(flat, classes, rng=rng))
    return lrpflow.Sequential(layers, input_shape=(size, size, channels))


def residual(rng, channels=3, size=8, classes=3):
    """conv → relu → [conv → relu → conv] + skip → relu → avgpool → GAP → linear."""
    nodes = [
        Node("stem", Conv2d(3, 3, channels, 4, padding=1, rng=rng), ("input",)),
        Node("stem_relu", ReLU(), ("stem",)),
        Node("b1", Conv2d(3, 3, 4, 4, padding=1, rng=rng), ("stem_relu",)),
        Node("b1_relu", ReLU(), ("b1",)),
        Node("b2", Conv2d(3, 3, 4, 4, padding=1, rng=rng), ("b1_relu",)),
        Node("add", Add(), ("b2", "stem_relu")),
        Node("add_relu", ReLU(), ("add",)),
        Node("pool", AvgPool(2, 2), ("add_relu",)),
        Node("gap", GlobalAvgPool(), ("pool",)),
        Node("fc", Linear(4, classes, rng=rng), ("gap",)),
    ]
    return Model(nodes, input_shape=(size, size, channels))


def concat_net(rng, channels=2, size=8, classes=3):
    nodes = [
        Node("a", Conv2d(3, 3, channels, 3, padding=1, rng=rng), ("input",)),
        Node("a_relu", ReLU(), ("a",)),
        Node("b", Conv2d(1, 1, channels, 2, rng=rng), ("input",)),
        Node("b_tanh", Tanh(), ("b",)),
        Node("cat", Concat(axis=-1), ("a_relu", "b_tanh")),
        Node("bn", BatchNorm(5, gamma=rng.uniform(0.5, 1.5, 5), beta=rng.normal(0, 0.1, 5),
                             mean=rng.normal(0, 0.1, 5), var=rng.uniform(0.5, 1.5, 5)), ("cat",)),
        Node("pool", SumPool(2, 2), ("bn",)),
        Node("flat", Flatten(), ("pool",)),
        Node("fc", Linear(5 * (size // 2) ** 2, classes, rng=rng), ("flat",)),
    ]
    return Model(nodes, input_shape=(size, size, channels))
