"""``explain()`` and ``Explainer``: forward pass, relevance initialisation, backward relevance pass.

One forward :class:`~lrpflow.graph.Trace` serves any number of targets and rules; the
Explainer caches rule-modified parameters (W⁺, W², ...) between calls. Every result
carries the conservation ledger: per node, the relevance entering it (at its output),
leaving it (to its inputs) and what its bias/stabiliser absorbed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from lrpflow.backend import get_namespace, namespace, resolve_dtype, to_backend, to_numpy, tune_host_allocator
from lrpflow.chunks import cpu_workers, map_chunks, plan
from lrpflow.composites import Composite, make_composite, scoped
from lrpflow.errors import ConfigError, DataFormatError, NumericalError
from lrpflow.graph import Model, Trace
from lrpflow.rules import Rule, make_rule
from lrpflow.rules.base import NodeContext
from lrpflow.targets import initial_relevance, is_multi_target, rows_of, split_targets


@dataclass
class LedgerEntry:
    """Per-sample relevance sums at one node."""

    entering: Any  #: Σ relevance arriving at the node's output, shape (N,)
    leaving: Any  #: Σ relevance the node hands to its inputs, shape (N,)

    @property
    def absorbed(self) -> Any:
        """What the node's bias / stabiliser absorbed (negative: what it injected)."""
        return self.entering - self.leaving


@dataclass
class Propagation:
    """Output of :func:`propagate`: relevance at the model input, the ledger, kept intermediates."""

    relevance: Any
    ledger: dict[str, LedgerEntry] = field(default_factory=dict)
    intermediate: dict[str, Any] = field(default_factory=dict)
    #: (node, device bool "all finite") per node; None names the initial relevance. Read once, after
    #: the pass, by :func:`raise_if_not_finite` (no host synchronisation inside the backward pass)
    finite: list[tuple[str | None, Any]] = field(default_factory=list)


@dataclass
class Explanation:
    """Result of ``explain()`` / ``Explainer``; arrays live on the explainer's backend."""

    relevance: Any  #: same shape and layout as the input
    logits: Any  #: (N, C) model outputs (SoftMax output layer dropped)
    target: Any  #: (N,) class explained, (N, K) for topk:K, −1 for an explicit R_init
    r_init: Any  #: (N, C) initial relevance
    conservation: Any  #: (N,) |ΣR_in − ΣR_init| / |ΣR_init|
    ledger: dict[str, LedgerEntry] = field(default_factory=dict)
    intermediate: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    #: layout of ``relevance`` (the model's declared layout: "NCHW" for ONNX models); renderers take it as ``layout=``
    layout: str = "NHWC"

    def to_numpy(self) -> Explanation:
        """A copy with every array on the host."""
        return Explanation(
            to_numpy(self.relevance), to_numpy(self.logits), to_numpy(self.target), to_numpy(self.r_init),
            to_numpy(self.conservation),
            {k: LedgerEntry(to_numpy(v.entering), to_numpy(v.leaving)) for k, v in self.ledger.items()},
            {k: to_numpy(v) for k, v in self.intermediate.items()}, self.method, self.layout)

    def to_results(self, path: Any, **kw: Any) -> str:
        """Write this explanation as a result store (the file a CLI run writes); see :func:`lrpflow.store.write_results`.

        ``lrpflow.load_results(path)`` reads it back; keywords: ``label``, ``index``,
        ``source``, ``metrics``, ``config``, ``model_sha256``, ``overwrite``, ...
        """
        from lrpflow.store import write_results

        return write_results(self, path, **kw)


def nonneg_nodes(model: Model) -> dict[str, bool]:
    """For every node: is its output ≥ 0 whatever the model input (static analysis)?"""
    out = {model.input_name: False}
    for node in model.nodes:
        layer = node.layer
        out[node.name] = bool(getattr(layer, "nonneg_output", False)) or (
            bool(getattr(layer, "keeps_nonneg", False)) and all(out[i] for i in node.inputs))
    return out


