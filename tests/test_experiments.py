"""Hydra experiments: every config group and experiment composes; pipelines run end to end.

Fast tests compose with Hydra's compose API and call ``lrpflow.pipeline.run(cfg)``
directly; one subprocess test runs the ``lrpflow`` console script.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import lrpflow
import lrpflow.conf
from lrpflow.pipeline import run
from lrpflow.store import load

CONF = pathlib.Path(lrpflow.conf.__file__).parent  # the top-level conf/ tree, shipped as lrpflow.conf
GROUPS = ["paths", "backend", "model", "data", "lrp", "render", "store", "evaluate", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_cfg(tmp_path, overrides=(), return_hydra_config=False):
    with initialize_config_module(config_module="lrpflow.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"paths.cache={tmp_path / 'cache'}",
                                                       f"paths.output_dir={tmp_path / 'out'}", "progress=false",
                                                       *overrides], return_hydra_config=return_hydra_config)
    return cfg


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_group_option_composes(tmp_path, shared, group, option):
    overrides = [f"{group}={option}", f"paths.shared={shared}"]
    if group == "model" and option in ("file", "onnx"):
        overrides.append("model.path=/some/model")
    if group == "data" and option == "images":
        overrides.append("data.path=/some/images")
    if group == "experiment" and option == "images":
        overrides += ["model.path=/some/model.onnx", "data.path=/some/images"]
    cfg = make_cfg(tmp_path, overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert plain["pipeline"] and plain["lrp"] and plain["data"]["batch_size"] >= 1
    if group == "lrp":
        spec = {k: v for k, v in plain["lrp"].items()}
        assert ("rule" in spec) != ("composite" in spec)
        # the rule / composite and its parameters are accepted by lrpflow
        from lrpflow.pipeline import explainer_from_config

        net = lrpflow.Sequential([lrpflow.layers.Conv2d(3, 3, 1, 2, rng=0), lrpflow.layers.ReLU(), lrpflow.layers.Flatten(),
                                  lrpflow.layers.Linear(2 * 6 * 6, 3, rng=0)])
        explainer_from_config(net, plain)


@pytest.mark.parametrize("launcher", ["joblib", "local_parallel", "slurm", "submitit_local", "ray"])
def test_launcher_configs_compose(tmp_path, launcher):
    cfg = make_cfg(tmp_path, [f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert {"joblib": "joblib", "local_parallel": "joblib", "slurm": "submitit", "submitit_local": "submitit",
            "ray": "ray"}[launcher] in target.lower()
    if launcher == "slurm":
        assert cfg.hydra.launcher.timeout_min == 120


@pytest.mark.parametrize("sweeper", ["tune_epsilon", "tune_gamma"])
def test_optuna_sweeper_configs_compose(tmp_path, sweeper):
    cfg = make_cfg(tmp_path, [f"hydra/sweeper={sweeper}"], return_hydra_config=True)
    assert "optuna" in cfg.hydra.sweeper._target_.lower()
    assert cfg.hydra.sweeper.direction == "maximize" and len(cfg.hydra.sweeper.params) == 1


def small(tmp_path, *extra):
    """The default experiment, shrunk: fewer training iterations and rows."""
    return make_cfg(tmp_path, ["model.train.iters=400", "model.train.status=200", "data.stop=1661", "data.batch_size=16",
                               "render.max_images=3", *extra])


def test_default_experiment_end_to_end(tmp_path):
    cfg = small(tmp_path)
    objective = run(cfg)
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == pytest.approx(objective) and summary["rows"] == [1597, 1661]
    data = load(out / "results.h5")
    assert data["relevance"].shape == (64, 8, 8, 1) and data["relevance"].dtype == numpy.float32
    numpy.testing.assert_array_equal(data["index"], numpy.arange(1597, 1661))
    # the stored rows are what explain() gives for the same rows
    model = lrpflow.load_model(summary["outputs"]["model"])
    model.drop_softmax_output_layer()
    x = lrpflow.io.load_data("digits")[1597:1661]
    ref = lrpflow.explain(model, x, rule="epsilon", epsilon=0.01)
    numpy.testing.assert_allclose(data["relevance"], ref.relevance, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_array_equal(data["target"], ref.target)
    pngs = sorted(p.name for p in (out / "heatmaps").glob("*.png"))
    assert len(pngs) == 3 * 5 and (out / "heatmap_grid.png").exists()
    # the trained model is cached: a second run does not train again
    assert pathlib.Path(summary["outputs"]["model"]).parent == tmp_path / "cache"
    stamp = os.path.getmtime(summary["outputs"]["model"])
    run(small(tmp_path, "store.overwrite=true"))
    assert os.path.getmtime(summary["outputs"]["model"]) == stamp
    assert len(list((tmp_path / "cache").glob("digits_mlp_0-*.txt"))) == 1
    run(small(tmp_path, "store.overwrite=true", "model.train.iters=300"))  # another recipe, another cached file
    assert len(list((tmp_path / "cache").glob("digits_mlp_0-*.txt"))) == 2


def test_mnist_lenet5_experiment(tmp_path, shared, mnist):
    cfg = make_cfg(tmp_path, ["experiment=mnist_lenet5", f"paths.shared={shared}", "data.stop=64", "data.batch_size=32",
                              "render.max_images=2", "evaluate=none"])
    run(cfg)
    data = load(tmp_path / "out" / "results.h5")
    x, labels = mnist
    model = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    ref = lrpflow.explain(model, x[:64], rule="epsilon", epsilon=0.01)
    numpy.testing.assert_allclose(data["relevance"], ref.relevance, rtol=1e-4, atol=1e-5)
    numpy.testing.assert_array_equal(data["label"], labels[:64])
    assert (data["target"] == data["label"]).mean() > 0.95


def cli(tmp_path, *args, env_extra=None, **kw):
    """The console entry point in a subprocess (as `lrpflow ...`)."""
    import subprocess
    import sys

    env = dict(os.environ, LRPFLOW_CACHE=str(tmp_path / "cache"), HDF5_USE_FILE_LOCKING="FALSE", **(env_extra or {}))
    cmd = [sys.executable, "-c", "from lrpflow.cli import main; main()", *args, "progress=false"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, **kw)


FAST = ["model.train.iters=400", "model.train.status=200", "data.batch_size=16", "render.max_images=2"]


@pytest.mark.slow
def test_cli_end_to_end_from_any_directory(tmp_path):
    proc = cli(tmp_path, *FAST, "data.stop=1629", f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = tmp_path / "run" / "results.h5"
    data = load(f)
    assert data["relevance"].shape == (32, 8, 8, 1) and data["logits"].shape == (32, 10)
    import h5py

    with h5py.File(f, "r") as h:
        assert h.attrs["schema"] == b"lrpflow-results" and h.attrs["backend"] == b"numpy" and h.attrs["dtype"] == b"float32"
        cfg = OmegaConf.create(h.attrs["config"].decode())
        assert cfg.lrp.rule == "epsilon" and cfg.data.stop == 1629
        assert len(h.attrs["model_sha256"]) == 64 and h["relevance"].compression is None  # the measured default
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    model = lrpflow.load_model(summary["outputs"]["model"])
    ref = lrpflow.explain(model, lrpflow.io.load_data("digits")[1597:1629], rule="epsilon", epsilon=0.01)
    numpy.testing.assert_allclose(data["relevance"], ref.relevance, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(data["conservation"], ref.conservation, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    args = [*FAST, "data.start=0", "data.stop=null", "data.batch_size=8", "render=none", "evaluate=none"]
    ok = cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'full'}", timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    env = dict(os.environ, LRPFLOW_CACHE=str(tmp_path / "cache"), HDF5_USE_FILE_LOCKING="FALSE")
    cmd = [sys.executable, "-c", "from lrpflow.cli import main; main()", "progress=false", *args,
           f"hydra.run.dir={tmp_path / 'killed'}"]
    partial = tmp_path / "killed" / "results.h5.partial"
    rnd = random.Random(int(os.environ.get("LRPFLOW_KILL_SEED", "7")))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rnd.uniform(0.05, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_midway = partial.exists()
    again = cli(tmp_path, *args, f"hydra.run.dir={tmp_path / 'killed'}", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    full, resumed = load(tmp_path / "full" / "results.h5"), load(tmp_path / "killed" / "results.h5")
    numpy.testing.assert_array_equal(resumed["index"], numpy.arange(1797))  # none missing, none twice
    for key in ("relevance", "logits", "target", "label", "conservation"):
        numpy.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    assert not partial.exists()
    if killed_midway:
        assert "resuming" in again.stdout + again.stderr


@pytest.mark.slow
def test_multirun_2x2_writes_the_sweep_summary(tmp_path):
    proc = cli(tmp_path, "-m", *FAST, "data.stop=1613", "lrp.epsilon=0.01,1.0", "lrp.bias=true,false",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    import csv

    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert len(rows) == 4
    assert {(float(r["lrp.epsilon"]), r["lrp.bias"]) for r in rows} == {(0.01, "True"), (0.01, "False"), (1.0, "True"), (1.0, "False")}
    for r in rows:
        assert float(r["objective"]) == pytest.approx(float(r["metric.pixel_flipping"]))
        assert (sweep / r["job"] / "results.h5").exists()
    import h5py

    with h5py.File(sweep / "sweep_summary.h5", "r") as f:
        assert f["objective"].shape == (4,)
    assert (sweep / "sweep_grid.png").exists()
    # a larger ε absorbs more relevance: conservation error grows with ε
    by = {(float(r["lrp.epsilon"]), r["lrp.bias"]): float(r["metric.conservation"]) for r in rows}
    assert by[(1.0, "True")] > by[(0.01, "True")]


def test_shards_join_into_the_unsharded_store(tmp_path):
    from lrpflow.store import join

    base = ["data.stop=1661", "render=none", "evaluate=none"]
    run(small(tmp_path, *base))
    whole = load(tmp_path / "out" / "results.h5")
    parts = []
    for i in range(3):
        cfg = small(tmp_path, *base, f"data.shard={i}", "data.num_shards=3", f"paths.output_dir={tmp_path / f'shard{i}'}")
        run(cfg)
        parts.append(tmp_path / f"shard{i}" / "results.h5")
    join([str(p) for p in parts], str(tmp_path / "joined.h5"))
    joined = load(tmp_path / "joined.h5")
    for key in ("relevance", "logits", "index", "target"):
        numpy.testing.assert_array_equal(joined[key], whole[key], err_msg=key)


def test_example_plugin_from_a_config(tmp_path):
    pytest.importorskip("lrpflow_example")
    x = lrpflow.io.load_data("digits")[1597:1637].reshape(40, 64)
    csv_path = tmp_path / "digits.csv"
    numpy.savetxt(csv_path, x, delimiter=",", header=",".join(f"p{i}" for i in range(64)), comments="")
    cfg = make_cfg(tmp_path, ["model.train.iters=300", "model.train.status=100", "data.source=file", f"data.path={csv_path}",
                              "data.start=0", "data.batch_size=16", "lrp=z", "lrp.rule=epsilon_std", "+lrp.factor=0.25",
                              "render.cmaps=[cold_hot]", "render.max_images=2",
                              "pipeline=[load_model,load_data,forward,lrp,relevance_stats,render,save]"])
    run(cfg)
    out = tmp_path / "out"
    stats = numpy.load(out / "relevance_stats.npy")
    data = load(out / "results.h5")
    numpy.testing.assert_allclose(stats, numpy.abs(data["relevance"]).mean(0), rtol=1e-5)
    assert (out / "relevance_stats.png").exists() and len(list((out / "heatmaps").glob("*cold_hot.png"))) == 2
    assert data["relevance"].shape == (40, 64)


@pytest.mark.parametrize("target,width", [("pred", 1), ("topk:2", 2), ("3", 1)])
def test_images_experiment_through_an_onnx_model(tmp_path, target, width):
    pytest.importorskip("lrpflow_onnx")
    onnx = pytest.importorskip("onnx")
    import test_io_onnx

    proto, _ = test_io_onnx.resnet()  # NCHW input (3, 16, 16), 4 classes
    onnx.save(proto, str(tmp_path / "net.onnx"))
    rng = numpy.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        lrpflow.io.save_data(rng.integers(0, 256, (20, 24, 3), dtype=numpy.uint8), folder / f"img{i}.png")
    cfg = make_cfg(tmp_path, ["experiment=images", f"model.path={tmp_path / 'net.onnx'}", f"data.path={folder}",
                              "data.options.size=[16,16]", "data.batch_size=2", f"explain.target={target}",
                              "render.max_images=2"])
    run(cfg)
    data = load(tmp_path / "out" / "results.h5")
    assert data["relevance"].shape == (5, 3, 16, 16)  # the model's layout, NCHW
    assert data["target"].shape == ((5,) if width == 1 else (5, 2))
    model = lrpflow.load_model(tmp_path / "net.onnx")
    x = lrpflow.io.load_data(folder, size=(16, 16)).transpose(0, 3, 1, 2)
    ref = lrpflow.explain(model, x, composite="epsilon_plus_flat", epsilon=1e-6,
                          target=int(target) if target.isdigit() else target)
    numpy.testing.assert_allclose(data["relevance"], ref.relevance, rtol=1e-4, atol=1e-6)
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) == 2 * 5


def test_images_experiment_takes_size_and_channels_from_the_model(tmp_path):
    """``experiment=images model.path=net.onnx data.path=folder/`` with no size: PNGs of another size
    (20×24) are resized to the model's 16×16; the resolved options and every row's file are stored,
    and the figures are named after the files."""
    pytest.importorskip("lrpflow_onnx")
    onnx = pytest.importorskip("onnx")
    import test_io_onnx

    proto, _ = test_io_onnx.resnet()  # NCHW input (3, 16, 16), 4 classes
    onnx.save(proto, str(tmp_path / "net.onnx"))
    rng = numpy.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["cat.png", "dog.png", "fox.png"]
    for name in names:
        lrpflow.io.save_data(rng.integers(0, 256, (20, 24, 3), dtype=numpy.uint8), folder / name)
    cfg = make_cfg(tmp_path, ["experiment=images", f"model.path={tmp_path / 'net.onnx'}", f"data.path={folder}",
                              "data.options.mean=[120,110,100]", "data.options.std=[60,50,40]", "render.max_images=3"])
    run(cfg)
    out = tmp_path / "out"
    data = load(out / "results.h5")
    assert data["relevance"].shape == (3, 3, 16, 16)
    assert [os.path.basename(str(s)) for s in data["source"]] == names
    stored = lrpflow.load_results(out / "results.h5").config["data"]["options"]
    assert stored["size"] == [16, 16] and stored["channels"] == 3 and stored["std"] == [60, 50, 40]
    model = lrpflow.load_model(tmp_path / "net.onnx")
    x = (lrpflow.io.load_data(folder, size=(16, 16)) - numpy.float32([120, 110, 100])) / numpy.float32([60, 50, 40])
    ref = lrpflow.explain(model, x.transpose(0, 3, 1, 2), composite="epsilon_plus_flat", epsilon=1e-6)
    numpy.testing.assert_allclose(data["relevance"], ref.relevance, rtol=1e-4, atol=1e-6)
    pngs = sorted(p.name for p in (out / "heatmaps").glob("*.png"))
    assert pngs and all(any(f"_{n[:-4]}_" in p for n in names) for p in pngs)
    assert {n[:-4] for n in names} <= {p.split("_")[1] for p in pngs}


def test_fit_to_model_keeps_given_options():
    from lrpflow.io.images import fit_to_model

    assert fit_to_model({}, (16, 12, 3)) == {"size": [16, 12], "channels": 3}
    assert fit_to_model({"size": [8, 8], "channels": 1}, (16, 12, 3)) == {"size": [8, 8], "channels": 1}
    assert fit_to_model({"base_size": [20, 20]}, (16, 16, 1)) == {"base_size": [20, 20], "crop": [16, 16], "channels": 1}
    assert fit_to_model({"mean": 3}, None) == {"mean": 3}  # no fixed input shape: nothing to take


def test_one_map_per_target_is_refused_up_front_with_the_way_out(tmp_path):
    """``explain.target=each:topk:K`` gives (N, K, ...) maps the store does not hold: refused before any
    work (no store), naming the option, ``topk:K`` and the Python API; ``topk:K`` itself runs."""
    from lrpflow.errors import ConfigError

    cfg = small(tmp_path, "explain.target=each:topk:2")
    with pytest.raises(ConfigError, match=r"explain.target='each:topk:2'.*topk:K.*lrpflow.explain\(model, x, target="):
        run(cfg)
    assert not (tmp_path / "out" / "results.h5").exists()


def test_mnist_train_experiment_saves_a_toolbox_text_model(tmp_path, shared):
    images, labels = shared / "data" / "MNIST" / "test_images.mat", shared / "data" / "MNIST" / "test_labels.npy"
    cfg = make_cfg(tmp_path, ["experiment=mnist_train", f"paths.shared={shared}", f"paths.mnist_train_images={images}",
                              f"paths.mnist_train_labels={labels}", "model.train.data.stop=2000",
                              "model.train.validation.start=2000", "model.train.validation.stop=2500",
                              "model.train.iters=60", "model.train.status=30", "data.start=9000", "data.stop=9064",
                              "data.batch_size=32", "render.max_images=1", "evaluate=none"])
    run(cfg)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    saved = pathlib.Path(summary["outputs"]["model"])
    assert saved.suffix == ".txt" and saved.read_text().startswith("Flatten\nLinear 784 1296\n")
    net = lrpflow.load_model(saved)
    assert [type(m).__name__ for m in net.modules] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear", "SoftMax"]
    data = load(tmp_path / "out" / "results.h5")
    x = lrpflow.io.load_data(images, divide=127.5, shift=-1.0)[9000:9064]
    ref = lrpflow.explain(net, x, rule="epsilon", epsilon=0.01)
    numpy.testing.assert_allclose(data["relevance"], ref.relevance, rtol=1e-4, atol=1e-6)
    assert (data["target"] == data["label"]).mean() > 0.5  # 60 SGD steps already beat chance by far
