"""The pipeline's heatmaps are written by a background thread while later batches are explained, from exactly the
values the store keeps (so a resumed run, which draws them from the store, writes the same files: see
tests/test_pipeline_resume.py)."""
from __future__ import annotations

import threading

import numpy

import lrpflow
from lrpflow import pipeline


def test_heatmaps_are_written_off_the_pipeline_thread_while_batches_go_on(tmp_path, monkeypatch):
    rng = numpy.random.default_rng(0)
    numpy.save(tmp_path / "x.npy", rng.standard_normal((96, 8, 8, 1)).astype(numpy.float32))
    net = lrpflow.Sequential([lrpflow.layers.Flatten(), lrpflow.layers.Linear(64, 10, rng=1)])
    lrpflow.io.save_model(net, str(tmp_path / "net.txt"))
    events: list[tuple[str, str]] = []
    batches_seen = []
    save_image, process = lrpflow.render.save_image, pipeline.Save.process

    def recording_save_image(*args, **kwargs):
        events.append(("image", threading.current_thread().name))
        return save_image(*args, **kwargs)

    def recording_process(self, state):
        batches_seen.append(state.batch.start)
        return process(self, state)

    monkeypatch.setattr(lrpflow.render, "save_image", recording_save_image)
    monkeypatch.setattr(pipeline.Save, "process", recording_process)
    started = []
    start = pipeline.Render._start
    monkeypatch.setattr(pipeline.Render, "_start",
                        staticmethod(lambda state, r: (started.append(state.batch.start), start(state, r))))
    cfg = {"pipeline": ["load_model", "load_data", "forward", "lrp", "render", "save"], "progress": False,
           "model": {"source": "file", "path": str(tmp_path / "net.txt")},
           "data": {"source": "file", "path": str(tmp_path / "x.npy"), "start": 0, "stop": None, "batch_size": 16},
           "lrp": {"rule": "epsilon", "epsilon": 0.01},
           "render": {"max_images": 20, "cmaps": ["gray-red", "blue_white_red"], "grid": True}}
    pipeline.run(cfg, output_dir=tmp_path / "out")
    assert started == [16]  # the writer starts with the batch that completes the 20 samples, not at the end
    assert batches_seen == [0, 16, 32, 48, 64, 80]
    assert events and {name for _, name in events} == {"lrpflow-render"}
    pngs = sorted(p.name for p in (tmp_path / "out" / "heatmaps").glob("*.png"))
    assert len(pngs) == 20 * 2 and pngs[0] == "000000_blue_white_red.png" and (tmp_path / "out" / "heatmap_grid.png").exists()


def test_an_error_in_the_writer_reaches_the_caller(tmp_path):
    import pytest

    from lrpflow.errors import LrpflowError

    numpy.save(tmp_path / "x.npy", numpy.ones((8, 8, 8, 1), numpy.float32))
    lrpflow.io.save_model(lrpflow.Sequential([lrpflow.layers.Flatten(), lrpflow.layers.Linear(64, 3, rng=1)]),
                          str(tmp_path / "net.txt"))
    cfg = {"pipeline": ["load_model", "load_data", "forward", "lrp", "render"], "progress": False,
           "model": {"source": "file", "path": str(tmp_path / "net.txt")},
           "data": {"source": "file", "path": str(tmp_path / "x.npy"), "batch_size": 4},
           "lrp": {"rule": "epsilon"}, "render": {"max_images": 2, "cmaps": ["no_such_colormap"]}}
    with pytest.raises(LrpflowError, match="no_such_colormap"):
        pipeline.run(cfg, output_dir=tmp_path / "out")
