"""One atomic-write implementation for every file the system writes (text, bytes, torch.save, any writer).

Contract: the content goes to a temp file in the destination folder, is flushed and fsynced, gets the
mode a plain ``open(path, "w")`` would give (``0o666 & ~umask``; ``mkstemp`` alone would leave 0600),
and is renamed over ``path`` (``exclusive``: hard-linked to it, never replacing a file there); the
folder is fsynced. A crash or an error at any point leaves either the old file or the new one under
``path``, never a partial one, and removes the temp file (except on SIGKILL, where a ``.NAME.*.tmp``
leftover may remain beside it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (else set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new regular file under the current umask (what ``open(path, "w")`` gives)."""
    return 0o666 & ~current_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder, so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _WriteErrors:
    """A binary file proxy that remembers the first OSError of ``write`` (and re-raises it)."""

    def __init__(self, f: BinaryIO, path: Path):
        self._f = f
        self._path = str(path)
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            if self.error is None:
                self.error = OSError(e.errno, e.strerror, self._path)
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            if self.error is None:
                self.error = OSError(e.errno, e.strerror, self._path)
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, exclusive: bool = False) -> Path:
    """Call ``write(f)`` on a binary temp file beside ``path``, then fsync, chmod to the umask, rename.
    ``exclusive``: hard-link it into place instead, so a file already at ``path`` (another process's)
    stays and FileExistsError is raised; a file system without hard links raises its OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    short = os.fsdecode(os.fsencode(path.name)[:200])  # the temp name must fit too (255 bytes) for a long name
    fd, tmp = tempfile.mkstemp(prefix=f".{short}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _WriteErrors(f, path)
            try:
                write(recorder)
            except Exception as e:
                # a writer that turns the file's OSError into its own error (torch.save reports a full
                # disk as "RuntimeError: ... unexpected pos"): raise the OSError, which says what happened
                if recorder.error is not None and not isinstance(e, OSError):
                    raise recorder.error from None
                raise
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:  # name the file: "No space left on device" alone is not enough
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Undecodable bytes a name carried in (a file or tar
    member name that is not UTF-8, read with ``surrogateescape``) are written back as they were; any
    other lone surrogate as its ``\\udXXX`` escape, never a UnicodeEncodeError."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
    return atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (torch is imported only here)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths (e.g. folders) in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the platform or file system cannot (the caller then falls
    back to a rename-with-recovery scheme); raises OSError for other failures.
    """
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))
