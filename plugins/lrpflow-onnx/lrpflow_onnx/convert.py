"""Convert an ONNX graph (NCHW) into an lrpflow :class:`~lrpflow.graph.Model` (NHWC inside, NCHW outside).

The model's ``layout`` is the layout of the graph's input: ``"NCHW"``, or ``"NHWC"`` for
graphs (e.g. from TensorFlow) whose NHWC input is transposed to NCHW before use;
``explain()`` takes and returns that layout.

Every ONNX tensor is tracked as a :class:`Value`: the lrpflow node holding it, its ONNX
shape (one sample) and how lrpflow stores it:

- ``plain``: exactly as ONNX (vectors, and tensors that no NHWC layer needs);
- ``nhwc``: an ONNX (C, H, W) sample stored as (H, W, C);
- ``flat``: a vector stored with its entries permuted, ``stored[i] = onnx[perm[i]]``
  (a Flatten after a convolution flattens H, W, C where ONNX flattens C, H, W; the
  next Gemm/MatMul absorbs ``perm`` into its weight rows, so no extra layer is needed).

Tensors whose ONNX layout moves the batch axis or merges it with others (sequence-first attention,
window partitions) are held apart, as views of batch-first lrpflow tensors (:mod:`lrpflow_onnx.views`,
:mod:`lrpflow_onnx.ops_views`).

Layout changes that cannot be absorbed become explicit, exact shape layers
(:class:`~lrpflow_onnx.layers.Transpose`, :class:`~lrpflow_onnx.layers.Permute`,
Reshape). Only nodes that lead to the graph output are converted. Constants
(initializers, ``Constant`` nodes, shapes of activations and any arithmetic on them) are
folded by ONNX's reference evaluator (:mod:`lrpflow_onnx.fold`).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from lrpflow.errors import LrpflowError, ModelFormatError, UnsupportedLayerError
from lrpflow.graph import Model, Node
from lrpflow.io.files import check_model_file
from lrpflow.layers import Reshape
from lrpflow_onnx.fold import MIN_FOLD_ELEMENTS
from lrpflow_onnx.layers import Permute, Transpose

INPUT = "input"


@dataclass
class Value:
    """An ONNX tensor as lrpflow holds it (see the module doc)."""

    node: str
    shape: tuple[int, ...]  # ONNX sample shape (no batch axis)
    kind: str = "plain"  # plain | nhwc | flat
    perm: numpy.ndarray | None = None


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _sanitize(name: str) -> str:
    name = name.strip("/").replace("/", ".")
    return re.sub(r"[^A-Za-z0-9_.:+\-]", "_", name) or "node"


class Converter:
    """One conversion of an ONNX ``ModelProto``; use :func:`convert`."""

    def __init__(self, proto: Any, path: str = "<onnx>", input_shape: Sequence[int] | None = None,
                 product_rule: str = "gate", batch_size: int | None = None) -> None:
        self.proto = proto
        self.path = path
        self.graph = proto.graph
        self.opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.consts: dict[str, numpy.ndarray] = {}
        self.uses: dict[str, int] = {}
        self.names: set[str] = {INPUT}
        self.layers: dict[str, Any] = {}
        self.foldable_bias: set[str] = set()  # lrpflow nodes whose bias may absorb a following Add
        self.converted: dict[tuple[str, str, str], Value] = {}  # (node, kind, target kind) -> converted value
        self.batch: int | None = None
        self.fold_limit: int | None = None
        self.merged: dict[str, Value] = {}  # tensors whose batch axis a Reshape merged away (see ops._gather)
        self.views: dict[str, Any] = {}  # tensors whose ONNX layout moves the batch axis (lrpflow_onnx.views)
        self.view_cache: dict[Any, Any] = {}
        if product_rule not in ("gate", "uniform"):
            raise LrpflowError(f"product_rule must be 'gate' or 'uniform', got {product_rule!r}")
        self.product_rule = product_rule
        self.user_input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise LrpflowError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.user_batch = None if batch_size is None else int(batch_size)
        self.dynamic_batch = False

    # -- errors -------------------------------------------------------------
    def fail(self, node: Any, msg: str, cls: type[LrpflowError] = UnsupportedLayerError) -> LrpflowError:
        return cls(f"{self.path}: {node.op_type} node {node.name or node.output[0]!r}: {msg}")

    # -- values ---------------------------------------------------------------
    def add(self, base: str, layer: Any, inputs: Sequence[str]) -> str:
        name = _sanitize(base)
        k = 1
        while name in self.names:
            k += 1
            name = f"{_sanitize(base)}_{k}"
        self.names.add(name)
        self.nodes.append(Node(name, layer, tuple(inputs)))
        self.layers[name] = layer
        return name

    def stored_shape(self, v: Value) -> tuple[int, ...]:
        if v.kind == "nhwc":
            c, h, w = v.shape
            return (h, w, c)
        if v.kind == "flat":
            return (math.prod(v.shape),)
        return v.shape

    def as_nhwc(self, v: Value, base: str, node: Any) -> Value:
        """``v`` stored as NHWC (adding exact shape layers if needed; conversions are reused)."""
        if v.kind == "nhwc":
            return v
        if len(v.shape) != 3:
            raise self.fail(node, f"needs (N, C, H, W) input, got a tensor of shape (N, {', '.join(map(str, v.shape))})")
        hit = self.converted.get((v.node, v.kind, "nhwc"))
        if hit is not None:
            return hit
        c, h, w = v.shape
        if v.kind == "flat" and v.perm is None and h == 1 and w == 1:
            out = Value(self.add(f"{base}.to_nhwc", Reshape((1, 1, c)), [v.node]), v.shape, "nhwc")
        else:
            p = self.as_plain(v, base)
            out = Value(self.add(f"{base}.to_nhwc", Transpose((1, 2, 0)), [p.node]), v.shape, "nhwc")
            self.converted[(out.node, "nhwc", "plain")] = p
        self.converted[(v.node, v.kind, "nhwc")] = out
        return out

    def as_plain(self, v: Value, base: str) -> Value:
        """``v`` stored exactly in ONNX order (adding exact shape layers if needed; conversions are reused)."""
        if v.kind == "plain":
            return v
        hit = self.converted.get((v.node, v.kind, "plain"))
        if hit is not None:
            return hit
        if v.kind == "nhwc":
            out = Value(self.add(f"{base}.to_nchw", Transpose((2, 0, 1)), [v.node]), v.shape, "plain")
            self.converted[(out.node, "plain", "nhwc")] = v
        else:
            name = v.node
            if v.perm is not None:
                name = self.add(f"{base}.to_onnx_order", Permute(numpy.argsort(v.perm)), [name])
            if len(v.shape) != 1:
                name = self.add(f"{base}.reshape", Reshape(v.shape), [name])
            out = Value(name, v.shape, "plain")
        self.converted[(v.node, v.kind, "plain")] = out
        return out

    def flat(self, name: str, shape: tuple[int, ...], perm: numpy.ndarray | None) -> Value:
        if perm is not None and numpy.array_equal(perm, numpy.arange(perm.size)):
            perm = None
        if perm is None and len(shape) == 1:
            return Value(name, shape, "plain")
        return Value(name, shape, "flat", perm)

    def value(self, name: str, node: Any) -> Value:
        if name in self.views:
            from lrpflow_onnx.views import materialize

            return materialize(self, name, node)
        if name in self.merged:
            raise self.fail(node, f"input {name!r} merges the batch axis into others (a Reshape to one axis); "
                                  f"lrpflow keeps samples apart (only a Gather that selects within each sample may follow)")
        if name not in self.values:
            if name in self.consts:
                raise self.fail(node, f"input {name!r} is a constant where lrpflow needs an activation")
            raise self.fail(node, f"input {name!r} is not produced by any node", ModelFormatError)
        return self.values[name]

    def const(self, name: str, node: Any, what: str) -> numpy.ndarray:
        if name not in self.consts:
            raise self.fail(node, f"{what} ({name!r}) must be a constant (initializer); activations are not supported there")
        return self.consts[name]

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def alias(self, name: str, v: Value) -> None:
        """ONNX tensor ``name`` is ``v`` (no new node); ``v``'s bias may no longer absorb constants."""
        self.foldable_bias.discard(v.node)
        self.values[name] = v

    # -- graph ----------------------------------------------------------------
    def run(self) -> Model:
        from onnx import numpy_helper

        g = self.graph
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ModelFormatError(f"{self.path}: lrpflow models take one input; the graph has "
                                   f"{len(inputs)} ({', '.join(i.name for i in inputs) or 'none'})")
        if len(g.output) != 1:
            raise ModelFormatError(f"{self.path}: lrpflow models have one output; the graph has "
                                   f"{len(g.output)} ({', '.join(o.name for o in g.output) or 'none'})")
        self.node_list = self._fused_nodes()
        live = self._live_nodes(g.output[0].name)
        self._check_supported(live)
        for n in live:
            for i in n.input:
                if i:
                    self.uses[i] = self.uses.get(i, 0) + 1
        self.uses[g.output[0].name] = self.uses.get(g.output[0].name, 0) + 1
        in_shape, in_kind = self._input(inputs[0])
        layout = "NCHW"
        users = [n for n in live if inputs[0].name in n.input]
        if len(in_shape) == 3 and users and all(
                n.op_type == "Transpose" and [int(p) for p in _attrs(n).get("perm", ())] == [0, 3, 1, 2] for n in users):
            in_kind, layout = "plain", "NHWC"  # an NHWC graph (e.g. from TensorFlow) that transposes its input to NCHW
        self.values[inputs[0].name] = Value(INPUT, in_shape, in_kind)
        for n in live:
            self._convert(n)
        out_name = g.output[0].name
        if out_name in self.views:
            producer = next(n for n in live if out_name in n.output)
            self.values[out_name] = self.value(out_name, producer)
        if out_name not in self.values:
            raise ModelFormatError(f"{self.path}: the graph output {out_name!r} is a constant or not computed")
        out = self.as_plain(self.values[out_name], "output")
        if out.node == INPUT:
            raise ModelFormatError(f"{self.path}: the graph computes nothing (its output is its input)")
        lrp_shape = Value(INPUT, in_shape, in_kind)
        model = Model(self.nodes, output=out.node, input_shape=self.stored_shape(lrp_shape), layout=layout)
        model.infer_shapes(model.input_shape)  # every node checked once
        return model

    def _live_nodes(self, output: str) -> list[Any]:
        producer = {}
        for n in self.node_list:
            for o in n.output:
                if o:
                    producer[o] = n
        need, stack = set(), [output]
        while stack:
            t = stack.pop()
            n = producer.get(t)
            if n is None or id(n) in need:
                continue
            need.add(id(n))
            stack.extend(i for i in n.input if i)
        return [n for n in self.node_list if id(n) in need]

    def _fused_nodes(self) -> list[Any]:
        """The graph's nodes with multi-node patterns (decomposed LayerNorm) fused (:mod:`lrpflow_onnx.patterns`)."""
        from onnx import numpy_helper

        from lrpflow_onnx.fold import infer_shapes
        from lrpflow_onnx.patterns import fuse_layer_norms, fuse_rms_norms

        nodes = list(self.graph.node)
        if not any(n.op_type == "Pow" for n in nodes):
            return nodes
        constants = {n.output[0]: a.t for n in nodes if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
        shapes: dict[str, Any] = {}

        def const(name: str) -> Any:
            if name in self.consts:
                return self.consts[name]
            return numpy_helper.to_array(constants[name]) if name in constants else None

        def rank(name: str) -> int | None:
            if not shapes:
                shapes.update(infer_shapes(self.proto) or {"": ()})
            return len(shapes[name]) if name in shapes else None

        nodes, extra = fuse_layer_norms(nodes, const, rank)
        self.consts.update(extra)
        nodes, extra = fuse_rms_norms(nodes, const, rank)
        self.consts.update(extra)
        return nodes

    def _check_supported(self, nodes: Sequence[Any]) -> None:
        """Every node that computes on activations needs a handler; nodes on constants only are folded."""
        const = set(self.consts)
        bad = []
        for n in nodes:
            onnx_op = n.domain in ("", "ai.onnx")
            if onnx_op and (n.op_type in SHAPE_OPS or all((not i) or i in const for i in n.input)):
                const.update(o for o in n.output if o)
                continue
            if not onnx_op or n.op_type not in HANDLERS:
                op = n.op_type if onnx_op else f"{n.domain}.{n.op_type}"
                bad.append(f"{op} (node {n.name or n.output[0]!r})")
        if bad:
            raise UnsupportedLayerError(f"{self.path}: unsupported ONNX operators on activations: {', '.join(bad)}; "
                                        f"supported: {', '.join(sorted(HANDLERS))} (and any operator on constants)")

    def _input(self, vi: Any) -> tuple[tuple[int, ...], str]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        self.dynamic_batch = bool(dims) and dims[0] is None
        if dims and dims[0] is not None:
            self.batch = dims[0]
            if self.user_batch is not None and self.user_batch != self.batch:
                raise ModelFormatError(f"{self.path}: input {vi.name!r} fixes the batch size {self.batch}; "
                                       f"batch_size={self.user_batch} does not apply (it sets a dynamic batch axis)")
        elif self.user_batch is not None:
            self.batch = self.user_batch  # the size the graph's shape arithmetic (Shape → Reshape) is evaluated at
        if self.user_input_shape is not None:
            sample = self.user_input_shape
        else:
            if len(dims) < 2 or any(d is None for d in dims[1:]):
                raise ModelFormatError(f"{self.path}: input {vi.name!r} has shape {dims} with unknown sample dimensions; "
                                       f"pass input_shape=(C, H, W) or (D,)")
            sample = tuple(int(d) for d in dims[1:])  # type: ignore[arg-type]
        if len(sample) == 3:
            return sample, "nhwc"
        if len(sample) in (1, 2):  # vectors (N, D), sequences (N, T, D)
            return sample, "plain"
        raise UnsupportedLayerError(f"{self.path}: input {vi.name!r} of sample shape {sample}: lrpflow takes "
                                    f"vectors (N, D), sequences (N, T, D) or images (N, C, H, W)")

    def _convert(self, n: Any) -> None:
        ins = list(n.input)
        if n.op_type in SHAPE_OPS and ins and (ins[0] in self.values or ins[0] in self.views):
            from lrpflow_onnx.ops_cnn import _shape_of

            _shape_of(self, n)
            return
        if all((not i) or self.is_const(i) for i in ins):
            self._fold(n, ins)
            return
        if n.op_type not in MULTI_OUTPUT:
            for extra in n.output[1:]:
                if extra and self.uses.get(extra):
                    raise self.fail(n, f"its output {extra!r} is used; lrpflow supports only the first output")
        HANDLERS[n.op_type](self, n)

    def _fold(self, n: Any, ins: Sequence[str]) -> None:
        from lrpflow_onnx.fold import FoldError, fold

        if self.fold_limit is None:
            total = sum(int(numpy.asarray(a).size) for a in self.consts.values())
            self.fold_limit = max(MIN_FOLD_ELEMENTS, 2 * total)
        try:
            outs = fold(n, [self.consts[i] if i else None for i in ins], self.opset, self.fold_limit)
        except FoldError as err:
            raise self.fail(n, str(err), ModelFormatError) from None
        for name, value in zip([o for o in n.output if o], outs):
            self.consts[name] = value


# --------------------------------------------------------------------------- handlers

Handler = Callable[[Converter, Any], None]
HANDLERS: dict[str, Handler] = {}
#: operators whose result on an activation is a constant (its static shape)
SHAPE_OPS = frozenset({"Shape", "Size"})
#: operators whose handlers define every output (the others: only the first may be used)
MULTI_OUTPUT: set[str] = set()


def handles(*ops: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for op in ops:
            HANDLERS[op] = fn
        return fn
    return deco


def _base(n: Any) -> str:
    return n.name or n.output[0]


# --------------------------------------------------------------------------- entry points


def convert(proto: Any, path: str = "<onnx>", fold_batchnorm: bool = False,
            input_shape: Sequence[int] | None = None, product_rule: str = "gate", batch_size: int | None = None) -> Model:
    """An lrpflow model (layout NCHW) from an ``onnx.ModelProto``.

    ``batch_size``: for a graph with a dynamic batch axis, the size at which its shape arithmetic is
    evaluated (needed where the exporter computes Reshape shapes from the batch, e.g. sequence-first
    attention or window partitions; the lrpflow model still takes any batch). Not given, such a graph
    is read with the batch left open and, if that fails, once more at batch size 2.

    ``product_rule``: LRP of products of two activations (``Mul``): ``"gate"`` holds the
    gating operand (from Sigmoid/HardSigmoid/Erf/Tanh) constant, ``"uniform"`` splits 50/50
    (see :class:`lrpflow.layers.Multiply`).
    """
    conv = Converter(proto, path, input_shape, product_rule, batch_size)
    try:
        model = conv.run()
    except Exception as err:
        if batch_size is not None or conv.batch is not None or not conv.dynamic_batch:
            raise
        try:  # shapes computed from the open batch axis (0 in lrpflow) may need its size: evaluate them at 2
            model = Converter(proto, path, input_shape, product_rule, 2).run()
        except LrpflowError as again:  # the further attempt says more
            raise type(again)(f"{again} (read with the file's dynamic batch axis at 2)") from err
        except Exception:  # noqa: BLE001
            raise err from None
    if fold_batchnorm:
        from lrpflow.io.canonize import fold_batchnorm as fold

        model = fold(model)
    return model


def read(path: str | os.PathLike[str], fold_batchnorm: bool = False, input_shape: Sequence[int] | None = None,
         product_rule: str = "gate", batch_size: int | None = None, **_: Any) -> Model:
    """Read an ``.onnx`` file; ``explain()`` on the result takes and returns NCHW."""
    import onnx

    path = os.fspath(path)
    check_model_file(path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelFormatError(f"{path}: not an ONNX model: {type(err).__name__}: {err}") from err
    if not proto.HasField("graph") or not proto.graph.node or not proto.graph.output or proto.ir_version <= 0:
        raise ModelFormatError(f"{path}: not an ONNX model (no graph, nodes or outputs)")
    if any(t.data_location == 1 for t in proto.graph.initializer):  # EXTERNAL
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, os.path.dirname(os.path.abspath(path)))
        except Exception as err:
            raise ModelFormatError(f"{path}: cannot load the model's external data: {err}") from err
    try:
        return convert(proto, path, fold_batchnorm=fold_batchnorm, input_shape=input_shape, product_rule=product_rule,
                       batch_size=batch_size)
    except LrpflowError:
        raise
    except RecursionError as err:
        raise ModelFormatError(f"{path}: graph nested too deeply") from err
    except Exception as err:  # malformed attributes, tensors, ...
        raise ModelFormatError(f"{path}: malformed ONNX model: {type(err).__name__}: {err}") from err


from lrpflow_onnx import ops as _ops, ops_cnn as _ops_cnn  # noqa: E402,F401 - register their handlers

from lrpflow_onnx import ops_transformer as _ops_transformer  # noqa: E402,F401 - wraps handlers above

from lrpflow_onnx import ops_views as _ops_views  # noqa: E402 - wraps every handler above (layouts that move the batch)

_ops_views.install()
