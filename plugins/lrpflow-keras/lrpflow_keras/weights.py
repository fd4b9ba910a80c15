"""Where a Keras layer's variables live, in the two weight layouts.

* Keras 3 (``model.weights.h5`` inside ``.keras``): ``layers/<snake_case(class)>[_k]/vars/<i>``,
  the path named after the layer's class and its rank among same-class layers of its container
  (Keras' own ``saving_lib`` addressing); nested models repeat ``layers/`` below their group.
* Legacy HDF5 (Keras 2 / tf.keras, and Keras 3's legacy writer): ``model_weights/<layer>`` with
  ``weight_names`` listing the datasets (``<layer>/kernel:0`` or ``<model>/<layer>/kernel``);
  the variables of a nested model's layers are told apart by the component before the variable name.
"""
from __future__ import annotations

import re
from typing import Any

import numpy

from lrpflow.errors import ModelFormatError
from lrpflow_keras.container import read_dataset


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class Keras3Weights:
    """Variables of the layers of one container (a model) in a Keras 3 weights file."""

    def __init__(self, group: Any, where: str, file_size: int) -> None:
        self.group, self.where, self.file_size = group, where, file_size
        self.paths: dict[str, str] = {}

    def bind(self, layer_configs: list[dict[str, Any]]) -> None:
        used: dict[str, int] = {}
        for cfg in layer_configs:
            base = snake_case(str(cfg.get("class_name", "")))
            if base in used:
                used[base] += 1
                key = f"{base}_{used[base]}"
            else:
                used[base] = 0
                key = base
            self.paths[_layer_name(cfg)] = key

    def _layer_group(self, layer: str) -> Any:
        """The group at Keras' path; if its ``vars`` carry a different layer ``name``, the one that names ``layer``."""
        key = self.paths.get(layer)
        layers = self.group.get("layers") if self.group is not None else None
        if layers is None:
            return None
        g = layers[key] if key is not None and key in layers else None
        named = _vars_name(g)
        if g is not None and (named is None or named == layer):
            return g
        for k in layers:  # newer Keras writes the layer's name on its vars group: trust it over the order
            if _vars_name(layers[k]) == layer:
                return layers[k]
        return g

    def get(self, layer: str, names: list[str]) -> list[numpy.ndarray]:
        g = self._layer_group(layer)
        vars_ = g.get("vars") if g is not None else None
        found = sorted(vars_, key=lambda k: int(k) if k.isdigit() else 1 << 30) if vars_ is not None else []
        if len(found) != len(names):
            raise ModelFormatError(f"{self.where}: layer {layer!r}: expected {len(names)} variables ({', '.join(names)}), "
                                   f"found {len(found)} under layers/{self.paths.get(layer)}/vars")
        return [read_dataset(vars_[k], f"{self.where}: layers/{self.paths[layer]}/vars/{k} ({layer}.{n})", self.file_size)
                for k, n in zip(found, names)]

    def child(self, layer: str) -> Keras3Weights:
        return Keras3Weights(self._layer_group(layer), self.where, self.file_size)


class LegacyWeights:
    """Variables of the layers of one container in a legacy HDF5 ``model_weights`` group."""

    def __init__(self, group: Any, where: str, file_size: int, entries: list[tuple[str, Any]] | None = None) -> None:
        self.group, self.where, self.file_size = group, where, file_size
        self.entries = entries  # a nested model's flat variable list: (name, dataset)

    def bind(self, layer_configs: list[dict[str, Any]]) -> None:
        pass

    def _entries_of(self, layer: str) -> list[tuple[str, Any]]:
        if self.entries is not None:  # inside a nested model: the variables named '<layer>/<var>'
            return [(n, d) for n, d in self.entries if len(n.split("/")) >= 2 and n.split("/")[-2] == layer]
        if self.group is None or layer not in self.group:
            return []
        g = self.group[layer]
        names = [_s(n) for n in g.attrs.get("weight_names", [])]
        out = []
        for n in names:
            if n not in g:
                raise ModelFormatError(f"{self.where}: model_weights/{layer}: weight {n!r} is listed but missing")
            out.append((n, g[n]))
        return out

    def get(self, layer: str, names: list[str]) -> list[numpy.ndarray]:
        entries = self._entries_of(layer)
        if len(entries) != len(names):
            raise ModelFormatError(f"{self.where}: layer {layer!r}: expected {len(names)} weights ({', '.join(names)}), "
                                   f"found {len(entries)}: {[n for n, _ in entries]}")
        by_base = {n.split("/")[-1].split(":")[0]: d for n, d in entries}
        if set(by_base) == set(names):
            ordered = [(n, by_base[n]) for n in names]
        else:  # names differ (e.g. a renamed variable): the saved order is Keras' order
            ordered = [(n, d) for n, (_, d) in zip(names, entries)]
        return [read_dataset(d, f"{self.where}: model_weights/{layer} ({layer}.{n})", self.file_size) for n, d in ordered]

    def child(self, layer: str) -> LegacyWeights:
        return LegacyWeights(None, self.where, self.file_size, self._entries_of_model(layer))

    def _entries_of_model(self, layer: str) -> list[tuple[str, Any]]:
        if self.entries is not None:
            return [(n, d) for n, d in self.entries if layer in n.split("/")[:-1]] or list(self.entries)
        if self.group is None or layer not in self.group:
            return []
        g = self.group[layer]
        names = [_s(n) for n in g.attrs.get("weight_names", [])]
        return [(n, g[n]) for n in names if n in g]


def _vars_name(g: Any) -> str | None:
    import h5py

    v = g.get("vars") if isinstance(g, h5py.Group) else None
    if not isinstance(v, h5py.Group):
        return None
    name = v.attrs.get("name")
    return None if name is None else _s(name)


def _layer_name(cfg: dict[str, Any]) -> str:
    name = cfg.get("name") or (cfg.get("config") or {}).get("name")
    return str(name)