class _JoinedValues(dict):
    """A trace's values, each node's whole-batch array concatenated from the chunks on first read."""

    def __init__(self, parts: Sequence[tuple[slice, Trace]], first: Mapping[str, Any]) -> None:
        super().__init__(first)
        self._parts = parts

    def __missing__(self, name: str) -> Any:
        arrays = [t.values[name] for _, t in self._parts]
        value = self[name] = get_namespace(arrays[0]).concatenate(arrays, axis=0)
        return value

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._parts[0][1].values

    def join_all(self) -> None:
        for name in self._parts[0][1].values:
            self[name]  # noqa: B018 - reading joins


class ChunkedTrace(Trace):
    """A forward trace run in row chunks (:meth:`Explainer.forward` on a large batch).

    ``parts`` holds ``(rows, trace)`` per chunk; :meth:`Explainer.explain` explains those
    chunks directly. Reading a node's whole-batch activation (``trace[name]``) concatenates
    it once; the input is the batch itself.
    """

    def __init__(self, model: Model, x: Any, parts: Sequence[tuple[slice, Trace]]) -> None:
        self.parts = list(parts)
        super().__init__(model, _JoinedValues(self.parts, {model.input_name: x}), self.parts[0][1].output)

    def rows(self, sl: slice) -> Trace:
        for part_rows, part in self.parts:
            if (part_rows.start, part_rows.stop) == (sl.start, sl.stop) and sl.step in (None, 1):
                return part
        self.values.join_all()
        return super().rows(sl)


def takes_token_ids(model: Model) -> bool:
    """True when every consumer of the model input is a token embedding (kind ``"embedding"``)."""
    users = [n for n in model.nodes if model.input_name in n.inputs]
    return bool(users) and all("embedding" in n.layer.kinds for n in users)


def _per_sample_sum(a: Any) -> Any:
    return a.reshape(a.shape[0], -1).sum(axis=1)


def propagate(model: Model, trace: Trace, r_init: Any, rules: Mapping[str, Rule], *, cache: dict | None = None,
              keep: Sequence[str] = (), ledger: bool = True, start: str | None = None,
              release: bool = False) -> Propagation:
    """Propagate ``r_init`` (at node ``start``, default the trace's output) back to the model input.

    Nodes are visited in reverse topological order; a node's relevance is the sum of
    what its consumers handed it. ``rules`` gives each node's rule. ``release=True``
    drops each node's output from the trace once the node is done (its consumers came
    before it), so the backward pass frees the forward activations as it goes; only
    for traces nobody else reads.
    """
    start = start or trace.output
    cache = {} if cache is None else cache
    nonneg = nonneg_nodes(model)
    xp = get_namespace(r_init)
    scale, init_finite = _unit_scale(r_init)  # rules are linear in R: propagate R / 2^k, multiply back at the end
    pending: dict[str, Any] = {start: r_init / scale.reshape((-1,) + (1,) * (r_init.ndim - 1))}
    pending_sum: dict[str, Any] = {}  # per-sample sums of pending arrays that came from one consumer
    finite: list[tuple[str | None, Any]] = [(None, init_finite)]  # read once after the pass: no sync per node
    book: dict[str, LedgerEntry] = {}
    kept: dict[str, Any] = {}
    keep_set = set(keep)
    missing = keep_set - {n.name for n in model.nodes} - {model.input_name}
    if missing:
        raise ConfigError(f"cannot keep relevance at unknown node(s) {sorted(missing)}")
    for node in reversed(model.ancestors(start)):
        r = pending.pop(node.name, None)
        if r is None:  # nothing flows through this node (e.g. a branch not leading to the output)
            continue
        if node.name in keep_set:
            kept[node.name] = r
        layer = node.layer
        xs = trace.inputs_of(node)
        y = trace[node.name]
        z = layer.z_from_output(y) if layer.role == "linear" and hasattr(layer, "z_from_output") else None
        ctx = NodeContext(node.name, cache, tuple(nonneg[i] for i in node.inputs), z=z)
        try:
            rule = rules[node.name]
        except KeyError:
            raise ConfigError(f"no rule for node {node.name!r}") from None
        r_ins = rule.backward(layer, xs, y, r, ctx)
        entering = pending_sum.pop(node.name, None)
        if entering is None and any(ri is r for ri in r_ins):  # passed through (ReLU): one sum serves both sides
            entering = _per_sample_sum(r)
        sums = [entering if ri is r else _per_sample_sum(ri) for ri in r_ins]
        leaving = sums[0]
        for extra in sums[1:]:
            leaving = leaving + extra
        finite.append((node.name, xp.isfinite(leaving).all()))  # a NaN/Inf anywhere makes its sample's sum one
        finite.extend((node.name, flag) for flag in ctx.finite)  # overflowed denominators (R / inf = silent 0)
        if ledger:  # what entered is what one consumer handed over: its sum is known already
            book[node.name] = LedgerEntry(_per_sample_sum(r) if entering is None else entering, leaving)
        del xs, y, z, ctx
        if release:
            trace.values.pop(node.name, None)
        for name, ri, si in zip(node.inputs, r_ins, sums):
            if name in pending:
                pending[name] = pending[name] + ri
                pending_sum.pop(name, None)
            else:
                pending[name], pending_sum[name] = ri, si
        del r, r_ins
    r_in = pending.get(model.input_name)
    if r_in is None:
        r_in = xp.zeros_like(trace.input)
    if model.input_name in keep_set:
        kept[model.input_name] = r_in
    per_sample = scale.reshape((-1,) + (1,) * (r_in.ndim - 1))
    r_in = r_in * per_sample
    kept = {k: v * scale.reshape((-1,) + (1,) * (v.ndim - 1)) for k, v in kept.items()}
    book = {k: LedgerEntry(e.entering * scale, e.leaving * scale) for k, e in book.items()}
    return Propagation(r_in, book, kept, finite)


