"""Keras model JSON + weights → an lrpflow :class:`~lrpflow.graph.Model` (no TensorFlow, no Keras).

Sequential and Functional models (any DAG of layers with one input and one output, shared
layers, nested models used as layers) become one lrpflow DAG; the layers map as in
:mod:`lrpflow_keras.layers`. Nodes are named after the Keras layers; an ``activation=`` inside a
layer becomes its own node ``"<layer>/<activation>"``; a nested model's layers get the prefix
``"<model>/"``, a layer's second call the suffix ``"#1"``. BatchNormalization is folded into the
preceding Conv/Dense by default (``fold_batchnorm=False`` keeps it as an affine layer).
"""
from __future__ import annotations

import os
from typing import Any

from lrpflow.errors import ConfigError, LrpflowError, ModelFormatError, UnsupportedLayerError
from lrpflow.graph import Model
from lrpflow_keras.container import MAX_WEIGHTS_BYTES, open_keras_zip, open_legacy_h5
from lrpflow_keras.layers import (
    IDENTITY_LAYERS, MODEL_CLASSES, PENDING_LAYERS, REFUSED, SUPPORTED_LAYERS, Builder, convert_layer_body,
)
from lrpflow_keras.weights import Keras3Weights, LegacyWeights

__all__ = ["read", "convert_model", "PENDING_LAYERS", "SUPPORTED_LAYERS", "REFUSED", "IDENTITY_LAYERS"]

#: deepest nesting of models inside models we follow
MAX_DEPTH = 32

# --- models ---------------------------------------------------------------------------------


