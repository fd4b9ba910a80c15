"""The lrpflow-onnx plugin: an ONNX model reader and the layers ONNX graphs may need."""
from __future__ import annotations

import lrpflow

from lrpflow_onnx.layers import Permute, Transpose


@lrpflow.hookimpl
def lrpflow_register_model_readers(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    from lrpflow_onnx.convert import read

    registry.add("onnx", read, suffixes=(".onnx",))
    registry.add("torchscript", _read_torchscript, suffixes=(".pt", ".pth", ".torchscript"))


def _read_torchscript(path, **options):  # noqa: ANN001, ANN003, ANN202 - imports torch only when used
    from lrpflow_onnx.torch_export import read_torchscript

    return read_torchscript(path, **options)


@lrpflow.hookimpl
def lrpflow_register_layers(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    registry.add("onnx_transpose", Transpose)
    registry.add("onnx_permute", Permute)
