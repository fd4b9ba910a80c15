"""The ``lrpflow`` command on bad input: one short message, exit status 2, the traceback in the log."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def lrpflow_cli(tmp_path, *args, env_extra=None):
    env = dict(os.environ, LRPFLOW_CACHE=str(tmp_path / "cache"))
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", "from lrpflow.cli import main; main()", "progress=false",
           f"hydra.run.dir={tmp_path / 'run'}", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_missing_model_file_is_one_message_and_exit_2(tmp_path):
    proc = lrpflow_cli(tmp_path, "model=file", f"model.path={tmp_path / 'nope.txt'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lrpflow:")]
    assert lines[0] == f"lrpflow: error: {tmp_path / 'nope.txt'}: cannot read model file: No such file or directory"
    log = (tmp_path / "run" / "lrpflow.log").read_text()  # the log file keeps the whole story
    assert "Traceback (most recent call last)" in log and "ModelFormatError" in log and "nope.txt" in log
    assert str(tmp_path / "run" / "lrpflow.log") in lines[1]
    assert not (tmp_path / "run" / ".lrpflow.lock").exists()


def test_a_wrong_objective_fails_before_any_work(tmp_path):
    proc = lrpflow_cli(tmp_path, "evaluate.objective=pixel_fliping", "model.train.iters=10")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "evaluate.objective 'pixel_fliping' is not among evaluate.metrics" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").glob("results.h5*"))
    assert not (tmp_path / "cache").exists()  # not even the model was trained


def test_hydra_full_error_shows_the_traceback(tmp_path):
    proc = lrpflow_cli(tmp_path, "model=file", f"model.path={tmp_path / 'nope.txt'}",
                       env_extra={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "ModelFormatError" in proc.stderr


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_join_of_a_bad_shard_is_one_message(tmp_path, damage):
    shard = tmp_path / "s0.h5"
    if damage == "garbage":
        shard.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    proc = subprocess.run([sys.executable, "-c", "import sys; from lrpflow.cli import join; sys.exit(join())",
                           str(tmp_path / "joined.h5"), str(shard)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lrpflow-join: error: ") and str(shard) in proc.stderr
