"""Out-of-core data: a memory-mapped dataset streamed with its relevance stored keeps memory flat.

Stand-in for the 200,000-sample case of the scaling issue: 20,000 samples of 32×32×1
float32 (82 MB, and as much relevance written to the store). If the pipeline read the
whole array, or kept the relevance it wrote, anonymous memory would grow by at least
that much; streaming in batches keeps the growth to a few batches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy
import pytest

N, SHAPE = 20_000, (32, 32, 1)

SCRIPT = r"""
import json, sys, threading, time
from lrpflow.pipeline import run

def rss_anon():  # kB of anonymous resident memory (heap, numpy buffers; not the file's mapped pages)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

cfg = json.loads(sys.argv[1])
warm = json.loads(json.dumps(cfg))
warm["data"]["stop"] = 2048  # imports, model, store machinery and one set of batch buffers
run(warm, output_dir=sys.argv[2] + "/warm")
base = rss_anon()
samples, done = [], threading.Event()

def sample():
    while not done.is_set():
        samples.append(rss_anon())
        time.sleep(0.005)

t = threading.Thread(target=sample)
t.start()
run(cfg, output_dir=sys.argv[2] + "/full")
done.set()
t.join()
print(json.dumps({"base_kb": base, "peak_kb": max(samples), "samples": len(samples)}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssAnon from /proc (Linux)")
def test_memory_mapped_dataset_streams_with_flat_anonymous_memory(tmp_path):
    import lrpflow
    from lrpflow.store import load

    rng = numpy.random.default_rng(0)
    x = numpy.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=numpy.float32, shape=(N, *SHAPE))
    for lo in range(0, N, 2000):  # written in blocks: the test process stays small too
        x[lo:lo + 2000] = rng.standard_normal((min(2000, N - lo), *SHAPE), dtype=numpy.float32)
    x.flush()
    del x
    net = lrpflow.Sequential([lrpflow.layers.Flatten(), lrpflow.layers.Linear(1024, 16, rng=1), lrpflow.layers.ReLU(),
                              lrpflow.layers.Linear(16, 10, rng=2)])
    lrpflow.io.save_model(net, str(tmp_path / "net.txt"))
    cfg = {"pipeline": ["load_model", "load_data", "forward", "lrp", "save"], "progress": False,
           "model": {"source": "file", "path": str(tmp_path / "net.txt")},
           "data": {"source": "file", "path": str(tmp_path / "x.npy"), "start": 0, "stop": None, "batch_size": 256},
           "lrp": {"rule": "epsilon", "epsilon": 0.01}, "store": {"compression": "lzf"}}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg), str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    data_mb = N * numpy.prod(SHAPE) * 4 / 2**20
    growth_mb = (m["peak_kb"] - m["base_kb"]) / 1024
    assert m["samples"] > 10
    assert growth_mb < data_mb / 4, (growth_mb, data_mb)  # far below the 82 MB the dataset (or its relevance) takes
    rel = load(tmp_path / "full" / "results.h5", "relevance", rows=slice(N - 3, N))["relevance"]
    ref = lrpflow.explain(net, numpy.load(tmp_path / "x.npy", mmap_mode="r")[N - 3:], rule="epsilon", epsilon=0.01)
    numpy.testing.assert_allclose(rel, ref.relevance, rtol=1e-5, atol=1e-6)  # every row was streamed and stored
