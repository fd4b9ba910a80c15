"""Appending on a background thread: order, bounded queue, errors in the caller's thread, real stores."""
from __future__ import annotations

import threading

import numpy
import pytest

from lrpflow.errors import StoreError
from lrpflow.store import ResultStore, load
from lrpflow.store.background import BackgroundAppender


class Recorder:
    """A stand-in store: records appends; blocks on ``gate``; fails on a given batch."""

    def __init__(self, fail_at=None):
        self.got, self.fail_at, self.gate = [], fail_at, threading.Event()
        self.gate.set()
        self.threads = set()

    def append(self, batch, **extras):
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        if batch == self.fail_at:
            raise StoreError(f"batch {batch}: no space left on device")
        self.got.append((batch, extras))


def test_batches_arrive_in_order_on_one_writer_thread():
    store = Recorder()
    w = BackgroundAppender(store)
    for i in range(20):
        w.append(i, index=i * 10)
    w.stop()
    assert store.got == [(i, {"index": i * 10}) for i in range(20)]
    assert store.threads == {"lrpflow-store"}
    w.stop()  # idempotent


def test_at_most_one_batch_waits_while_one_is_written():
    store = Recorder()
    store.gate.clear()  # the writer blocks inside the first append
    w = BackgroundAppender(store)
    w.append(0)
    w.append(1)  # queued (the writer holds batch 0)
    returned = threading.Event()
    t = threading.Thread(target=lambda: (w.append(2), returned.set()))
    t.start()
    assert not returned.wait(0.3)  # the third batch waits: memory grows by one batch at most
    store.gate.set()
    t.join(5)
    assert returned.is_set()
    w.stop()
    assert [b for b, _ in store.got] == [0, 1, 2]


def test_a_write_error_is_raised_by_the_next_call_and_later_batches_are_not_written():
    store = Recorder(fail_at=1)
    w = BackgroundAppender(store)
    w.append(0)
    w.append(1)
    with pytest.raises(StoreError, match="batch 1: no space"):
        w.drain()
    w.stop()
    assert [b for b, _ in store.got] == [0]
    store2 = Recorder(fail_at=0)
    w2 = BackgroundAppender(store2)
    w2.append(0)
    with pytest.raises(StoreError):  # surfaces at a later append or at stop, never lost
        for i in range(1, 4):
            w2.append(i)
        w2.stop()
    assert store2.got == []


def test_a_real_store_written_in_the_background_equals_one_written_in_place(tmp_path):
    rng = numpy.random.default_rng(0)
    batches = [(rng.normal(size=(8, 4, 4, 1)).astype(numpy.float32), rng.normal(size=(8, 3)), rng.integers(0, 3, 8))
               for _ in range(5)]

    def write(path, background):
        store = ResultStore.create(path, input_shape=(4, 4, 1), n_classes=3, config={"a": 1}, model_sha256="x",
                                   chunk_rows=8, compression=None)
        sink = BackgroundAppender(store) if background else store
        for k, (rel, logits, tgt) in enumerate(batches):
            sink.append({"relevance": rel, "logits": logits, "target": tgt},
                        index=numpy.arange(8 * k, 8 * k + 8))
        if background:
            sink.stop()
        store.finish()
        store.close()
        return load(path)

    a, b = write(tmp_path / "a.h5", True), write(tmp_path / "b.h5", False)
    assert set(a) == set(b)
    for key in b:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)
