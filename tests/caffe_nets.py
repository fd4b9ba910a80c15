"""Small Caffe nets for the lrpflow-caffe tests, written with the plugin's shipped schema.

Each builder returns ``(prototxt text, {layer name: [numpy blobs]})``; :func:`write_net`
writes the deploy ``.prototxt`` and a ``.caffemodel`` (optionally as a training snapshot: a
Data layer, Split layers, a SoftmaxWithLoss and ``phase: TRAIN`` rules, as Caffe saves them).
"""
from __future__ import annotations

import numpy

LENET = """
name: "LeNetLike"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 6 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv2" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "tanh1" type: "TanH" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 7 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""

#: a zoo-like DAG: grouped conv, BatchNorm + Scale, LRN, Eltwise SUM (with coefficients), AVE and
#: MAX pooling with ceil sizes, Concat, in-place layers, Dropout, Sigmoid, leaky ReLU, Flatten
ZOO = """
name: "ZooLike"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 17 dim: 17 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2a" type: "Convolution" bottom: "pool1" top: "conv2a"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2a" type: "ReLU" bottom: "conv2a" top: "conv2a" relu_param { negative_slope: 0.1 } }
layer { name: "conv2b" type: "Convolution" bottom: "pool1" top: "conv2b"
  convolution_param { num_output: 6 kernel_size: 1 bias_term: false } }
layer { name: "sum" type: "Eltwise" bottom: "conv2a" bottom: "conv2b" top: "sum"
  eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "sum2" type: "Eltwise" bottom: "sum" bottom: "conv2b" top: "sum2" }
layer { name: "pool2" type: "Pooling" bottom: "sum2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "pool2" bottom: "pool2" top: "cat" }
layer { name: "bn2" type: "BatchNorm" bottom: "cat" top: "cat" }
layer { name: "sig" type: "Sigmoid" bottom: "cat" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "fc1" type: "InnerProduct" bottom: "flat" top: "fc1" inner_product_param { num_output: 9 } }
layer { name: "relu3" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2" inner_product_param { num_output: 12 } }
layer { name: "gpool_in" type: "Pooling" bottom: "pool1" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "prob" type: "Softmax" bottom: "fc2" top: "prob" }
"""


def lenet_weights(rng: numpy.random.Generator) -> dict[str, list[numpy.ndarray]]:
    return {
        "conv1": [rng.normal(0, 0.4, (4, 3, 3, 3)), rng.normal(0, 0.1, (4,))],
        "conv2": [rng.normal(0, 0.4, (6, 4, 2, 3)), rng.normal(0, 0.1, (6,))],
        "ip1": [rng.normal(0, 0.3, (10, 6 * 6 * 3)), rng.normal(0, 0.1, (10,))],
        "ip2": [rng.normal(0, 0.5, (7, 10)), rng.normal(0, 0.1, (7,))],
    }


def zoo_weights(rng: numpy.random.Generator) -> dict[str, list[numpy.ndarray]]:
    sf = 2.0
    return {
        "conv1": [rng.normal(0, 0.4, (8, 3, 3, 3)), rng.normal(0, 0.1, (8,))],
        "bn1": [rng.normal(0, 0.2, (8,)) * sf, rng.uniform(0.5, 2.0, (8,)) * sf, numpy.array([sf])],
        "scale1": [rng.uniform(0.5, 1.5, (8,)), rng.normal(0, 0.1, (8,))],
        "conv2a": [rng.normal(0, 0.4, (6, 4, 3, 3)), rng.normal(0, 0.1, (6,))],
        "conv2b": [rng.normal(0, 0.4, (6, 8, 1, 1))],
        "bn2": [rng.normal(0, 0.2, (12,)), rng.uniform(0.5, 2.0, (12,)), numpy.array([1.0])],
        "fc1": [rng.normal(0, 0.3, (9, 12 * 3 * 3)), rng.normal(0, 0.1, (9,))],
        "fc2": [rng.normal(0, 0.5, (12, 9)), rng.normal(0, 0.1, (12,))],
    }


def _blob(pb: object, arr: numpy.ndarray, legacy: bool) -> object:
    blob = pb.BlobProto()  # type: ignore[attr-defined]
    a = numpy.asarray(arr, dtype=numpy.float32)
    if legacy:  # the old 4-D fields, padded with leading 1s
        dims = (1,) * (4 - a.ndim) + a.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(a.shape)
    blob.data.extend(a.ravel().tolist())
    return blob


def caffemodel_bytes(prototxt: str, weights: dict[str, list[numpy.ndarray]], *, snapshot: bool = False,
                     legacy: bool = False) -> bytes:
    """A binary NetParameter with the weights by layer name; ``snapshot``: as a training net saves it."""
    from google.protobuf import text_format

    from lrpflow_caffe import caffe_subset_pb2 as pb

    net = pb.NetParameter()
    text_format.Parse(prototxt, net)
    out = pb.NetParameter(name=net.name)
    if snapshot:
        data = out.layer.add(name="train_data", type="Data")
        data.top.extend(["data", "label"])
        data.include.add(phase=pb.TRAIN)
        data.data_param.source = "train_lmdb"
        data.data_param.batch_size = 4
    for layer in net.layer:
        if layer.type == "Input" and snapshot:
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        if snapshot:
            new.phase = pb.TRAIN
        for arr in weights.get(layer.name, []):
            new.blobs.append(_blob(pb, arr, legacy))
        if snapshot and layer.type == "Convolution":  # a Split Caffe inserted, as saved in snapshots
            split = out.layer.add(name=f"{layer.top[0]}_{layer.name}_0_split", type="Split", phase=pb.TRAIN)
            split.bottom.append(layer.top[0])
            split.top.extend([f"{layer.top[0]}_split_0", f"{layer.top[0]}_split_1"])
    if snapshot:
        loss = out.layer.add(name="loss", type="SoftmaxWithLoss", phase=pb.TRAIN)
        loss.bottom.extend([net.layer[-1].bottom[0], "label"])
        loss.top.append("loss")
    return out.SerializeToString()


def write_net(dirpath: object, name: str, prototxt: str, weights: dict[str, list[numpy.ndarray]], **kw: object) -> tuple[str, str]:
    """Write ``<name>.prototxt`` and ``<name>.caffemodel`` into ``dirpath``; return both paths."""
    import os

    proto = os.path.join(str(dirpath), f"{name}.prototxt")
    model = os.path.join(str(dirpath), f"{name}.caffemodel")
    with open(proto, "w") as f:
        f.write(prototxt)
    with open(model, "wb") as f:
        f.write(caffemodel_bytes(prototxt, weights, **kw))  # type: ignore[arg-type]
    return proto, model
