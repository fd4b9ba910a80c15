"""Keras import for lrpflow: ``lrpflow.load_model("model.keras")`` / ``("model.h5")`` once installed."""
from __future__ import annotations

from lrpflow_keras.container import is_keras_h5
from lrpflow_keras.convert import read
from lrpflow_keras.layers import PENDING_LAYERS, SUPPORTED_LAYERS

__all__ = ["read", "is_keras_h5", "SUPPORTED_LAYERS", "PENDING_LAYERS"]
