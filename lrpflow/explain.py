"""``explain()`` and ``Explainer``: forward pass, relevance initialisation, backward relevance pass.

One forward :class:`~lrpflow.graph.Trace` serves any number of targets and rules; the
Explainer caches rule-modified parameters (W⁺, W², ...) between calls. Every result
carries the conservation ledger: per node, the relevance entering it (at its output),
leaving it (to its inputs) and what its bias/stabiliser absorbed.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from lrpflow.backend import get_namespace, namespace, resolve_dtype, to_backend, to_numpy, tune_host_allocator
from lrpflow.chunks import cpu_workers, map_chunks, plan
from lrpflow.composites import Composite, make_composite
from lrpflow.errors import ConfigError, DataFormatError, ShapeError
from lrpflow.graph import Model, Trace
from lrpflow.rules import Rule, make_rule
from lrpflow.rules.base import NodeContext

INITS = ("logit", "one")


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

    def to_numpy(self) -> Explanation:
        """A copy with every array on the host."""
        return Explanation(
            to_numpy(self.relevance), to_numpy(self.logits), to_numpy(self.target), to_numpy(self.r_init),
            to_numpy(self.conservation),
            {k: LedgerEntry(to_numpy(v.entering), to_numpy(v.leaving)) for k, v in self.ledger.items()},
            {k: to_numpy(v) for k, v in self.intermediate.items()}, self.method)


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
    pending: dict[str, Any] = {start: r_init}
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
        if ledger:
            leaving = _per_sample_sum(r_ins[0])
            for extra in r_ins[1:]:
                leaving = leaving + _per_sample_sum(extra)
            book[node.name] = LedgerEntry(_per_sample_sum(r), leaving)
        del xs, y, z, ctx
        if release:
            trace.values.pop(node.name, None)
        for name, ri in zip(node.inputs, r_ins):
            pending[name] = ri if name not in pending else pending[name] + ri
        del r, r_ins
    r_in = pending.get(model.input_name)
    if r_in is None:
        r_in = xp.zeros_like(trace.input)
    if model.input_name in keep_set:
        kept[model.input_name] = r_in
    return Propagation(r_in, book, kept)


def _finite_guard(r: Any) -> Any:
    """Last-resort guard: overflowed values become ±max of the dtype (NaN cannot arise from our divisions)."""
    xp = get_namespace(r)
    big = float(numpy.finfo(r.dtype).max)
    return xp.nan_to_num(r, nan=0.0, posinf=big, neginf=-big)


_TOPK = re.compile(r"^\s*topk\s*:\s*(\d+)\s*$", re.IGNORECASE)


def initial_relevance(logits: Any, target: Any, init: str, labels: Any = None) -> tuple[Any, Any]:
    """``(R_init, target)`` for a target spec; see :func:`explain` for the forms a target takes."""
    xp = get_namespace(logits)
    n, c = logits.shape[0], logits.shape[-1]
    if init not in INITS:
        raise ConfigError(f"init must be one of {INITS}, got {init!r}")

    def one_hot(idx: Any) -> Any:
        return (xp.arange(c)[None, :] == idx[:, None]).astype(logits.dtype)

    if isinstance(target, str) and target.lower() == "pred":
        idx = logits.argmax(axis=1)
        mask = one_hot(idx)
    elif isinstance(target, str) and target.lower() == "true":
        if labels is None:
            raise ConfigError("target 'true' needs labels=")
        lab = xp.asarray(labels)
        if lab.ndim == 2 and lab.shape == (n, c):
            lab = lab.argmax(axis=1)
        if lab.shape != (n,):
            raise ShapeError(f"labels must have shape ({n},) or ({n}, {c}), got {tuple(lab.shape)}")
        idx = lab.astype(numpy.int64)
        _check_classes(idx, c)
        mask = one_hot(idx)
    elif isinstance(target, str) and _TOPK.match(target):
        k = int(_TOPK.match(target).group(1))  # type: ignore[union-attr]
        if not 1 <= k <= c:
            raise ConfigError(f"target {target!r}: K must be between 1 and the number of classes {c}")
        idx = xp.argsort(-logits, axis=1)[:, :k]
        mask = one_hot(idx[:, 0])
        for j in range(1, k):
            mask = mask + one_hot(idx[:, j])
    elif isinstance(target, str):
        raise ConfigError(f"unknown target {target!r}; expected 'pred', 'true', 'topk:K', a class index or an array")
    elif isinstance(target, (int, numpy.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < c:
            raise ConfigError(f"target class {target} out of range: the model has {c} outputs")
        idx = xp.full((n,), int(target), dtype=numpy.int64)
        mask = one_hot(idx)
    else:
        arr = xp.asarray(target)
        if arr.ndim == 1 and numpy.issubdtype(arr.dtype, numpy.integer):
            if arr.shape != (n,):
                raise ShapeError(f"per-sample target classes must have shape ({n},), got {tuple(arr.shape)}")
            _check_classes(arr, c)
            idx = arr
            mask = one_hot(idx)
        else:
            if tuple(arr.shape) != tuple(logits.shape):
                raise ShapeError(f"explicit R_init must have the logits' shape {tuple(logits.shape)}, got {tuple(arr.shape)}")
            r = arr.astype(logits.dtype)
            if not to_numpy(xp.isfinite(r).all()):  # an explicit host read, before the backward pass
                raise DataFormatError("explicit R_init contains NaN or Inf")
            return r, xp.full((n,), -1, dtype=numpy.int64)
    r = logits * mask if init == "logit" else mask
    return r, idx


def _check_classes(idx: Any, c: int) -> None:
    if not idx.size:
        return
    xp = get_namespace(idx)
    lo, hi = (int(v) for v in to_numpy(xp.stack([idx.min(), idx.max()])))  # one explicit host read
    if lo < 0 or hi >= c:
        raise ConfigError(f"target classes must lie in [0, {c}), got values from {lo} to {hi}")


def _rows_of(value: Any, n: int, what: str) -> bool:
    """True if ``value`` holds one row per sample (an array to slice with the batch)."""
    if value is None or isinstance(value, (str, int, numpy.integer)):
        return False
    shape = getattr(value, "shape", None)
    if shape is None:
        value = numpy.asarray(value)
        shape = value.shape
    if len(shape) == 0:
        return False
    if shape[0] != n:
        raise ShapeError(f"{what} must have one row per sample ({n}), got shape {tuple(shape)}")
    return True


def _concatenate(parts: Sequence[Explanation]) -> Explanation:
    """One explanation from the explanations of consecutive row chunks."""
    xp = get_namespace(parts[0].relevance)

    def cat(arrays: Sequence[Any]) -> Any:
        return xp.concatenate(list(arrays), axis=0)

    first = parts[0]
    ledger = {k: LedgerEntry(cat([p.ledger[k].entering for p in parts]), cat([p.ledger[k].leaving for p in parts]))
              for k in first.ledger}
    kept = {k: cat([p.intermediate[k] for p in parts]) for k in first.intermediate}
    return Explanation(cat([p.relevance for p in parts]), cat([p.logits for p in parts]), cat([p.target for p in parts]),
                       cat([p.r_init for p in parts]), cat([p.conservation for p in parts]), ledger, kept, first.method)


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
            rules, head, desc = {n.name: r for n in self.model.nodes}, r, _describe(r, None)
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
            x = self.model.to_nhwc(x)
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
                **params: Any) -> Explanation:
        """Explain ``x`` (or a trace from :meth:`forward`) for ``target``.

        ``target``: ``"pred"`` (argmax), ``"true"`` (needs ``labels``), a class index, per-sample
        class indices (N,), ``"topk:K"`` (sum of the K best), or an explicit R_init array (N, C).
        ``composite``/``rule`` (+ params) override the explainer's own for this call.
        Large batches are explained in row chunks (see ``chunk_size`` and ``workers``).
        """
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
        workers = self._workers(batch)
        slices = self._chunks(batch, method[1], workers)
        if isinstance(trace, ChunkedTrace) and len(slices) > 1:
            slices = [sl for sl, _ in trace.parts]  # explain the chunks the forward pass ran
        if len(slices) == 1:
            return self._explain_rows(x, trace, target, labels, init, method, keep)
        n = batch.shape[0]
        target_rows, label_rows = _rows_of(target, n, "target"), _rows_of(labels, n, "labels")

        def one(sl: slice) -> Explanation:
            return self._explain_rows(
                None if trace is not None else x[sl], trace.rows(sl) if trace is not None else None,
                target[sl] if target_rows else target, labels[sl] if label_rows else labels, init, method, keep)

        return _concatenate(map_chunks(one, slices, workers))

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
            params = sum(math.prod(v.shape) for layer in self.model.layers for v in layer.params().values()
                         if v is not None) * x.dtype.itemsize
            sizes = self._sizes[key] = (per_sample, params)
        return plan(n, sizes[0], workers, self.chunk_size, param_bytes=sizes[1])

    def _explain_rows(self, x: Any, trace: Trace | None, target: Any, labels: Any, init: str,
                      method: tuple[dict[str, Rule], Rule, str], keep: tuple[str, ...]) -> Explanation:
        """Explain one chunk of rows (``x`` already prepared, or its ``trace``)."""
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
            r_in, prop = None, None
            for xs, weight in samples:
                _, tr = self.model.run(xs, upto=self.model.logits_node)
                r_k = tr.logits * (r_init != 0) if init == "logit" else r_init
                p = propagate(self.model, tr, r_k, rules, cache=self.cache, keep=keep, ledger=False, release=True)
                r_in = p.relevance * weight if r_in is None else r_in + p.relevance * weight
            prop = Propagation(r_in)
        relevance = _finite_guard(head.finalize(x_in, r_in))
        total_in, total_init = _per_sample_sum(relevance), _per_sample_sum(r_init)
        xp = get_namespace(relevance)
        diff = xp.abs(total_in - total_init)
        den = xp.abs(total_init)
        conservation = xp.where(den > 0, diff / xp.where(den > 0, den, 1), diff)
        return Explanation(self.model.from_nhwc(relevance), logits, tgt, r_init, conservation, prop.ledger,
                           prop.intermediate, desc)

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
            **params: Any) -> Explanation:
    """Explain ``x`` with one rule (``rule="epsilon", epsilon=0.01``) or a composite (``composite="epsilon_plus"``).

    See :class:`Explainer` for the parameters and :meth:`Explainer.explain` for targets.
    """
    exp = Explainer(model, composite=composite, rule=rule, backend=backend, dtype=dtype, init=init, keep=keep,
                    chunk_size=chunk_size, workers=workers, **params)
    return exp.explain(x, target=target, labels=labels)


__all__ = ["ChunkedTrace", "Explainer", "Explanation", "LedgerEntry", "explain", "propagate", "initial_relevance"]
