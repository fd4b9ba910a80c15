"""Fault injection at named phases of a job, for the crash, disk-full and kill tests.

``LRPFLOW_FAULT="<phase>[@<n>]=<action>[,...]"`` makes the ``n``-th call (default the first)
of :func:`checkpoint` with that phase perform the action:

* ``kill``: the process dies at once (``SIGKILL``; nothing is flushed, closed or cleaned up);
* ``enospc``: an ``OSError(ENOSPC)`` as a full disk makes the HDF5 library raise;
* ``error``: a ``RuntimeError`` (an unexpected bug).

Phases: ``write`` (a batch's rows are in the datasets, not yet flushed), ``flush`` (flushed,
the counter not yet moved), ``finish`` (the store is marked complete, not yet renamed),
``rename`` (renamed to its final name), ``evaluate`` (metric means computed from the store),
``render`` (after each rendered image), ``summary`` (``summary.json`` written to its temporary
name, not yet moved in place). Unset, :func:`checkpoint` costs one dictionary lookup.
"""
from __future__ import annotations

import errno
import os
import signal

ENV = "LRPFLOW_FAULT"
PHASES = ("write", "flush", "finish", "rename", "evaluate", "render", "summary")
_counts: dict[str, int] = {}


def _plan() -> dict[str, tuple[int, str]]:
    spec = os.environ.get(ENV, "")
    out = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        where, _, action = item.partition("=")
        phase, _, nth = where.partition("@")
        out[phase] = (int(nth or 1), action or "kill")
    return out


def checkpoint(phase: str, what: str = "") -> None:
    """Perform the injected fault of ``phase`` if ``LRPFLOW_FAULT`` asks for one here (tests only)."""
    if ENV not in os.environ:
        return
    plan = _plan().get(phase)
    if plan is None:
        return
    _counts[phase] = _counts.get(phase, 0) + 1
    if _counts[phase] != plan[0]:
        return
    action = plan[1]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"Can't write data (injected at {phase}): No space left on device", what or None)
    raise RuntimeError(f"injected fault at {phase}")
