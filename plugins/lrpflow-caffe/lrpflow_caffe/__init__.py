"""Caffe for lrpflow: ``lrpflow.load_model("deploy.prototxt", weights="net.caffemodel")`` and the
LRP Toolbox's heatmap demonstrator (``lrpflow-caffe-demo CONFIG FILELIST PREFIX``)."""
from __future__ import annotations

from lrpflow_caffe.convert import CaffeInfo, CaffeLayer, convert, grouped_conv, read
from lrpflow_caffe.layers import CaffeAvgPool, FlattenCHW, ScaledAdd

__all__ = ["read", "convert", "grouped_conv", "CaffeInfo", "CaffeLayer", "CaffeAvgPool", "FlattenCHW", "ScaledAdd"]