def _unit_scale(r: Any) -> tuple[Any, Any]:
    """Per sample, the power of two ≥ max |r| (1 for an all-zero or non-finite sample), and whether ``r`` is
    finite (a device bool). Dividing by a power of two is exact and keeps every rule's quotients far from
    overflow (logits of 1e30 in float32 otherwise overflow R/ε)."""
    xp = get_namespace(r)
    peak = xp.abs(r).reshape(r.shape[0], -1).max(axis=1) if r.size else xp.zeros((r.shape[0],), dtype=r.dtype)
    ok = xp.isfinite(peak)
    _, exponent = xp.frexp(xp.where(ok, peak, 0))
    scale = xp.ldexp(xp.ones_like(peak), exponent)
    return xp.where(ok & (peak > 0), scale, xp.ones_like(peak)), ok.all()


def raise_if_not_finite(finite: Sequence[tuple[str | None, Any]], model: Model, rules: Mapping[str, Rule],
                        dtype: Any, method: str = "", initial: Exception | None = None) -> None:
    """One host read of the pass's finiteness flags; NumericalError naming the first node (or the initial
    relevance, or the final map) that is not finite — never a silent zero in place of a NaN. ``initial``:
    the error to raise when the initial relevance itself is not finite (a caller's bad input)."""
    if not finite:
        return
    xp = get_namespace(finite[0][1])
    ok = to_numpy(xp.stack([xp.asarray(flag) for _, flag in finite])).astype(bool)
    if ok.all():
        return
    name = finite[int(numpy.argmin(ok))][0]
    hint = f"(an overflow in {numpy.dtype(dtype).name}); explain in float64 or rescale the input"
    if name is None:
        if initial is not None:
            raise initial
        raise NumericalError(f"initial relevance contains NaN or Inf (the forward pass overflowed?) {hint}")
    if name == _FINAL:
        raise NumericalError(f"{method}: the explanation contains NaN or Inf {hint}")
    node = model.node(name)
    raise NumericalError(f"node {name!r} ({node.layer.type_name}): rule {rules[name]!r} produced NaN or Inf "
                         f"relevance {hint}")


_FINAL = "\0relevance"  #: the finiteness flag of the final map (a name no node can have)


def stack_targets(parts: Sequence[Explanation]) -> Explanation:
    """One explanation of K targets from K single-target explanations of the same rows.

    ``relevance`` (N, K, ...), ``target`` (N, K), ``r_init`` (N, K, C), ``conservation``
    and the ledger (N, K), kept intermediates (N, K, ...); ``logits`` stay (N, C).
    """
    return _combine(parts, lambda xp, arrays: xp.stack(list(arrays), axis=1), shared_logits=True)


