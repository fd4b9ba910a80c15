"""An exclusive lock on a run directory, held for a job's lifetime.

``<dir>/.lrpflow.lock`` holds the pid of the run that owns the directory. It is taken with
an exclusive create (``O_CREAT | O_EXCL``); a lock file whose pid is no longer alive (a run
killed with ``kill -9``) is stale and taken over. On POSIX the file is also ``flock``-ed,
so two runs racing for a stale lock cannot both win. The loser of a race gets one
:class:`~lrpflow.errors.LrpflowError`: "another run holds <dir>, pid N".
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from lrpflow.errors import LrpflowError

logger = logging.getLogger("lrpflow.store")

LOCK_NAME = ".lrpflow.lock"


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0; a pid owned by another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``with RunLock(run_dir):`` — the run directory belongs to this process until the block ends.

    Parameters
    ----------
    directory : path
        The run directory (created if missing).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`LrpflowError` naming the holder's pid."""
        if self._fd is not None:
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LrpflowError(f"cannot create the run directory {self.directory}: {err.strerror or err}") from err
        for _ in range(8):  # a stale lock is removed and the exclusive create tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and pid_alive(holder) and holder != os.getpid():
                    raise LrpflowError(f"another run holds {self.directory}, pid {holder} (its lock file "
                                       f"{self.path}); wait for it or choose another output directory") from None
                if holder == os.getpid():
                    raise LrpflowError(f"{self.directory} is already held by this process (pid {holder}); "
                                       f"one run per directory") from None
                if not self._remove_stale(holder):
                    continue
                logger.warning("%s: removed a stale lock of pid %s (that run is gone)", self.path, holder)
                continue
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise LrpflowError(f"cannot write to the run directory {self.directory} ({err.strerror}): "
                                       f"choose a writable output directory") from err
                raise LrpflowError(f"cannot create the lock file {self.path}: {err}") from err
            if not self._flock(fd):
                os.close(fd)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise LrpflowError(f"cannot lock {self.directory}: its lock file {self.path} keeps changing")

    def _holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _remove_stale(self, holder: int | None) -> bool:
        """Remove a lock whose owner is gone; False if someone else changed it meanwhile."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return False  # already removed by another contender: try the exclusive create again
        try:
            if not self._flock(fd):  # a live owner that has not written its pid yet
                return False
            if self._holder() != holder:
                return False
            os.unlink(self.path)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    @staticmethod
    def _flock(fd: int) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: the exclusive create alone
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def release(self) -> None:
        """Give the directory back (idempotent)."""
        if self._fd is None:
            return
        try:
            if self._holder() == os.getpid():
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
