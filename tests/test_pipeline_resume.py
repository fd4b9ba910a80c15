"""Jobs killed, raced or starved: kill-and-resume in every phase, one run per directory, full disks.

Faults are injected at named phases (``LRPFLOW_FAULT``, :mod:`lrpflow.store.faults`) in a
forked child that runs the pipeline and dies there with ``SIGKILL``; the rerun in this
process must leave exactly the files of an uninterrupted run (relevance bitwise).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import lrpflow
from lrpflow.errors import ConfigError, LrpflowError, StoreError, UnknownNameError
from lrpflow.pipeline import run
from lrpflow.store import PARTIAL_SUFFIX, ResultStore, RunLock, load
from lrpflow.store import faults

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill tests fork")

#: the rows of the bundled digits a job explains: aligned (3 batches of 8) and not (2 batches + 4)
ALIGNED, UNALIGNED = (1600, 1624), (1600, 1620)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny fixed-weight MLP for the 8×8 digits, as a toolbox text file."""
    path = tmp_path_factory.mktemp("model") / "mlp.txt"
    net = lrpflow.Sequential([lrpflow.layers.Flatten(), lrpflow.layers.Linear(64, 12, rng=1), lrpflow.layers.ReLU(),
                              lrpflow.layers.Linear(12, 10, rng=2)])
    lrpflow.save_model(net, path)
    return path


@pytest.fixture(scope="module")
def base_cfg(model_file, tmp_path_factory):
    with initialize_config_module(config_module="lrpflow.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=file", f"model.path={model_file}", "progress=false", "data.batch_size=8",
            "render.max_images=2", "render.cmaps=[gray-red,black-green]", "render.grid=false",
            f"paths.cache={tmp_path_factory.mktemp('cache')}"])
    return OmegaConf.to_container(cfg, resolve=True)


def job(base_cfg, out, rows=ALIGNED, **over):
    cfg = json.loads(json.dumps(base_cfg))
    cfg["data"]["start"], cfg["data"]["stop"] = rows
    cfg["paths"]["output_dir"] = str(out)
    for key, value in over.items():
        node = cfg
        *parts, last = key.split(".")
        for p in parts:
            node = node[p]
        node[last] = value
    return cfg


def run_killed(cfg, fault):
    """Run the job in a forked child that dies (SIGKILL) at ``fault``; returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # the child: run and die at the fault (or exit 0 if it never came)
        code = 1
        try:
            os.environ[faults.ENV] = fault
            faults._counts.clear()
            run(cfg)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def outputs(out):
    """Everything a job leaves that must not depend on interruptions: store rows, summary, images."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("seconds")
    timings = summary.pop("timings")  # wall times, and the rows this process computed (fewer after a resume)
    assert set(timings) <= {"setup", "batches", "rows computed", "finish"} and timings["setup"] >= 0
    summary["outputs"] = {k: (sorted(os.path.basename(p) for p in v) if isinstance(v, list) else os.path.basename(v))
                          for k, v in summary["outputs"].items() if k != "model"}
    images = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    return load(out / "results.h5"), summary, images


@pytest.fixture(scope="module")
def uninterrupted(base_cfg, tmp_path_factory):
    refs = {}
    for rows in (ALIGNED, UNALIGNED):
        out = tmp_path_factory.mktemp("ref")
        objective = run(job(base_cfg, out, rows))
        refs[rows] = (objective, outputs(out))
    return refs


def assert_same_outputs(out, ref):
    data, summary, images = outputs(out)
    ref_data, ref_summary, ref_images = ref
    assert sorted(data) == sorted(ref_data)
    for key in ref_data:
        numpy.testing.assert_array_equal(data[key], ref_data[key], err_msg=key)  # relevance bitwise
    assert summary == ref_summary
    assert images.keys() == ref_images.keys()
    for name in images:
        assert images[name] == ref_images[name], name
    assert not list(out.glob("*.partial")) and not (out / ".lrpflow.lock").exists()


PHASES = ["write@2", "flush@2", "finish", "rename", "evaluate", "render@2", "summary"]


