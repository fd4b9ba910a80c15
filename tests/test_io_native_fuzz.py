"""Readers on damaged files: every mutant loads or raises an LrpflowError, and none hangs (native models mostly).

libhdf5 can loop forever inside one C call on a damaged file (a global heap object of
size 0), which no Python timeout interrupts; so each load runs in a worker process
with a deadline, and a worker past it counts as a hang and is killed. The corpus is
deterministic: committed seed files (tests/fixtures/native_v{1,2}.h5, made by
tests/fixtures/make_native_seeds.py) and a fixed random seed for the mutations: byte
flips, truncations and zeroed blocks. The toolbox pickle and text readers and the v7.3
``.mat`` data reader get the same treatment on seeds their deterministic writers make.
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
from lrpflow.io import load_data

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
        if os.path.basename(path).startswith("data"):
            load_data(path)
        else:
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


#: mutants of the full v1 corpus on which lrpflow before format 2 hung (libhdf5 looping in the global heap)
PAST_HANGS = (116, 140)


def run_corpus(tmp_path: pathlib.Path, count: int, also: tuple[int, ...] = ()) -> collections.Counter:
    """Load mutants 0..count-1 of each seed (and mutants ``also`` of the full corpus)."""
    paths = []
    for version, seed_file in SEEDS.items():
        corpus = mutants(seed_file.read_bytes(), CORPUS_SEED + int(version[1:]), max((count, *(a + 1 for a in also))))
        for i, m in enumerate(corpus):
            if i >= count and i not in also:
                continue
            path = tmp_path / f"{version}-{i}.h5"
            path.write_bytes(m)
            paths.append(str(path))
    results = load_all(paths)
    bad = {os.path.basename(p): r for p, r in results.items() if r not in ("loaded", "LrpflowError")}
    assert not bad, f"{len(bad)} of {len(paths)} mutants neither loaded nor raised an LrpflowError: {bad}"
    return collections.Counter(results.values())


def _other_seeds(d: pathlib.Path) -> dict[str, bytes]:
    """Seeds of the other file readers (made at test time: their writers are deterministic)."""
    from lrpflow.layers import Conv2d, Flatten, Linear, MaxPool, ReLU, SumPool

    rng = numpy.random.default_rng(0)
    net = lrpflow.Sequential([Conv2d(3, 3, 1, 2, rng=rng), ReLU(), SumPool(2, 2), MaxPool(1, 1, stride=(1, 1)),
                              Flatten(), Linear(8, 3, rng=rng)])
    out = {}
    for ext in ("nn", "txt"):
        lrpflow.save_model(net, d / f"seed.{ext}")
        out[f"model.{ext}"] = (d / f"seed.{ext}").read_bytes()
    import h5py

    with h5py.File(d / "seed.mat", "w", userblock_size=512) as f:  # MATLAB v7.3 data
        f["data"] = numpy.arange(24, dtype=numpy.float64).reshape(4, 6).T
    out["data.mat"] = (d / "seed.mat").read_bytes()
    return out


def run_other_readers(tmp_path: pathlib.Path, count: int) -> dict[str, collections.Counter]:
    paths: dict[str, list[str]] = {}
    for k, (key, data) in enumerate(_other_seeds(tmp_path).items()):
        kind, ext = key.split(".")
        for i, m in enumerate(mutants(data, CORPUS_SEED + 10 + k, count)):
            path = tmp_path / f"{kind}-{i}.{ext}"
            path.write_bytes(m)
            paths.setdefault(key, []).append(str(path))
    results = load_all([p for group in paths.values() for p in group])
    bad = {os.path.basename(p): r for p, r in results.items() if r not in ("loaded", "LrpflowError")}
    assert not bad, f"{len(bad)} of {len(results)} mutants neither loaded nor raised an LrpflowError: {bad}"
    return {key: collections.Counter(results[p] for p in group) for key, group in paths.items()}


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
    counts = run_corpus(tmp_path, 50, also=PAST_HANGS)  # 104 files
    assert counts["loaded"] + counts["LrpflowError"] == 104 and counts["LrpflowError"] > 0


def test_damaged_toolbox_and_mat73_files_never_hang(tmp_path):
    counts = run_other_readers(tmp_path, 20)  # 20 each: .nn pickle, .txt model, v7.3 .mat data
    assert all(sum(c.values()) == 20 and c["LrpflowError"] > 0 for c in counts.values()), counts


@pytest.mark.long
def test_damaged_toolbox_and_mat73_files_never_hang_full_corpus(tmp_path):
    counts = run_other_readers(tmp_path, 300)
    print({k: dict(v) for k, v in counts.items()})
    assert all(sum(c.values()) == 300 for c in counts.values()), counts


@pytest.mark.long
def test_damaged_native_files_never_hang_full_corpus(tmp_path):
    counts = run_corpus(tmp_path, 400)  # 800 files
    print(dict(counts))
    assert counts["loaded"] + counts["LrpflowError"] == 800
