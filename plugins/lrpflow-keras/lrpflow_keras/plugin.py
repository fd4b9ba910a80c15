"""The lrpflow-keras plugin: a model reader for ``.keras`` files and Keras ``.h5`` files.

``.h5`` is shared with lrpflow's native format: the registration carries a ``sniff``
(does this file hold a Keras ``model_config``?) so ``load_model`` picks the reader by content.
"""
from __future__ import annotations

import lrpflow


@lrpflow.hookimpl
def lrpflow_register_model_readers(registry):  # noqa: ANN001 - typed in lrpflow.hookspecs
    from lrpflow_keras.container import is_keras_h5
    from lrpflow_keras.convert import read

    registry.add("keras", read, aliases=("tf.keras", "keras_h5"), suffixes=(".keras", ".h5", ".hdf5"),
                 sniff=is_keras_h5, describe="a Keras model (.keras zip, or HDF5 with a 'model_config' attribute)")
