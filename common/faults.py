"""Fault points: named places in the code where a test or the scale rehearsal makes a fault happen on
purpose -- a pause, an exit, a SIGKILL, an exception, a signal -- aimed at a step or a hit.

Off unless the environment variable ``SE_FAULTS`` is set (read once, at import); then only the points
it names do anything. A point costs one dict lookup when off::

    from common import faults
    faults.point("checkpoint.files_written", step=step, rank=rank)

Syntax: rules separated by ``;``, each ``POINT=ACTION[@COND]...``::

    SE_FAULTS="checkpoint.files_written=pause:300@step=8"        # a SIGKILL window inside the save of step 8
    SE_FAULTS="train.step=signal:USR2@step=40@rank=1;best.written=kill"
    SE_FAULTS="checkpoint.saved=kill@step=6@cell=rwsa-xs_s1"          # one cell of a sweep only

ACTION  ``pause:SECONDS`` (sleep, then carry on) | ``exit:CODE`` (``os._exit``: no cleanup, no flush) |
        ``kill`` (SIGKILL to this process) | ``raise`` (``FaultInjected``, a RuntimeError) |
        ``signal:NAME`` (``USR1``, ``USR2``, ``TERM``, ``INT``, ... to this process, then carry on).
COND    ``step=N`` / ``rank=R`` (the value the point passes; only the keys `POINTS` lists for it) |
        ``hit=K`` (the K-th time this process reaches the point, from 1) |
        ``cell=NAME`` (any point: this process's run is NAME, the name of its run directory -- a sweep
        cell's id --, set by `set_cell` (training.run) and inherited by child processes through
        ``SE_FAULTS_CELL``; a process with no cell matches no ``cell=`` rule). A rule fires every time
        all its conditions hold (no condition: every hit). Each firing logs one warning line first.

The points (`POINTS`: name -> (what, the keys it passes)) are the contract; a rule naming an unknown
point, key or action is a ``FaultSpecError`` (one line) when the variable is read. Each process reads
its own environment, so a launcher sets ``SE_FAULTS`` for the job (and its ranks) it aims at.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV_VAR = "SE_FAULTS"
CELL_ENV = "SE_FAULTS_CELL"

POINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train.step": ("training loop, at every step boundary before the stop check (step = steps done); not at "
                   "a resumed run's first one (the run that saved it reached it: a requeued job keeps its "
                   "SE_FAULTS, and `step=N` must not stop it again)", ("step", "rank")),
    "checkpoint.files_written": ("checkpoint save: this rank's files written, before the COMPLETE marker",
                                 ("step", "rank")),
    "checkpoint.saved": ("checkpoint save: step-N complete and renamed, old ones pruned (rank 0)",
                         ("step", "rank")),
    "best.written": ("best/ replacement: the new copy complete in .tmp-best, before the swap", ("step",)),
    "best.swapped": ("best/ replacement: swapped in, the previous copy not yet deleted", ("step",)),
    "best.moved_old": ("best/ replacement without RENAME_EXCHANGE: best/ moved to .old-best", ("step",)),
    "best.moved_new": ("best/ replacement without RENAME_EXCHANGE: .tmp-best moved to best/", ("step",)),
    "eval.utterance": ("end-of-run evaluation: before each utterance, before the stop check", ()),
    "eval.file_recorded": ("any evaluation: a file's result appended to its per-file record", ()),
    "stream.shard_open": ("training stream: before a shard is opened (wired by sharding.stream)",
                          ("rank", "worker")),
}
ACTIONS = ("pause", "exit", "kill", "raise", "signal")


class FaultSpecError(ValueError):
    """A malformed ``SE_FAULTS`` rule (one line naming the rule and what was expected)."""


class FaultInjected(RuntimeError):
    """Raised by a point whose rule's action is ``raise``."""


@dataclass(frozen=True)
class Rule:
    point: str
    action: str
    arg: str  # seconds, exit code or signal name ("" for kill and raise)
    when: tuple[tuple[str, int | str], ...]  # (key, value); "hit" counts this process's hits, "cell" is a name

    def matches(self, hit: int, context: dict) -> bool:
        return all((hit if k == "hit" else _cell() if k == "cell" else context.get(k)) == v for k, v in self.when)