def _concatenate(parts: Sequence[Explanation]) -> Explanation:
    """One explanation from the explanations of consecutive row chunks."""
    return _combine(parts, lambda xp, arrays: xp.concatenate(list(arrays), axis=0))


def _combine(parts: Sequence[Explanation], join: Any, shared_logits: bool = False) -> Explanation:
    """Every per-row array of ``parts`` joined by ``join(xp, arrays)``; ``shared_logits``: the parts explain
    the same rows, so their logits are the first part's."""
    xp = get_namespace(parts[0].relevance)

    def j(arrays: Sequence[Any]) -> Any:
        return join(xp, arrays)

    first = parts[0]
    ledger = {k: LedgerEntry(j([p.ledger[k].entering for p in parts]), j([p.ledger[k].leaving for p in parts]))
              for k in first.ledger}
    kept = {k: j([p.intermediate[k] for p in parts]) for k in first.intermediate}
    logits = first.logits if shared_logits else j([p.logits for p in parts])
    return Explanation(j([p.relevance for p in parts]), logits, j([p.target for p in parts]),
                       j([p.r_init for p in parts]), j([p.conservation for p in parts]), ledger, kept, first.method,
                       first.layout)


def _describe(rule: Rule | None, composite: Composite | None) -> str:
    if composite is not None:
        return composite.name or repr(composite)
    return repr(rule)


