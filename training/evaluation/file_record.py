"""The per-file record of one evaluation of one test set: ``<stem>.files.jsonl`` beside its CSV/JSON
reports (`training.evaluation.evaluate`), so an interrupted evaluation (`orchestrate evaluate` killed,
the end-of-job evaluation preempted) resumes without enhancing or scoring a finished file again.

Format (append-only JSON lines)::

    {"evaluation": {"checkpoint", "step", "mode", ..., "testset", "metrics"}}   # line 1: `evaluation_identity`
    {"key": "u0", "error": null, "noisy": {metric row}, "enhanced": {metric row},
     "seconds": 3.0, "enhance_s": 0.41}                                # one line per finished file

A file's line is written with one ``write`` of the whole line (O_APPEND) once the file is scored (or has
failed), so a kill leaves at most one torn last line, which the next open drops. A record whose first line
names another evaluation (other checkpoint, step, protocol, test set or metrics) is started over. The
end-of-job evaluation and `orchestrate evaluate` describe an evaluation with the same function
(`evaluation_identity`), so either one resumes or reuses the other's finished files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.atomic import atomic_write_text


def evaluation_identity(checkpoint: str | Path, step: int, enhancer, testset: str | Path) -> dict:
    """What makes two evaluations the same: the checkpoint (path resolved) and its step, how files are
    enhanced (``enhancer.protocol()``: the mode and its lengths in samples) and the test set (path
    resolved); `evaluate_testset` adds the metrics."""
    return {"checkpoint": str(Path(checkpoint).resolve()), "step": int(step), **enhancer.protocol(),
            "testset": str(Path(testset).resolve())}


class FileRecord:
    """Open (or start) the record at ``path`` for evaluation ``identity`` (a JSON-able dict); ``done``
    maps each finished key to its entry."""

    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))  # as it reads back
        self.done: dict[str, dict] = {}
        good = self._read()
        if good is None:
            atomic_write_text(self.path, json.dumps({"evaluation": self.identity}) + "\n")
        elif good < self.path.stat().st_size:
            os.truncate(self.path, good)  # a torn last line from a killed run
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _read(self) -> int | None:
        """Load the finished entries; the byte length of the valid lines, None to start over."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        lines = data.split(b"\n")
        try:
            head = json.loads(lines[0])
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("evaluation") != self.identity:
            return None
        good = len(lines[0]) + 1
        for raw in lines[1:-1]:  # the part after the last newline is torn or empty
            try:
                entry = json.loads(raw)
                self.done[str(entry["key"])] = entry
            except (ValueError, KeyError, TypeError):
                break
            good += len(raw) + 1
        return good

    def add(self, entry: dict) -> None:
        """Append one finished file's entry (one write)."""
        os.write(self._fd, (json.dumps(entry) + "\n").encode())
        self.done[str(entry["key"])] = entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileRecord:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
