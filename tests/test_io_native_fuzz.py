"""The native model reader on damaged files: every mutant loads or raises an LrpflowError, and none hangs.

libhdf5 can loop forever inside one C call on a damaged file (a global heap object of
size 0), which no Python timeout interrupts; so each load runs in a worker process
with a deadline, and a worker past it counts as a hang and is killed. The corpus is
deterministic: committed seed files (tests/fixtures/native_v{1,2}.h5, made by
tests/fixtures/make_native_seeds.py) and a fixed random seed for the mutations: byte
flips, truncations and zeroed blocks.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import pathlib
import struct

import numpy
import pytest

import lrpflow

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
SEEDS = {"v1": FIXTURES / "native_v1.h5", "v2": FIXTURES / "native_v2.h5"}
#: a single load of a 10 kB file takes milliseconds; past this it is stuck
DEADLINE = 10.0
CORPUS_SEED = 20261201


def mutants(data: bytes, seed: int, count: int) -> list[bytes]:
    """``count`` deterministic damaged copies of ``data``: 1-4 bit flips, a truncation, or a zeroed block."""
    rng = numpy.random.default_rng(seed)
    out = []
    for i in range(count):
        b = bytearray(data)
        kind = i % 3
        if kind == 0:
            for _ in range(int(rng.integers(1, 5))):
                p = int(rng.integers(0, len(b)))
                b[p] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            b = b[: int(rng.integers(0, len(b)))]
        else:
            p, n = int(rng.integers(0, len(b))), int(rng.integers(8, 65))
            b[p : p + n] = bytes(len(b[p : p + n]))
        out.append(bytes(b))
    return out


def _load(path: str) -> str:
    try:
        lrpflow.load_model(path)
        return "loaded"
    except lrpflow.LrpflowError:
        return "LrpflowError"
    except BaseException as err:  # anything else is a defect; report it
        return f"{type(err).__name__}: {str(err)[:200]}"


def load_all(paths: list[str], deadline: float = DEADLINE, workers: int = 2) -> dict[str, str]:
    """Outcome of loading each file in worker processes; ``"hang"`` for a load past ``deadline``."""
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(workers)
    pending = {p: pool.apply_async(_load, (p,)) for p in paths}
    results: dict[str, str] = {}
    try:
        for p in paths:
            try:
                results[p] = pending[p].get(timeout=deadline)
            except multiprocessing.TimeoutError:
                results[p] = "hang"
                pool.terminate()  # the stuck worker cannot be interrupted, only killed
                pool = ctx.Pool(workers)
                pending.update({q: pool.apply_async(_load, (q,)) for q in paths if q not in results and q != p})
    finally:
        pool.terminate()
    return results


def run_corpus(tmp_path: pathlib.Path, count: int) -> collections.Counter:
    paths = []
    for version, seed_file in SEEDS.items():
        for i, m in enumerate(mutants(seed_file.read_bytes(), CORPUS_SEED + int(version[1:]), count)):
            path = tmp_path / f"{version}-{i}.h5"
            path.write_bytes(m)
            paths.append(str(path))
    results = load_all(paths)
    bad = {os.path.basename(p): r for p, r in results.items() if r not in ("loaded", "LrpflowError")}
    assert not bad, f"{len(bad)} of {len(paths)} mutants neither loaded nor raised an LrpflowError: {bad}"
    return collections.Counter(results.values())


def test_seed_files_load():
    for seed_file in SEEDS.values():
        model = lrpflow.load_model(seed_file)
        assert [type(layer).__name__ for layer in model.layers] == ["Linear", "BatchNorm", "ReLU"]


def test_zero_size_global_heap_object_is_refused_not_looped_on(tmp_path):
    """The hang found by the probe: a free-space object of size 0 in the global heap of a v1 file."""
    data = bytearray(SEEDS["v1"].read_bytes())
    heap = data.find(b"GCOL")
    assert heap > 0 and data[heap + 4] == 1
    data[heap + 16 : heap + 32] = struct.pack("<HHIQ", 0, 0, 0, 0)  # object index 0 (free space), size 0
    path = tmp_path / "loop.h5"
    path.write_bytes(bytes(data))
    outcome = load_all([str(path)], deadline=DEADLINE, workers=1)[str(path)]
    assert outcome == "LrpflowError", outcome
    with pytest.raises(lrpflow.ModelFormatError, match=r"loop\.h5: damaged HDF5 global heap: .* size 0"):
        lrpflow.load_model(path)


def test_damaged_native_files_never_hang(tmp_path):
    counts = run_corpus(tmp_path, 50)  # 100 files
    assert counts["loaded"] + counts["LrpflowError"] == 100 and counts["LrpflowError"] > 0


@pytest.mark.long
def test_damaged_native_files_never_hang_full_corpus(tmp_path):
    counts = run_corpus(tmp_path, 400)  # 800 files
    assert counts["loaded"] + counts["LrpflowError"] == 800
