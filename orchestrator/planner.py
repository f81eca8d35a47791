"""What a sweep will cost before it is submitted (`orchestrate plan`, head of `sweep --dry-run`).

Per cell (from its resolved config) and in total: steps, training throughput (steps/s), wall time,
GPU-hours (wall x GPUs of the job), job chains through the time limit, checkpoint storage (size x
kept), shard data read per pass over the training split, MLflow write rate (points/h).

Throughput comes from `throughput_table()`: measured entries (`MEASURED` below, plus any
`benchmarks/throughput.json` list written by a measurement on the target machine: objects
{model, device, steps_per_s, batch, segment_samples, source}) scaled by the work per step
(batch x segment) when the shape differs; otherwise a FLOP-based estimate, which the output says:
    step FLOPs = 2 x G-MACs per 2 s (training.models.flops, full count) x segment/2 s x global batch
                 x 3 (forward + backward; 4 with activation checkpointing)
    steps/s    = GPUs x peak FLOP/s of the device at the run's precision x ASSUMED_MFU / step FLOPs
The discriminator, losses, data loading and PESQ targets are not counted (an estimate, not a promise).
Validation adds a forward over `data.valid_limit` utterances (VALID_SECONDS each unless the valid
manifest says) every `trainer.val_every` steps.

Chains: seconds per job = time_min x 60 - signal_before_end_s - STARTUP_S (container, imports,
resume); chains = ceil(wall / that).
Checkpoint: (G + D parameters) x 4 bytes x 3 (weights + AdamW moments) per `step-N`, `keep_last` of
them, plus `best` (weights only).
MLflow: per log window len(TRAIN_KEYS) points, per validation len(VAL_KEYS), system metrics
SYSTEM_KEYS every `mlflow.system_metrics_s` seconds.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from common.progress import format_duration
from orchestrator.sweeps.plan import read_manifest
from training.model_names import GMACS_2S, PARAMS
from training.progress import WINDOW_KEYS

ASSUMED_MFU = 0.10  # Mamba scans, small convs, 4-16 channel attention heads: far below peak
STARTUP_S = 300
VALID_SECONDS = 10.0
# G-MACs per 2 s (training.models.flops full count) of the registered models with default options:
# counting takes a forward pass per model (minutes on a busy CPU); tests/test_planner.py checks rwsa-xs
KNOWN_GMACS = GMACS_2S  # every preset, so a login node plans without torch
GFLOPS_CACHE: dict[str, float] = {}
# parameter counts of the registered generators with default options (so `sweep --dry-run` needs no
# torch on a login node) and of the discriminator; tests/test_planner.py checks every entry against the registry
KNOWN_PARAMS = PARAMS  # exact counts of the registry's presets (torch-free)

# peak dense FLOP/s per device (one GPU as SLURM counts it; one MI250X GCD on LUMI), vendor figures
DEVICES = {
    "mi250x-gcd": {"label": "AMD MI250X GCD", "fp32": 23.95e12, "bf16": 191.5e12},
    "a100": {"label": "NVIDIA A100", "fp32": 19.5e12, "bf16": 312e12},
    "h100": {"label": "NVIDIA H100 SXM", "fp32": 67e12, "bf16": 989e12},
    "cpu": {"label": "CPU core group", "fp32": 0.1e12, "bf16": 0.1e12},
}
PROFILE_DEVICE = {"lumi": "mi250x-gcd", "cuda": "a100", "local": "cpu"}

# measured training throughput (global batch, crop) -- README "Paper-size training steps", 2-core CPU
MEASURED = [
    {"model": "rwsa-xs", "device": "cpu", "steps_per_s": 1 / 46.5, "batch": 8, "segment_samples": 30600,
     "source": "README: 46.5 s/step, batch 8 x 1.91 s, 2-core CPU"},
    {"model": "mambattention", "device": "cpu", "steps_per_s": 1 / 185, "batch": 8, "segment_samples": 32000,
     "source": "README: 185 s/step, batch 8 x 2 s, 2-core CPU"},
]
MEASURED_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.json"

TRAIN_KEYS = len(WINDOW_KEYS) + 4 + 9  # window averages, lr, 2 counters, steps/s, data/* counters
VAL_KEYS = 6  # val/pesq, estoi, si_sdr, ssnr, best_pesq (+ noisy_* once)
SYSTEM_KEYS = 10  # cpu, memory, disk, network; + GPU utilisation/memory per GPU when present
# metric points/s one tracking server wrote with every point stored, per backend store, measured by
# benchmarks/bench_mlflow_rate.py (docs/mlflow.md "How many points a server holds"); a plan above
# MLFLOW_HEADROOM of its store's ceiling is told so, with the setting that fits
STORE_CEILING_POINTS_S = {"sqlite": 3300.0, "postgresql": 4300.0}  # 2 shared cores, server and 15 writers
MLFLOW_HEADROOM = 0.5


@dataclass
class CellCost:
    cell: str
    model: str
    steps: int
    steps_per_s: float
    source: str
    wall_s: float
    gpus: int
    gpu_hours: float
    chains: int
    job_s: float
    ckpt_size: int  # one step-N checkpoint
    ckpt_kept: int  # step-N checkpoints kept (trainer.keep_last), plus best
    ckpt_bytes: int  # all of them
    data_bytes: int | None
    data_steps: int | None
    mlflow_points_per_h: float


def throughput_table() -> list[dict]:
    """MEASURED plus benchmarks/throughput.json entries (the latter win for the same model/device)."""
    rows = list(MEASURED)
    if MEASURED_FILE.is_file():
        try:
            extra = json.loads(MEASURED_FILE.read_text())
            rows = [r for r in extra if isinstance(r, dict)] + rows
        except ValueError:
            pass
    return rows


def model_gmacs(name: str, options: dict) -> float:
    """G-MACs per 2 s of audio (full count) of a generator; computed once per process."""
    if not options and name in KNOWN_GMACS:
        return KNOWN_GMACS[name]
    key = json.dumps([name, options], sort_keys=True)
    if key not in GFLOPS_CACHE:
        from training.models import build_model
        from training.models.flops import model_gflops

        GFLOPS_CACHE[key] = model_gflops(build_model(name, **options))["gflops"]
    return GFLOPS_CACHE[key]


def params(name: str, options: dict | None = None) -> int:
    return _params(name, json.dumps(options or {}, sort_keys=True))


@functools.cache
def _params(name: str, options_json: str) -> int:
    if options_json == "{}" and name in KNOWN_PARAMS:
        return KNOWN_PARAMS[name]
    from training.models import build_model

    return sum(p.numel() for p in build_model(name, **json.loads(options_json)).parameters())


def cell_cost(cell_id: str, cfg, *, device: str, signal_before_end_s: int = 300, gmacs=model_gmacs,
              manifest=read_manifest, measured: list[dict] | None = None) -> CellCost:
    """The cost of one cell (a resolved RunConfig) on `device` (a DEVICES key). ``manifest(source, split)``
    gives a split's `sharding.manifest.Manifest` (a `SweepPlan` reads each once); ``measured``:
    `throughput_table()`."""
    m, t, d, launcher = cfg.model, cfg.trainer, cfg.data, cfg.launcher
    name, opts = m.name, dict(m.options or {})
    gpus = launcher.nodes * (launcher.gpus_per_node or launcher.nproc)
    if device == "cpu":
        gpus = launcher.nodes * launcher.nproc
    seg = d.segment_samples or 32000
    batch = d.batch_size
    rows = [r for r in (throughput_table() if measured is None else measured)
            if r.get("model") == name and r.get("device") == device]
    if rows:
        r = rows[0]
        rate = float(r["steps_per_s"]) * (r["batch"] * r["segment_samples"]) / (batch * seg)
        source = f"measured ({r['source']})"
        val_rate = None
    else:
        macs_2s = gmacs(name, opts) * 1e9
        precision = "bf16" if t.precision == "bf16" else "fp32"
        passes = 4 if t.activation_checkpointing else 3
        step_flops = 2 * macs_2s * (seg / 32000) * batch * passes
        rate = gpus * DEVICES[device][precision] * ASSUMED_MFU / step_flops
        source = (f"FLOP estimate: {2 * macs_2s / 1e9:.1f} GFLOP per 2 s x {passes} passes, "
                  f"{DEVICES[device]['label']} {precision} peak x {ASSUMED_MFU:.0%} assumed utilisation")
        val_rate = gpus * DEVICES[device][precision] * ASSUMED_MFU / (2 * macs_2s)  # 2-s clips per s
    steps = t.max_steps
    wall = steps / rate
    if d.valid and t.val_every:
        vman = manifest(d.valid, "valid")
        n_val = int(d.valid_limit or (vman.num_samples if vman else 0) or 200)
        secs = (vman.seconds / max(1, vman.num_samples)) if vman and vman.seconds else VALID_SECONDS
        if val_rate is not None:
            wall += (steps // t.val_every) * n_val * (secs / 2) / val_rate
    job_s = launcher.time_min * 60 - signal_before_end_s - STARTUP_S
    chains = math.ceil(wall / job_s) if job_s > 0 else 1
    p = params(name, opts) + (params("metric-discriminator") if cfg.loss.discriminator else 0)
    ckpt_bytes = p * 4 * 3
    keep = t.keep_last or 1
    man = manifest(d.train, "train")
    data_bytes = man.total_bytes if man else None
    data_steps = math.ceil(man.num_samples / batch) if man else None
    sys_s = float(cfg.mlflow.system_metrics_s or 0)
    pts = 3600 * rate * (TRAIN_KEYS / (t.log_every or 1) + (VAL_KEYS / t.val_every if t.val_every else 0))
    pts += 3600 / sys_s * (SYSTEM_KEYS + 2 * gpus) if sys_s > 0 else 0
    return CellCost(cell_id, name, steps, rate, source, wall, gpus, wall * gpus / 3600, chains, job_s,
                    ckpt_bytes, keep, ckpt_bytes * keep + p * 4, data_bytes, data_steps, pts)


def mlflow_rate_note(costs: list[CellCost], store: str | None) -> str | None:
    """One line when the sweep's MLflow write rate (all cells running) exceeds MLFLOW_HEADROOM of what
    its store held here (STORE_CEILING_POINTS_S), with the setting that fits; None when it fits or
    the store is unknown (an http server fronting a store this plan cannot see)."""
    kind = str(store or "").split(":", 1)[0].split("+", 1)[0]
    ceiling = STORE_CEILING_POINTS_S.get(kind)
    rate = sum(c.mlflow_points_per_h for c in costs) / 3600
    if not ceiling or rate <= MLFLOW_HEADROOM * ceiling:
        return None
    fixes = []
    pg = STORE_CEILING_POINTS_S["postgresql"]
    if kind == "sqlite" and rate <= MLFLOW_HEADROOM * pg:
        fixes.append("a PostgreSQL store (mlflow.tracking_uri=postgresql://USER@HOST/DB; the sweep's server "
                     "fronts it; docs/mlflow.md)")
    fixes.append(f"trainer.log_every x{math.ceil(rate / (MLFLOW_HEADROOM * ceiling))} (fewer, larger windows)")
    return (f"MLflow: {rate:,.0f} points/s with all cells running is more than {MLFLOW_HEADROOM:.0%} of a {kind} "
            f"store's measured ceiling ({ceiling:,.0f} points/s, benchmarks/bench_mlflow_rate.py); use "
            + " or ".join(fixes))


def plan_mlflow_rate_note(plan) -> str | None:
    """`mlflow_rate_note` for a `SweepPlan` when every cell's throughput comes without a FLOP count
    (registry presets, measured entries); None otherwise (a count is a forward pass per model:
    minutes on a login node, too slow for `orchestrate sweep`; `orchestrate plan` says it)."""
    if not plan.cells or not all(not c.config.model.options and c.config.model.name in KNOWN_GMACS
                                 for c in plan.cells):
        return None
    return mlflow_rate_note(plan_costs(plan)[1], plan.tracking.store if plan.tracking else None)


def device_for(profile_name: str | None, executor: str) -> str:
    if executor != "slurm":
        return "cpu"
    return PROFILE_DEVICE.get(profile_name or "", "a100")


def plan_costs(plan, device: str | None = None, gmacs=model_gmacs) -> tuple[str, list[CellCost]]:
    """(device key, the cost of every cell) of a `orchestrator.sweeps.plan.SweepPlan`."""
    prof = plan.profile
    device = device or device_for(prof.name if prof else None, plan.executor)
    sig = prof.signal_before_end_s if prof else 300
    measured = throughput_table()
    return device, [cell_cost(c.id, c.config, device=device, signal_before_end_s=sig, gmacs=gmacs,
                              manifest=plan.manifest, measured=measured) for c in plan.cells]


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def format_costs(name: str, device: str, costs: list[CellCost], store: str | None = None) -> str:
    """The plan as text: one line per cell, a total, and where the throughput came from (and, for
    the MLflow ``store``, whether it holds the sweep's write rate)."""
    head = ("cell", "model", "steps", "steps/s", "wall", "GPUs", "GPU-h", "chains", "ckpt (size x kept)",
            "data/pass", "MLflow pts/h")
    table = [head]
    for c in costs:
        table.append((c.cell, c.model, f"{c.steps:,}", f"{c.steps_per_s:.3g}", format_duration(c.wall_s), str(c.gpus),
                      f"{c.gpu_hours:,.0f}", str(c.chains),
                      f"{_bytes(c.ckpt_size)} x {c.ckpt_kept}+best",
                      _bytes(c.data_bytes), f"{c.mlflow_points_per_h:,.0f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [f"plan for sweep {name}: {len(costs)} cells on {DEVICES[device]['label']}"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    tot_gpuh = sum(c.gpu_hours for c in costs)
    tot_chains = sum(c.chains for c in costs)
    longest = max(costs, key=lambda c: c.wall_s)
    lines.append(f"total: {sum(c.steps for c in costs):,} steps, {tot_gpuh:,.0f} GPU-hours, {tot_chains} jobs "
                 f"({tot_chains - len(costs)} requeues); longest cell {format_duration(longest.wall_s)} wall "
                 f"(all cells in parallel); checkpoints {_bytes(sum(c.ckpt_bytes for c in costs))}; "
                 f"MLflow {sum(c.mlflow_points_per_h for c in costs):,.0f} points/h with all cells running")
    if costs[0].job_s > 0:
        lines.append(f"chains: each job runs {costs[0].job_s / 3600:.1f} h of training "
                     f"(the time limit less the stop margin and {STARTUP_S} s start-up); cells need {', '.join(sorted({str(c.chains) for c in costs}, key=int))} "
                     f"chained jobs each")
    for src in sorted({(c.model, c.source) for c in costs}):
        lines.append(f"throughput {src[0]}: {src[1]}")
    if any(c.data_bytes is None for c in costs):
        lines.append("data/pass: '-' where data.train has no manifest.json yet (build the shards first)")
    note = mlflow_rate_note(costs, store)
    if note:
        lines.append(note)
    return "\n".join(lines)
