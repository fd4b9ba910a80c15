"""The Hydra config tree lives in the top-level ``conf/`` and ships inside the wheel as ``lrpflow.conf``.

``lrpflow`` must compose its config from any directory, both from this (editable) checkout and from
a built wheel: the wheel is built here, unpacked, and run with nothing of the checkout on the path.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import lrpflow.conf

REPO = pathlib.Path(__file__).resolve().parent.parent


def _yaml_files(root: pathlib.Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.yaml")}


def test_the_config_package_is_the_top_level_conf_folder():
    assert pathlib.Path(lrpflow.conf.__file__).resolve().parent == REPO / "conf"
    assert not (REPO / "lrpflow" / "conf").exists()


def test_the_wheel_ships_every_config_and_lrpflow_runs_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("lrpflow-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n[len("lrpflow/conf/"):] for n in z.namelist() if n.startswith("lrpflow/conf/") and n.endswith(".yaml")}
        z.extractall(tmp_path / "site")
    assert shipped == _yaml_files(REPO / "conf") and "config.yaml" in shipped
    # run from an unrelated directory with only the unpacked wheel (plus the installed dependencies) importable;
    # the checkout's own packages are shadowed by the wheel's copy
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = ("import sys, lrpflow, lrpflow.conf; assert lrpflow.conf.__file__.startswith(sys.argv[1]), "
            "lrpflow.conf.__file__; sys.argv = ['lrpflow', '--cfg', 'job']; from lrpflow.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pipeline:" in out.stdout and "load_model" in out.stdout
