"""ONNX import for lrpflow: ``lrpflow.load_model("net.onnx")`` once this plugin is installed."""
from __future__ import annotations

from lrpflow_onnx.convert import convert, read
from lrpflow_onnx.layers import Permute, Transpose
from lrpflow.io.canonize import fold_batchnorm

__all__ = ["read", "convert", "fold_batchnorm", "Transpose", "Permute"]
