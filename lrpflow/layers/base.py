"""The layer protocol and the base classes of built-in layers.

A layer holds parameters and computes ``forward(*xs) -> y``; it keeps no per-call
state (activations live in the :class:`lrpflow.graph.Trace`). What a relevance rule
does with a layer depends on its ``role``:

- ``"linear"``: an affine map of its input(s) (Linear, Conv2d, pools, BatchNorm, Add);
  rules evaluate it with modified parameters through :meth:`LinearLike.apply` and
  :meth:`LinearLike.apply_transpose` (the "modified gradient" scheme);
- ``"maxpool"``: winner-take-all or proportional redistribution;
- ``"elementwise"`` and ``"softmax"``: relevance passes through unchanged;
- ``"shape"``: relevance is moved by the (exact, linear) vector–Jacobian product.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy

from lrpflow.backend import can_overwrite, get_namespace
from lrpflow.errors import ShapeError

Shape = tuple[int, ...]


class Layer:
    """Base class of layers (plugins may also just follow this protocol).

    Attributes
    ----------
    role : str
        How rules treat the layer: linear, maxpool, elementwise, softmax, shape.
    kinds : frozenset of str
        Abstract kinds that composites match on (``"dense"``, ``"conv"``, ``"pool"``, ...).
    n_inputs : int or None
        Number of inputs (None: any number ≥ 1, e.g. Add, Concat).
    param_names : tuple of str
        Names of array attributes that are parameters.
    """

    role: ClassVar[str] = "elementwise"
    kinds: ClassVar[frozenset[str]] = frozenset()
    n_inputs: ClassVar[int | None] = 1
    param_names: ClassVar[tuple[str, ...]] = ()
    #: toolbox name in the plain-text format (None: not a toolbox layer)
    toolbox_name: ClassVar[str | None] = None
    #: the output is ≥ 0 whatever the input (ReLU, Sigmoid, SoftMax)
    nonneg_output: ClassVar[bool] = False
    #: inputs ≥ 0 give outputs ≥ 0 (pools, shape layers, Add, Identity)
    keeps_nonneg: ClassVar[bool] = False

    def __init__(self) -> None:
        self._cast_cache: dict[Any, dict[str, Any]] = {}
        self._version = 0  # bumped whenever parameters change (invalidates rule caches)
        # toolbox presets (set_lrp_parameters); None means "use the caller's rule"
        self.lrp_var: str | None = None
        self.lrp_param: float | None = None

    # -- identity -----------------------------------------------------------
    @property
    def type_name(self) -> str:
        return type(self).__name__

    def config(self) -> dict[str, Any]:
        """Constructor arguments other than parameter arrays (for writers and repr)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.type_name}({args})"

    def set_lrp_parameters(self, lrp_var: str | None = None, param: float | None = None) -> None:
        """Toolbox preset: the rule this layer uses in ``Sequential.lrp(R)`` without explicit rule."""
        self.lrp_var, self.lrp_param = lrp_var, param

    # -- parameters ---------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Parameter arrays by name (as stored)."""
        return {k: getattr(self, k) for k in self.param_names}

    def set_params(self, **arrays: Any) -> None:
        """Replace parameters (shapes must match) and forget cached casts."""
        for k, v in arrays.items():
            if k not in self.param_names:
                raise ShapeError(f"{self.type_name} has no parameter {k!r}; it has {self.param_names}")
            old = getattr(self, k)
            if old is not None and tuple(v.shape) != tuple(old.shape):
                raise ShapeError(f"{self.type_name}.{k}: expected shape {tuple(old.shape)}, got {tuple(v.shape)}")
            setattr(self, k, v)
        self.invalidate()

    def params_like(self, x: Any) -> dict[str, Any]:
        """Parameters on x's backend and in x's dtype (cached until parameters change)."""
        if not self.param_names:
            return {}
        xp = get_namespace(x)
        key = (xp.__name__, numpy.dtype(x.dtype).str, getattr(getattr(x, "device", None), "id", None))
        cached = self._cast_cache.get(key)
        if cached is None:
            cached = {
                k: None if v is None else xp.asarray(v, dtype=x.dtype) for k, v in self.params().items()
            }
            self._cast_cache[key] = cached
        return cached

    def invalidate(self) -> None:
        """Forget cached parameter casts (call after changing parameters in place)."""
        self._cast_cache.clear()
        self._version = getattr(self, "_version", 0) + 1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cast_cache"] = {}
        return state

    # -- computation --------------------------------------------------------
    def forward(self, *xs: Any) -> Any:
        """Output of the layer for inputs ``xs`` (batch first)."""
        raise NotImplementedError

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        """Vector–Jacobian product: the gradient w.r.t. each input given ``g = ∂L/∂y``."""
        raise NotImplementedError

    def param_grads(self, xs: Sequence[Any], g: Any) -> dict[str, Any]:
        """Gradients w.r.t. the parameters (trainable layers only)."""
        return {}

    def output_shape(self, *shapes: Shape) -> Shape:
        """Output shape (without batch) for input shapes; raises ShapeError on a mismatch."""
        return shapes[0]


