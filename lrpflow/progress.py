"""A one-line progress bar on stderr with the time left (no dependency), for training and pipelines."""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    """``3725`` → ``"1:02:05"``; ``"?"`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    hms = f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"
    return f"{d}d {hms}" if d else hms


class ProgressBar:
    """``label [####....] done/total <info> left m:ss``, redrawn in place with ``\\r``.

    ``draw(done, info)`` redraws now; ``update(n, info)`` advances by ``n`` and redraws at
    most every ``interval`` seconds (and at the end); ``clear()`` erases the line before a
    log message; ``close()`` ends it.
    """

    def __init__(self, total: int, enabled: bool = True, label: str = "", stream: TextIO | None = None,
                 interval: float = 0.2, width: int = 20) -> None:
        self.total, self.enabled, self.label = max(0, int(total)), bool(enabled), label
        self.interval, self.width = interval, width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.done = 0
        self._last = -math.inf
        self._shown = 0  # length of the line on screen

    def due(self) -> bool:
        return self.enabled and time.perf_counter() - self._last >= self.interval

    def draw(self, done: int, info: str = "") -> None:
        if not self.enabled:
            return
        self.done = done
        now = time.perf_counter()
        self._last = now
        elapsed = now - self.start
        left = elapsed / done * (self.total - done) if done else math.inf
        fill = int(self.width * done / self.total) if self.total else self.width
        head = f"{self.label} " if self.label else ""
        line = f"{head}[{'#' * fill}{'.' * (self.width - fill)}] {done}/{self.total} {info + ' ' if info else ''}left {clock(left)}"
        self.stream.write("\r" + line + " " * max(self._shown - len(line), 0))
        self.stream.flush()
        self._shown = len(line)

    def update(self, n: int, info: str = "") -> None:
        self.done += n
        if self.due() or self.done >= self.total:
            self.draw(self.done, info)

    def clear(self) -> None:
        """Erase the line (before a log message goes to the same terminal)."""
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
            self._last = -math.inf  # redraw at the next chance

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0
