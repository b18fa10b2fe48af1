"""One file lock (the `filelock` package) for every writer that must not overlap: leaderboards, extraction outputs."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
from pathlib import Path

from dae.errors import DaeError


def holder_text() -> str:
    """Who holds a lock: written into the lock file so that a refused run can name it."""
    return f"pid {os.getpid()} on {socket.gethostname()}, since {_dt.datetime.now():%Y-%m-%d %H:%M:%S}"


def read_holder(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def file_lock(path, what: str, wait: bool = True, busy_message: str | None = None):
    """Hold an exclusive lock on the file `path` (created if missing) for the block.

    wait: block until the lock is free (leaderboards: appends are short); False: raise DaeError at once with
    `busy_message` (its `{holder}` filled with the holder's pid and host). The lock file stays in place when
    the block ends: removing it would let a waiter lock the removed file while a newcomer locks a new one.
    """
    import filelock

    path = Path(path)
    lock = filelock.FileLock(str(path), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = read_holder(path) or "another process"
        raise DaeError((busy_message or f"{what} is locked by {{holder}} ({path})").format(holder=holder)) from None
    except OSError as exc:
        raise DaeError(f"cannot lock {what}: {path} ({exc.strerror or exc})") from None
    try:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (holder_text() + "\n").encode(), 0)
            finally:
                os.close(fd)
        yield path
    finally:
        lock.release()
