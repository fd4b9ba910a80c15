"""Built-in layer types; registered through :func:`lrpflow_register_layers` like any plugin."""
from __future__ import annotations

from lrpflow.hookspecs import hookimpl
from lrpflow.layers.activation import Dropout, Identity, LeakyReLU, ReLU, Sigmoid, SoftMax, Tanh
from lrpflow.layers.activation_extra import ELU, SELU, ClippedReLU, PReLU, Softplus
from lrpflow.layers.base import Elementwise, Layer, LinearLike, ShapeLayer
from lrpflow.layers.bilinear import AddConstant, Broadcast, ConcatConstant, MatMul, MulConstant, Power, RMSNorm, Where
from lrpflow.layers.conv import Conv2d
from lrpflow.layers.deconv import ConvTranspose2d
from lrpflow.layers.dense import Linear
from lrpflow.layers.lrn import LRN
from lrpflow.layers.merge import Add, Concat
from lrpflow.layers.merge_extra import Average, Subtract
from lrpflow.layers.norm import BatchNorm
from lrpflow.layers.pool import AvgPool, GlobalAvgPool, MaxPool, SumPool
from lrpflow.layers.layernorm import LayerNorm
from lrpflow.layers.product import Multiply
from lrpflow.layers.reduce import Max, Mean
from lrpflow.layers.resize import Resize
from lrpflow.layers.select import PadEdges, Slice, Take
from lrpflow.layers.shape import Flatten, Pad, Reshape
from lrpflow.layers.shape_extra import Crop, Embedding, Permute
from lrpflow.layers.smooth import Clip, Erf, Gelu, HardSigmoid, HardSwish, SiLU

# toolbox-style aliases
Rect = ReLU
Convolution = Conv2d

__all__ = [
    "Layer", "LinearLike", "Elementwise", "ShapeLayer",
    "Linear", "Conv2d", "Convolution", "SumPool", "AvgPool", "MaxPool", "GlobalAvgPool",
    "Flatten", "Reshape", "Pad", "ReLU", "Rect", "LeakyReLU", "Tanh", "Sigmoid", "SoftMax",
    "BatchNorm", "Dropout", "Identity", "Add", "Concat", "LRN",
    "ClippedReLU", "PReLU", "ELU", "SELU", "Softplus", "Subtract", "Average", "Crop", "Permute", "Embedding",
    "ConvTranspose2d", "LayerNorm", "Multiply", "Mean", "Max", "PadEdges", "Resize", "Slice", "Take", "Clip", "Erf",
    "Gelu", "HardSigmoid", "HardSwish", "SiLU", "MatMul", "AddConstant", "MulConstant", "Broadcast", "Where", "ConcatConstant", "RMSNorm", "Power",
]

#: registry name → (class, aliases); names are snake_case, aliases include toolbox names
BUILTIN_LAYERS = {
    "linear": (Linear, ("dense",)),
    "conv2d": (Conv2d, ("convolution",)),
    "sum_pool": (SumPool, ("sumpool",)),
    "avg_pool": (AvgPool, ("avgpool", "average_pool")),
    "max_pool": (MaxPool, ("maxpool",)),
    "global_avg_pool": (GlobalAvgPool, ("globalavgpool",)),
    "flatten": (Flatten, ()),
    "reshape": (Reshape, ()),
    "pad": (Pad, ()),
    "relu": (ReLU, ("rect",)),
    "leaky_relu": (LeakyReLU, ("leakyrelu",)),
    "tanh": (Tanh, ()),
    "sigmoid": (Sigmoid, ()),
    "softmax": (SoftMax, ()),
    "batch_norm": (BatchNorm, ("batchnorm",)),
    "dropout": (Dropout, ()),
    "identity": (Identity, ()),
    "add": (Add, ()),
    "concat": (Concat, ()),
    "lrn": (LRN, ("local_response_norm",)),
    "clipped_relu": (ClippedReLU, ()),
    "prelu": (PReLU, ()),
    "elu": (ELU, ()),
    "selu": (SELU, ()),
    "softplus": (Softplus, ()),
    "subtract": (Subtract, ("sub",)),
    "average": (Average, ("mean_merge",)),
    "crop": (Crop, ("cropping",)),
    "permute": (Permute, ()),
    "embedding": (Embedding, ()),
    "conv_transpose2d": (ConvTranspose2d, ("deconvolution", "conv_transpose")),
    "layer_norm": (LayerNorm, ("layernorm",)),
    "multiply": (Multiply, ("mul",)),
    "mean": (Mean, ("reduce_mean",)),
    "max": (Max, ("reduce_max",)),
    "pad_edges": (PadEdges, ("reflection_pad", "replication_pad")),
    "resize": (Resize, ("upsample",)),
    "slice": (Slice, ()),
    "take": (Take, ()),
    "clip": (Clip, ("relu6",)),
    "erf": (Erf, ()),
    "gelu": (Gelu, ()),
    "hard_sigmoid": (HardSigmoid, ("hardsigmoid",)),
    "hard_swish": (HardSwish, ("hardswish",)),
    "silu": (SiLU, ("swish",)),
    "matmul": (MatMul, ("bilinear",)),
    "add_constant": (AddConstant, ()),
    "mul_constant": (MulConstant, ()),
    "broadcast": (Broadcast, ("expand",)),
    "where": (Where, ("mask_fill",)),
    "concat_constant": (ConcatConstant, ()),
    "rms_norm": (RMSNorm, ("rmsnorm",)),
    "power": (Power, ("pow",)),
}


@hookimpl
def lrpflow_register_layers(registry):  # noqa: ANN001 - typed in the hookspec
    for name, (cls, aliases) in BUILTIN_LAYERS.items():
        registry.add(name, cls, aliases=aliases)
