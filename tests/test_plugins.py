"""The plugin manager: hooks, built-ins as plugins, entry points, duplicates, lrpflow-info."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy
import pytest

import lrpflow
from lrpflow import hookspecs
from lrpflow.plugins import REGISTRY_KINDS, Registry, build_registries, make_plugin_manager, reset_registries
from lrpflow.rules import Rule


def test_every_registry_kind_has_a_documented_hook():
    for kind in REGISTRY_KINDS:
        spec = getattr(hookspecs, f"lrpflow_register_{kind}")
        assert spec.__doc__ and len(spec.__doc__) > 20


def test_builtins_register_through_the_hooks():
    pm = make_plugin_manager(entry_points=False)
    regs = build_registries(pm)
    assert regs.layers.entry("rect").plugin == "lrpflow.layers"
    assert regs.rules.entry("alphabeta").name == "alpha_beta"
    assert regs.rules.entry("epsilon").plugin == "lrpflow.rules"
    assert {"epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"} <= set(regs.composites.names())
    assert regs.model_readers.by_meta("suffixes", ".txt")[0].name == "toolbox_txt"


class ThirdParty:
    """An inline plugin, as a third-party package would ship it."""

    @dataclass(frozen=True)
    class Half(Rule):
        def linear(self, layer, xs, y, r, ctx):
            from lrpflow.rules.lrp import Epsilon

            return [0.5 * t for t in Epsilon(1e-9).linear(layer, xs, y, r, ctx)]

    @lrpflow.hookimpl
    def lrpflow_register_rules(self, registry):
        registry.add("half_epsilon", self.Half)


def test_third_party_rule_is_usable_by_name():
    pm = make_plugin_manager(entry_points=False)
    pm.register(ThirdParty(), name="thirdparty")
    regs = build_registries(pm)
    assert regs.rules.entry("half_epsilon").plugin == "thirdparty"
    reset_registries(regs)
    try:
        net = lrpflow.Sequential([lrpflow.layers.Linear(3, 2, rng=0)])
        x = numpy.ones((1, 3))
        a = lrpflow.explain(net, x, rule="half_epsilon", dtype="float64").relevance
        b = lrpflow.explain(net, x, rule="epsilon", epsilon=1e-9, dtype="float64").relevance
        numpy.testing.assert_allclose(a, 0.5 * b)
    finally:
        reset_registries(None)


def test_duplicate_name_names_both_plugins():
    class Clash:
        @lrpflow.hookimpl
        def lrpflow_register_rules(self, registry):
            registry.add("my_rule", ThirdParty.Half, aliases=("epsilon",))

    pm = make_plugin_manager(entry_points=False)
    pm.register(Clash(), name="clashing-plugin")
    with pytest.raises(lrpflow.DuplicateNameError, match="lrpflow.rules.*clashing-plugin"):
        build_registries(pm)


def test_unknown_name_lists_known_and_suggests():
    reg = Registry("rules")
    reg.add("epsilon", object)
    reg.add("gamma", object)
    with pytest.raises(lrpflow.UnknownNameError, match=r"did you mean epsilon.*known rules: epsilon, gamma"):
        reg.get("epsilom")


def test_lrpflow_info_lists_everything_with_its_plugin():
    out = subprocess.run([sys.executable, "-c", "from lrpflow.cli import info; raise SystemExit(info([]))"],
                         capture_output=True, text=True, check=True).stdout
    for kind in ("layers", "rules", "composites", "model_readers"):
        assert f"\n{kind} (" in out
    assert "alpha_beta" in out and "lrpflow.rules" in out and "conv2d" in out and "toolbox_txt" in out
