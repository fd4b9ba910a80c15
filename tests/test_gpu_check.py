"""The GPU check's driver (benchmarks/gpu_check.py) runs end to end on the CPU (``--dry-run``).

The GPU figures themselves come from a GPU machine (benchmarks/README.md, "GPU check"); here
every phase runs on tiny sizes with numpy, and the JSON must hold every phase, ok, with its figures.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def test_dry_run_writes_every_phase(tmp_path):
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--no-torch", "--out", str(tmp_path),
           "--budget", "240", "--methods", "epsilon,random,epsilon_plus_flat,winner_take_all"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    run = doc["runs"]["fp32"]
    assert run["status"] == "done"
    phases = run["phases"]
    assert list(phases) == ["env", "agreement", "timing", "vgg", "vgg256"]
    for name, phase in phases.items():
        assert phase["status"] == "ok", (name, phase.get("error"), phase.get("traceback"))
    assert phases["env"]["backend"] == "numpy" and phases["env"]["dry_run"] is True
    agree = phases["agreement"]
    assert agree["complete"] and not agree["failures"]
    methods = {r["method"] for r in agree["rows"]}
    assert methods == {"epsilon", "random", "epsilon_plus_flat", "winner_take_all"}
    assert {r["net"] for r in agree["rows"]} == {"lenet5", "vgg_small", "resnet_small"}
    assert all(r["rel_diff"] == 0.0 for r in agree["rows"] if r["method"] != "random")  # numpy against itself
    for net in ("lenet5", "mlp"):
        rows = {r["method"]: r for r in phases["timing"][net]}
        assert set(rows) == {"forward", "epsilon", "alpha2beta1"}
        assert all(r["ms"] > 0 and r["runs"] >= 1 for r in rows.values())
    vgg = {r["method"] + str(r.get("chunk_size")): r for r in phases["vgg"]["rows"]}
    assert {"forwardNone", "epsilon_plus_flatNone", "epsilon_plus_flat4"} <= set(vgg)
    assert phases["vgg256"]["oom"] is False and phases["vgg256"]["chunks"] == 4


def test_nets_match_their_pytorch_twins():
    """The floor's networks compute what lrpflow's do (skipped where torch is missing, as in CI)."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_nets
    finally:
        sys.path.remove(str(BENCH))
    rng = numpy.random.default_rng(0)
    for model in (gpu_nets.lenet5(), gpu_nets.mlp((20, 16, 16, 5)), gpu_nets.vgg_small()):
        x = rng.uniform(-1, 1, (3, *model.input_shape))
        twin = gpu_nets.to_torch(model, torch, "cpu", torch.float64)
        with torch.no_grad():
            theirs = twin(torch.as_tensor(gpu_nets.nhwc_to_nchw(x))).numpy()
        numpy.testing.assert_allclose(theirs, model.run(x)[0], rtol=1e-9, atol=1e-9)
