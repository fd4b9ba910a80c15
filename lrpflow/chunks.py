"""Batch chunks: bounded memory per pass, and CPU threads explaining chunks side by side.

An explanation of a large batch is split into row chunks. Each chunk's forward trace
is dropped once its relevance is out, so the memory in use is bounded by the chunk
(GPU: VGG-sized models at large batches). On numpy, chunks run on ``workers`` threads
while BLAS is held to one thread per call: numpy releases the GIL in ufuncs, copies and
GEMMs, so the element-wise work of LRP (divisions, im2col, scatter-adds), which numpy
would do on one core, uses every core the BLAS would have used.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

#: Bytes of forward trace per chunk when no chunk size is given (per thread on the CPU).
TRACE_BUDGET_BYTES = 1 << 30
#: Fewest samples per chunk when a batch is split only to feed the threads.
MIN_CHUNK = 4
#: Fewest bytes of trace per chunk when a batch is split only to feed the threads: below that,
#: per-call overheads (Python, thread hand-offs) outweigh the second core. Measured with
#: benchmarks/bench_chunks.py (2 threads, Xeon): LeNet-5 chunks of 0.8 MiB (batch 16) took
#: 1.1–1.3× the time of the whole batch on one worker, of 1.5 MiB (batch 32) 0.73–0.93×.
MIN_CHUNK_BYTES = 1 << 20

T = TypeVar("T")

_lock = threading.Lock()
_controller: Any = None
_inside = threading.local()


def _blas_controller() -> Any:
    """threadpoolctl's view of the BLAS libraries numpy loaded (None if threadpoolctl is missing)."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController().select(user_api="blas")
        except Exception:  # pragma: no cover - threadpoolctl is a dependency; stay usable without it
            _controller = False
    return _controller or None


def cpu_workers() -> int:
    """Default CPU workers: the threads numpy's BLAS is allowed (``OPENBLAS_NUM_THREADS``, ...).

    Tying the two keeps one knob: a process told to use 2 threads for BLAS uses 2
    for explanations. Inside a worker thread the answer is 1 (no nested pools).
    """
    if getattr(_inside, "active", False):
        return 1
    ctl = _blas_controller()
    if ctl is not None:  # the libraries' current limits, read directly (info() builds dicts: 4x slower)
        counts = [int(lib.num_threads or 1) for lib in ctl.lib_controllers]
        if counts:
            return max(1, max(counts))
    return max(1, os.cpu_count() or 1)


def plan(n: int, per_sample_bytes: int, workers: int, chunk_size: int | None = None,
         budget_bytes: int = TRACE_BUDGET_BYTES, param_bytes: int = 0) -> list[slice]:
    """Row slices covering ``range(n)``.

    ``chunk_size`` given: chunks of at most that many rows. Otherwise chunks hold at most
    ``budget_bytes`` of trace, and with ``workers > 1`` there are at least ``workers``
    chunks, as long as each keeps ≥ :data:`MIN_CHUNK` rows, ≥ :data:`MIN_CHUNK_BYTES` of
    trace and at least as many bytes of trace as ``param_bytes`` (the weights each chunk
    reads once per sample, i.e. of dense layers: splitting a small batch of a dense network
    would only multiply weight traffic). Chunk sizes differ by ≤ 1 row.
    """
    if n <= 0:
        return [slice(0, max(n, 0))]
    if chunk_size is not None:
        count = -(-n // max(1, int(chunk_size)))
    else:
        count = -(-n // max(1, budget_bytes // max(1, per_sample_bytes)))
        if workers > 1:  # one chunk per worker at least, unless that leaves chunks too small
            per = max(1, per_sample_bytes)
            min_rows = max(MIN_CHUNK, -(-MIN_CHUNK_BYTES // per), -(-param_bytes // per))
            count = max(count, min(workers, n // min_rows))
    base, extra = divmod(n, count)  # equal chunks: the slowest thread sets the pace
    out, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def _run(fn: Callable[[Any], T], item: Any) -> T:
    _inside.active = True
    try:
        return fn(item)
    finally:
        _inside.active = False


class _SingleThreadedBlas:
    """Hold BLAS to one thread while any parallel section runs (the setting is process-wide:
    the first section to enter sets it, the last to leave restores it)."""

    def __init__(self) -> None:
        self._users = 0
        self._limit: Any = None

    def __enter__(self) -> None:
        with _lock:
            self._users += 1
            ctl = _blas_controller()
            if self._users == 1 and ctl is not None:
                self._limit = ctl.limit(limits=1)

    def __exit__(self, *exc: object) -> None:
        with _lock:
            self._users -= 1
            if self._users == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


_single_blas = _SingleThreadedBlas()


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _forget_pool() -> None:
    """In a forked child the parent's pool threads do not exist: start a new pool when needed."""
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _shared_pool(workers: int) -> ThreadPoolExecutor:
    """The process's chunk threads, kept between calls (starting threads cost ~0.4 ms each per call)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lrpflow"), workers
            if old is not None:
                old.shutdown(wait=False)  # running calls finish on it; new calls use the larger pool
        return _pool


def map_chunks(fn: Callable[[Any], T], items: Sequence[Any], workers: int) -> list[T]:
    """``[fn(i) for i in items]`` on up to ``workers`` threads, BLAS held to one thread meanwhile.

    Results keep the order of ``items``; an exception in any chunk is re-raised. One
    item, one worker, or a call from inside a worker runs in the calling thread. The
    threads are shared by every call of the process (a pool that grows to the largest
    ``workers`` asked for; at most ``workers`` of them work on one call's items).
    """
    workers = min(int(workers), len(items))
    if workers <= 1 or getattr(_inside, "active", False):
        return [fn(i) for i in items]
    pool = _shared_pool(workers)
    groups = [items[k::workers] for k in range(workers)]  # ≤ workers threads busy with this call

    def run_group(group: Sequence[Any]) -> list[T]:
        return [_run(fn, i) for i in group]

    with _single_blas:
        futures = [pool.submit(run_group, g) for g in groups]
        wait(futures)  # every group is done before this call returns, also when one of them failed
    done = [f.result() for f in futures]  # re-raises the first failure
    out: list[T] = [None] * len(items)  # type: ignore[list-item]
    for k, results in enumerate(done):
        out[k::workers] = results
    return out
