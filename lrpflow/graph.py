"""Models: a DAG of named nodes; ``Sequential`` is the chain case.

``Model.run(x)`` (alias ``Model.forward``) returns the output and a :class:`Trace` of
every node's activation; layers keep no per-call state. ``Sequential`` also offers the
LRP Toolbox's surface (``forward`` returning Y, ``lrp``, ``set_lrp_parameters``,
``drop_softmax_output_layer``, ``train``), which remembers the last forward pass on
the *model* object, as the toolbox did.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lrpflow.backend import get_namespace, to_numpy
from lrpflow.errors import ConfigError, DataFormatError, LrpflowError, ShapeError
from lrpflow.layers.base import Layer, Shape

INPUT = "input"


@dataclass(frozen=True)
class Node:
    """A named layer applied to the outputs of earlier nodes (or the model input)."""

    name: str
    layer: Layer
    inputs: tuple[str, ...] = (INPUT,)


class Trace:
    """Activations of one forward pass: ``trace[name]`` for the input and every node."""

    def __init__(self, model: Model, values: dict[str, Any], output: str) -> None:
        self.model = model
        self.values = values
        self.output = output

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        return name in self.values

    @property
    def input(self) -> Any:
        return self.values[self.model.input_name]

    @property
    def logits(self) -> Any:
        return self.values[self.output]

    def rows(self, sl: slice) -> Trace:
        """The trace of a slice of the batch (views, no copies)."""
        return Trace(self.model, {k: v[sl] for k, v in self.values.items()}, self.output)

    def inputs_of(self, node: Node) -> list[Any]:
        return [self.values[n] for n in node.inputs]


class Model:
    """A directed acyclic graph of named layers.

    Parameters
    ----------
    nodes : sequence of Node
        In topological order (every input names the model input or an earlier node).
    output : str, optional
        The output node (default: the last one).
    input_shape : tuple of int, optional
        Shape of one sample (without batch); used to validate inputs.
    input_name : str
        Name of the model input in node ``inputs`` (default ``"input"``).
    layout : str
        Layout ``explain()`` takes and returns: ``"NHWC"`` (internal) or ``"NCHW"``.
    """

    def __init__(self, nodes: Sequence[Node], output: str | None = None, input_shape: Sequence[int] | None = None,
                 input_name: str = INPUT, layout: str = "NHWC") -> None:
        self.input_name = input_name
        self._nodes = list(nodes)
        self._output = output
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        if layout not in ("NHWC", "NCHW"):
            raise ConfigError(f"model layout must be 'NHWC' or 'NCHW', got {layout!r}")
        self.layout = layout
        #: exact rewrites applied to the model (e.g. ``"fold_batchnorm: bn1 -> conv1+bn1"``)
        self.canonizers: list[str] = []
        self._validate()

    # -- structure ----------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        return self._nodes

    @property
    def output(self) -> str:
        nodes = self.nodes
        if not nodes:
            raise ConfigError("the model has no layers")
        return self._output if self._output is not None else nodes[-1].name

    def _validate(self) -> None:
        seen = {self.input_name}
        for node in self.nodes:
            if node.name in seen:
                raise ConfigError(f"duplicate node name {node.name!r}")
            for i in node.inputs:
                if i not in seen:
                    raise ConfigError(f"node {node.name!r} takes input {i!r}, which is not the model input or an earlier node")
            n = node.layer.n_inputs
            if n is not None and len(node.inputs) != n:
                raise ConfigError(f"node {node.name!r} ({node.layer.type_name}) takes {n} input(s), got {len(node.inputs)}")
            seen.add(node.name)
        if self._output is not None and self._output not in seen:
            raise ConfigError(f"output {self._output!r} is not a node of the model")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LrpflowError(f"no node {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")

    @property
    def layers(self) -> list[Layer]:
        return [n.layer for n in self.nodes]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def ancestors(self, name: str) -> list[Node]:
        """Nodes ``name`` depends on (itself included), in topological order."""
        by_name = {n.name: n for n in self.nodes}
        need, stack = set(), [name]
        while stack:
            cur = stack.pop()
            if cur in need or cur == self.input_name:
                continue
            need.add(cur)
            stack.extend(by_name[cur].inputs)
        return [n for n in self.nodes if n.name in need]

    @property
    def logits_node(self) -> str:
        """The node explanations start from: the output, or the input of a SoftMax output."""
        out = self.node(self.output)
        if out.layer.role == "softmax":
            return out.inputs[0]
        return out.name

    # -- shapes -------------------------------------------------------------
    def infer_shapes(self, input_shape: Shape) -> dict[str, Shape]:
        """Output shape (without batch) of every node; ShapeError naming the node on a mismatch."""
        shapes = {self.input_name: tuple(input_shape)}
        for node in self.nodes:
            try:
                shapes[node.name] = tuple(node.layer.output_shape(*(shapes[i] for i in node.inputs)))
            except ShapeError as err:
                raise ShapeError(f"node {node.name!r}: {err}") from err
        return shapes

    def check_input(self, x: Any) -> None:
        """Raise ShapeError unless ``x`` is a batch the model accepts (in the internal layout)."""
        if not hasattr(x, "shape") or x.ndim < 2:
            raise ShapeError(f"input must be a batch array (N, ...), got {type(x).__name__} of shape {getattr(x, 'shape', None)}")
        sample = tuple(x.shape[1:])
        if self.input_shape is not None and sample != self.input_shape:
            raise ShapeError(f"input samples must have shape {self.input_shape}, got {sample}")
        self.infer_shapes(sample)

    # -- computation --------------------------------------------------------
    def run(self, x: Any, upto: str | None = None) -> tuple[Any, Trace]:
        """Forward pass to node ``upto`` (default: the output): ``(y, trace)``."""
        target = upto or self.output
        values = {self.input_name: x}
        for node in (self.ancestors(target) if upto else self.nodes):
            values[node.name] = node.layer.forward(*(values[i] for i in node.inputs))
        return values[target], Trace(self, values, target)

    def forward(self, x: Any) -> tuple[Any, Trace]:
        """``(logits, trace)``: the output of the model and every activation."""
        return self.run(x)

    def predict(self, x: Any, batch_size: int = 1024) -> Any:
        """Outputs for a large batch, computed in chunks (no trace kept)."""
        xp = get_namespace(x)
        outs = [self.run(x[i : i + batch_size])[0] for i in range(0, x.shape[0], batch_size)]
        return xp.concatenate(outs) if outs else xp.zeros((0,))

    def to_nhwc(self, x: Any) -> Any:
        """Convert an input in the model's declared layout to the internal NHWC layout."""
        return x.transpose(0, 2, 3, 1) if self.layout == "NCHW" and x.ndim == 4 else x

    def from_nhwc(self, r: Any) -> Any:
        """Convert an internal NHWC array back to the model's declared layout."""
        return r.transpose(0, 3, 1, 2) if self.layout == "NCHW" and r.ndim == 4 else r

    def summary(self) -> str:
        """One line per node: name, layer, inputs, parameter count."""
        lines = []
        for n in self.nodes:
            count = sum(math.prod(v.shape) for v in n.layer.params().values() if v is not None)
            lines.append(f"{n.name:<20} {n.layer!r:<50} <- {', '.join(n.inputs):<20} {count} params")
        return "\n".join(lines)

    # -- toolbox-style presets and softmax handling ---------------------------
    def set_lrp_parameters(self, lrp_var: str | None = None, param: float | None = None) -> None:
        """Set the same toolbox LRP preset on every layer (see :meth:`Sequential.lrp`)."""
        for layer in self.layers:
            layer.lrp_var, layer.lrp_param = lrp_var, param


