"""Progress bars for training and pipelines: tqdm, drawn only on a terminal.

A log file or a pipe never receives a bar (no ``\\r`` in files): :class:`ProgressBar` is
enabled only where its stream is a TTY, or where ``force=True``.
"""
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


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """``label  40%|████      | done/total [elapsed<left, info]``, a tqdm bar.

    ``draw(done, info)`` sets the position now; ``update(n, info)`` advances by ``n``;
    ``clear()`` erases the line before a log message; ``close()`` ends it. Disabled unless
    ``enabled`` and the stream is a terminal (``force=True`` draws on any stream).
    """

    def __init__(self, total: int, enabled: bool = True, label: str = "", stream: TextIO | None = None,
                 interval: float = 0.2, width: int = 20, force: bool = False) -> None:
        from tqdm import tqdm

        self.total, self.label, self.interval = max(0, int(total)), label, interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and (force or is_terminal(self.stream))
        self.start = time.perf_counter()
        self.done = 0
        self._last = -math.inf
        self._bar = tqdm(total=self.total, desc=label or None, file=self.stream, disable=not self.enabled,
                         mininterval=interval, leave=False, dynamic_ncols=True)

    def due(self) -> bool:
        """Whether a redraw is due (at most every ``interval`` seconds)."""
        return self.enabled and time.perf_counter() - self._last >= self.interval

    def draw(self, done: int, info: str = "") -> None:
        if not self.enabled:
            return
        self._last = time.perf_counter()
        self._bar.update(int(done) - self.done)
        self.done = int(done)
        if info:
            self._bar.set_postfix_str(info, refresh=False)
        self._bar.refresh()

    def update(self, n: int, info: str = "") -> None:
        if not self.enabled:
            self.done += n
            return
        if info:
            self._bar.set_postfix_str(info, refresh=False)
        self._bar.update(n)
        self.done += n

    def clear(self) -> None:
        """Erase the line (before a log message goes to the same terminal)."""
        if self.enabled:
            self._bar.clear()
            self._last = -math.inf  # redraw at the next chance

    def close(self) -> None:
        self._bar.close()
