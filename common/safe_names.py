"""The one path-safety rule for names that come from data, written once for every reader and writer.

A name that comes from data -- a tar member name or sample key, a manifest's shard entry, a grid value
that becomes a cell folder, a ledger's cell folder -- is only ever joined below the folder it belongs
to, so it must stay inside it. :func:`name_problem` says why a name cannot (None when it can):

- not a string, empty, or holding a NUL byte;
- absolute (``/x``): joining it would replace the folder;
- a ``..`` component (``../x``, ``a/../../x``): it climbs out;
- with ``folder=True`` (the name is a folder of its own, e.g. a cell id): ``.``, which is the
  containing folder itself.

:func:`check_name` raises the one-line error (``common.errors.InputError`` or the caller's subclass;
exit 2) naming where the name came from; :func:`safe_join` is ``base / name`` after that check, also
refusing a component longer than a file name can be (255 bytes), for writers. Readers that report a
bad item instead of stopping (a test set's sample) use :func:`name_problem` and carry on.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from common.errors import InputError

NAME_MAX = 255  # bytes per path component (Linux, most file systems)


def name_problem(name: object, *, folder: bool = False) -> str | None:
    """Why ``name`` cannot name something inside a folder (see the module doc); None when it can."""
    if not isinstance(name, str):
        return f"expected a relative name (a string), got {type(name).__name__}"
    if not name:
        return "expected a relative name, got an empty one"
    if "\0" in name:
        return "expected a relative name, got one holding a NUL byte"
    if name.startswith("/"):
        return "expected a relative name inside the folder, got an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "expected a relative name inside the folder, got one with a '..' component"
    if folder and not parts:
        return "expected a folder name, got '.' (the containing folder itself)"
    return None


def check_name(name: object, where: str, what: str = "name", *, folder: bool = False,
               error: type[InputError] = InputError) -> str:
    """``name`` unchanged when it is safe; else ``error("<where>: <what> <name!r>: <why>")``."""
    why = name_problem(name, folder=folder)
    if why:
        raise error(f"{where}: {what} {_shown(name)}: {why}")
    return name  # type: ignore[return-value]


def safe_join(base: str | os.PathLike, name: object, where: str, what: str = "name", *,
              error: type[InputError] = InputError) -> Path:
    """``Path(base) / name`` after :func:`check_name`; a component too long for a file name is refused too."""
    check_name(name, where, what, error=error)
    for part in PurePosixPath(name).parts:  # type: ignore[arg-type]
        size = len(part.encode("utf-8", "surrogatepass"))  # surrogates: undecodable bytes of a file name
        if size > NAME_MAX:
            raise error(f"{where}: {what} {_shown(name)}: a component is {size} bytes, longer than a file "
                        f"name can be ({NAME_MAX})")
    return Path(base) / name  # type: ignore[operator]


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 120 else text[:100] + "...'"