class Elementwise(Layer):
    """A parameter-free elementwise map; LRP passes relevance through unchanged."""

    role = "elementwise"
    kinds = frozenset({"activation", "elementwise"})


class LinearLike(Layer):
    """An affine map of the input(s): every LRP rule applies generically.

    Subclasses define :meth:`apply` (the affine map with given weight/bias) and
    :meth:`apply_transpose` (its transpose, i.e. the vector–Jacobian product), and
    :meth:`lrp_params` (the weight and bias rules modify).
    """

    role = "linear"
    #: True when ``forward(x) == apply(x, *lrp_params(x))`` so that z can be read from the trace
    forward_is_apply: ClassVar[bool] = True

    def z_from_output(self, y: Any) -> Any:
        """``z = apply(x, *lrp_params(x))`` recovered from the forward output ``y`` (no recomputation)."""
        return y if self.forward_is_apply else None

    def lrp_params(self, xs: Sequence[Any]) -> tuple[Any, Any]:
        """``(weight, bias)`` on the inputs' backend and dtype; bias may be None."""
        p = self.params_like(xs[0])
        return p.get("weight"), p.get("bias")

    def apply(self, xs: Sequence[Any], weight: Any, bias: Any | None) -> Any:
        """The affine map with the given (possibly modified) parameters: ``z = W x + b``."""
        raise NotImplementedError

    def apply_transpose(self, s: Any, weight: Any, xs: Sequence[Any]) -> list[Any]:
        """``Wᵀ s`` for each input (shapes taken from ``xs``)."""
        raise NotImplementedError

    def apply_signed(self, x: Any, weight: Any, bias: Any | None) -> Any:
        """:meth:`apply` to ``[x⁺, x⁻]`` (channels stacked along the last axis) for a one-input
        layer, ``weight`` holding the weights of both halves (LRP-αβ on signed inputs). Layers
        may split the input inside a fused kernel; this is the plain form."""
        return self.apply([signed_stack(x)], weight, bias)

    def input_times_transpose(self, x: Any, parts: Sequence[Any], weight: Any, signed: bool = False) -> Any:
        """``x ⊙ Wᵀ s`` for a one-input layer, ``s`` the ``parts`` joined along the last axis.

        ``signed``: the weight's input axis stacks the weights of ``[x⁺, x⁻]`` (``2·C``
        for ``x`` with ``C`` channels) and the result is ``x⁺ ⊙ A + x⁻ ⊙ B`` with
        ``[A, B] = Wᵀ s`` (LRP-αβ on signed inputs). Layers may fuse this product
        (:class:`~lrpflow.layers.conv.Conv2d` through onnxruntime); this is the plain form.
        A ``parts`` list is emptied once joined, so the parts are not held through the transpose.
        """
        xp = get_namespace(x)
        s = parts[0] if len(parts) == 1 else xp.concatenate(list(parts), axis=-1)
        if isinstance(parts, list):
            parts.clear()
        if not signed:
            return input_times(x, self.apply_transpose(s, weight, [x])[0])
        x2 = signed_stack(x)
        pair = input_times(x2, self.apply_transpose(s, weight, [x2])[0]).reshape(-1, 2, x.shape[-1])
        return (pair[:, 0] + pair[:, 1]).reshape(x.shape)  # x⁺ ⊙ A + x⁻ ⊙ B per position

    def forward(self, *xs: Any) -> Any:
        w, b = self.lrp_params(xs)
        return self.apply(xs, w, b)

    def vjp(self, xs: Sequence[Any], y: Any, g: Any) -> list[Any]:
        w, _ = self.lrp_params(xs)
        return self.apply_transpose(g, w, xs)


class ShapeLayer(Layer):
    """Moves values without changing them (Flatten, Reshape, Pad, Concat)."""

    role = "shape"
    kinds = frozenset({"shape"})
    keeps_nonneg = True


def check_rank(shape: Shape, rank: int, layer: str, what: str) -> None:
    """Raise ShapeError unless ``shape`` (without batch) has ``rank`` axes."""
    if len(shape) != rank:
        raise ShapeError(f"{layer} expects {what} (without the batch axis), got shape {shape}")


def signed_stack(x: Any) -> Any:
    """``[x⁺, x⁻]`` along the last axis (the input of LRP-αβ/γ's stacked products on signed inputs)."""
    xp = get_namespace(x)
    return xp.concatenate([xp.maximum(x, 0), xp.minimum(x, 0)], axis=-1)


def input_times(x: Any, g: Any) -> Any:
    """``x ⊙ g``, written into ``g`` (a transpose's fresh output) where shape and dtype allow."""
    if can_overwrite(g, x):
        g *= x
        return g
    return x * g


def add_bias(z: Any, bias: Any | None) -> Any:
    """``z + b``; in place when ``z`` is a fresh product the caller owns and keeps its dtype.

    Saves a buffer the size of the output (and, on numpy, its page faults) per call.
    """
    if bias is None:
        return z
    if can_overwrite(z, bias):
        z += bias
        return z
    return z + bias