@pytest.mark.parametrize("rows", [ALIGNED, UNALIGNED], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("fault", PHASES)
def test_kill_in_every_phase_resumes_to_the_uninterrupted_result(tmp_path, base_cfg, uninterrupted, fault, rows):
    cfg = job(base_cfg, tmp_path, rows)
    status = run_killed(cfg, f"{fault}=kill")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the fault did not fire"
    assert (tmp_path / ".lrpflow.lock").exists()  # a killed run leaves its lock: stale, taken over below
    objective = run(cfg)
    assert objective == uninterrupted[rows][0]  # from the store: the whole dataset, not the rows since the restart
    assert_same_outputs(tmp_path, uninterrupted[rows][1])
    data = load(tmp_path / "results.h5")
    numpy.testing.assert_array_equal(data["index"], numpy.arange(*rows))  # no row lost, none twice


def test_summary_covers_every_row_after_a_resume(tmp_path, base_cfg, uninterrupted):
    """Issue 10.2: the objective is the mean over the store, e.g. rows 0..23, not only 16..23."""
    cfg = job(base_cfg, tmp_path)
    run_killed(cfg, "write@3=kill")  # two batches committed
    with ResultStore.open(tmp_path / "results.h5") as partial:
        assert len(partial) == 16
    objective = run(cfg)
    stored = load(tmp_path / "results.h5", "metrics/pixel_flipping")["metrics/pixel_flipping"]
    assert objective == pytest.approx(float(stored.mean()), rel=1e-12) and len(stored) == 24
    last_batch_only = float(stored[16:].mean())
    assert objective != pytest.approx(last_batch_only)


def test_heatmaps_are_named_by_their_dataset_row(tmp_path, base_cfg):
    """Issue 10.3: rendered files name the dataset row they show, resumed or not."""
    cfg = job(base_cfg, tmp_path, render={**base_cfg["render"], "max_images": 2, "cmaps": ["gray-red"]})
    run(cfg)
    assert sorted(p.name for p in (tmp_path / "heatmaps").glob("*.png")) == ["001600_gray-red.png",
                                                                              "001601_gray-red.png"]
    from PIL import Image

    from lrpflow import render

    data = load(tmp_path / "results.h5", ["relevance", "index"], rows=slice(1, 2))
    x = lrpflow.io.load_data("digits")[1601:1602]
    want = render.hm_to_rgb(data["relevance"][0], X=x[0], scaling=3, sigma=2.0, cmap="gray-red")
    got = numpy.asarray(Image.open(tmp_path / "heatmaps" / "001601_gray-red.png").convert("RGB"))
    numpy.testing.assert_allclose(got / 255.0, want[..., :3], atol=1 / 255 + 1e-6)


def test_rerunning_a_complete_job_finishes_outputs_without_recomputing(tmp_path, base_cfg, uninterrupted, monkeypatch):
    """Issue 10.4 and 10.1: a complete store is reused; missing summary and images are written from it."""
    cfg = job(base_cfg, tmp_path)
    run(cfg)
    (tmp_path / "summary.json").unlink()
    for p in (tmp_path / "heatmaps").glob("*.png"):
        p.unlink()
    calls = []
    monkeypatch.setattr(lrpflow.pipeline.Lrp, "process", lambda self, state: calls.append(state))
    assert run(cfg) == uninterrupted[ALIGNED][0]
    assert calls == []
    assert_same_outputs(tmp_path, uninterrupted[ALIGNED][1])
    other = job(base_cfg, tmp_path, lrp={**base_cfg["lrp"], "epsilon": 0.5})
    with pytest.raises(LrpflowError, match="exists and is complete, from another run.*lrp.epsilon"):
        run(other)


# --------------------------------------------------------------------------------------------------
# config names before the first batch (issue 10.8)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,match", [
    ("evaluate.objective", "pixel_flipingg", "evaluate.objective 'pixel_flipingg' is not among evaluate.metrics"),
    ("evaluate.metrics", ["conservation", "aopcc"], r"evaluate.metrics\[1\]: unknown metric 'aopcc'"),
    ("lrp.rule", "epsilonn", "lrp.rule: unknown rule 'epsilonn'"),
    ("render.cmaps", ["gray-red", "nope"], r"render.cmaps\[1\]: unknown colormap 'nope'"),
    ("pipeline", ["load_model", "load_data", "forward", "lrp", "sav"], r"pipeline\[4\]: unknown step 'sav'"),
])
def test_every_name_is_checked_before_the_first_batch(tmp_path, base_cfg, monkeypatch, key, value, match):
    touched = []
    monkeypatch.setattr(lrpflow.pipeline.LoadModel, "setup", lambda self, state: touched.append(1))
    cfg = job(base_cfg, tmp_path, **{key: value})
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        run(cfg)
    assert touched == [] and not list(tmp_path.glob("results.h5*"))


def test_a_corrected_objective_resumes_the_killed_run(tmp_path, base_cfg, uninterrupted):
    """The objective does not change stored rows: a rerun with another objective resumes."""
    cfg = job(base_cfg, tmp_path, **{"evaluate.objective": "conservation"})
    run_killed(cfg, "write@2=kill")
    objective = run(job(base_cfg, tmp_path))
    assert objective == uninterrupted[ALIGNED][0]