def _check_finite(a: Any, what: str) -> None:
    """DataFormatError if ``a`` holds NaN or Inf (as ``explain()`` refuses them)."""
    xp = get_namespace(a)
    if xp.asarray(a).dtype.kind in "fc" and not bool(to_numpy(xp.isfinite(a).all())):  # one explicit read
        raise DataFormatError(f"{what} contains NaN or Inf values")


def _node_name(i: int, layer: Layer) -> str:
    return f"{i}_{type(layer).__name__.lower()}"


class Sequential(Model):
    """A chain of layers, ``Sequential([Linear(784, 10), ...])``; the toolbox's network class.

    ``modules`` is the (mutable) list of layers, as in the toolbox; nodes are named
    ``"<index>_<layer class>"`` (``"0_conv2d"``, ``"1_relu"``, ...).
    """

    def __init__(self, modules: Sequence[Layer], input_shape: Sequence[int] | None = None, layout: str = "NHWC") -> None:
        for i, m in enumerate(modules):
            if not isinstance(m, Layer) and not hasattr(m, "forward"):
                raise ConfigError(f"Sequential: module {i} is a {type(m).__name__}, not a layer")
        self.modules = list(modules)
        self._last_trace: Trace | None = None
        super().__init__([], None, input_shape, INPUT, layout)

    @property
    def nodes(self) -> list[Node]:
        key = tuple(map(id, self.modules))  # rebuilt only when ``modules`` changed
        cached = self.__dict__.get("_nodes_cache")
        if cached is None or cached[0] != key:
            nodes, prev = [], INPUT
            for i, m in enumerate(self.modules):
                nodes.append(Node(_node_name(i, m), m, (prev,)))
                prev = nodes[-1].name
            cached = (key, nodes)
            self.__dict__["_nodes_cache"] = cached
        return cached[1]

    def _validate(self) -> None:
        for i, m in enumerate(self.modules):
            if m.n_inputs not in (None, 1):
                raise ConfigError(f"Sequential: module {i} ({m.type_name}) takes {m.n_inputs} inputs; use Model for a DAG")

    # -- toolbox surface ----------------------------------------------------
    def forward(self, X: Any, lrp_aware: bool = False) -> Any:  # type: ignore[override]
        """Toolbox ``forward``: returns Y and remembers the pass for :meth:`lrp`.

        ``lrp_aware`` is accepted for compatibility; the trace is always kept, so
        repeated ``lrp`` calls never recompute the forward pass.
        """
        self.check_input(X)
        _check_finite(X, "input X")
        y, trace = self.run(X)
        self._last_trace = trace
        return y

    def clean(self) -> None:
        """Forget the remembered forward pass."""
        self._last_trace = None

    def drop_softmax_output_layer(self) -> None:
        """Remove a SoftMax that is the last module (only the last one, as in the toolbox)."""
        if self.modules and self.modules[-1].role == "softmax":
            del self.modules[-1]
            self._last_trace = None

    def lrp(self, R: Any, lrp_var: str | None = None, param: float | None = None) -> Any:
        """Toolbox ``lrp``: propagate ``R`` (shaped like the last output) to the input.

        Uses the last :meth:`forward`. With ``lrp_var`` and ``param`` both None each
        layer uses its preset (``set_lrp_parameters``), else the given rule applies to
        every layer. Names: ``None|'none'|'simple'``, ``'epsilon'``, ``'alphabeta'|'alpha'``
        (param α, β = α − 1), ``'flat'``, ``'ww'|'w^2'`` and their ``*_slow`` spellings.
        """
        from lrpflow.rules.toolbox import toolbox_rule
        from lrpflow.explain import propagate, raise_if_not_finite

        trace = self._last_trace
        if trace is None:
            raise LrpflowError("Sequential.lrp needs a forward pass first: call nn.forward(X)")
        if tuple(R.shape) != tuple(trace.logits.shape):
            raise ShapeError(f"R must have the shape of the last output {tuple(trace.logits.shape)}, got {tuple(R.shape)}")
        explicit = lrp_var is not None or param is not None
        rules = {
            node.name: toolbox_rule(lrp_var, param, node.layer) if explicit
            else toolbox_rule(node.layer.lrp_var, node.layer.lrp_param, node.layer)
            for node in self.nodes
        }
        result = propagate(self, trace, R, rules)  # a non-finite R is reported as the initial relevance
        raise_if_not_finite(result.finite, self, rules, R.dtype, "Sequential.lrp",  # one read, after the pass
                            initial=DataFormatError("relevance R contains NaN or Inf values"))
        return result.relevance

    def train(self, X: Any, Y: Any, Xval: Any = None, Yval: Any = None, batchsize: int = 25, iters: int = 10000,
              lrate: float = 0.005, lrate_decay: str | None = None, lfactor_initial: float = 1.0, status: int = 250,
              convergence: int = -1, transform: Any = None, **kwargs: Any) -> Any:
        """Minibatch SGD as the toolbox's ``Sequential.train``; see :func:`lrpflow.train.train`."""
        from lrpflow.train import train

        return train(self, X, Y, Xval, Yval, batchsize=batchsize, iters=iters, lrate=lrate, lrate_decay=lrate_decay,
                     lfactor_initial=lfactor_initial, status=status, convergence=convergence, transform=transform, **kwargs)
