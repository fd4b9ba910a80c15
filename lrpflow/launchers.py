"""Distributed launchers: checks before a multirun starts, and ``data.num_shards=auto``.

Hydra launches the jobs of ``lrpflow -m``; lrpflow ships configs for the joblib, Ray and
SLURM (submitit) launchers (``lrpflow/conf/hydra/launcher``). This module

- checks that the chosen launcher can run here before any job is submitted
  (:func:`check_launcher`, called by the :class:`LauncherCheck` Hydra callback), so that a
  machine without SLURM gets one line instead of submitit's traceback;
- resolves ``data.num_shards=auto`` on the command line into a shard count from the CPUs of
  the cluster that will run the jobs, and sweeps ``data.shard`` over them
  (:func:`expand_auto_shards`).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from lrpflow.errors import ConfigError, LrpflowError

log = logging.getLogger("lrpflow.launchers")

SLURM_MISSING = "SLURM not found: srun is not on PATH; use hydra/launcher=joblib or ray"


class LauncherError(LrpflowError):
    """The configured launcher cannot run on this machine."""


def launcher_kind(target: str) -> str:
    """``slurm``, ``submitit_local``, ``ray``, ``joblib`` or ``basic`` for a launcher's ``_target_``."""
    t = target.lower()
    if "submitit" in t:
        return "submitit_local" if "local" in t else "slurm"
    if "ray" in t:
        return "ray"
    if "joblib" in t:
        return "joblib"
    return "basic"


def check_launcher(launcher: Mapping[str, Any]) -> None:
    """Raise :class:`LauncherError` if the launcher config ``hydra.launcher`` cannot run here."""
    kind = launcher_kind(str(launcher.get("_target_", "")))
    if kind == "slurm" and shutil.which("srun") is None:
        raise LauncherError(SLURM_MISSING)
    if kind == "slurm":
        check_slurm_request(launcher)
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise LauncherError("Ray not found: the ray launcher needs `pip install lrpflow[ray]`; "
                                "use hydra/launcher=joblib or slurm") from None


def slurm_nodes(partition: str | None = None) -> list[tuple[int, int]]:
    """(CPUs, memory in MB) of every node ``sinfo`` lists (of ``partition`` when given); [] if sinfo fails."""
    cmd = ["sinfo", "-h", "-N", "-o", "%c %m"] + (["-p", str(partition)] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    nodes = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].rstrip("+").isdigit():
            nodes.append((int(parts[0]), int(parts[1].rstrip("+"))))
    return nodes


def check_slurm_request(launcher: Mapping[str, Any]) -> None:
    """Refuse a submitit request no SLURM node can hold: SLURM would leave such jobs pending for ever
    (reason ``PartitionConfig``), and the multirun would wait with them."""
    partition = launcher.get("partition")
    nodes = slurm_nodes(partition)
    if not nodes:
        return  # sinfo gave nothing to compare with: SLURM decides
    cpus = int(launcher.get("cpus_per_task") or 1) * int(launcher.get("tasks_per_node") or 1)
    mem_gb = launcher.get("mem_gb")
    mem_mb = None if mem_gb in (None, "null") else int(float(mem_gb) * 1024)
    if any(c >= cpus and (mem_mb is None or m >= mem_mb) for c, m in nodes):
        return
    most_cpus, most_mem = max(c for c, _ in nodes), max(m for _, m in nodes)
    where = f"partition {partition}" if partition else "this cluster"
    want = f"{cpus} CPUs" + (f" and {mem_gb} GB" if mem_mb is not None else "")
    raise LauncherError(f"SLURM: no node of {where} has {want} (hydra.launcher.cpus_per_task × tasks_per_node, "
                        f"mem_gb); the largest has {most_cpus} CPUs and {most_mem // 1024} GB (sinfo). Ask for less, "
                        f"e.g. hydra.launcher.cpus_per_task={most_cpus} hydra.launcher.mem_gb={max(1, most_mem // 1024)}")


class LauncherCheck:
    """Hydra callback: :func:`check_launcher` before the first job of a multirun is launched.

    A failure prints ``lrpflow: <message>`` on one line and exits with status 2.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            check_launcher(config.hydra.launcher)
        except LrpflowError as err:
            print(f"lrpflow: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    # the other events of Hydra's Callback protocol: nothing to do
    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        pass

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        pass

    def on_compose_config(self, config: Any, config_name: Any, overrides: Any) -> None:
        pass


# --- data.num_shards=auto ---------------------------------------------------------------------


def _override_value(args: Sequence[str], key: str) -> str | None:
    for a in args:
        if a.lstrip("+~").startswith(key + "="):
            return a.split("=", 1)[1]
    return None


def cluster_cpus(args: Sequence[str]) -> int:
    """CPUs of the cluster the launcher in the overrides ``args`` will use.

    ``hydra/launcher=ray``: the ``CPU`` resource of the Ray cluster at ``hydra.launcher.ray.init.address``
    (``ray.cluster_resources()``); ``slurm``: the CPUs of the nodes ``sinfo`` lists (of
    ``hydra.launcher.partition`` when given); otherwise this machine's CPU count.
    """
    launcher = _override_value(args, "hydra/launcher") or ""
    if launcher == "ray":
        import ray

        address = _override_value(args, "hydra.launcher.ray.init.address")
        if address in (None, "null"):
            return os.cpu_count() or 1
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
        finally:
            if started:
                ray.shutdown()
    if launcher == "slurm":
        if shutil.which("sinfo") is None:
            raise LauncherError(SLURM_MISSING.replace("srun", "sinfo"))
        cmd = ["sinfo", "-h", "-o", "%C"]
        partition = _override_value(args, "hydra.launcher.partition")
        if partition not in (None, "null"):
            cmd += ["-p", partition]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise LauncherError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}")
        # %C: allocated/idle/other/total CPUs
        return max(1, sum(int(line.split("/")[3]) for line in out.stdout.split() if line.count("/") == 3))
    return os.cpu_count() or 1


def expand_auto_shards(args: Sequence[str]) -> list[str]:
    """Command-line overrides with ``data.num_shards=auto`` resolved.

    ``auto`` becomes the cluster's CPU count (:func:`cluster_cpus`); in a multirun (``-m``)
    without a ``data.shard`` override, ``data.shard=0,1,...,K-1`` is added so that every
    shard is one job. Other arguments are returned unchanged.
    """
    args = list(args)
    if _override_value(args, "data.num_shards") != "auto":
        return args
    k = cluster_cpus(args)
    log.info("data.num_shards=auto: %d shards (the cluster's CPUs)", k)
    out = [f"data.num_shards={k}" if a.lstrip("+~").startswith("data.num_shards=") else a for a in args]
    multirun = any(a in ("-m", "--multirun") for a in args)
    if multirun and _override_value(args, "data.shard") is None:
        out.append("data.shard=" + ",".join(str(i) for i in range(k)))
    elif not multirun and _override_value(args, "data.shard") is None:
        raise ConfigError("data.num_shards=auto needs a multirun (-m) or an explicit data.shard")
    return out
