"""A Hydra launcher that runs every job of a multirun as one Ray task.

``lrpflow -m hydra/launcher=ray hydra.launcher.ray.init.address=HOST:PORT data.num_shards=4 data.shard=0,1,2,3``
connects to a running Ray cluster (``ray.init(address=...)``; ``address: null`` starts a
local one) and submits each job with ``ray.remote(**hydra.launcher.ray.remote)``.

Why lrpflow has its own launcher rather than ``hydra-ray-launcher`` 1.2: that plugin passes
``object_store_memory`` to ``ray.init``, which Ray 2 refuses when joining a running cluster;
it lets each worker re-resolve the sweep directory (relative to the worker's own working
directory, with its own ``${now:}``), so jobs on a cluster write elsewhere than the driver
and the sweep summary finds nothing; and it pins ``cloudpickle<3``, which conflicts with
joblib 1.6 (the joblib launcher). Here the driver fixes the sweep directory as an absolute
path, and each task runs in the driver's working directory with the driver's ``LRPFLOW_*``
and ``HDF5_*`` environment variables.

A task whose worker process dies (killed, out of memory, node lost) is run again by Ray
(``remote.max_retries``); an lrpflow job then resumes its ``results.h5.partial`` store. A
job that fails with an exception is not retried (Hydra records it as failed).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

#: environment variables of the driver that every task sees
FORWARDED_ENV = ("LRPFLOW_", "HDF5_")

#: fault injection for tests: ``"JOB:BATCHES"`` kills job JOB's worker process (SIGKILL) right
#: after it stored BATCHES batches, once (a marker file in the job directory remembers it)
FAULT_ENV = "LRPFLOW_RAY_KILL_AFTER_BATCHES"
FAULT_MARKER = ".lrpflow_ray_killed"


def _plain(node: Any) -> dict[str, Any]:
    """A config mapping as a dict without null entries (null: Ray's default)."""
    if node is None:
        return {}
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: v for k, v in data.items() if v is not None}


def _run_job(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
             singleton_state: dict[Any, Any], cwd: str, env: dict[str, str]) -> JobReturn:
    """The Ray task: one Hydra job, in the driver's working directory and environment."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job

    os.environ.update(env)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    disarm = _arm_fault(sweep_config)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    try:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    finally:
        disarm()


def _arm_fault(sweep_config: DictConfig) -> Any:
    """If :data:`FAULT_ENV` names this job and it was not killed yet: kill its worker mid-shard.

    Returns a function that undoes the arming (the worker process may run other jobs later).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return lambda: None
    job, batches = (int(v) for v in spec.split(":"))
    marker = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir) / FAULT_MARKER
    if int(sweep_config.hydra.job.num) != job or marker.exists():
        return lambda: None
    import signal

    from lrpflow.store import ResultStore

    append, count = ResultStore.append, [0]

    def append_then_die(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = append(self, *args, **kwargs)
        count[0] += 1
        if count[0] >= batches:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"killed after {count[0]} batches\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    ResultStore.append = append_then_die

    def disarm() -> None:
        ResultStore.append = append

    return disarm


class LrpflowRayLauncher(Launcher):
    """Hydra launcher: each job of a sweep is one Ray task (config ``ray.init``, ``ray.remote``)."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            init = _plain(self.ray_cfg.get("init"))
            log.info("ray.init(%s)", ", ".join(f"{k}={v!r}" for k, v in init.items()))
            ray.init(**init)
        remote = _plain(self.ray_cfg.get("remote"))
        task = ray.remote(**remote)(_run_job) if remote else ray.remote(_run_job)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        log.info("Ray launcher: %d job(s) as Ray tasks, sweep output dir %s", len(job_overrides), sweep_dir)
        refs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.sweep.dir = str(sweep_dir)  # resolved once, here: every task writes under it
                sweep_config.hydra.job.id = f"ray_{idx}"
                sweep_config.hydra.job.num = idx
            refs.append(task.remote(self.hydra_context, sweep_config, self.task_function, Singleton.get_state(),
                                    os.getcwd(), env))
        return ray.get(refs)
