"""The plugin manager and the typed registries its hooks fill.

``make_plugin_manager()`` adds the hookspecs, registers the built-in plugins (the same
way as third-party ones), loads the entry points of the group ``lrpflow`` and checks
that every implementation matches a spec. ``build_registries(pm)`` calls every
``lrpflow_register_*`` hook, plugin by plugin, so each entry knows who provided it.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from lrpflow import hookspecs
from lrpflow.errors import DuplicateNameError, PluginError, UnknownNameError

PROJECT = "lrpflow"

#: Modules of lrpflow that register built-ins; each is an ordinary plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "lrpflow.layers",
    "lrpflow.rules",
    "lrpflow.composites",
    "lrpflow.attnlrp",
    "lrpflow.innvestigate",
    "lrpflow.io",
    "lrpflow.render",
    "lrpflow.evaluate",
    "lrpflow.steps",
)

#: Registry kinds, in the order ``lrpflow-info`` lists them (hook = lrpflow_register_<kind>).
REGISTRY_KINDS: tuple[str, ...] = (
    "layers",
    "rules",
    "composites",
    "model_readers",
    "model_writers",
    "data_readers",
    "data_writers",
    "renderers",
    "colormaps",
    "metrics",
    "steps",
)


def normalize(name: str) -> str:
    """Registry lookups are case-insensitive."""
    return str(name).strip().lower()


@dataclass
class Entry:
    """One registered implementation and the plugin that provided it."""

    name: str
    impl: Any
    plugin: str
    aliases: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    """A name → implementation table of one kind (layers, rules, ...).

    Names and aliases are looked up case-insensitively; registering a name twice is a
    :class:`DuplicateNameError` naming both plugins; looking up an unknown name is an
    :class:`UnknownNameError` listing the known ones.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._lookup: dict[str, str] = {}
        self.current_plugin = "<direct>"

    def add(self, name: str, impl: Any, *, aliases: tuple[str, ...] | list[str] = (), **meta: Any) -> None:
        """Register ``impl`` under ``name`` (and its aliases); ``meta`` e.g. ``suffixes=(".txt",)``."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.current_plugin!r}: {self.kind} name must be a non-empty string")
        entry = Entry(name, impl, self.current_plugin, tuple(aliases), dict(meta))
        for key in (name, *aliases):
            k = normalize(key)
            if k in self._lookup:
                other = self._entries[self._lookup[k]]
                raise DuplicateNameError(
                    f"{self.kind[:-1] if self.kind.endswith('s') else self.kind} name {key!r} registered twice: "
                    f"by plugin {other.plugin!r} (as {other.name!r}) and by plugin {self.current_plugin!r}"
                )
        self._entries[name] = entry
        for key in (name, *aliases):
            self._lookup[normalize(key)] = name

    def entry(self, name: str) -> Entry:
        """The entry for a name or alias."""
        try:
            return self._entries[self._lookup[normalize(name)]]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            close = difflib.get_close_matches(normalize(name), list(self._lookup), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UnknownNameError(f"unknown {self.kind[:-1]} {name!r}{hint}; known {self.kind}: {known}") from None

    def get(self, name: str) -> Any:
        """The implementation registered under a name or alias."""
        return self.entry(name).impl

    def canonical(self, name: str) -> str:
        """The registered name behind a name or alias."""
        return self.entry(name).name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self._lookup

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names (not aliases), in registration order."""
        return list(self._entries)

    def by_meta(self, key: str, value: Any) -> list[Entry]:
        """Entries whose ``meta[key]`` equals or contains ``value`` (e.g. a file suffix)."""
        found = []
        for e in self._entries.values():
            v = e.meta.get(key)
            if v == value or (isinstance(v, (tuple, list, set, frozenset)) and value in v):
                found.append(e)
        return found


class Registries:
    """All registries of one plugin manager, as attributes (``regs.rules``, ``regs.layers``, ...)."""

    def __init__(self) -> None:
        for kind in REGISTRY_KINDS:
            setattr(self, kind, Registry(kind))

    def __iter__(self) -> Iterator[Registry]:
        return (getattr(self, k) for k in REGISTRY_KINDS)

    # typed attributes for readers and type checkers
    layers: Registry
    rules: Registry
    composites: Registry
    model_readers: Registry
    model_writers: Registry
    data_readers: Registry
    data_writers: Registry
    renderers: Registry
    colormaps: Registry
    metrics: Registry
    steps: Registry


def make_plugin_manager(*, entry_points: bool = True, builtins: tuple[str, ...] = BUILTIN_PLUGINS) -> pluggy.PluginManager:
    """Hookspecs → built-in plugins → entry points (group ``lrpflow``) → ``check_pending()``."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in builtins:
        try:
            module = importlib.import_module(modname)
        except ImportError as err:  # an optional built-in whose dependency is missing
            raise PluginError(f"built-in plugin {modname!r} failed to import: {err}") from err
        pm.register(module, name=modname)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(PROJECT)
        except Exception as err:
            raise PluginError(f"loading plugins of entry-point group {PROJECT!r} failed: {err}") from err
    pm.check_pending()
    return pm


def build_registries(pm: pluggy.PluginManager) -> Registries:
    """Call every ``lrpflow_register_<kind>`` hook, one plugin at a time, in registration order."""
    regs = Registries()
    for kind in REGISTRY_KINDS:
        registry: Registry = getattr(regs, kind)
        caller = getattr(pm.hook, f"lrpflow_register_{kind}")
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            registry.current_plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
            impl.function(registry=registry)
        registry.current_plugin = "<direct>"
    return regs


_DEFAULT: Registries | None = None


def registries() -> Registries:
    """The registries of the default plugin manager (built on first use, then reused)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = build_registries(make_plugin_manager())
    return _DEFAULT


def reset_registries(regs: Registries | None = None) -> None:
    """Replace the default registries (``None``: rebuild on next use); for tests and hosts."""
    global _DEFAULT
    _DEFAULT = regs
