"""lrpflow: Layer-wise Relevance Propagation on numpy and cupy, with plugins and experiments.

The public API::

    model = lrpflow.load_model("LeNet-5.txt")
    out = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01, target="pred")
    exp = lrpflow.Explainer(model, composite="epsilon_plus")
"""
from __future__ import annotations

from lrpflow import layers, render
from lrpflow.composites import Composite, Override
from lrpflow.errors import (
    BackendError, ConfigError, DataFormatError, DuplicateNameError, LrpflowError, ModelFormatError, PluginError,
    ShapeError, StoreError, UnknownNameError, UnsupportedLayerError,
)
from lrpflow.explain import Explainer, Explanation, LedgerEntry, explain
from lrpflow.graph import Model, Node, Sequential, Trace
from lrpflow.hookspecs import hookimpl
from lrpflow.io import load_data, load_model, open_data, save_data, save_model
from lrpflow.plugins import make_plugin_manager, registries
from lrpflow.rules import make_rule
from lrpflow.store import Results, load_results, write_results
from lrpflow.train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "__version__", "hookimpl", "layers", "render", "train", "TrainResult", "Model", "Node", "Sequential", "Trace", "Composite", "Override",
    "Explainer", "Explanation", "LedgerEntry", "explain", "make_rule", "load_model", "save_model", "load_data", "open_data", "save_data",
    "make_plugin_manager", "registries", "LrpflowError", "ConfigError", "PluginError", "DuplicateNameError",
    "UnknownNameError", "UnsupportedLayerError", "ShapeError", "ModelFormatError", "DataFormatError", "BackendError",
    "StoreError", "load_results", "write_results", "Results",
]


def from_torch(module, example_input, **options):  # noqa: ANN001, ANN003, ANN201 - torch types stay optional
    """An lrpflow model of a PyTorch module, exported in memory by torch's ONNX exporter.

    ``lrpflow.from_torch(net, x)`` with ``x`` one example batch; needs torch and the lrpflow-onnx
    plugin (neither is a dependency of lrpflow). Options: ``dynamo`` (default True: torch's default
    exporter; False: the TorchScript exporter), ``opset``, ``fold_batchnorm``, ``product_rule``.
    See :func:`lrpflow_onnx.torch_export.from_torch` and docs/onnx.md.
    """
    try:
        from lrpflow_onnx.torch_export import from_torch as export
    except ImportError as err:
        raise PluginError(f"lrpflow.from_torch needs the lrpflow-onnx plugin (pip install -e plugins/lrpflow-onnx): {err}") from None
    return export(module, example_input, **options)


__all__.append("from_torch")
