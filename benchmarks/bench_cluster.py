"""Wall time of one dataset as a single job, as 4 SLURM shards and as 4 Ray shards, each joined and compared.

    python benchmarks/bench_cluster.py [--shared ../shared] [--rows 10000] [--shards 4] [--skip slurm|ray] [override ...]

Runs ``experiment=mnist_lenet5`` (LeNet-5, the MNIST test set, batch 256, float32, LRP-ε, pixel
flipping on, rendering off) through the ``lrpflow`` command: once as one job, then as
``data.num_shards=N data.shard=0..N-1`` under ``hydra/launcher=slurm`` (one CPU and 1 GB per shard
job; needs a running SLURM: ``.ci/services.sh start``) and under ``hydra/launcher=ray`` on a local head started here
(``ray start --head --node-ip-address 127.0.0.1``, its start-up timed on its own). Each sharded run
is joined with ``lrpflow-join`` and compared with the single job's store, field by field, bitwise.
Prints the times and a JSON line; no pass/fail (the times depend on the machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]


def cli(cwd: Path, *args: str) -> float:
    """Seconds of one ``lrpflow`` command (it must succeed)."""
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", LRPFLOW_CACHE=str(cwd / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from lrpflow.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lrpflow {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def joined_equals(cwd: Path, sweep: Path, shards: int, single: Path) -> bool:
    from lrpflow.store import load

    parts = [str(sweep / str(i) / "results.h5") for i in range(shards)]
    out = cwd / f"{sweep.name}_joined.h5"
    proc = subprocess.run([sys.executable, "-c", "import sys; from lrpflow.cli import join; sys.exit(join())",
                           str(out), *parts], cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"lrpflow-join failed:\n{proc.stderr[-3000:]}")
    a, b = load(out), load(single)
    return sorted(a) == sorted(b) and all(numpy.array_equal(a[k], b[k], equal_nan=True) for k in b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=os.environ.get("LRPFLOW_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--skip", action="append", default=[], choices=["slurm", "ray"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    base = ["experiment=mnist_lenet5", f"paths.shared={os.path.abspath(args.shared)}", f"data.stop={args.rows}",
            "progress=false", "render=none", *args.overrides]
    shards = [f"data.num_shards={args.shards}", f"data.shard={','.join(map(str, range(args.shards)))}"]
    result: dict[str, object] = {"rows": args.rows, "shards": args.shards}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        single = cwd / "single"
        result["single_s"] = cli(cwd, *base, f"hydra.run.dir={single}")
        print(f"single job             {result['single_s']:7.1f} s")
        if "slurm" not in args.skip:
            if shutil.which("srun") is None:
                print("SLURM                  skipped: srun is not on PATH (.ci/services.sh install && start)")
            else:
                sweep = cwd / "slurm"
                result["slurm_s"] = cli(cwd, "-m", *base, *shards, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                                        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")
                result["slurm_equal"] = joined_equals(cwd, sweep, args.shards, single / "results.h5")
                print(f"SLURM, {args.shards} shards        {result['slurm_s']:7.1f} s   joined == single: "
                      f"{result['slurm_equal']}")
        if "ray" not in args.skip:
            exe = Path(sys.executable).parent / "ray"
            if not exe.exists():
                print("Ray                    skipped: the ray command is missing (pip install lrpflow[ray])")
            else:
                port = free_port()
                t0 = time.perf_counter()
                head = subprocess.Popen([str(exe), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                                         "--port", str(port), "--num-cpus", str(os.cpu_count() or 1),
                                         "--include-dashboard=false", "--disable-usage-stats"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                try:
                    for line in head.stdout:
                        if "Ray runtime started" in line:
                            break
                    result["ray_head_start_s"] = time.perf_counter() - t0
                    sweep = cwd / "ray"
                    result["ray_s"] = cli(cwd, "-m", *base, *shards, "hydra/launcher=ray",
                                          f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                                          f"hydra.sweep.dir={sweep}")
                    result["ray_equal"] = joined_equals(cwd, sweep, args.shards, single / "results.h5")
                    print(f"Ray, {args.shards} shards          {result['ray_s']:7.1f} s   joined == single: "
                          f"{result['ray_equal']}   (head start {result['ray_head_start_s']:.1f} s)")
                finally:
                    head.terminate()
                    try:
                        head.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        head.kill()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
