"""Streaming reader of WebDataset shards: resumable, rank-balanced training batches; utterances for eval.

Training stream design (exact resume first):

* Sources. ``data.train`` is any source `sharding.shards` resolves: a local folder, a brace pattern
  of files or URLs, a folder URL (``http(s)://``, ``s3://``), ``pipe:`` commands. The sample counts
  per shard (the manifest's) are all the plan below needs; no sample is read to make it.
* Slots. Rank ``r`` with ``W = max(1, num_workers)`` loader workers owns slots ``j = r*W + w`` of
  ``J = world_size*W``. Each epoch ``e`` the shard list (repeated until it has at least ``J``
  entries) is permuted with a seed of (seed, e) -- resampled, different every epoch -- and slot
  ``j`` reads entries ``perm[j::J]`` (explicit split by node and worker; no shard read twice by
  two slots in one epoch unless there are fewer shards than slots).
* Inside a shard the sample order is `shard_order`: a seeded shuffle buffer of ``shuffle_window``
  samples over the file order (a uniform permutation when the shard is no larger). So a slot's
  stream is a pure function of (seed, slot, raw position ``p``), and it can be produced two ways
  with the same result (`read_shard`): local files by seeking to each sample (tar headers indexed
  once), remote ones front to back through webdataset's tar reader, holding at most the window.
  Random crops use a seed of (seed, slot, p).
* A batch is the next ``batch_size`` good samples of one slot. With workers, torch's DataLoader
  returns worker batches round-robin (deterministic), each batch carries its slot's raw position,
  and the state is {raw position per slot, batches consumed}: resuming replays the seeded shard
  order to the position's shard and skips within it (seeking; or reading past the samples already
  used, never decoding them) and rotates the worker order, giving bitwise the batches of the
  uninterrupted stream for the same (seed, rank, world_size, num_workers, batch_size,
  segment_samples, shuffle_window), whichever way the shards are read.
* With ``num_workers=0`` batches are decoded in this process by a prefetch thread (same order).
* The iterator is infinite, so every rank yields the same number of batches (no DDP hang);
  ``len(stream)`` is the nominal epoch (``epoch_batches``, default: train samples // (world*batch)).

Bad input is skipped and counted, never fatal: a truncated shard, an undecodable sample or one
whose key fails the path-safety rule (`common.safe_names`) (``skipped_corrupt``, warning naming
shard and key), non-finite audio (``rejected_nonfinite``),
all-zero clean (``rejected_silent``), wrong rate/channels (converted: ``converted``, or with
``on_mismatch="reject"``: ``rejected_format``). Only a slot that finds no good sample in a whole
epoch raises SourceError, and so does a remote shard that cannot be read after retries
(`sharding.sources.ShardReadError`: a dropped connection is never a short epoch).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import queue
import signal
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from common import faults
from common.safe_names import name_problem
from common.signals import STOP_SIGNALS
from sharding.audio import SAMPLE_RATE, to_mono_16k
from sharding.errors import SourceError
from sharding.manifest import MANIFEST
from sharding.shards import ShardRef, is_pattern, list_shards, open_source, resolve_split_dir  # noqa: F401
from sharding.sources import ShardReadError, is_remote, local_path
from sharding.tario import TarCorrupt, TarIndex, index_tar, read_members, read_sequential

log = logging.getLogger(__name__)

STAT_KEYS = ("samples", "skipped_corrupt", "rejected_nonfinite", "rejected_silent", "rejected_format", "converted")
AUDIO_EXTS = ("flac", "wav")
SHUFFLE_WINDOW = 256  # samples a front-to-back reader may hold (~100 MB of 10-s FLAC pairs)
WHOLE_SHARD = 2**31 - 1  # the window of states written before it existed: a whole-shard permutation


_INDEX_CACHE: OrderedDict[str, TarIndex] = OrderedDict()
_INDEX_LOCK = threading.Lock()  # the prefetch thread and the main thread (validation) share it


def _index(path: str) -> TarIndex:
    with _INDEX_LOCK:
        idx = _INDEX_CACHE.get(path)
        if idx is not None:
            _INDEX_CACHE.move_to_end(path)
            return idx
    idx = index_tar(path)
    if idx.truncated:
        log.warning("shard %s is truncated/corrupt (%s); %d samples readable", path, idx.error, len(idx.samples))
    with _INDEX_LOCK:
        _INDEX_CACHE[path] = idx
        while len(_INDEX_CACHE) > 256:
            _INDEX_CACHE.popitem(last=False)
    return idx


# ----------------------------------------------------------------- decoding
class BadSample(Exception):
    """A sample to skip; ``kind`` is the stats counter."""

    def __init__(self, kind: str, why: str):
        super().__init__(why)
        self.kind = kind


def _field(members: dict, name: str) -> str:
    for ext in AUDIO_EXTS:
        if f"{name}.{ext}" in members:
            return f"{name}.{ext}"
    raise BadSample("skipped_corrupt", f"no {name}.flac/.wav member")


def _decode_full(data: bytes, on_mismatch: str, stats: Counter) -> np.ndarray:
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise BadSample("skipped_corrupt", f"undecodable audio ({e})") from None
    if sr != SAMPLE_RATE or x.shape[1] != 1:
        if on_mismatch == "reject":
            raise BadSample("rejected_format", f"{x.shape[1]} ch at {sr} Hz")
        stats["converted"] += 1
    return to_mono_16k(x, sr)


def _check(noisy: np.ndarray, clean: np.ndarray) -> None:
    if not (np.all(np.isfinite(noisy)) and np.all(np.isfinite(clean))):
        raise BadSample("rejected_nonfinite", "NaN/inf audio")
    if not np.any(clean):
        raise BadSample("rejected_silent", "all-zero clean audio")


def _inv_rms(x: np.ndarray) -> float:
    """1 / RMS of ``x`` (the papers' input normalisation factor; silence -> 1e5, as clamp 1e-10 on power)."""
    return float(1.0 / np.sqrt(max(float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0, 1e-10)))


def _decode_crop(blobs: dict[str, bytes], seg: int, rng: np.random.Generator, on_mismatch: str,
                 stats: Counter) -> tuple[np.ndarray, np.ndarray, float]:
    """Random ``seg``-sample crop of noisy/clean (same offset), zero-padded when shorter, and
    1 / RMS of the *whole* noisy utterance (the authors normalise before cropping)."""
    nk, ck = _field(blobs, "noisy"), _field(blobs, "clean")
    try:
        fn, fc = sf.SoundFile(io.BytesIO(blobs[nk])), sf.SoundFile(io.BytesIO(blobs[ck]))
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise BadSample("skipped_corrupt", f"undecodable audio ({e})") from None
    with fn, fc:
        native = all(f.samplerate == SAMPLE_RATE and f.channels == 1 for f in (fn, fc))
        n = min(fn.frames, fc.frames)
        start = int(rng.integers(0, n - seg + 1)) if n > seg else 0
        if native:
            try:
                out = []
                whole = fn.read(n, dtype="float32")  # all of it: the RMS is the whole utterance's
                fc.seek(start)
                out.append(fc.read(min(seg, n), dtype="float32"))
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise BadSample("skipped_corrupt", f"undecodable audio ({e})") from None
            norm = _inv_rms(whole)
            noisy, clean = whole[start : start + seg], out[0]
    if not native:
        noisy = _decode_full(blobs[nk], on_mismatch, stats)
        clean = _decode_full(blobs[ck], on_mismatch, Counter())
        n = min(len(noisy), len(clean))
        start = int(rng.integers(0, n - seg + 1)) if n > seg else 0
        norm = _inv_rms(noisy[:n])
        noisy, clean = noisy[start : start + seg], clean[start : start + seg]
    if len(noisy) != len(clean) or len(noisy) < min(seg, n):
        raise BadSample("skipped_corrupt", "audio shorter than its header says")
    if len(noisy) < seg:
        noisy, clean = (np.pad(x, (0, seg - len(x))) for x in (noisy, clean))
    _check(noisy, clean)
    return noisy, clean, norm


# ----------------------------------------------------------------- reading a shard
def shard_order(n: int, window: int, seed: list[int]) -> np.ndarray:
    """The order a slot reads a shard's ``n`` samples in (file indices): a seeded shuffle buffer of
    ``window`` samples over the file order. At output ``t`` no sample beyond file index ``t + window - 1``
    is needed, so a front-to-back reader holds at most ``window`` samples. ``n <= window``: a uniform
    permutation (the same one as before the window existed)."""
    rng = np.random.default_rng(seed)
    if n <= window:
        return rng.permutation(n)
    u = rng.random(n)
    buf, nxt, out = list(range(window)), window, np.empty(n, dtype=np.int64)
    for t in range(n):
        j = int(u[t] * len(buf))
        out[t] = buf[j]
        if nxt < n:
            buf[j], nxt = nxt, nxt + 1
        else:
            buf[j] = buf[-1]
            buf.pop()
    return out


Read = tuple[int, "str | None", "dict[str, bytes] | None", str]


def read_shard(ref: ShardRef, order, reader: str = "auto") -> Iterator[Read]:
    """Yield ``(file index, key, {ext: bytes}, "")`` for the samples of ``ref`` in ``order`` (file indices;
    None: the manifest's samples in file order, or every sample there is when the count is unknown). A sample that is not there (a shard shorter than its manifest,
    cut off or corrupt) comes as ``(i, None, None, why)``, an unreadable one as ``(i, key, None, why)``.

    ``reader``: ``seek`` (local files: tar headers indexed once, members read by seeking), ``sequential``
    (any source: front to back through webdataset, holding the samples ``order`` needs later -- at most
    the shuffle window -- and reading past the others), ``auto`` (seek for local, sequential for remote).
    Both give the same samples in the same order. A remote shard that cannot be read after retries
    raises `ShardReadError` (never a silent short epoch)."""
    if reader not in ("auto", "seek", "sequential"):
        raise SourceError(f"reader: expected auto|seek|sequential, got {reader!r}")
    if order is None and ref.samples >= 0:
        order = range(ref.samples)
    if reader == "seek" or (reader == "auto" and not ref.remote):
        if ref.remote:
            raise SourceError(f"{ref.path}: a remote shard is read sequentially, not by seeking")
        return _safe_keys(_seek_read(ref, order))
    return _safe_keys(_sequential_read(ref, order))


def _safe_keys(reads: Iterator[Read]) -> Iterator[Read]:
    """A sample whose key fails the path-safety rule (`common.safe_names`: absolute, ``..``, empty) comes
    as unreadable, ``(i, key, None, why)``: its bytes are never handed on, so no caller can write a file
    named after it outside its folder."""
    for which, key, blobs, why in reads:
        bad = name_problem(key) if key is not None else None
        yield (which, key, None, f"member name {key!r}: {bad}") if bad else (which, key, blobs, why)


def _seek_read(ref: ShardRef, order) -> Iterator[Read]:
    idx = _index(ref.path)
    keys = list(idx.samples)
    lost = idx.error or "shard shorter than its manifest"
    with _open_shard(ref.path) as f:  # one open per shard: metadata ops are dear on parallel FS
        for which in range(len(keys)) if order is None else order:
            which = int(which)
            if which >= len(keys):
                yield which, None, None, lost
                continue
            key = keys[which]
            try:
                blobs, why = (None, "shard unreadable") if f is None else (read_members(f, idx.samples[key]), "")
            except (SourceError, OSError) as e:
                blobs, why = None, str(e)
            yield which, key, blobs, why


def _sequential_read(ref: ShardRef, order) -> Iterator[Read]:
    n = ref.samples
    if order is None and n < 0:  # count unknown (a lone shard without manifest): all there is
        try:
            for i, key, blobs in read_sequential(ref.path, ref.bytes):
                yield i, key, blobs, ""
        except TarCorrupt as e:
            log.warning("%s", e)
        return
    need = np.zeros(max(n, 0), dtype=bool)
    need[np.asarray(order, dtype=np.int64)] = True
    samples = read_sequential(ref.path, ref.bytes, want=lambda i: i < n and need[i])
    held: dict[int, tuple[str, dict[str, bytes]]] = {}
    done, lost = False, "shard shorter than its manifest"
    try:
        for which in order:
            which = int(which)
            while which not in held and not done:
                try:
                    i, key, blobs = next(samples)
                    held[i] = (key, blobs)
                except StopIteration:
                    done = True
                except TarCorrupt as e:
                    done, lost = True, str(e)
                    log.warning("%s", e)
            if which in held:
                key, blobs = held.pop(which)
                yield which, key, blobs, ""
            else:
                yield which, None, None, lost
    finally:
        samples.close()


# ----------------------------------------------------------------- slot streams
@dataclass(frozen=True)
class StreamConfig:
    shards: tuple[ShardRef, ...]
    segment_samples: int
    batch_size: int
    seed: int
    num_slots: int
    on_mismatch: str
    skip_bad: bool = True  # False: a broken sample raises SourceError instead of being skipped and counted
    shuffle_window: int = SHUFFLE_WINDOW
    reader: str = "auto"
    slots_per_rank: int = 1  # loader workers per rank (max 1): slot j is rank j // this, worker j % this


def epoch_assignment(cfg: StreamConfig, epoch: int, slot: int) -> list[int]:
    """Shard ids read by ``slot`` in ``epoch`` (seeded per-epoch permutation, split by slot)."""
    n = len(cfg.shards)
    entries = np.tile(np.arange(n), math.ceil(cfg.num_slots / n))
    perm = np.random.default_rng([cfg.seed, epoch, 0x5A4D]).permutation(entries)
    return [int(i) for i in perm[slot :: cfg.num_slots]]


def _locate(cfg: StreamConfig, slot: int, pos: int) -> tuple[int, int, int]:
    """Raw position -> (epoch, index in the epoch's shard list, offset in that shard)."""
    epoch = 0
    while True:
        ids = epoch_assignment(cfg, epoch, slot)
        total = sum(cfg.shards[i].samples for i in ids)
        if pos < total:
            for k, i in enumerate(ids):
                if pos < cfg.shards[i].samples:
                    return epoch, k, pos
                pos -= cfg.shards[i].samples
        pos -= total
        epoch += 1


@contextlib.contextmanager
def _open_shard(path: str):
    """The open shard, or None (warned) when it cannot be opened -- its samples are then skipped."""
    try:
        f = open(path, "rb")  # noqa: SIM115 -- closed below
    except OSError as e:
        log.warning("cannot open shard %s: %s", path, e)
        yield None
        return
    with f:
        yield f


def slot_samples(cfg: StreamConfig, slot: int, pos: int, stats: Counter) -> Iterator[tuple[int, Any]]:
    """Yield (raw position after, (noisy, clean, norm) or None for a skipped sample) from ``pos`` on, forever."""
    epoch, k, offset = _locate(cfg, slot, pos)
    while True:
        ids = epoch_assignment(cfg, epoch, slot)
        for kk in range(k, len(ids)):
            ref = cfg.shards[ids[kk]]
            order = shard_order(ref.samples, cfg.shuffle_window, [cfg.seed, epoch, ids[kk], slot, 0x0BDE])
            faults.point("stream.shard_open", rank=slot // cfg.slots_per_rank, worker=slot % cfg.slots_per_rank)
            for which, key, blobs, why in read_shard(ref, order[offset:], cfg.reader):
                pos += 1
                name = key or f"#{which}"
                try:
                    if blobs is None:
                        raise BadSample("skipped_corrupt", why if key else f"sample missing ({why})")
                    rng = np.random.default_rng([cfg.seed, slot, pos, 0xC0])
                    item = _decode_crop(blobs, cfg.segment_samples, rng, cfg.on_mismatch, stats)
                except (BadSample, SourceError, OSError) as e:
                    if not cfg.skip_bad and getattr(e, "kind", "") != "rejected_silent":  # a silent crop: not broken
                        raise SourceError(f"{ref.path}: sample {name}: {e} (data.skip_bad=false: "
                                          f"a bad sample stops the run)") from None
                    kind = e.kind if isinstance(e, BadSample) else "skipped_corrupt"
                    stats[kind] += 1
                    log.warning("skipping sample %s of shard %s: %s", name, ref.path, e)
                    yield pos, None
                    continue
                stats["samples"] += 1
                yield pos, item
            offset = 0
        k = 0
        epoch += 1


def slot_batches(cfg: StreamConfig, slot: int, start: int) -> Iterator[dict[str, Any]]:
    """Batches of one slot: {"noisy", "clean": Tensor[B,S], "norm": Tensor[B,1], "_pos": raw position after,
    "_stats"}."""
    stats: Counter = Counter()
    epoch_size = sum(cfg.shards[i].samples for i in epoch_assignment(cfg, 0, slot))
    noisy, clean, norm, bad_run = [], [], [], 0
    for pos, item in slot_samples(cfg, slot, start, stats):
        if item is None:
            bad_run += 1
            if bad_run > epoch_size + cfg.batch_size:
                raise SourceError(f"slot {slot}: no decodable sample in {bad_run} consecutive samples")
            continue
        bad_run = 0
        noisy.append(item[0])
        clean.append(item[1])
        norm.append(item[2])
        if len(noisy) == cfg.batch_size:
            yield {"noisy": torch.from_numpy(np.stack(noisy)), "clean": torch.from_numpy(np.stack(clean)),
                   "norm": torch.tensor(norm, dtype=torch.float32)[:, None],
                   "_pos": pos, "_slot": slot, "_stats": dict(stats)}
            noisy, clean, norm = [], [], []




def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """Worker init: the main process owns the stop signals (preemption: checkpoint, exit 75). SLURM
    signals every process of a step, and a killed worker would crash the main process instead; a
    worker ends when the main process closes the loader or dies."""
    for s in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def preload_in_forkserver() -> None:
    """Have multiprocessing's forkserver import this module (torch, soundfile, numpy) when it starts, so
    DataLoader workers forked from it start in milliseconds and share those pages instead of importing
    them again each (benchmarks/bench_corpus_index.py: 8 ranks x 4 workers). Call before the forkserver
    starts (`training.run.start_mp_helpers` does; a later call changes nothing). Importing is safe to
    fork from: no OpenMP thread exists until an operation runs."""
    import multiprocessing

    multiprocessing.set_forkserver_preload(["__main__", __name__])


SOURCE_ENV = ("AWS_", "SE_SHARD_", "XDG_CACHE_HOME", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
              "https_proxy", "no_proxy")


class _WorkerDataset(torch.utils.data.IterableDataset):
    """DataLoader worker ``i`` streams slot ``base + (i + shift) % W`` from its saved position, with this
    process's source settings (S3 endpoint and credentials, proxies, retries) and fault points
    (``SE_FAULTS``): a worker forked from a forkserver started earlier would otherwise see the
    environment of that moment."""

    def __init__(self, cfg: StreamConfig, base: int, positions: list[int], shift: int):
        self.cfg, self.base, self.positions, self.shift = cfg, base, positions, shift
        self.env = {k: v for k, v in os.environ.items() if k.startswith(SOURCE_ENV)}
        self.fault_spec = os.environ.get(faults.ENV_VAR)

    def __iter__(self):
        os.environ.update(self.env)
        faults.configure(self.fault_spec)  # this process's SE_FAULTS, not the forkserver's
        info = torch.utils.data.get_worker_info()
        n = len(self.positions)
        w = ((info.id if info else 0) + self.shift) % n
        return _forward_errors(slot_batches(self.cfg, self.base + w, self.positions[w]))


def _forward_errors(batches: Iterator[dict]) -> Iterator[dict]:
    """In a worker: a SourceError becomes a last item the main process raises again as one line (torch
    would re-raise it with the worker's traceback folded into the message)."""
    try:
        yield from batches
    except SourceError as e:
        yield {"_error": str(e), "_read": isinstance(e, ShardReadError)}


class _ThreadPrefetch:
    """Runs a batch generator ``depth`` batches ahead in a daemon thread (soundfile/numpy release
    the GIL), keeping its order; exceptions are re-raised in the consumer. ``close()`` stops it."""

    def __init__(self, gen: Iterator, depth: int):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(gen,), daemon=True, name="shard-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, gen: Iterator) -> None:
        try:
            for batch in gen:
                if not self._put(("batch", batch)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            self._put(("error", e))

    def __next__(self):
        kind, item = self._q.get()
        if kind == "error":
            raise item
        return item

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop and join the thread. Joining matters at exit: a daemon thread still inside torch/C++
        code when the interpreter finalises is killed by a forced unwind, which aborts the process
        ("terminate called without an active exception", exit -6)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("shard prefetch thread did not stop within %.0f s", timeout_s)


class TrainStream:
    """Infinite iterator of {"noisy", "clean": float32 Tensor[B, S], "norm": Tensor[B, 1]} training batches
    (see module doc); ``norm`` = 1 / RMS of the whole noisy utterance, the factor the loop scales noisy
    and clean by, as the authors do before cropping.

    :param source: a corpus folder (its ``split``), a split folder, a shard pattern, a folder URL or
        ``pipe:`` commands (`sharding.shards`).
    :param num_workers: DataLoader worker processes (0: decode in this process, in a prefetch thread).
    :param prefetch_factor: batches decoded ahead per worker (0 with num_workers=0: no thread).
    :param epoch_batches: nominal batches per epoch (``len``); default train samples // (world*batch).
    :param on_mismatch: ``convert`` (resample/mono-mix) or ``reject`` audio not mono 16 kHz.
    :param skip_bad: False: an undecodable, incomplete (missing member), wrong-format or non-finite sample
        raises SourceError (stops the run) instead of being skipped and counted. A crop that happens to be
        silent is skipped and counted either way (the sample is not broken, the crop is just unusable).
    :param shuffle_window: the in-shard shuffle buffer (`shard_order`); part of the resume identity.
    :param reader: ``auto`` (local shards by seeking, remote ones front to back), ``seek`` or
        ``sequential`` (`read_shard`; the batches are the same).
    """

    def __init__(self, source: str | Path, *, segment_samples: int, batch_size: int, seed: int,
                 rank: int, world_size: int, num_workers: int = 0, epoch_batches: int | None = None,
                 on_mismatch: str = "convert", split: str = "train", prefetch_factor: int = 2,
                 skip_bad: bool = True, shuffle_window: int = SHUFFLE_WINDOW, reader: str = "auto"):
        if not 0 <= rank < world_size:
            raise SourceError(f"rank {rank} not in [0, world_size={world_size})")
        if segment_samples < 1 or batch_size < 1 or num_workers < 0 or shuffle_window < 1:
            raise SourceError("segment_samples, batch_size and shuffle_window must be >= 1, num_workers >= 0")
        if on_mismatch not in ("convert", "reject"):
            raise SourceError(f"on_mismatch: expected convert|reject, got {on_mismatch!r}")
        if reader not in ("auto", "seek", "sequential"):
            raise SourceError(f"reader: expected auto|seek|sequential, got {reader!r}")
        src = open_source(source, split, check_sizes=not skip_bad)
        if reader == "seek" and src.remote:
            raise SourceError(f"{source}: remote shards are read sequentially (reader=auto|sequential)")
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.prefetch_factor = prefetch_factor
        self._w = max(1, num_workers)
        self.cfg = StreamConfig(tuple(src.shards), segment_samples, batch_size, seed, world_size * self._w,
                                on_mismatch, skip_bad, shuffle_window, reader, self._w)
        self.num_samples = src.num_samples
        self.epoch_batches = epoch_batches or max(1, self.num_samples // (world_size * batch_size))
        self._positions = [0] * self._w
        self._batches = 0
        self._stats_base: Counter = Counter()
        self._slot_stats: dict[int, dict] = {}
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return self.epoch_batches

    @property
    def epoch(self) -> int:
        return self._batches // self.epoch_batches

    def __iter__(self) -> TrainStream:
        return self

    def _start(self) -> Iterator:
        base = self.rank * self._w
        shift = self._batches % self._w
        if self.num_workers == 0:
            gen = slot_batches(self.cfg, base, self._positions[0])
            return _ThreadPrefetch(gen, self.prefetch_factor) if self.prefetch_factor > 0 else gen
        preload_in_forkserver()
        ds = _WorkerDataset(self.cfg, base, list(self._positions), shift)
        # forkserver, not fork: a parent that already ran OpenMP threads (torch) can
        # deadlock a forked worker. Workers re-import only what the dataset needs.
        ctx = "forkserver" if "forkserver" in torch.multiprocessing.get_all_start_methods() else "spawn"
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                                             prefetch_factor=self.prefetch_factor,
                                             multiprocessing_context=ctx, persistent_workers=False,
                                             worker_init_fn=ignore_stop_signals,
                                             generator=torch.Generator().manual_seed(self.cfg.seed))
        # Its own generator: the loader's base seed must not come from the global torch RNG, which a
        # resumed run restores just before this lazy start (one extra draw there shifted every later
        # dropout mask: resume was not exact with workers). The workers draw nothing from it.
        return iter(loader)

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._stats_base = Counter(self.stats())
            self._stats_base.pop("batches", None)
            self._slot_stats = {}
            self._it = self._start()
        batch = next(self._it)
        if "_error" in batch:
            self.close()
            raise (ShardReadError if batch["_read"] else SourceError)(batch["_error"])
        slot = int(batch.pop("_slot")) - self.rank * self._w
        self._positions[slot] = int(batch.pop("_pos"))
        self._slot_stats[slot] = batch.pop("_stats")
        self._batches += 1
        return batch

    def stats(self) -> dict[str, int]:
        total = Counter(self._stats_base)
        for s in self._slot_stats.values():
            total.update(s)
        out = {k: int(total.get(k, 0)) for k in STAT_KEYS}
        out["batches"] = self._batches
        return out

    def _identity(self) -> dict[str, Any]:
        c = self.cfg
        return {"seed": c.seed, "rank": self.rank, "world_size": self.world_size, "num_workers": self.num_workers,
                "batch_size": c.batch_size, "segment_samples": c.segment_samples, "num_shards": len(c.shards),
                "shuffle_window": c.shuffle_window}

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, **self._identity(), "batches": self._batches,
                "positions": list(self._positions), "stats": self.stats()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` (a `state_dict`) was taken. A state written before the in-shard window
        existed resumes with the whole-shard permutation it was written with (so an old run's order,
        and its checkpoints from here on, stay what they were)."""
        if "shuffle_window" not in state:
            self.cfg = replace(self.cfg, shuffle_window=WHOLE_SHARD)
        mine = self._identity()
        saved = {k: state.get(k, WHOLE_SHARD if k == "shuffle_window" else None) for k in mine}
        diff = {k: (saved[k], v) for k, v in mine.items() if saved[k] != v}
        if diff:
            raise SourceError(f"stream state does not match this stream (saved, now): {diff}")
        self._batches = int(state["batches"])
        self._positions = [int(p) for p in state["positions"]]
        self._stats_base = Counter({k: v for k, v in state.get("stats", {}).items() if k in STAT_KEYS})
        self._slot_stats = {}
        self.close()  # restart lazily; drops any prefetched batches (and their workers)

    def close(self) -> None:
        """Stop the prefetch thread / DataLoader workers (iteration restarts lazily where it was)."""
        if isinstance(self._it, _ThreadPrefetch):
            self._it.close()
        self._it = None

    def __del__(self) -> None:
        it = getattr(self, "_it", None)
        if isinstance(it, _ThreadPrefetch):
            it.close()


# ----------------------------------------------------------------- utterances
def _utterance_shards(path: str | Path, split: str | None) -> list[ShardRef]:
    """The shards of a split folder, a single shard, a corpus folder (+ ``split``, or its only split), or
    any remote source (``split`` default ``test``)."""
    spec = str(path)
    if not is_remote(spec) and not is_pattern(spec):
        local = Path(local_path(spec))
        is_split = (local / MANIFEST).exists() or any(local.glob("*.tar"))
        if split is None and not is_split and local.is_dir():
            present = [s for s in ("train", "valid", "test") if (local / s).is_dir()]
            if len(present) != 1:
                raise SourceError(f"{local}: a corpus folder with splits {present}; pass a split folder or split=")
            split = present[0]
    return list_shards(spec, split=split or "test")


def iter_utterances(path: str | Path, limit: int | None = None, *, split: str | None = None,
                    on_mismatch: str = "convert", stats: Counter | None = None,
                    failures: list[tuple[str, str]] | None = None
                    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield (key, noisy [N], clean [N]) full-length float32 16 kHz, in shard then file order.

    ``path``: a split folder, a single ``.tar`` shard, a corpus folder together with ``split``, or any
    source `TrainStream` takes. Bad samples are skipped with a warning and counted in ``stats`` (if
    given); ``failures`` (if given) receives ``("<shard>:<key>", reason)`` for each, and ``("<shard>",
    reason)`` when a shard holds fewer samples than its manifest lists (truncated or corrupt tar) or more
    (a wrong manifest). Every sample a shard holds is read, whatever count the manifest claims.
    """
    stats = stats if stats is not None else Counter()
    n = 0
    for ref in _utterance_shards(path, split):
        name = ref.path.rsplit("/", 1)[-1]
        seen, lost = 0, ""
        # every sample there is, whatever the manifest claims (a count of 10**12 must not loop): compared after
        for _, key, blobs, why in read_shard(replace(ref, samples=-1), None):
            if limit is not None and n >= limit:
                return
            if key is None:
                lost = why
                continue
            seen += 1
            try:
                if blobs is None:
                    raise BadSample("skipped_corrupt", why)
                noisy = _decode_full(blobs[_field(blobs, "noisy")], on_mismatch, stats)
                clean = _decode_full(blobs[_field(blobs, "clean")], on_mismatch, Counter())
                m = min(len(noisy), len(clean))
                noisy, clean = noisy[:m], clean[:m]
                _check(noisy, clean)
            except (BadSample, SourceError, OSError) as e:
                stats[e.kind if isinstance(e, BadSample) else "skipped_corrupt"] += 1
                log.warning("skipping sample %s of shard %s: %s", key, ref.path, e)
                if failures is not None:
                    failures.append((f"{name}:{key}", " ".join(str(e).split())))
                continue
            stats["samples"] += 1
            n += 1
            yield key, noisy, clean
        if failures is not None and 0 <= ref.samples != seen:
            if seen < ref.samples:
                lost = lost or (_index(ref.path).error if not ref.remote else "")
                failures.append((name, f"{ref.samples - seen} of {ref.samples} samples listed in the manifest are "
                                       f"unreadable ({lost or 'truncated/corrupt shard'})"))
            else:
                failures.append((name, f"holds {seen} samples but the manifest lists {ref.samples}: the manifest "
                                       f"is wrong; rebuild it (orchestrate shard index)"))
