"""Sharded runs on real clusters: SLURM (submitit) and Ray, joined into the single-job store.

Tests marked ``cluster`` need the services: SLURM is started by ``.ci/services.sh start``
(``.ci/run`` does it); Ray clusters are started and stopped by the fixture here. Locally
they skip when the services are not up; under ``CI=true`` they fail instead.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from lrpflow.store import load

#: the default experiment, shrunk: a quickly trained MLP, 200 held-out digits, 4 batches a shard
BASE = ["progress=false", "model.train.iters=400", "model.train.status=200", "data.start=1597", "data.stop=1797",
        "data.batch_size=16", "render=none", "evaluate.metrics=[pixel_flipping,conservation]"]
SHARDS = ["data.num_shards=4", "data.shard=0,1,2,3"]


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail on CI (where .ci/run starts the services)."""
    if on_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run must start the cluster services)")
    pytest.skip(reason)


def lrpflow_cli(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.setdefault("LRPFLOW_CACHE", str(cwd / "cache"))
    env["HDF5_USE_FILE_LOCKING"] = "FALSE"
    return subprocess.run([sys.executable, "-c", "from lrpflow.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def lrpflow_join(cwd: Path, out: Path, shards: list[Path]) -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from lrpflow.cli import join; sys.exit(join())",
                           str(out), *map(str, shards)], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def single_job_store(tmp_path: Path) -> dict[str, numpy.ndarray]:
    """The unsharded run (it also trains and caches the model the shard jobs then share)."""
    proc = lrpflow_cli(tmp_path, *BASE, f"hydra.run.dir={tmp_path / 'single'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load(tmp_path / "single" / "results.h5")


def assert_joined_equals_single(tmp_path: Path, sweep: Path, whole: dict[str, numpy.ndarray]) -> None:
    shards = [sweep / str(i) / "results.h5" for i in range(4)]
    for i, s in enumerate(shards):
        assert s.exists(), f"shard {i} wrote no store ({sorted(p.name for p in (sweep / str(i)).iterdir())})"
        assert len(load(s, "index")["index"]) == 50
    lrpflow_join(tmp_path, tmp_path / "joined.h5", shards)
    joined = load(tmp_path / "joined.h5")
    assert sorted(joined) == sorted(whole)
    for key in whole:
        numpy.testing.assert_array_equal(joined[key], whole[key], err_msg=key)  # bitwise, every field
    numpy.testing.assert_array_equal(joined["index"], numpy.arange(1597, 1797))


# --- SLURM ------------------------------------------------------------------------------------


def slurm_up() -> str | None:
    """None if a SLURM node is idle or mixed here, else why not."""
    if shutil.which("srun") is None or shutil.which("sinfo") is None:
        return "SLURM is not installed (no srun/sinfo on PATH)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed") for s in states):
        return f"no idle SLURM node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
    return None


@pytest.fixture
def slurm() -> None:
    reason = slurm_up()
    if reason:
        unavailable(reason)


@pytest.mark.cluster
@pytest.mark.slow
def test_slurm_four_shards_join_into_the_single_job_store(tmp_path, slurm):
    whole = single_job_store(tmp_path)
    sweep = tmp_path / "sweep"
    proc = lrpflow_cli(tmp_path, "-m", *BASE, *SHARDS, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # the jobs ran under SLURM: submitit's folder holds one log per SLURM job
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 4, logs
    assert_joined_equals_single(tmp_path, sweep, whole)


def test_slurm_launcher_without_srun_says_so_in_one_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bindir = Path(sys.executable).parent  # the venv's scripts; no srun among them
    assert not (bindir / "srun").exists()
    env = dict(os.environ, PATH=str(bindir))
    proc = lrpflow_cli(tmp_path, "-m", *BASE, *SHARDS, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                       env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "lrpflow: SLURM not found: srun is not on PATH; use hydra/launcher=joblib or ray"
    assert not (tmp_path / "sweep" / "0").exists()  # nothing was launched


def fake_slurm(tmp_path: Path, nodes: str) -> dict:
    """PATH with stand-ins: ``srun`` (never run here) and ``sinfo`` printing ``nodes`` ("CPUs MB" per line)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "sinfo").write_text(f"#!/bin/sh\nprintf '{nodes}'\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return dict(os.environ, PATH=os.pathsep.join([str(bindir), str(Path(sys.executable).parent), "/usr/bin", "/bin"]))


def test_slurm_request_larger_than_every_node_is_refused_before_submitting(tmp_path, monkeypatch):
    from lrpflow.launchers import LauncherError, check_launcher

    env = fake_slurm(tmp_path, "2 3900\\n1 2000\\n")
    monkeypatch.setenv("PATH", env["PATH"])
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    with pytest.raises(LauncherError) as err:  # the defaults of conf/hydra/launcher/slurm.yaml
        check_launcher({"_target_": target, "cpus_per_task": 4, "tasks_per_node": 1, "mem_gb": 16})
    assert str(err.value) == (
        "SLURM: no node of this cluster has 4 CPUs and 16 GB (hydra.launcher.cpus_per_task × tasks_per_node, "
        "mem_gb); the largest has 2 CPUs and 3 GB (sinfo). Ask for less, e.g. hydra.launcher.cpus_per_task=2 "
        "hydra.launcher.mem_gb=3")
    with pytest.raises(LauncherError, match="no node of this cluster has 2 CPUs and 4 GB"):  # memory alone
        check_launcher({"_target_": target, "cpus_per_task": 2, "tasks_per_node": 1, "mem_gb": 4})
    check_launcher({"_target_": target, "cpus_per_task": 2, "tasks_per_node": 1, "mem_gb": 3})  # fits the first node
    check_launcher({"_target_": target, "cpus_per_task": 1, "tasks_per_node": 2, "mem_gb": None})


def test_slurm_request_check_from_the_command_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = fake_slurm(tmp_path, "2 3900\\n")
    proc = lrpflow_cli(tmp_path, "-m", *BASE, *SHARDS, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                       env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("lrpflow: SLURM: no node of this cluster has 4 CPUs and 16 GB")
    assert not (tmp_path / "sweep" / "0").exists()  # nothing was submitted


def test_ray_launcher_without_ray_says_so_in_one_line(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ray here')\n")  # shadows an installed ray
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "noray"), os.environ.get("PYTHONPATH", "")]))
    proc = lrpflow_cli(tmp_path, "-m", *BASE, *SHARDS, "hydra/launcher=ray", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                       env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("lrpflow: Ray not found: the ray launcher needs `pip install lrpflow[ray]`; "
                                   "use hydra/launcher=joblib or slurm")


# --- Ray --------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster, ``ray start --head --node-ip-address 127.0.0.1 --port PORT --num-cpus 2``; stopped after."""
    try:
        import ray  # noqa: F401
    except ImportError:
        unavailable("ray is not installed (pip install lrpflow[ray])")
    exe = Path(sys.executable).parent / "ray"
    exe = str(exe) if exe.exists() else shutil.which("ray")
    if exe is None:
        unavailable("the ray command is not on PATH")
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:  # ready once Ray says so
            lines.append(line)
            if "Ray runtime started" in line:
                break
        else:
            unavailable("ray start failed:\n" + "".join(lines[-30:]))
        yield address
    finally:
        proc.terminate()  # `ray start --block` stops the processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.cluster
@pytest.mark.slow
def test_ray_four_shards_one_worker_killed_join_into_the_single_job_store(tmp_path, ray_cluster):
    whole = single_job_store(tmp_path)
    sweep = tmp_path / "sweep"
    # job 1's worker is SIGKILLed after storing 2 of its 4 batches; Ray runs the task again and
    # the shard resumes from its results.h5.partial
    env = dict(os.environ, LRPFLOW_RAY_KILL_AFTER_BATCHES="1:2")
    proc = lrpflow_cli(tmp_path, "-m", *BASE, *SHARDS, "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}",
                       f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (sweep / "1" / ".lrpflow_ray_killed").read_text() == "killed after 2 batches\n"
    out = proc.stdout + proc.stderr + (sweep / "1" / "lrpflow.log").read_text()
    assert "after 32 complete rows" in out, out[-3000:]  # resumed after 2 batches of 16
    for i in (0, 2, 3):
        assert not (sweep / str(i) / ".lrpflow_ray_killed").exists()
    assert_joined_equals_single(tmp_path, sweep, whole)
    import csv

    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))  # the sweep summary, as the local launcher writes it
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    assert all(f"data.shard={r['job']}" in r["overrides"] for r in rows)


@pytest.mark.cluster
@pytest.mark.slow
def test_ray_sweep_over_rules_writes_the_sweep_summary(tmp_path, ray_cluster):
    import csv

    sweep = tmp_path / "sweep"
    proc = lrpflow_cli(tmp_path, "-m", *BASE, "data.stop=1661", "lrp=epsilon,alpha_beta,epsilon_plus", "hydra/launcher=ray",
                       f"hydra.launcher.ray.init.address={ray_cluster}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert sorted(r["overrides"].split("lrp=")[1].split()[0] for r in rows) == ["alpha_beta", "epsilon", "epsilon_plus"]
    for r in rows:
        assert float(r["objective"]) == pytest.approx(float(r["metric.pixel_flipping"]))
        assert len(load(sweep / r["job"] / "results.h5", "index")["index"]) == 64
    assert (sweep / "sweep_summary.h5").exists() and (sweep / "sweep_grid.png").exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_optuna_sweeper_with_the_ray_launcher(tmp_path, ray_cluster):
    import yaml

    sweep = tmp_path / "sweep"
    proc = lrpflow_cli(tmp_path, "-m", *BASE, "data.stop=1661", "hydra/sweeper=tune_epsilon", "hydra.sweeper.n_trials=2",
                       "hydra.sweeper.n_jobs=2", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}",
                       f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").exists())
    assert jobs == ["0", "1"]  # one batch of two parallel trials
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    objectives = [json.loads((sweep / j / "summary.json").read_text())["objective"] for j in jobs]
    assert best["best_value"] == pytest.approx(max(objectives))  # direction: maximize
    assert 1e-4 <= best["best_params"]["lrp.epsilon"] <= 1.0


# --- data.num_shards=auto ---------------------------------------------------------------------


def test_auto_shards_sweep_one_shard_per_cpu_of_this_machine():
    from lrpflow.errors import ConfigError
    from lrpflow.launchers import expand_auto_shards

    k = os.cpu_count()
    args = ["-m", "lrp=epsilon", "data.num_shards=auto"]
    assert expand_auto_shards(args) == ["-m", "lrp=epsilon", f"data.num_shards={k}",
                                        "data.shard=" + ",".join(map(str, range(k)))]
    # an explicit shard is kept; a fixed count is left alone
    assert expand_auto_shards(["--multirun", "data.num_shards=auto", "data.shard=0"]) == \
        ["--multirun", f"data.num_shards={k}", "data.shard=0"]
    assert expand_auto_shards(["-m", "data.num_shards=3"]) == ["-m", "data.num_shards=3"]
    with pytest.raises(ConfigError, match="needs a multirun"):
        expand_auto_shards(["data.num_shards=auto"])


@pytest.mark.cluster
def test_auto_shards_count_the_cpus_of_the_slurm_cluster(slurm):
    from lrpflow.launchers import cluster_cpus

    total = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True).stdout.split()
    assert cluster_cpus(["-m", "hydra/launcher=slurm"]) == sum(map(int, total)) >= 1


@pytest.mark.cluster
def test_auto_shards_count_the_cpus_of_the_ray_cluster(ray_cluster):
    from lrpflow.launchers import expand_auto_shards

    args = ["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}", "data.num_shards=auto"]
    assert expand_auto_shards(args)[-2:] == ["data.num_shards=2", "data.shard=0,1"]  # the head has --num-cpus 2
