"""Progress of a shard build: files (clips) done, hours of audio, rate, ETA.

`ShardProgress(parts)` watches the shards' sidecar files (`.parts/shard-N.json`, written when a shard
is complete, by whichever process or node built it) from a thread of the driver process: a tqdm bar
over the clips on an interactive terminal, else one log line every `interval_s` seconds (and one at
the end). Shards already complete when the build starts count as done, not towards the rate.

    with ShardProgress([(sidecar_path, clips_in_shard), ...]):
        run the shard tasks
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class ShardProgress:
    def __init__(self, parts: list[tuple[Path, int]], *, interval_s: float = 30.0, poll_s: float = 1.0,
                 tty: bool | None = None):
        self.parts = [(Path(p), int(n)) for p, n in parts]
        self.total = sum(n for _, n in self.parts)
        self.interval_s, self.poll_s = interval_s, poll_s
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._seen: dict[Path, tuple[int, float]] = {}  # sidecar -> (clips, seconds of audio)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._t0 = time.time()
        self._base = (0, 0.0)  # done before this build started
        self.lines: list[str] = []  # the log lines written (non-terminal mode)

    def _scan(self) -> None:
        for path, _n in self.parts:
            if path not in self._seen and path.exists():
                try:
                    info = json.loads(path.read_text())
                    self._seen[path] = (int(info.get("samples", 0)), float(info.get("seconds", 0.0)))
                except (OSError, ValueError):
                    continue  # being written: next poll

    def stats(self) -> dict:
        """{"shards", "shards_total", "files", "files_total", "hours", "files_per_s", "audio_h_per_h", "eta_s"}."""
        files = sum(c for c, _ in self._seen.values())
        seconds = sum(s for _, s in self._seen.values())
        elapsed = max(time.time() - self._t0, 1e-9)
        new_files, new_seconds = files - self._base[0], seconds - self._base[1]
        rate = new_files / elapsed
        eta = (self.total - files) / rate if rate > 0 else None
        return {"shards": len(self._seen), "shards_total": len(self.parts), "files": files,
                "files_total": self.total, "hours": seconds / 3600, "files_per_s": rate,
                "audio_h_per_h": new_seconds / elapsed, "eta_s": eta}

    def line(self) -> str:
        s = self.stats()
        eta = "?" if s["eta_s"] is None else f"{s['eta_s'] / 60:.1f} min"
        return (f"shards {s['shards']}/{s['shards_total']}, files {s['files']}/{s['files_total']}, "
                f"{s['hours']:.2f} h of audio, {s['files_per_s']:.2f} files/s "
                f"({s['audio_h_per_h']:.1f} h of audio per hour), ETA {eta}")

    def _update(self) -> None:
        self._scan()
        if self._bar is not None:
            s = self.stats()
            self._bar.n = s["files"]
            self._bar.set_postfix_str(f"{s['hours']:.2f} h audio, {s['audio_h_per_h']:.1f} h/h", refresh=False)
            self._bar.refresh()

    def _log(self) -> None:
        text = self.line()
        self.lines.append(text)
        log.info("shard build: %s", text)

    def _run(self) -> None:
        last = time.time()
        while not self._stop.wait(self.poll_s):
            self._update()
            if self._bar is None and time.time() - last >= self.interval_s:
                self._log()
                last = time.time()

    def __enter__(self) -> ShardProgress:
        self._scan()
        self._base = (sum(c for c, _ in self._seen.values()), sum(s for _, s in self._seen.values()))
        self._t0 = time.time()
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self._base[0], unit="file", desc="shards", dynamic_ncols=True)
        self._thread = threading.Thread(target=self._run, name="ShardProgress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._update()
        if self._bar is not None:
            self._bar.close()
        self._log()
