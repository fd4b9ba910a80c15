"""Batch chunks: the plan, the thread map, and chunked explanations equal to one-piece ones."""
from __future__ import annotations

import threading

import numpy
import pytest

import lrpflow
import nets
from lrpflow import chunks
from lrpflow.errors import ConfigError, ShapeError


def covers(slices, n):
    rows = [i for sl in slices for i in range(n)[sl]]
    return rows == list(range(n))


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 33, 64, 100, 257])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("per_sample", [1000, 1 << 18, 1 << 21])
def test_plan_covers_the_batch_in_equal_chunks(n, workers, per_sample):
    slices = chunks.plan(n, per_sample_bytes=per_sample, workers=workers)
    assert covers(slices, n)
    sizes = [sl.stop - sl.start for sl in slices]
    assert max(sizes) - min(sizes) <= 1
    # a chunk per worker, but never chunks under MIN_CHUNK rows or MIN_CHUNK_BYTES only to feed the workers
    min_rows = max(chunks.MIN_CHUNK, -(-chunks.MIN_CHUNK_BYTES // per_sample))
    assert len(slices) == max(1, min(workers, n // min_rows))


def test_plan_respects_chunk_size_and_memory_budget():
    assert [(s.start, s.stop) for s in chunks.plan(10, 8, 4, chunk_size=4)] == [(0, 4), (4, 7), (7, 10)]
    assert len(chunks.plan(10, 8, 1, chunk_size=1)) == 10
    # 100 rows of 1 MB trace under a 10 MB budget: ≥ 10 chunks of ≤ 10 rows, even with one worker
    slices = chunks.plan(100, 1 << 20, 1, budget_bytes=10 << 20)
    assert covers(slices, 100) and max(s.stop - s.start for s in slices) <= 10 and len(slices) == 10
    # a sample larger than the budget still gets a chunk of its own
    assert len(chunks.plan(3, 1 << 40, 1)) == 3
    assert chunks.plan(0, 8, 2) == [slice(0, 0)]


def test_plan_does_not_split_small_batches_of_weight_heavy_models():
    # MLP 784-1296-1296-1296-10: ~4.4 M weights, ~8.6 k trace values per sample (float32)
    mlp = {"per_sample_bytes": 8_600 * 4, "param_bytes": 4_400_000 * 4}
    assert len(chunks.plan(256, workers=2, **mlp)) == 1  # each chunk would re-read 17 MB of weights
    assert len(chunks.plan(1024, workers=2, **mlp)) == 2
    # LeNet-5: ~25 k trace values per sample: split once each chunk holds ≥ 1 MiB of trace
    # (batch 32: 0.73–0.93× the time of one chunk; batch 16: 1.1–1.3×)
    lenet = {"per_sample_bytes": 25_000 * 4, "param_bytes": 0}
    assert len(chunks.plan(256, workers=2, **lenet)) == 2
    assert len(chunks.plan(32, workers=2, **lenet)) == 2
    assert len(chunks.plan(16, workers=2, **lenet)) == 1
    # wide images (4 MiB of trace a sample): batch 16 in 2 chunks (0.55–0.64× the one-chunk time)
    assert len(chunks.plan(16, workers=2, per_sample_bytes=4 << 20)) == 2


def test_only_dense_weights_hold_back_the_split(rng):
    """A convolution's weights are reused at every position: they do not count as per-sample traffic."""
    from lrpflow.layers import Conv2d, Flatten, Linear

    conv = Conv2d(3, 3, 64, 512, padding=1, rng=0)  # 1.2 MB of float32 weights
    net = lrpflow.Sequential([conv, Flatten(), Linear(8 * 8 * 512, 2, rng=0)])
    exp = lrpflow.Explainer(net, dtype="float32", workers=2, rule="epsilon")
    x = numpy.zeros((16, 8, 8, 64), dtype=numpy.float32)
    exp._chunks(x, exp.default_method[1], 2)
    per_sample, dense = exp._sizes[(8, 8, 64, 4)]
    assert dense == (8 * 8 * 512 * 2 + 2) * 4  # the Linear layer's weights only
    assert per_sample == (8 * 8 * 64 + 8 * 8 * 512 * 2 + 2) * 4


def test_map_chunks_keeps_order_holds_blas_to_one_thread_and_restores_it():
    ctl = chunks._blas_controller()
    before = [i["num_threads"] for i in ctl.info()] if ctl is not None else None
    seen_threads, seen_blas = set(), []

    def work(i):
        seen_threads.add(threading.get_ident())
        if ctl is not None:
            seen_blas.append(max(x["num_threads"] for x in ctl.info()))
        assert chunks.cpu_workers() == 1  # no nested pools inside a worker
        assert chunks.map_chunks(lambda j: j * 10, [1, 2], 4) == [10, 20]  # runs inline
        return i * i

    assert chunks.map_chunks(work, list(range(12)), 3) == [i * i for i in range(12)]
    assert threading.get_ident() not in seen_threads
    if ctl is not None:
        assert set(seen_blas) == {1}
        assert [i["num_threads"] for i in ctl.info()] == before


def test_map_chunks_reraises_and_runs_inline_for_one_worker():
    def boom(i):
        if i == 3:
            raise ValueError("chunk 3")
        return i

    with pytest.raises(ValueError, match="chunk 3"):
        chunks.map_chunks(boom, list(range(6)), 2)
    caller = threading.get_ident()
    assert chunks.map_chunks(lambda i: threading.get_ident() == caller, [0, 1, 2], 1) == [True] * 3


def test_map_chunks_reuses_its_threads_and_waits_for_every_chunk_when_one_fails():
    before = threading.active_count()
    names = set()
    for _ in range(5):
        names |= set(chunks.map_chunks(lambda i: threading.current_thread().name, range(4), 2))
    # the shared pool's threads every call: 2, or more if an earlier test grew the pool (then any idle one may run)
    assert len(names) <= max(2, chunks._pool_size) and all(n.startswith("lrpflow") for n in names)
    assert threading.active_count() <= max(before, 2 + 1)
    finished = []

    def slow_or_boom(i):
        if i == 0:
            raise ValueError("chunk 0")
        threading.Event().wait(0.05)
        finished.append(i)

    with pytest.raises(ValueError, match="chunk 0"):
        chunks.map_chunks(slow_or_boom, [0, 1], 2)
    assert finished == [1]  # the other chunk was done before the error reached the caller


def test_map_chunks_works_in_a_forked_child():
    import os

    chunks.map_chunks(lambda i: i, [0, 1], 2)  # the parent's pool exists
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are gone; a pool that thinks it has them would hang
        ok = chunks.map_chunks(lambda i: i * 2, [1, 2, 3], 2) == [2, 4, 6]
        os._exit(0 if ok else 1)
    for _ in range(200):  # ≤ 10 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("map_chunks hung in a forked child")
    assert os.waitstatus_to_exitcode(status) == 0


def assert_same_explanation(a, b, rtol=1e-12):
    scale = max(1.0, float(numpy.abs(b.relevance).max()))
    numpy.testing.assert_allclose(a.relevance, b.relevance, rtol=rtol, atol=rtol * scale)
    numpy.testing.assert_allclose(a.logits, b.logits, rtol=rtol, atol=rtol)
    numpy.testing.assert_array_equal(a.target, b.target)
    numpy.testing.assert_allclose(a.r_init, b.r_init, rtol=rtol, atol=rtol)
    numpy.testing.assert_allclose(a.conservation, b.conservation, rtol=1e-6, atol=1e-9)
    assert a.ledger.keys() == b.ledger.keys() and a.intermediate.keys() == b.intermediate.keys()
    for k in a.ledger:
        numpy.testing.assert_allclose(a.ledger[k].entering, b.ledger[k].entering, rtol=rtol, atol=rtol * scale)
        numpy.testing.assert_allclose(a.ledger[k].leaving, b.ledger[k].leaving, rtol=rtol, atol=rtol * scale)
    for k in a.intermediate:
        numpy.testing.assert_allclose(a.intermediate[k], b.intermediate[k], rtol=rtol, atol=rtol * scale)
    assert a.method == b.method


@pytest.mark.parametrize("method", [{"rule": "epsilon", "epsilon": 0.01}, {"rule": "alpha_beta", "alpha": 2.0},
                                    {"composite": "epsilon_gamma_box", "low": -3.0, "high": 3.0},
                                    {"rule": "integrated_gradients", "steps": 4}])
@pytest.mark.parametrize("chunk_size,workers", [(7, 3), (5, 1), (None, 2), (1, 4)])
def test_chunked_explanation_equals_one_piece(rng, method, chunk_size, workers):
    net = nets.randomize_biases(nets.cnn(rng), rng)
    x = rng.normal(0, 1, (19, 10, 10, 2))
    keep = [net.nodes[2].name, "input"]
    whole = lrpflow.Explainer(net, dtype="float64", workers=1, keep=keep, **method)
    part = lrpflow.Explainer(net, dtype="float64", chunk_size=chunk_size, workers=workers, keep=keep, **method)
    if chunk_size is None:  # 19 rows, 2 workers: one piece (chunks would fall below MIN_CHUNK_BYTES)
        xx = whole.prepare(x)
        assert len(part._chunks(xx, part.default_method[1], part._workers(xx))) == 1
    labels = rng.integers(0, 4, 19)
    r = rng.normal(0, 1, (19, 4))
    for target, kw in [("pred", {}), ("topk:2", {}), (2, {}), (labels, {}), ("true", {"labels": labels}),
                       ("true", {"labels": numpy.eye(4)[labels]}), (r, {})]:
        assert_same_explanation(part(x, target=target, **kw), whole(x, target=target, **kw))
    trace = whole.forward(x)  # a given trace is cut into row chunks too
    assert_same_explanation(part(trace=trace, target="topk:3"), whole(trace=trace, target="topk:3"))
    many = part.explain_many(x, targets=["pred", 1], methods=[None, {"rule": "flat"}])
    ref = whole.explain_many(x, targets=["pred", 1], methods=[None, {"rule": "flat"}])
    for a, b in zip(many, ref):
        assert_same_explanation(a, b)


def test_chunked_lenet_float32_matches_and_threads_are_used(shared, mnist):
    model = lrpflow.load_model(shared / "models" / "MNIST" / "LeNet-5.txt")
    x = mnist[0][:80]
    whole = lrpflow.Explainer(model, rule="alpha_beta", alpha=2.0, workers=1)(x)
    ident = []
    orig = lrpflow.Explainer._explain_rows

    def spy(self, *a, **k):
        ident.append(threading.get_ident())
        return orig(self, *a, **k)

    exp = lrpflow.Explainer(model, rule="alpha_beta", alpha=2.0, workers=2, chunk_size=20)
    exp._explain_rows = spy.__get__(exp)
    part = exp(x)
    assert len(ident) == 4 and threading.get_ident() not in ident
    assert part.relevance.dtype == numpy.float32
    numpy.testing.assert_allclose(part.relevance, whole.relevance, rtol=1e-5, atol=1e-6 * numpy.abs(whole.relevance).max())


def test_batch_coupled_methods_stay_in_one_piece(rng):
    net = nets.cnn(rng)
    x = rng.normal(0, 1, (12, 10, 10, 2))
    for method in ({"rule": "smoothgrad", "n": 3}, {"rule": "random"}):
        whole = lrpflow.Explainer(net, dtype="float64", workers=1, **method)(x)
        part = lrpflow.Explainer(net, dtype="float64", chunk_size=5, workers=2, **method)(x)
        numpy.testing.assert_array_equal(part.relevance, whole.relevance)


def test_chunk_settings_and_row_targets_are_checked(rng):
    net = nets.cnn(rng)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="chunk_size"):
            lrpflow.Explainer(net, chunk_size=bad)
        with pytest.raises(ConfigError, match="workers"):
            lrpflow.Explainer(net, workers=bad)
    exp = lrpflow.Explainer(net, chunk_size=4, workers=2)
    x = rng.normal(0, 1, (10, 10, 10, 2))
    with pytest.raises(ShapeError, match=r"target must have one row per sample \(10\)"):
        exp(x, target=numpy.zeros(9, dtype=int))
    with pytest.raises(ShapeError, match=r"labels must have one row per sample \(10\)"):
        exp(x, target="true", labels=[1, 2])
    with pytest.raises(ConfigError, match=r"must lie in \[0, 4\), got values from 7"):  # a chunk's error reaches the caller
        exp(x, target=numpy.full(10, 7))
