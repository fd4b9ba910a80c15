"""File operations of the writer: exclusive publishing, and what a failed write leaves behind.

:func:`write_error` names the cause of a failed write (a full disk, a read-only folder);
:func:`abandon` closes a store whose write failed without crashing the process at exit.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Any

import h5py

from lrpflow.errors import LrpflowError, StoreError

logger = logging.getLogger("lrpflow.store")


def write_error(path: str, err: BaseException, doing: str) -> StoreError:
    """A :class:`StoreError` for an OS/HDF5 failure while ``doing`` something to ``path``.

    HDF5 reports a full disk as an ``OSError``/``RuntimeError`` whose text holds
    ``errno = 28``; it is named "no space left on device". A folder or file that may not be
    written is named as such: the store itself is not damaged by either.
    """
    text = str(err)
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or "errno = 28" in text or "No space left" in text:
        cause = "no space left on device; free space and run again: the complete rows are kept and resumed"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or "errno = 13" in text or "errno = 30" in text or \
            "Permission denied" in text or "Read-only file system" in text:
        cause = f"the folder or file may not be written (read-only or no permission: {text})"
    elif code == errno.EDQUOT:
        cause = "disk quota exceeded; free space and run again"
    else:
        cause = f"the file is damaged or the write failed ({type(err).__name__}: {text})"
    return StoreError(f"cannot write result store {path} while {doing}: {cause}")


def abandon(f: Any, objects: Any = ()) -> None:
    """Close a store whose write failed, leaving the file as its last successful flush left it.

    libhdf5 keeps a file open if its final flush fails (a full disk), and crashes when it
    flushes again at exit (a segfault). Pointing the file's descriptor at ``/dev/null``
    first lets that flush succeed without touching the file: what was committed stays, and
    the resumed run recovers the rest as after a kill. ``objects``: low-level ids of the
    file (datasets) the caller holds; they are released here, after the descriptor is
    detached and before the file is closed.
    """
    try:
        fd = f.id.get_vfd_handle()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, int(fd))
        finally:
            os.close(null)
    except Exception as err:  # noqa: BLE001 - not the sec2 driver, or already closed: close as it is
        logger.debug("could not detach %s after a write error: %s", getattr(f, "filename", f), err)
    for obj in objects:
        try:
            while obj.valid:
                h5py.h5i.dec_ref(obj)
        except Exception as err:  # noqa: BLE001 - released after an error already raised
            logger.debug("releasing %r after a write error failed: %s", obj, err)
    close_quietly(f)


def close_quietly(f: Any) -> None:
    """Close an h5py file after a failure; a second failure (its final flush) is only logged."""
    try:  # read before closing: a half-closed file's name is not safe to read
        name = str(f.filename)
    except Exception:  # noqa: BLE001 - already invalid
        name = repr(f)
    try:
        f.close()
    except Exception as err:  # noqa: BLE001 - the file is being abandoned after an error already raised
        logger.debug("closing %s after an error failed too: %s", name, err)


def publish(tmp: str, partial: str) -> None:
    """Move a new store's file to its running name, exclusively: never over another run's store."""
    try:
        os.link(tmp, partial)  # fails if the name exists, unlike a rename
    except FileExistsError:
        raise LrpflowError(f"{partial} appeared while this run was creating it: another run is writing "
                           f"this store") from None
    except OSError:  # no hard links on this file system: a plain rename
        if os.path.exists(partial):
            raise LrpflowError(f"{partial} appeared while this run was creating it: another run is writing "
                               f"this store") from None
        os.replace(tmp, partial)
        return
    os.remove(tmp)


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