class Explainer:
    """Explains a model with one composite (or rule), reusing work between calls.

    Parameters
    ----------
    model : Model
    composite : str, mapping or Composite, optional
        A preset name (``"epsilon_plus"``), a composite mapping or object.
    rule : str, mapping or Rule, optional
        One rule for every node (with ``**params``, e.g. ``rule="epsilon", epsilon=0.1``).
    backend : str, optional
        ``"numpy"``, ``"cupy"`` or ``"cupy:<gpu>"``; default: where the input lives.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    init : str, optional
        ``"logit"`` (R_init = masked logits; LRP default) or ``"one"`` (the mask; gradient default).
    keep : sequence of str
        Node names whose incoming relevance the result keeps (``intermediate``).
    ledger : bool
        Record the per-node conservation ledger (default True).
    chunk_size : int, optional
        Rows explained per pass. Default: as many as fit 1 GiB of forward trace, split
        further so every CPU worker gets a chunk (≥ 16 rows each). Results do not depend on it.
    workers : int, optional
        Threads explaining chunks side by side. Default: on numpy, the threads numpy's
        BLAS may use (``OPENBLAS_NUM_THREADS``, ...), with BLAS held to one thread per chunk
        meanwhile; on cupy, 1.
    """

    def __init__(self, model: Model, composite: Any = None, rule: Any = None, *, backend: str | None = None,
                 dtype: Any = "float32", init: str | None = None, keep: Sequence[str] = (), ledger: bool = True,
                 chunk_size: int | None = None, workers: int | None = None, **params: Any) -> None:
        if not isinstance(model, Model):
            raise ConfigError(f"model must be an lrpflow Model, got {type(model).__name__}")
        self.model = model
        self.backend = backend
        if backend is not None:
            namespace(backend)  # fail early if cupy is missing
        self.dtype = resolve_dtype(dtype)
        self.init = init
        self.keep = tuple(keep)
        self.ledger = ledger
        for name, value in (("chunk_size", chunk_size), ("workers", workers)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1):
                raise ConfigError(f"Explainer: {name} must be a positive integer or None, got {value!r}")
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.workers = None if workers is None else int(workers)
        #: per input shape and itemsize: (trace bytes per sample, parameter bytes)
        self._sizes: dict[tuple[int, ...], tuple[int, int]] = {}
        tune_host_allocator()  # numpy temporaries: reuse freed memory instead of page-faulting it back
        self.cache: dict[Any, Any] = {}
        self._assignments: dict[Any, tuple[dict[str, Rule], Rule, str]] = {}
        self.default_method = self._method(composite, rule, params)

    # -- configuration ------------------------------------------------------------
    def _method(self, composite: Any, rule: Any, params: Mapping[str, Any]) -> tuple[dict[str, Rule], Rule, str]:
        if composite is not None and rule is not None:
            raise ConfigError("give either composite= or rule=, not both")
        # the specs themselves are the key (an id() could be reused by a later object)
        key = (composite, rule, tuple(sorted(params.items())))
        try:
            hit = self._assignments.get(key)
        except TypeError:  # a mapping spec or unhashable parameter values: not cached
            hit, key = None, None
        if hit is not None:
            return hit
        if composite is not None:
            comp = make_composite(composite, **params)
            rules, head, desc = comp.assign(self.model), comp.default, _describe(None, comp)
        else:
            r = make_rule("epsilon" if rule is None else rule, **params)
            # a single rule acts on the layers with weights; pools, Add, ... get `norm` (see composites)
            rules, head, desc = {n.name: scoped(r, n.layer) for n in self.model.nodes}, r, _describe(r, None)
        if head.global_only and any(v is not head for v in rules.values()):
            raise ConfigError(f"{type(head).__name__} is a whole-model method and cannot be combined with other rules")
        out = (rules, head, desc)
        if key is not None:
            self._assignments[key] = out
        return out

    def rules(self) -> dict[str, Rule]:
        """The rule of every node under the default composite/rule."""
        return dict(self.default_method[0])

    # -- forward ---------------------------------------------------------------
    def prepare(self, x: Any) -> Any:
        """Validate ``x`` and bring it to the backend, dtype and NHWC layout used inside."""
        if isinstance(x, Trace):
            raise ConfigError("prepare() takes an input array, not a Trace")
        try:
            if self.backend is None:
                xp = get_namespace(x)
                x = xp.asarray(x, dtype=self.dtype)
            else:
                x = to_backend(x, self.backend, self.dtype)
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"input cannot be read as a {self.dtype.name} array: {err}") from err
        xp = get_namespace(x)
        if self.model.layout == "NCHW" and x.ndim == 4:
            # one copy into NHWC order: every layer reading the input (and each onnxruntime call) would copy the view
            x = xp.ascontiguousarray(self.model.to_nhwc(x))
        self.model.check_input(x)
        if not to_numpy(xp.isfinite(x).all()):  # the one host read of a call, before any pass starts
            raise DataFormatError("input contains NaN or Inf values")
        return x

    def forward(self, x: Any) -> Trace:
        """One forward pass to the logits (a SoftMax output layer is dropped); reuse it for many explanations.

        A batch that :meth:`explain` would split into row chunks is run chunk by chunk on the
        same worker threads (a :class:`ChunkedTrace`), so ``explain(trace=forward(x))`` costs
        what ``explain(x)`` costs.
        """
        x = self.prepare(x)
        workers = self._workers(x)
        slices = self._chunks(x, self.default_method[1], workers)
        if len(slices) == 1:
            _, trace = self.model.run(x, upto=self.model.logits_node)
            return trace
        parts = map_chunks(lambda sl: self.model.run(x[sl], upto=self.model.logits_node)[1], slices, workers)
        return ChunkedTrace(self.model, x, list(zip(slices, parts)))

    # -- explanation -------------------------------------------------------------
    def explain(self, x: Any = None, target: Any = "pred", *, trace: Trace | None = None, labels: Any = None,
                init: str | None = None, composite: Any = None, rule: Any = None, keep: Sequence[str] | None = None,
                targets: Sequence[Any] | None = None, **params: Any) -> Explanation:
        """Explain ``x`` (or a trace from :meth:`forward`) for ``target``.

        ``target``: ``"pred"`` (argmax), ``"true"`` (needs ``labels``), a class index, per-sample
        class indices (N,), ``"topk:K"`` (sum of the K best), or an explicit R_init array (N, C).
        Several maps at once: ``targets=[t1, ..., tK]`` or ``target="each:topk:K"`` (the K
        best classes, one map each) give ``relevance`` of shape (N, K, ...) and ``target``
        (N, K), all from one forward pass (see :func:`stack_targets`).
        ``composite``/``rule`` (+ params) override the explainer's own for this call.
        Large batches are explained in row chunks (see ``chunk_size`` and ``workers``).
        An empty batch (N = 0) gives an empty explanation: every array has 0 rows (relevance
        shaped ``(0, ...)`` like ``x``, in the explainer's dtype), without a forward pass.
        """
        if is_multi_target(target, targets):
            if trace is None:
                if x is None:
                    raise ConfigError("explain() needs an input x or a trace")
                trace = x if isinstance(x, Trace) else self.forward(x)  # the one forward pass for every target
            specs = split_targets(trace.logits, target, targets)
            return stack_targets([self.explain(trace=trace, target=t, labels=labels, init=init, composite=composite,
                                               rule=rule, keep=keep, **params) for t in specs])
        if trace is None:
            if x is None:
                raise ConfigError("explain() needs an input x or a trace")
            if isinstance(x, Trace):
                trace = x
            else:
                x = self.prepare(x)
        method = self.default_method if composite is None and rule is None and not params \
            else self._method(composite, rule, params)
        keep = self.keep if keep is None else tuple(keep)
        init = init or self.init or method[1].default_init
        batch = trace.input if trace is not None else x
        if batch.shape[0] == 0:
            return self._empty(batch, target, labels, init, method, keep)
        workers = self._workers(batch)
        slices = self._chunks(batch, method[1], workers)
        if isinstance(trace, ChunkedTrace) and len(slices) > 1:
            slices = [sl for sl, _ in trace.parts]  # explain the chunks the forward pass ran
        if len(slices) == 1:
            out, finite = self._explain_rows(x, trace, target, labels, init, method, keep)
        else:
            n = batch.shape[0]
            target_rows, label_rows = rows_of(target, n, "target"), rows_of(labels, n, "labels")

            def one(sl: slice) -> tuple[Explanation, list[tuple[str | None, Any]]]:
                return self._explain_rows(
                    None if trace is not None else x[sl], trace.rows(sl) if trace is not None else None,
                    target[sl] if target_rows else target, labels[sl] if label_rows else labels, init, method, keep)

            parts = map_chunks(one, slices, workers)
            out, finite = _concatenate([p for p, _ in parts]), [f for _, flags in parts for f in flags]
        raise_if_not_finite(finite, self.model, method[0], batch.dtype, method[2])  # the one read after the passes
        return out

    def _workers(self, x: Any) -> int:
        if self.workers is not None:
            return self.workers
        return cpu_workers() if get_namespace(x) is numpy else 1

    def _chunks(self, x: Any, head: Rule, workers: int) -> list[slice]:
        """Row chunks for a batch: bounded trace memory, and enough chunks for the CPU workers."""
        n = x.shape[0]
        if head.batch_coupled:
            return [slice(0, n)]  # random draws over the whole batch: chunks would change the result
        key = tuple(x.shape[1:]) + (x.dtype.itemsize,)
        sizes = self._sizes.get(key)
        if sizes is None:
            shapes = self.model.infer_shapes(tuple(x.shape[1:]))
            per_sample = sum(math.prod(s) for s in shapes.values()) * x.dtype.itemsize
            # weights read once per sample; a convolution's are reused at every output position, so
            # their traffic is small next to its work (ResNet-18 at batch 32 in 2 chunks: 0.6–0.75×
            # the time of one chunk, though its 45 MB of weights outweigh each chunk's trace)
            params = sum(math.prod(v.shape) for layer in self.model.layers if "conv" not in layer.kinds
                         for v in layer.params().values() if v is not None) * x.dtype.itemsize
            sizes = self._sizes[key] = (per_sample, params)
        return plan(n, sizes[0], workers, self.chunk_size, param_bytes=sizes[1])

    def _empty(self, x: Any, target: Any, labels: Any, init: str, method: tuple[dict[str, Rule], Rule, str],
               keep: tuple[str, ...]) -> Explanation:
        """The explanation of an empty batch: every array with 0 rows, in the input's dtype (no forward pass)."""
        xp = get_namespace(x)
        shapes = self.model.infer_shapes(tuple(x.shape[1:]))
        logits = xp.zeros((0, *shapes[self.model.logits_node]), dtype=x.dtype)
        r_init, tgt = initial_relevance(logits, target, init, labels)
        none = xp.zeros((0,), dtype=x.dtype)
        ledger = {n.name: LedgerEntry(none, none) for n in self.model.ancestors(self.model.logits_node)} \
            if self.ledger else {}
        kept = {k: xp.zeros((0, *shapes[k]), dtype=x.dtype) for k in keep if k in shapes}
        return Explanation(self.model.from_nhwc(xp.zeros_like(x)), logits, tgt, r_init, none, ledger, kept, method[2])

    def _explain_rows(self, x: Any, trace: Trace | None, target: Any, labels: Any, init: str,
                      method: tuple[dict[str, Rule], Rule, str], keep: tuple[str, ...]
                      ) -> tuple[Explanation, list[tuple[str | None, Any]]]:
        """Explain one chunk of rows (``x`` already prepared, or its ``trace``); also its finiteness flags."""
        rules, head, desc = method
        private = trace is None  # our own forward pass: the backward pass may free it as it goes
        if private:
            _, trace = self.model.run(x, upto=self.model.logits_node)
        logits = trace.logits
        r_init, tgt = initial_relevance(logits, target, init, labels)
        x_in = trace.input
        samples = head.samples(x_in)
        if samples is None:
            prop = propagate(self.model, trace, r_init, rules, cache=self.cache, keep=keep, ledger=self.ledger,
                             release=private)
            r_in = prop.relevance
        else:  # averaged over perturbed inputs (SmoothGrad, Integrated Gradients)
            r_in, finite = None, []
            for xs, weight in samples:
                _, tr = self.model.run(xs, upto=self.model.logits_node)
                r_k = tr.logits * (r_init != 0) if init == "logit" else r_init
                p = propagate(self.model, tr, r_k, rules, cache=self.cache, keep=keep, ledger=False, release=True)
                r_in = p.relevance * weight if r_in is None else r_in + p.relevance * weight
                finite += p.finite
            prop = Propagation(r_in, finite=finite)
        # token ids: the input is an index, not a value — methods that multiply by the input did so at the embedding
        relevance = r_in if takes_token_ids(self.model) else head.finalize(x_in, r_in)
        xp = get_namespace(relevance)
        finite = prop.finite + [(_FINAL, xp.isfinite(relevance).all())]
        total_in, total_init = _per_sample_sum(relevance), _per_sample_sum(r_init)
        diff = xp.abs(total_in - total_init)
        den = xp.abs(total_init)
        conservation = xp.where(den > 0, diff / xp.where(den > 0, den, 1), diff)
        return Explanation(self.model.from_nhwc(relevance), logits, tgt, r_init, conservation, prop.ledger,
                           prop.intermediate, desc, self.model.layout), finite

    __call__ = explain

    def explain_many(self, x: Any, targets: Sequence[Any] = ("pred",), methods: Sequence[Any] | None = None,
                     **kwargs: Any) -> list[Explanation]:
        """One forward pass, every (target, method) pair; ``methods`` items are rule/composite specs or
        mappings ``{"rule": ..., **params}`` / ``{"composite": ..., **params}`` (None: the explainer's own)."""
        trace = x if isinstance(x, Trace) else self.forward(x)
        out = []
        for m in (methods or [None]):
            spec: dict[str, Any] = {}
            if isinstance(m, Mapping):
                spec = dict(m)
            elif isinstance(m, Composite):
                spec = {"composite": m}
            elif m is not None:
                spec = {"rule": m}
            for t in targets:
                out.append(self.explain(trace=trace, target=t, **spec, **kwargs))
        return out


def explain(model: Model, x: Any, rule: Any = None, composite: Any = None, *, target: Any = "pred",
            labels: Any = None, init: str | None = None, backend: str | None = None, dtype: Any = "float32",
            keep: Sequence[str] = (), chunk_size: int | None = None, workers: int | None = None,
            targets: Sequence[Any] | None = None, **params: Any) -> Explanation:
    """Explain ``x`` with one rule (``rule="epsilon", epsilon=0.01``) or a composite (``composite="epsilon_plus"``).

    See :class:`Explainer` for the parameters and :meth:`Explainer.explain` for targets
    (``targets=[...]`` or ``target="each:topk:K"``: one map per target, (N, K, ...)).
    """
    exp = Explainer(model, composite=composite, rule=rule, backend=backend, dtype=dtype, init=init, keep=keep,
                    chunk_size=chunk_size, workers=workers, **params)
    return exp.explain(x, target=target, labels=labels, targets=targets)


__all__ = ["ChunkedTrace", "Explainer", "Explanation", "LedgerEntry", "explain", "propagate", "initial_relevance",
           "stack_targets", "split_targets"]
