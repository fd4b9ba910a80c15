"""Constant folding of ONNX sub-graphs through ``onnx.reference.ReferenceEvaluator``.

Every node whose inputs are all constants (initializers, ``Constant`` nodes, shapes of
activations, earlier folded results) is evaluated once by ONNX's own reference
implementation, in the graph's opset, instead of by hand-written numpy. Before a node runs,
the size of its result is bounded — by ONNX shape inference (with data propagation) on
the one-node graph and, for the operators whose result size is set by input *values*
(ConstantOfShape, Expand, Tile, Range), from those values — so a hostile file cannot make
the reader allocate out of proportion to the model.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy

#: a folded constant may hold this many elements at least (16 Mi), or twice the model's initializers
MIN_FOLD_ELEMENTS = 1 << 24


class FoldError(Exception):
    """A constant node could not be folded (message says why)."""


def _one_node_model(node: Any, args: Sequence[numpy.ndarray | None], opset: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(numpy.asarray(a), name) for name, a in zip(node.input, args) if name]
    outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output if o]
    graph = helper.make_graph([node], "fold", [], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _value_bound(op: str, args: Sequence[numpy.ndarray | None]) -> int | None:
    """Elements of the result of operators whose size is set by input values (None: not one of them)."""
    def ints(a: Any) -> list[int]:
        return [int(v) for v in numpy.asarray(a).ravel()]

    if op == "ConstantOfShape":
        return math.prod(max(d, 0) for d in ints(args[0]))
    if op == "Expand":
        shape = ints(args[1])
        x = numpy.asarray(args[0]).shape
        rank = max(len(shape), len(x))
        a = (1,) * (rank - len(x)) + tuple(x)
        b = (1,) * (rank - len(shape)) + tuple(shape)
        return math.prod(max(p, q) for p, q in zip(a, b))
    if op == "Tile":
        return math.prod(d * max(r, 0) for d, r in zip(numpy.asarray(args[0]).shape, ints(args[1])))
    if op == "Range":
        start, limit, delta = (float(numpy.asarray(a).ravel()[0]) for a in args[:3])
        if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
            raise FoldError(f"Range({start}, {limit}, {delta}) is not a finite range")
        return max(0, math.ceil((limit - start) / delta))
    return None


def fold(node: Any, args: Sequence[numpy.ndarray | None], opset: int, limit: int) -> list[numpy.ndarray]:
    """The outputs of ``node`` on constant inputs ``args`` (None: an omitted optional input)."""
    from onnx import shape_inference
    from onnx.reference import ReferenceEvaluator

    bound = _value_bound(node.op_type, args)
    if bound is not None and bound > limit:
        raise FoldError(f"its constant result would hold {bound} elements (limit {limit})")
    model = _one_node_model(node, args, opset)
    if bound is None:
        try:
            inferred = shape_inference.infer_shapes(model, data_prop=True)
            for out in inferred.graph.output:
                dims = out.type.tensor_type.shape.dim
                if dims and all(d.HasField("dim_value") for d in dims):
                    size = math.prod(d.dim_value for d in dims)
                    if size > limit:
                        raise FoldError(f"its constant result would hold {size} elements (limit {limit})")
        except FoldError:
            raise
        except Exception:  # noqa: BLE001 - inference is only a bound; the evaluation below decides
            pass
    try:
        if node.op_type == "GatherElements" and args[0] is not None and args[1] is not None:
            outs = [_gather_elements(node, args[0], args[1])]  # onnx's reference fails on smaller indices (BERT)
        else:
            outs = ReferenceEvaluator(model).run(None, {})
    except Exception as err:  # noqa: BLE001 - any failure of the reference implementation
        raise FoldError(f"constant folding failed: {type(err).__name__}: {err}") from err
    for o in outs:
        if numpy.asarray(o).size > limit:
            raise FoldError(f"its constant result holds {numpy.asarray(o).size} elements (limit {limit})")
    return [numpy.asarray(o) for o in outs]


def _gather_elements(node: Any, data: numpy.ndarray, index: numpy.ndarray) -> numpy.ndarray:
    """ONNX GatherElements: ``out[i][j] = data[i][index[i][j]]`` (axis 1), indices smaller than the data on
    the other axes allowed — onnx 1.x's reference evaluator reshapes wrongly there."""
    axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 0)
    data, index = numpy.asarray(data), numpy.asarray(index).astype(numpy.int64)
    axis = axis + data.ndim if axis < 0 else axis
    if index.ndim != data.ndim or any(i > d for k, (i, d) in enumerate(zip(index.shape, data.shape)) if k != axis):
        raise FoldError(f"GatherElements: indices of shape {index.shape} do not fit data of shape {data.shape}")
    size = data.shape[axis]
    if index.size and (index.min() < -size or index.max() >= size):
        raise FoldError(f"GatherElements: indices out of range [-{size}, {size})")
    sub = data[tuple(slice(None) if k == axis else slice(0, i) for k, i in enumerate(index.shape))]
    return numpy.take_along_axis(sub, numpy.where(index < 0, index + size, index), axis=axis)


def infer_shapes(proto: Any) -> dict[str, tuple[int | None, ...]]:
    """ONNX tensor name → shape (None for unknown dims) by ``onnx.shape_inference`` with data propagation."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are then taken from lrpflow's own bookkeeping
        return {}
    out = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return out
