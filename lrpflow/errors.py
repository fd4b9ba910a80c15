"""The exception hierarchy of lrpflow.

Every user-facing failure is an :class:`LrpflowError`; its message names the file,
line, node or field at fault and what was expected.
"""
from __future__ import annotations


class LrpflowError(Exception):
    """Base class of every error lrpflow raises on bad input or configuration."""


class ConfigError(LrpflowError, ValueError):
    """A parameter or configuration value is invalid."""


class PluginError(LrpflowError):
    """A plugin registration is invalid."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name in one registry."""


class UnknownNameError(PluginError, KeyError):
    """A name was looked up that no plugin registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedLayerError(LrpflowError):
    """A layer or operator cannot be handled (by a reader, a rule or the engine)."""


class ShapeError(LrpflowError, ValueError):
    """An array has the wrong shape for the model or node it is given to."""


class NumericalError(LrpflowError, ArithmeticError):
    """A computation produced NaN or Inf (an overflow); the message names the node and the rule."""


class ModelFormatError(LrpflowError):
    """A model file is malformed."""


class DataFormatError(LrpflowError):
    """A data file or input array is malformed (bad shape, NaN/Inf, wrong keys)."""


class BackendError(LrpflowError):
    """A backend (numpy, cupy) or dtype is unavailable or unknown."""


class StoreError(LrpflowError):
    """A result store is damaged, unreadable or cannot be written (the message names the file and the part)."""
