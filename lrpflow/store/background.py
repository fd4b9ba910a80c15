"""Appending to a result store on a background thread while the next batch is explained.

A pipeline explains batch k+1 while batch k is converted, written and flushed. The
writer takes one batch at a time (at most one more waits), so memory grows by one
batch at most, and rows reach the file in the order they were given. The store's
crash safety is unchanged: a batch is committed (``rows_complete``) only after every
dataset holds it; a batch still queued when the process dies is simply recomputed by
the resumed run. A write error (a full disk) is raised in the caller's thread by the
next :meth:`BackgroundAppender.append` or by :meth:`BackgroundAppender.drain`.
"""
from __future__ import annotations

import queue
import threading
from typing import Any

_STOP = object()


class BackgroundAppender:
    """``store.append(batch, **extras)`` on one writer thread, in order.

    Parameters
    ----------
    store : ResultStore
        An open, writable store. Only the writer thread touches it until :meth:`drain` returns.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="lrpflow-store", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:  # after a failure the store is closed: later batches are dropped
                    batch, extras = item
                    self.store.append(batch, **extras)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                self._error = err
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def append(self, batch: Any, **extras: Any) -> None:
        """Queue one batch (waits while another batch is still queued); raises an earlier batch's error."""
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the store's writer thread has stopped")
        self._queue.put((batch, extras))

    def drain(self) -> None:
        """Wait until every queued batch is in the store; raises a write error."""
        if self._thread.is_alive():
            self._queue.join()
        self._raise()

    def stop(self) -> None:
        """Write what is queued, then end the writer thread (idempotent); raises a write error."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()