# --------------------------------------------------------------------------------------------------
# one run per directory (issue 10.5)
# --------------------------------------------------------------------------------------------------
def test_run_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    lock = RunLock(tmp_path).acquire()
    assert (tmp_path / ".lrpflow.lock").read_text().strip() == str(os.getpid())
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from lrpflow.store import RunLock
        from lrpflow.errors import LrpflowError
        try:
            RunLock({str(tmp_path)!r}).acquire()
        except LrpflowError as err:
            print(err)
    """)], capture_output=True, text=True, timeout=60)
    assert f"another run holds {tmp_path}, pid {os.getpid()}" in child.stdout, child.stderr
    lock.release()
    assert not (tmp_path / ".lrpflow.lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lrpflow.lock").write_text(f"{dead.pid}\n")  # left by a run killed with kill -9
    with RunLock(tmp_path):
        assert (tmp_path / ".lrpflow.lock").read_text().strip() == str(os.getpid())


def test_two_runs_on_one_directory(tmp_path, base_cfg, uninterrupted):
    """The loser gets one clear error; the winner's store is intact."""
    cfg = job(base_cfg, tmp_path)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, time
        from lrpflow.store import faults
        import lrpflow.pipeline as p
        orig = p.Save.process
        def slow(self, state):
            orig(self, state)
            print("batch", flush=True)
            time.sleep(0.4)
        p.Save.process = slow
        p.run(json.load(open({str(tmp_path / 'cfg.json')!r})))
        print("done", flush=True)
    """))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    winner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert winner.stdout.readline().strip() == "batch", winner.stderr.read()
        with pytest.raises(LrpflowError, match=f"another run holds {tmp_path}, pid {winner.pid}"):
            run(cfg)
        out, err = winner.communicate(timeout=120)
    finally:
        if winner.poll() is None:
            winner.kill()
    assert winner.returncode == 0 and "done" in out, err
    assert_same_outputs(tmp_path, uninterrupted[ALIGNED][1])


# --------------------------------------------------------------------------------------------------
# full disk, read-only folder (issue 10.6)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["write@2", "flush@3", "finish"])
def test_full_disk_is_a_clear_error_and_the_rerun_resumes(tmp_path, base_cfg, uninterrupted, monkeypatch, phase):
    cfg = job(base_cfg, tmp_path, UNALIGNED)
    monkeypatch.setenv(faults.ENV, f"{phase}=enospc")
    faults._counts.clear()
    with pytest.raises(StoreError, match=r"results.h5.partial while .*: no space left on device"):
        run(cfg)
    monkeypatch.delenv(faults.ENV)
    assert not (tmp_path / ".lrpflow.lock").exists()  # released on the error path
    run(cfg)
    assert_same_outputs(tmp_path, uninterrupted[UNALIGNED][1])


def test_a_real_full_disk_exits_cleanly(tmp_path, base_cfg, uninterrupted):
    """On a small tmpfs (needs root to mount; skipped elsewhere): a StoreError, no segfault, resumable."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=480k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        out = mnt / "run"
        cfg = job(base_cfg, out, (0, 1797), **{"data.batch_size": 64, "render.enabled": False,
                                                "store.compression": None})
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import json, sys
            from lrpflow.pipeline import run
            from lrpflow.errors import StoreError
            try:
                run(json.load(open({str(tmp_path / 'cfg.json')!r})))
            except StoreError as err:
                print("StoreError:", err)
                sys.exit(2)
        """)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr[-2000:])  # not 139 (segfault)
        assert "no space left on device" in proc.stdout
        with ResultStore.open(out / "results.h5") as partial:  # what was committed reads back
            rows = len(partial)
            assert rows > 0
            numpy.testing.assert_array_equal(partial["index"], numpy.arange(rows))
        assert subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], capture_output=True).returncode == 0
        run(cfg)  # space freed: the rerun resumes, nothing lost or twice
        whole = tmp_path / "whole"
        run(job(base_cfg, whole, (0, 1797), **{"data.batch_size": 64, "render.enabled": False,
                                               "store.compression": None}))
        a, b = load(out / "results.h5"), load(whole / "results.h5")
        for key in b:
            numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_read_only_output_directory(tmp_path, base_cfg):
    if os.geteuid() == 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode:
            pytest.skip("root ignores permissions and a read-only bind mount is not possible here")
        cleanup = ["umount", str(ro)]
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cleanup = None
    try:
        with pytest.raises(LrpflowError) as err:
            run(job(base_cfg, ro / "run" if cleanup is None else ro))
        text = str(err.value)
        assert "damaged" not in text and ("read-only" in text.lower() or "permission" in text.lower()), text
    finally:
        if cleanup:
            subprocess.run(cleanup, capture_output=True)
        else:
            ro.chmod(0o755)


def test_a_read_only_partial_store_is_not_called_damaged(tmp_path, base_cfg):
    cfg = job(base_cfg, tmp_path)
    run_killed(cfg, "write@2=kill")
    partial = tmp_path / ("results.h5" + PARTIAL_SUFFIX)
    partial.chmod(0o444)
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    with pytest.raises(StoreError) as err:
        run(cfg)
    assert "damaged" not in str(err.value) and "may not be written" in str(err.value)
