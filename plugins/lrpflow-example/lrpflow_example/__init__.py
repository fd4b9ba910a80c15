"""A template lrpflow plugin (see plugin.py)."""
