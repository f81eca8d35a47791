"""Who a process is, so that no command ever signals a stranger that inherited a recorded pid.

A pid alone names a process only while it lives: after it exits (or after a reboot) the kernel hands
the number to any new process. A process identity is the pid plus what the kernel fixes at the
process's birth and never reuses together with it: the boot id (``/proc/sys/kernel/random/boot_id``)
and the start time in clock ticks since boot (field 22 of ``/proc/PID/stat``), plus the command line
as a readable check. Record it when the process is started, store it beside the pid (a JSON object),
and signal only through :func:`signal_if_same`, which verifies it first and sends the signal through
a pidfd opened before the check, so a process that dies between check and signal is never
mistaken for its successor (Linux >= 5.1; older kernels fall back to ``kill`` right after the check).

    ident = identify(proc.pid)               # {"pid", "boot_id", "start_ticks", "cmdline"}, JSON-ready
    ...
    signal_if_same(ident, signal.SIGTERM, group=True)   # False: gone, or that pid is someone else now

Linux only (``/proc``); elsewhere :func:`identify` returns None and nothing is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat from field 3 (state) on, i.e. after the parenthesised name, which may
    hold spaces; None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits for its parent to collect it (state Z)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"


def cmdline(pid: int) -> str:
    """The command line of ``pid`` (arguments joined by spaces); '' when unreadable."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def identify(pid: int) -> dict | None:
    """The identity of the live process ``pid`` (None when there is none, or no /proc)."""
    ticks = _start_ticks(int(pid))
    if ticks is None:
        return None
    return {"pid": int(pid), "boot_id": _boot_id(), "start_ticks": ticks, "cmdline": cmdline(pid)}


def is_same(recorded: dict | None) -> bool:
    """True when the process that now has ``recorded["pid"]`` is the recorded one (same boot, same
    start time, same command line). A zombie or a missing/garbled record is not the same."""
    if not isinstance(recorded, dict):
        return False
    try:
        now = identify(int(recorded["pid"]))
    except (KeyError, TypeError, ValueError):
        return False
    return now is not None and bool(now["cmdline"]) and all(
        now[k] == recorded.get(k) for k in ("boot_id", "start_ticks", "cmdline"))


def signal_if_same(recorded: dict | None, sig: int = signal.SIGTERM, *, group: bool = False) -> bool:
    """Send ``sig`` to the recorded process (``group``: to its process group, whose leader it is) only
    when it still is that process; True when sent. Never raises for a gone or foreign process."""
    if not isinstance(recorded, dict) or not str(recorded.get("pid", "")).isdigit():
        return False
    pid = int(recorded["pid"])
    pidfd = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)  # pins this very process: a successor with the same pid is not it
    try:
        if not is_same(recorded):
            return False
        try:
            if group:
                os.killpg(pid, sig)
            elif pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)
