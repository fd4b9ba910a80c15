"""Fuzzing the result store: damaged files read through ``load``/``load_results`` and resumed.

Mutants of the committed seed stores (``tests/fixtures/store_seed.h5`` and its
``.partial``; see ``tests/fixtures/make_store_seeds.py``) are made deterministically from
their number: byte flips anywhere or in the metadata-heavy head, truncations and zeroed
blocks. Every mutant must give a valid result or a :class:`~lrpflow.errors.StoreError`,
never another exception, and no load may hang: a worker process reads the mutants one by
one and is killed and restarted if one takes longer than ``HANG_SECONDS``.
"""
from __future__ import annotations

import collections
import os
import pathlib
import select
import subprocess
import sys
import time

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
HANG_SECONDS = 20.0

WORKER = r'''
import os, random, shutil, sys, traceback
import numpy
from lrpflow.errors import LrpflowError, StoreError
from lrpflow.store import ResultStore, load, load_results

seed_path, mode, work = sys.argv[1:4]
seed = open(seed_path, "rb").read()


def mutant(i):
    rnd = random.Random(f"{mode}-{i}")
    data = bytearray(seed)
    kind = ("flip", "head", "truncate", "zero")[i % 4]
    if kind == "flip":
        for _ in range(rnd.randint(1, 16)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
    elif kind == "head":
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(min(4096, len(data)))] ^= 1 << rnd.randrange(8)
    elif kind == "truncate":
        del data[rnd.randrange(len(data)):]
    else:
        at = rnd.randrange(len(data))
        size = rnd.randint(16, 1024)
        data[at:at + size] = bytes(len(data[at:at + size]))
    return bytes(data)


def exercise(i):
    folder = os.path.join(work, str(i))
    os.makedirs(folder)
    final = os.path.join(folder, "results.h5")
    if mode == "load":
        open(final, "wb").write(mutant(i))
        load(final)
        res = load_results(final)
        n = 0
        for batch in res.batches(5):
            batch.relevance, batch.logits, batch.target, batch.label, batch.index, batch.conservation
            batch.source, batch.metrics, batch.ledger, batch.intermediate
            n += len(batch)
        assert n == len(res)
        res.config, res.attrs
    else:
        open(final + ".partial", "wb").write(mutant(i))
        with ResultStore.open(final, "a") as store:
            start = store.next_row
            store.read()
            k = 12 - start
            if k > 0:  # continue the run and finish it: the resumed store must take rows and read back
                rng = numpy.random.default_rng(i)
                store.append({"relevance": rng.normal(size=(k, 4, 3, 1)), "logits": rng.normal(size=(k, 3)),
                              "target": numpy.zeros(k, int), "metrics": {"pixel_flipping": numpy.zeros(k)},
                              "ledger": {"fc": (numpy.zeros(k), numpy.zeros(k))},
                              "intermediate": {"fc": numpy.zeros((k, 3))},
                              "source": [f"x{j}" for j in range(k)]})
            store.finish()
        assert len(load(final)["index"]) == max(12, start)
    shutil.rmtree(folder)


for line in sys.stdin:
    i = int(line)
    try:
        exercise(i)
        outcome = "valid"
    except StoreError:
        outcome = "StoreError"
    except LrpflowError as err:
        outcome = "LrpflowError:" + type(err).__name__
    except BaseException as err:
        outcome = "OTHER:" + type(err).__name__ + ":" + repr(str(err)[:300]).replace("\t", " ")
        sys.stderr.write(f"mutant {i}:\n{traceback.format_exc()}\n")
    print(f"{i}\t{outcome}", flush=True)
'''


def fuzz(tmp_path, seed, mode, count):
    """Outcome → count over mutants 0..count-1, plus the hangs; a hung worker is killed and restarted."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    todo = list(range(count))
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    while todo:
        proc = subprocess.Popen([sys.executable, str(script), str(seed), mode, str(work)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        proc.stdin.write("".join(f"{i}\n" for i in todo))
        proc.stdin.close()
        while todo:
            ready, _, _ = select.select([proc.stdout], [], [], HANG_SECONDS)
            line = proc.stdout.readline() if ready else ""
            if not line:  # a hang (or the worker died): count it, go on after this mutant
                proc.kill()
                proc.wait()
                outcomes["hang" if not ready else "worker died"] += 1
                failures.append(f"mutant {todo[0]}: {'hang' if not ready else 'worker died'}")
                todo.pop(0)
                break
            i, outcome = line.rstrip("\n").split("\t", 1)
            assert int(i) == todo[0]
            todo.pop(0)
            outcomes[outcome.split(":", 1)[0] if not outcome.startswith("OTHER") else "OTHER"] += 1
            if outcome.startswith("OTHER"):
                failures.append(f"mutant {i}: {outcome}")
        else:
            proc.wait()
            err = proc.stderr.read()
            if err and failures:
                failures.append(err[-4000:])
    return outcomes, failures


def check(outcomes, failures, count):
    print(f"\n{count} mutants: {dict(outcomes)}")
    assert not failures, "\n".join(failures)
    assert sum(outcomes.values()) == count
    assert outcomes["StoreError"] > 0  # the corpus does damage the files


@pytest.mark.parametrize("mode, seed", [("load", "store_seed.h5"), ("resume", "store_seed.h5.partial")])
def test_fuzzed_stores_give_a_result_or_a_store_error(tmp_path, mode, seed):
    count = 60
    check(*fuzz(tmp_path, FIXTURES / seed, mode, count), count)


@pytest.mark.long
@pytest.mark.parametrize("mode, seed", [("load", "store_seed.h5"), ("resume", "store_seed.h5.partial")])
def test_fuzzed_stores_long(tmp_path, mode, seed):
    count = int(os.environ.get("LRPFLOW_FUZZ_COUNT", "800"))
    start = time.time()
    check(*fuzz(tmp_path, FIXTURES / seed, mode, count), count)
    print(f"{time.time() - start:.1f} s")


def test_seeds_are_valid_stores():
    import numpy

    import lrpflow
    from lrpflow.store import ResultStore

    res = lrpflow.load_results(FIXTURES / "store_seed.h5")
    assert len(res) == 12 and list(res.source) == [f"img{i}.png" for i in range(12)]
    numpy.testing.assert_array_equal(res.index, numpy.arange(12))
    with ResultStore.open(FIXTURES / "store_seed.h5.partial") as partial:
        assert len(partial) == 8 and not partial.complete
