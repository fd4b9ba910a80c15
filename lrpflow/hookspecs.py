"""Every hook of lrpflow, grouped by stage.

Plugins implement these with the ``lrpflow.hookimpl`` marker and are found through the
entry-point group ``lrpflow``. Each ``lrpflow_register_*`` hook is called once per
plugin manager with a :class:`lrpflow.plugins.Registry`; the plugin calls
``registry.add(name, implementation, ...)``. Built-in layers, rules, readers and
renderers register through these same hooks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from lrpflow.plugins import Registry

hookspec = pluggy.HookspecMarker("lrpflow")
#: Marker for hook implementations (re-exported as ``lrpflow.hookimpl``).
hookimpl = pluggy.HookimplMarker("lrpflow")

# --- model building ---------------------------------------------------------


@hookspec
def lrpflow_register_layers(registry: Registry) -> None:
    """Register layer classes: ``registry.add("conv2d", Conv2d, aliases=("convolution",))``.

    A layer class follows :class:`lrpflow.layers.base.Layer` (``forward``, ``vjp``,
    ``kinds``; linear-like layers also ``apply``/``apply_transpose``).
    """


# --- explanation ------------------------------------------------------------


@hookspec
def lrpflow_register_rules(registry: Registry) -> None:
    """Register relevance rules and attribution methods (frozen dataclasses).

    ``registry.add("epsilon", Epsilon, aliases=("lrp.epsilon",))``; the class is
    instantiated with the rule's parameters as keyword arguments.
    """


@hookspec
def lrpflow_register_composites(registry: Registry) -> None:
    """Register composite presets: callables ``preset(**params) -> Composite``."""


# --- input / output ---------------------------------------------------------


@hookspec
def lrpflow_register_model_readers(registry: Registry) -> None:
    """Register model readers ``read(path, **options) -> Model``.

    ``registry.add("toolbox_txt", read, suffixes=(".txt",))``; a reader is chosen by
    file suffix or by name.
    """


@hookspec
def lrpflow_register_model_writers(registry: Registry) -> None:
    """Register model writers ``write(model, path, **options) -> None`` (by suffix and name)."""


@hookspec
def lrpflow_register_data_readers(registry: Registry) -> None:
    """Register data readers ``read(path, **options) -> ndarray | lrpflow.io.DataSource``.

    A reader returning a :class:`~lrpflow.io.DataSource` is read lazily (in batches).
    Registration metadata selects the reader for a path: ``suffixes=(".npy",)``,
    ``no_suffix=True``, ``patterns=("*-ubyte",)`` (file-name globs), ``directories=True``,
    ``globs=True`` (folders / glob patterns), ``dataset=True`` (a named dataset needing no
    file, e.g. ``"digits"``). An option the reader does not accept is an error naming it.
    """


@hookspec
def lrpflow_register_data_writers(registry: Registry) -> None:
    """Register data writers ``write(array, path, **options) -> None`` (by suffix and name)."""


# --- rendering and evaluation -----------------------------------------------


@hookspec
def lrpflow_register_renderers(registry: Registry) -> None:
    """Register renderers ``render(relevance, **options) -> uint8 RGB image``."""


@hookspec
def lrpflow_register_colormaps(registry: Registry) -> None:
    """Register colormaps ``cmap(values in [-1, 1]) -> float RGB in [0, 1]``."""


@hookspec
def lrpflow_register_metrics(registry: Registry) -> None:
    """Register explanation quality metrics ``metric(...) -> per-sample values``."""


# --- experiments ------------------------------------------------------------


@hookspec
def lrpflow_register_steps(registry: Registry) -> None:
    """Register pipeline steps ``step(state, cfg) -> state`` usable from a config."""
