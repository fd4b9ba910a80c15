"""PyTorch models through torch's own ONNX exporter, in memory: ``lrpflow.from_torch`` and TorchScript files.

torch is not a dependency of lrpflow: it is imported only when these functions run.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

from lrpflow.errors import ConfigError, LrpflowError, ModelFormatError, PluginError
from lrpflow.graph import Model


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise PluginError("lrpflow.from_torch and reading TorchScript files need PyTorch (pip install torch); "
                          f"it is not installed ({err})") from None
    return torch


def _export(module: Any, x: Any, dynamo: bool, opset: int | None, what: str) -> Any:
    """The ONNX ``ModelProto`` torch's exporter writes for ``module`` at input ``x`` (in eval mode)."""
    import onnx

    torch = _torch()
    was_training = bool(getattr(module, "training", False))
    if hasattr(module, "eval"):
        module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if dynamo:
                kwargs = {} if opset is None else {"opset_version": opset}
                program = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                                            verbose=False, **kwargs)
                return program.model_proto
            buf = io.BytesIO()
            kwargs = {} if opset is None else {"opset_version": opset}
            torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], **kwargs)
            return onnx.load_from_string(buf.getvalue())
    except LrpflowError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporter's own errors, reported with the model's name
        reason = next((line for line in str(err).splitlines() if line.strip()), "")[:400]  # not the IR dump after it
        raise ModelFormatError(f"{what}: torch.onnx.export ({'dynamo' if dynamo else 'TorchScript'} exporter) "
                               f"refused the model: {type(err).__name__}: {reason}") from err
    finally:
        if was_training and hasattr(module, "train"):
            module.train(True)


def from_torch(module: Any, example_input: Any, *, dynamo: bool = True, opset: int | None = None,
               **options: Any) -> Model:
    """An lrpflow model of a PyTorch ``module``, exported in memory by ``torch.onnx.export``.

    Parameters
    ----------
    module : torch.nn.Module (or ScriptModule)
        Exported in eval mode (its mode is restored afterwards).
    example_input : torch.Tensor or array
        One batch ``(N, C, H, W)`` or ``(N, D)``; fixes the sample shape (any batch size works later).
    dynamo : bool
        True: torch's default exporter (``torch.export``-based); False: the TorchScript exporter.
    opset : int, optional
        ONNX opset to export (default: the exporter's).
    options
        Passed to :func:`lrpflow_onnx.convert` (``fold_batchnorm``, ``product_rule``).

    The model takes and returns NCHW (``model.layout``), like the module.
    """
    torch = _torch()
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    what = f"<torch {type(module).__name__}>"
    if dynamo and isinstance(module, torch.jit.ScriptModule):
        dynamo = False  # the dynamo exporter traces Python modules; TorchScript goes through the TorchScript one
    proto = _export(module, x, dynamo, opset, what)
    from lrpflow_onnx.convert import convert

    return convert(proto, what, input_shape=tuple(int(s) for s in x.shape[1:]), **options)


def read_torchscript(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None, opset: int | None = None,
                     **options: Any) -> Model:
    """Read a TorchScript file (``torch.jit.save``) by exporting it with torch's TorchScript ONNX exporter.

    ``input_shape`` (one sample, e.g. ``(3, 224, 224)``) is required: a TorchScript file does not record
    it. Files saved with ``torch.save(module)`` (pickles) are refused: load the module in Python and use
    :func:`lrpflow.from_torch`.
    """
    path = os.fspath(path)
    torch = _torch()
    if input_shape is None:
        raise ConfigError(f"{path}: a TorchScript file does not record its input shape; pass input_shape=(C, H, W) "
                          f"(one sample), e.g. lrpflow.load_model({os.path.basename(path)!r}, input_shape=(3, 224, 224))")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - not TorchScript (a pickle, a state dict, garbage)
        raise ModelFormatError(f"{path}: not a TorchScript file ({type(err).__name__}: {str(err)[:200]}); for a module "
                               f"saved with torch.save, load it in Python and call lrpflow.from_torch(module, x)") from None
    x = torch.zeros((1, *(int(s) for s in input_shape)))
    proto = _export(module, x, False, opset, path)
    from lrpflow_onnx.convert import convert

    return convert(proto, path, input_shape=tuple(int(s) for s in input_shape), **options)