_RULES: dict[str, list[Rule]] = {}
_HITS: dict[str, int] = {}


def parse(text: str) -> dict[str, list[Rule]]:
    """``SE_FAULTS`` text -> {point: rules}; FaultSpecError for a bad rule."""
    rules: dict[str, list[Rule]] = {}
    for raw in filter(None, (r.strip() for r in text.split(";"))):
        rule = _parse_rule(raw)
        rules.setdefault(rule.point, []).append(rule)
    return rules


def _parse_rule(raw: str) -> Rule:
    def bad(why: str) -> FaultSpecError:
        return FaultSpecError(f"{ENV_VAR}: rule {raw!r}: {why}; expected POINT=ACTION[@KEY=N]..., "
                              f"points {sorted(POINTS)}, actions pause:S|exit:CODE|kill|raise|signal:NAME")

    point, eq, rest = raw.partition("=")
    point = point.strip()
    if not eq or point not in POINTS:
        raise bad(f"unknown point {point!r}")
    action, *conds = rest.split("@")
    name, _, arg = action.strip().partition(":")
    if name not in ACTIONS:
        raise bad(f"unknown action {name!r}")
    try:
        if name == "pause":
            float(arg)
        elif name == "exit":
            int(arg)
        elif name == "signal":
            arg = signal.Signals["SIG" + arg.strip().upper().removeprefix("SIG")].name
        elif arg:
            raise ValueError
    except (ValueError, KeyError):
        raise bad(f"bad argument {arg!r} for {name}") from None
    when = []
    for cond in conds:
        key, _, value = cond.partition("=")
        key = key.strip()
        if key == "cell":
            if not value.strip() or any(c in value for c in "@;= "):
                raise bad(f"cell needs a run directory name, got {value!r}")
            when.append((key, value.strip()))
            continue
        if key != "hit" and key not in POINTS[point][1]:
            raise bad(f"{point} passes no {key!r} (it passes {', '.join(('hit', 'cell') + POINTS[point][1])})")
        try:
            when.append((key, int(value)))
        except ValueError:
            raise bad(f"{key} needs an integer, got {value!r}") from None
    return Rule(point, name, arg.strip(), tuple(when))


def configure(text: str | None) -> None:
    """Replace the rules (``None`` or "": all off) and reset the hit counts, e.g. for an in-process test."""
    global _RULES
    _RULES = parse(text) if text else {}
    _HITS.clear()


def _cell() -> str | None:
    return os.environ.get(CELL_ENV) or None


def set_cell(name: str) -> None:
    """This process's run (the name of its run directory) for ``cell=`` conditions; exported in
    ``SE_FAULTS_CELL`` so that its child processes (DataLoader workers, evaluation pools) match alike.
    Nothing is set while ``SE_FAULTS`` is unset (no rule can test it)."""
    if os.environ.get(ENV_VAR):
        os.environ[CELL_ENV] = name


def active() -> dict[str, list[Rule]]:
    """The rules in force, by point ({} when off)."""
    return dict(_RULES)


def point(name: str, **context: int) -> None:
    """The fault point ``name`` (a key of `POINTS`), passing the values its rules may test."""
    rules = _RULES.get(name)
    if rules is None:
        return
    hit = _HITS[name] = _HITS.get(name, 0) + 1
    for rule in rules:
        if rule.matches(hit, context):
            _fire(rule, hit, context)


def _fire(rule: Rule, hit: int, context: dict) -> None:
    where = ", ".join(f"{k}={v}" for k, v in context.items())
    log.warning("fault injected at %s (hit %d%s): %s%s", rule.point, hit, f", {where}" if where else "",
                rule.action, f":{rule.arg}" if rule.arg else "")
    if rule.action == "pause":
        time.sleep(float(rule.arg))
    elif rule.action == "raise":
        raise FaultInjected(f"fault injected at {rule.point} (hit {hit})")
    elif rule.action == "signal":
        os.kill(os.getpid(), signal.Signals[rule.arg])
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        if rule.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(int(rule.arg))


configure(os.environ.get(ENV_VAR))
