"""The lrpflow-caffe plugin: the Caffe model reader, its layers, the demonstrator's file-list
reader and pipeline steps."""
from __future__ import annotations

import lrpflow


@lrpflow.hookimpl
def lrpflow_register_model_readers(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    from lrpflow_caffe.convert import read

    registry.add("caffe", read, aliases=("prototxt",), suffixes=(".prototxt",))


@lrpflow.hookimpl
def lrpflow_register_layers(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    from lrpflow_caffe.layers import CaffeAvgPool, FlattenCHW, ScaledAdd

    registry.add("caffe_avg_pool", CaffeAvgPool)
    registry.add("caffe_scaled_add", ScaledAdd)
    registry.add("caffe_flatten_chw", FlattenCHW)


@lrpflow.hookimpl
def lrpflow_register_data_readers(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    from lrpflow_caffe.demo_inputs import read_filelist_source

    registry.add("caffe_filelist", read_filelist_source)


@lrpflow.hookimpl
def lrpflow_register_steps(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    from lrpflow_caffe.step import CaffeDemo, CaffeDemoReport

    registry.add("caffe_demo", CaffeDemo)
    registry.add("caffe_demo_report", CaffeDemoReport)
