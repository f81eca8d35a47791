"""Progress of a shard build: files (clips) done, hours of audio, rate, ETA.

`ShardProgress(parts)` watches the shards' sidecar files (`.parts/shard-N.json`, written when a shard
is complete, by whichever process or node built it) from a thread of the driver process: a tqdm bar
over the clips on an interactive terminal, else one log line every `interval_s` seconds or 5 % of the
clips (and one at the end), in the project's progress-line format (`common.progress.progress_line`). Shards already complete when the build starts count as done, not towards the rate.

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

from common.progress import progress_line

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
        """``files 30/100  shards 3/10  0.08 h of audio  12.30 audio s/s  2.10 files/s  ETA 1m02s``
        (`common.progress.progress_line`, the training and evaluation lines' format)."""
        s = self.stats()
        eta = 0.0 if s["files"] >= s["files_total"] else s["eta_s"]
        return progress_line("files", s["files"], s["files_total"],
                             f"{s['audio_h_per_h']:.2f} audio s/s  {s['files_per_s']:.2f} files/s", eta,
                             extras=f"shards {s['shards']}/{s['shards_total']}  {s['hours']:.2f} h of audio")

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
        last, last_files = time.time(), self._base[0]
        step = max(1, -(-self.total // 20))  # a line every 5 % of the files, or every interval_s
        while not self._stop.wait(self.poll_s):
            self._update()
            files = sum(c for c, _ in self._seen.values())
            if self._bar is None and (time.time() - last >= self.interval_s or files - last_files >= step):
                self._log()
                last, last_files = time.time(), files

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
