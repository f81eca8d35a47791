"""One process per run folder: an exclusive POSIX lock (``fcntl.lockf``) on ``WORKDIR/run.lock`` holding ``host pid``.

The kernel drops the lock when its holder dies (SIGKILL included), so a lock file left by a dead
process is simply taken over; the holder line in it is only for the message. POSIX locks (unlike
``flock``) are not inherited by forked children (data-loader or metric workers), so an orphaned worker
never keeps a dead run locked, and they work over NFS. Caveat of POSIX locks: closing *any* descriptor
of the lock file in the holding process drops the lock, so the holder never opens it elsewhere. Where
the file system has no locks at all, the lock is skipped with a warning rather than failing the run.

    with RunLock(workdir):            # RunLockError (one line, names host and pid) when held
        train(...)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from common.atomic import file_mode
from common.rundir import LOCK_FILE

log = logging.getLogger(__name__)


class RunLockError(ValueError):
    """The run folder is in use by another live process (one line: folder, host, pid)."""


def read_holder(workdir: str | os.PathLike) -> str:
    """The ``host pid`` line of the lock file ('' when absent or empty)."""
    try:
        return (Path(workdir) / LOCK_FILE).read_text().strip()
    except OSError:
        return ""


def is_locked(workdir: str | os.PathLike) -> bool:
    """True while some live process holds the run folder's lock (probes without keeping it)."""
    path = Path(workdir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


class RunLock:
    """Exclusive lock on a run folder for the life of this object (or a ``with`` block)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = read_holder(self.workdir) or "unknown host/pid"
                host, _, pid = holder.partition(" ")
                raise RunLockError(f"{self.workdir}: run folder is in use by another trainer "
                                   f"(host {host}, pid {pid or '?'}; lock {self.path})") from None
            log.warning("%s: no lock taken (%s): make sure no other trainer uses this folder", self.path,
                        os.strerror(e.errno or 0))
            return self
        stale = os.read(fd, 200).decode(errors="replace").strip()
        if stale:
            log.info("%s: took over the lock of a process that is gone (%s)", self.path, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a released lock names no holder
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