def _layer_cfg(entry: dict[str, Any], where: str) -> tuple[str, dict[str, Any], str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ModelFormatError(f"{where}: a layer entry must be an object with 'class_name'")
    cfg = entry.get("config")
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{where}: layer {entry.get('class_name')!r} has no config object")
    name = entry.get("name") or cfg.get("name")
    if not isinstance(name, str) or not name:
        raise ModelFormatError(f"{where}: a {entry['class_name']} layer has no name")
    return entry["class_name"], cfg, name


def _input_shape(cfg: dict[str, Any], where: str) -> tuple[int, ...]:
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if not isinstance(shape, list) or len(shape) < 2:
        raise ModelFormatError(f"{where}: InputLayer {cfg.get('name')!r} has no batch_shape")
    sample = shape[1:]
    if not all(isinstance(s, int) and s > 0 for s in sample):
        raise UnsupportedLayerError(f"{where}: input {cfg.get('name')!r} has shape {shape}: lrpflow needs every "
                                    "dimension but the batch to be known; rebuild the model with a fixed input shape")
    return tuple(sample)


def convert_layer(b: Builder, cls: str, cfg: dict[str, Any], name: str, weights: Any, inputs: list[str],
                  depth: int) -> str:
    """Add the nodes of one Keras layer (or nested model) applied to ``inputs``; the output's node name."""
    if cls in MODEL_CLASSES:
        if depth >= MAX_DEPTH:
            raise ModelFormatError(f"{b.path}: models nested deeper than {MAX_DEPTH}")
        return convert_model({"class_name": cls, "config": cfg}, b, weights.child(name), inputs, f"{name}/", depth + 1)
    return convert_layer_body(b, cls, cfg, name, weights, inputs)


def _history(t: Any, where: str) -> tuple[str, int, int]:
    """``(layer, node_index, tensor_index)`` of one inbound tensor (Keras 3 dict or Keras 2 list)."""
    if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__" and isinstance(t.get("config"), dict):
        h = t["config"].get("keras_history")
    elif isinstance(t, list) and len(t) >= 3 and isinstance(t[0], str):
        h = t[:3]
    else:
        h = None
    if not (isinstance(h, list) and len(h) == 3 and isinstance(h[0], str)
            and isinstance(h[1], int) and isinstance(h[2], int)):
        raise ModelFormatError(f"{where}: cannot read an inbound tensor {str(t)[:200]}")
    return h[0], h[1], h[2]


def _inbound(node: Any, where: str) -> list[tuple[str, int, int]]:
    if isinstance(node, dict):  # Keras 3: {"args": [tensor | [tensors]], "kwargs": {...}}
        args = node.get("args")
        if not isinstance(args, list) or not args:
            raise ModelFormatError(f"{where}: an inbound node without arguments")
        first = args[0]
        tensors = first if isinstance(first, list) and first and not isinstance(first[0], str) else [first]
        return [_history(t, where) for t in tensors]
    if isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
        return [_history(t, where) for t in node]
    raise ModelFormatError(f"{where}: cannot read inbound node {str(node)[:200]}")


def _io_list(v: Any, where: str) -> list[tuple[str, int, int]]:
    if isinstance(v, list) and len(v) == 3 and isinstance(v[0], str):
        v = [v]
    if not isinstance(v, list):
        raise ModelFormatError(f"{where}: input_layers/output_layers must be lists")
    return [_history(t, where) for t in v]


def convert_model(config: dict[str, Any], b: Builder | None, weights: Any, inputs: list[str] | None, prefix: str,
                  depth: int = 0, path: str = "", options: dict[str, Any] | None = None) -> Any:
    """Convert a Sequential/Functional config; at the top (``b is None``) return ``(Builder, output)``.

    ``options`` (top level only): the :class:`Builder`'s ``keras_major`` and ``product_rule``.
    """
    cls, cfg = config.get("class_name"), config.get("config")
    cls = cls if isinstance(cls, str) else repr(cls)
    top = b is None
    where = path or (b.path if b else "")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
        raise ModelFormatError(f"{where}: model {cls!r} has no list of layers")
    entries = cfg["layers"]
    parsed = [_layer_cfg(e, where) for e in entries]
    weights.bind(entries)
    if cls == "Sequential":
        x = None
        rest = parsed
        if parsed and parsed[0][0] == "InputLayer":
            shape = _input_shape(parsed[0][1], where)
            rest = parsed[1:]
            in_name = parsed[0][2]
        else:
            first_cfg = parsed[0][1] if parsed else {}
            batch = first_cfg.get("batch_input_shape", first_cfg.get("batch_shape", cfg.get("build_input_shape")))
            shape = _input_shape({"batch_shape": batch, "name": "input"}, where)
            in_name = "input"
        if b is None:
            b = Builder(where, in_name, shape, **(options or {}))
            x = in_name
        else:
            if inputs is None or len(inputs) != 1:
                raise ModelFormatError(f"{where}: a nested Sequential takes one input")
            x = inputs[0]
            if tuple(b.shape(x)) != shape:
                raise ModelFormatError(f"{where}: nested model {cfg.get('name')!r} expects inputs of shape {shape}, "
                                       f"gets {b.shape(x)}")
        for lcls, lcfg, lname in rest:
            if lcls in MODEL_CLASSES:
                x = convert_layer(b, lcls, lcfg, lname, weights, [x], depth)
            else:
                x = _convert_named(b, lcls, lcfg, lname, prefix + lname, weights, [x], depth)
        return (b, x) if top else x
    if cls not in ("Functional", "Model"):
        raise UnsupportedLayerError(f"{where}: model class {cls!r} is not supported (Sequential, Functional)")
    ins = _io_list(cfg.get("input_layers"), where)
    outs = _io_list(cfg.get("output_layers"), where)
    if len(ins) != 1 or len(outs) != 1:
        raise UnsupportedLayerError(f"{where}: model {cfg.get('name')!r} has {len(ins)} inputs and {len(outs)} outputs; "
                                    "lrpflow models take one input and give one output")
    by_name = {p[2]: p for p in parsed}
    tensors: dict[tuple[str, int, int], str] = {}
    in_layer = by_name.get(ins[0][0])
    if in_layer is None or in_layer[0] != "InputLayer":
        raise ModelFormatError(f"{where}: input layer {ins[0][0]!r} is not an InputLayer of the model")
    shape = _input_shape(in_layer[1], where)
    if b is None:
        b = Builder(where, in_layer[2], shape, **(options or {}))
        tensors[(in_layer[2], 0, 0)] = in_layer[2]
    else:
        if inputs is None or len(inputs) != 1:
            raise ModelFormatError(f"{where}: a nested model takes one input")
        if tuple(b.shape(inputs[0])) != shape:
            raise ModelFormatError(f"{where}: nested model {cfg.get('name')!r} expects inputs of shape {shape}, "
                                   f"gets {b.shape(inputs[0])}")
        tensors[(in_layer[2], 0, 0)] = inputs[0]
    pending = []
    for entry, (lcls, lcfg, lname) in zip(entries, parsed):
        if lcls == "InputLayer":
            if lname != in_layer[2]:
                raise UnsupportedLayerError(f"{where}: a second input {lname!r}; lrpflow models take one input")
            continue
        nodes = entry.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise ModelFormatError(f"{where}: layer {lname!r}: inbound_nodes must be a list")
        for k, node in enumerate(nodes):
            pending.append((lcls, lcfg, lname, k, _inbound(node, f"{where}: layer {lname!r}")))
    while pending:  # in dependency order (a shared layer's later calls may come after other layers)
        progress, later = False, []
        for lcls, lcfg, lname, k, hist in pending:
            if not all(h in tensors for h in hist):
                later.append((lcls, lcfg, lname, k, hist))
                continue
            ins_ = [tensors[h] for h in hist]
            node_name = prefix + lname + (f"#{k}" if k else "")
            if lcls in MODEL_CLASSES:
                out = convert_layer(b, lcls, lcfg, lname, weights, ins_, depth)
            else:
                out = _convert_named(b, lcls, lcfg, lname, node_name, weights, ins_, depth)
            tensors[(lname, k, 0)] = out
            progress = True
        if not progress:
            missing = sorted({h[0] for *_, hist in later for h in hist if h not in tensors})
            raise ModelFormatError(f"{where}: layers {sorted({p[2] for p in later})} wait for tensors of "
                                   f"{missing} that nothing produces (a cycle or a missing layer)")
        pending = later
    out_key = outs[0]
    if out_key not in tensors:
        raise ModelFormatError(f"{where}: output {out_key} is not produced by any layer")
    return (b, tensors[out_key]) if top else tensors[out_key]


def _convert_named(b: Builder, cls: str, cfg: dict[str, Any], lname: str, node_name: str, weights: Any,
                   inputs: list[str], depth: int) -> str:
    ctx_weights = _NameMap(weights, node_name, lname)
    return convert_layer(b, cls, cfg, node_name, ctx_weights, inputs, depth)


class _NameMap:
    """Look weights up by the Keras layer name, whatever the node is called."""

    def __init__(self, inner: Any, node_name: str, layer_name: str) -> None:
        self.inner, self.node_name, self.layer_name = inner, node_name, layer_name

    def get(self, name: str, names: list[str]) -> Any:
        return self.inner.get(self.layer_name if name == self.node_name else name, names)

    def child(self, name: str) -> Any:
        return self.inner.child(self.layer_name if name == self.node_name else name)


# --- reading ----------------------------------------------------------------------------------


def _model_config(config: Any, path: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: the model config must be a JSON object")
    if not isinstance(config.get("class_name"), str) or config["class_name"] not in MODEL_CLASSES:
        raise UnsupportedLayerError(f"{path}: model class {config.get('class_name')!r} is not supported "
                                    "(Sequential, Functional); subclassed models have no graph to read")
    return config


def _major(version: Any, default: int) -> int:
    """The major number of a ``keras_version`` string (``"3.15.1"`` → 3); ``default`` when absent."""
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    head = str(version).split(".")[0] if version is not None else ""
    return int(head) if head.isdigit() else default


def read(path: str | os.PathLike[str], fold_batchnorm: bool = True, max_bytes: int = MAX_WEIGHTS_BYTES,
         product_rule: str = "gate") -> Model:
    """Read a Keras 3 ``.keras`` file or a legacy Keras/tf.keras HDF5 ``.h5`` model file.

    ``fold_batchnorm``: merge each BatchNormalization into the Conv/Dense before it (exact, see
    :func:`lrpflow.io.canonize.fold_batchnorm`); ``max_bytes``: the largest weights file accepted;
    ``product_rule``: LRP of ``Multiply`` — ``"gate"`` holds a sigmoid-like gating operand
    constant (relevance flows through the other), ``"uniform"`` splits it 50/50.
    """
    import zipfile

    from lrpflow.io.canonize import fold_batchnorm as fold

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: no such file")
    if product_rule not in ("gate", "uniform"):
        raise ConfigError(f"product_rule must be 'gate' or 'uniform', got {product_rule!r}")
    if zipfile.is_zipfile(path):
        config, metadata, f, size = open_keras_zip(path, max_bytes)
        weights: Any = Keras3Weights(f, path, size)
        major = _major(metadata.get("keras_version") if isinstance(metadata, dict) else None, 3)
    else:
        config, f = open_legacy_h5(path, max_bytes)
        weights = LegacyWeights(f.get("model_weights", f), path, os.path.getsize(path))
        major = _major(f.attrs.get("keras_version"), 2)  # files without a version predate Keras 3
    try:
        with f:
            config = _model_config(config, path)
            try:
                b, out = convert_model(config, None, weights, None, "", 0, path,
                                       {"keras_major": major, "product_rule": product_rule})
            except RecursionError:
                raise ModelFormatError(f"{path}: model config nested too deeply") from None
            except (TypeError, AttributeError, KeyError, IndexError, ValueError) as err:
                if isinstance(err, LrpflowError):
                    raise
                raise ModelFormatError(f"{path}: malformed model config: {type(err).__name__}: {err}") from None
    except (OSError, RuntimeError) as err:
        raise ModelFormatError(f"{path}: damaged Keras file: {type(err).__name__}: {err}") from None
    nodes = b.nodes
    if out == b.input_name or not nodes:
        raise ModelFormatError(f"{path}: the model has no layers lrpflow computes")
    model = Model(nodes, output=out, input_shape=b.shapes[b.input_name], input_name=b.input_name, layout="NHWC")
    model.source_format = "keras"  # type: ignore[attr-defined]
    return fold(model) if fold_batchnorm else model
