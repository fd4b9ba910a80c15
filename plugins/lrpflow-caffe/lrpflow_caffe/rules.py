"""The flat rule for grouped convolutions held as one block-diagonal weight.

``flat`` replaces every weight by 1; on a block-diagonal weight (see
:func:`lrpflow_caffe.convert.grouped_conv`) that would spread relevance across groups that are
not connected. :class:`GroupedFlat` replaces only the weights inside the diagonal blocks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lrpflow.backend import get_namespace
from lrpflow.errors import ConfigError
from lrpflow.layers.base import Layer
from lrpflow.rules.base import Contribution, NodeContext, Rule, modified_gradient, ones, safe_divide, uniform_over_windows


@dataclass(frozen=True)
class BlockOnes:
    """Ones on the ``groups`` diagonal blocks of the weight's (input, output) channel axes, zeros elsewhere."""

    groups: int

    def __call__(self, w: Any) -> Any:
        xp = get_namespace(w)
        cin, cout = w.shape[-2], w.shape[-1]
        gi = xp.arange(cin)[:, None] // (cin // self.groups)
        go = xp.arange(cout)[None, :] // (cout // self.groups)
        return xp.broadcast_to((gi == go).astype(w.dtype), w.shape).copy()


@dataclass(frozen=True)
class GroupedFlat(Rule):
    """LRP-flat on a grouped convolution: ``R_i = Σ_j R_j / |window(j)|`` over each group's own inputs."""

    groups: int = 1

    def __post_init__(self) -> None:
        if int(self.groups) < 1:
            raise ConfigError(f"rule 'caffe_flat_grouped': groups must be ≥ 1, got {self.groups}")

    def linear(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        w = layer.lrp_params(xs)[0]  # type: ignore[attr-defined]
        if w.shape[-2] % self.groups or w.shape[-1] % self.groups:
            raise ConfigError(f"node {ctx.name!r}: {w.shape[-2]}→{w.shape[-1]} channels do not split into {self.groups} groups")
        return modified_gradient(layer, xs, r, [Contribution(ones, BlockOnes(int(self.groups)), None)], ctx, safe_divide)

    def maxpool(self, layer: Layer, xs: Sequence[Any], y: Any, r: Any, ctx: NodeContext) -> list[Any]:
        return uniform_over_windows(layer, xs, r)
