"""SLURM through submitit: the cells of a sweep as one submitit job array per job shape.

Submission (``SlurmLauncher.submit``): cells that share their resources (``JOB_SHAPE``) become one
``SlurmExecutor.map_array`` of `slurm_task.run_cell` over their cell folders, so one sbatch script
and one array (a single cell is a plain job: submitit submits one submission that way), split into
several arrays where the cluster's ``MaxArraySize`` demands (`max_array_size`: the profile's
``max_array_size``, else ``scontrol show config``). The sweep's ``launcher.max_parallel: N`` is the
array's ``%N`` (the smaller of it and the profile's ``array_parallel``); so that N holds for the whole
sweep, each further array of the submission (and of a resubmission while earlier arrays still run)
waits for the one before it (``--dependency=afterany:``). The cluster profile maps onto submitit's
parameters (``executor_parameters``): partition / account /
qos / time / memory, ``nodes × tasks_per_node`` tasks per cell, GPUs, ``--cpu-bind`` (srun),
``--signal=USR2@signal_before_end_s``, ``--requeue``, the profile's setup lines and exports before
srun, and the container as submitit's python command (``python_command``). Everything submitit
writes (the sbatch script, pickles, one log per task ``%A_%a_%t_log.out``) lives in
``SWEEP_DIR/logs``; a copy of each script as submitted in ``SWEEP_DIR/slurm/submit-NNN.sbatch``.
``render`` gives the exact text submitit will submit (``--dry-run``, golden-tested): `render_script`
is the one place that calls submitit's private methods, tested against the oldest and newest
submitit pyproject allows (tests/test_submitit_versions.py).

Preemption / time limit / scancel: see `slurm_task` -- the project's handlers replace submitit's,
every rank checkpoints at the same step, rank 0 requeues the same array task after every rank has
exited 75.

State (``refresh``): one ``sacct`` call for every active array -- or ``squeue`` where the cluster keeps
no accounting (``sacct`` disabled) -- read by submitit's parser, plus the exit-code file the job left.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_text
from orchestrator.errors import UserError
from orchestrator.launchers import base
from orchestrator.ledger import ACTIVE, Ledger, set_state

# Launcher fields that shape a SLURM job; cells that differ in any of them go to separate arrays.
JOB_SHAPE = ("nodes", "nproc", "gpus_per_node", "cpus_per_task", "mem_gb", "time_min", "partition", "account", "qos")
LOG_DIR, SCRIPT_DIR = "logs", "slurm"
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize (task ids 0..1000)


class SlurmError(RuntimeError):
    """sbatch/squeue/scancel failed (the scheduler, not the user's input)."""


def _dq(value: str) -> str:
    """Double-quote a profile value, keeping ``$VAR`` expansion (profiles forbid " ` \\)."""
    return f'"{value}"'


def _flag(text: str) -> tuple[str, object]:
    """``--exclusive`` → (exclusive, True); ``--constraint=x`` → (constraint, x) (sbatch_extra)."""
    key, eq, value = str(text).lstrip("-").partition("=")
    return key, (value if eq else True)


def python_command(profile) -> str:
    """The shell command that runs Python in a task: the profile's python (default: this one),
    inside the profile's container when it has one (submitit's ``python=``)."""
    py = profile.python or sys.executable
    c = profile.container
    if not c.image:
        return shlex.quote(py)
    runner = [*shlex.split(c.exec), *c.args]
    for b in c.binds:
        runner += ["-B", b]
    return shlex.join([*runner, c.image, py])


def executor_parameters(launcher, profile, job_name: str, *, chdir: str | None = None) -> dict:
    """submitit ``SlurmExecutor.update_parameters`` keywords for one job shape (pure); ``launcher``: a
    `training.config.LauncherConfig`."""
    lc, prof = launcher, profile
    if prof.signal_before_end_s * 2 > lc.time_min * 60:
        raise UserError(
            f"resources.time_min={lc.time_min} leaves no time to train: the profile {prof.name!r} signals "
            f"{prof.signal_before_end_s} s before the limit (signal_before_end_s must be at most half the time limit)"
        )
    setup = [str(s) for s in prof.setup]
    setup += [f"export {k}={_dq(v)}" for k, v in prof.env.items()]
    if prof.master_addr:
        setup.append(f"export MASTER_ADDR={shlex.quote(prof.master_addr)}")
    cpu_bind = prof.cpu_bind_for(lc.gpus_per_node)
    extra: dict = {"chdir": chdir or os.getcwd(), ("requeue" if prof.requeue else "no-requeue"): True}
    extra.update(_flag(x) for x in prof.sbatch_extra)
    params = dict(
        job_name=job_name, nodes=lc.nodes, ntasks_per_node=lc.nproc, cpus_per_task=lc.cpus_per_task,
        time=lc.time_min,
        signal_delay_s=int(prof.signal_before_end_s), stderr_to_stdout=True, setup=setup,
        srun_args=([f"--cpu-bind={cpu_bind}"] if cpu_bind else []) + [str(a) for a in prof.srun_args],
        additional_parameters=extra,
        wckey=None,  # submitit's default "submitit" is refused where wckeys are enforced
    )
    if lc.gpus_per_node:
        params["gpus_per_node"] = lc.gpus_per_node
    if lc.mem_gb:
        params["mem"] = f"{lc.mem_gb}GB"
    for key in ("partition", "account", "qos"):
        if getattr(lc, key):
            params[key] = str(getattr(lc, key))
    if prof.array_parallel:
        params["array_parallelism"] = int(prof.array_parallel)
    return params


def array_limit(profile, max_parallel: int | None) -> int | None:
    """The array's ``%N``: the smaller of the sweep's ``launcher.max_parallel`` and the profile's
    ``array_parallel`` (None: neither is set, submitit's default applies)."""
    limits = [int(x) for x in (max_parallel, profile.array_parallel) if x]
    return min(limits) if limits else None


_SCONTROL_MAX_ARRAY = re.compile(r"^MaxArraySize\s*=\s*(\d+)", re.MULTILINE)


def parse_max_array_size(scontrol_config: str) -> int | None:
    """``MaxArraySize`` from the text of ``scontrol show config`` (None when it is not there)."""
    m = _SCONTROL_MAX_ARRAY.search(scontrol_config)
    return int(m.group(1)) if m else None


@functools.cache
def _cluster_max_array_size() -> int | None:
    """The cluster's ``MaxArraySize`` (None when no controller answers); asked once per process."""
    try:
        r = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_max_array_size(r.stdout) if r.returncode == 0 else None


def max_array_size(profile) -> int:
    """Tasks one job array may hold (task ids 0..N-1): the profile's ``max_array_size``, else the
    cluster's ``MaxArraySize`` (``scontrol show config``), else SLURM's default (1001)."""
    return profile.max_array_size or _cluster_max_array_size() or DEFAULT_MAX_ARRAY_SIZE


def _executor(folder: Path, profile, params: dict, *, render_only: bool = False):
    import submitit

    cls = submitit.SlurmExecutor
    if render_only:  # submitit refuses to build an executor where srun is missing (a laptop)
        class _Render(submitit.SlurmExecutor):
            @classmethod
            def affinity(cls) -> int:
                return 1
        cls = _Render
    ex = cls(folder=folder, python=python_command(profile), max_num_timeout=0)
    ex.update_parameters(**params)
    return ex


def render_script(ex, n_tasks: int) -> str:
    """The sbatch text ``ex`` submits for ``n_tasks`` submissions (an array when > 1), exactly as
    submitit writes it. submitit has no public call for this text: this function alone uses its
    private ``_make_submission_file_text`` and ``_submitit_command_str`` (tests/test_submitit_versions.py
    renders it with the oldest and newest submitit pyproject allows)."""
    saved = dict(ex.parameters)
    if n_tasks > 1:
        ex.parameters["map_count"] = n_tasks
    try:
        return ex._make_submission_file_text(ex._submitit_command_str, uid="")
    finally:
        ex.parameters.clear()
        ex.parameters.update(saved)


def map_array(ex, fn, *args) -> tuple[list[str], str]:
    """``ex.map_array(fn, *args)``: one job array (sbatch); returns the job ids (``ARRAY_TASK``,
    or the job id of a single submission) and the script as submitted."""
    try:
        jobs = ex.map_array(fn, *args)
    except Exception as e:  # submitit's FailedJobError / FailedSubmissionError: sbatch said no
        raise SlurmError(f"sbatch failed: {e}") from e
    return [j.job_id for j in jobs], jobs[0].paths.submission_file.read_text()


@dataclass
class ArrayJob:
    """One sbatch submission: ``cells`` ``[(Cell, cell_dir)]`` (task i = cell i), its submitit
    parameters, and the arrays it waits for (job ids; ``<array K>``: the K-th of the same submission)."""

    cells: list
    params: dict
    after: list[str] = dataclasses.field(default_factory=list)

    def parameters(self, after: Sequence[str] | None = None) -> dict:
        """The submitit parameters, with ``--dependency=afterany:...`` on ``after`` (default: as planned)."""
        after = self.after if after is None else after
        return {**self.params, "dependency": "afterany:" + ":".join(after)} if after else dict(self.params)


class SlurmLauncher(base.Launcher):
    name = "slurm"
    blocking = False

    def __init__(self, sweep_dir, *, job_name: str = "sweep", profile=None, source: str = ""):
        if profile is None:
            from orchestrator.profiles import ClusterProfile

            profile = ClusterProfile()
        super().__init__(sweep_dir, job_name=job_name, profile=profile, source=source)
        self.folder = self.sweep_dir / LOG_DIR

    # -- what is submitted -----------------------------------------------------------------------
    def arrays(self, cells: list, after: Sequence[str] = ()) -> list[ArrayJob]:
        """The job arrays of ``cells``, in cell order: one per job shape, split at the cluster's
        ``max_array_size``. With a sweep limit (``launcher.max_parallel``) each array's ``%N`` is it
        (or the profile's ``array_parallel``, the smaller), and each array waits for the one before it
        and for ``after`` (arrays of the sweep still queued or running), so at most N cells run."""
        shapes: dict[tuple, list] = {}
        for cell, cdir in cells:
            shapes.setdefault(tuple(getattr(cell.config.launcher, k) for k in JOB_SHAPE), []).append((cell, cdir))
        sweep_limit = min((c.config.launcher.max_parallel for c, _ in cells if c.config.launcher.max_parallel),
                          default=None)
        size = max_array_size(self.profile) if any(len(m) > 1 for m in shapes.values()) else 1
        out: list[ArrayJob] = []
        for members in shapes.values():
            try:
                params = executor_parameters(members[0][0].config.launcher, self.profile, self.job_name)
            except UserError as e:
                raise UserError(f"{self.source}: {e}") from None
            limit = array_limit(self.profile, sweep_limit)
            if limit:
                params["array_parallelism"] = limit
            for i in range(0, len(members), size):
                out.append(ArrayJob(members[i:i + size], dict(params)))
        if sweep_limit:
            for k, job in enumerate(out):
                job.after = [f"<array {k - 1}>"] if k else list(after)
        return out

    def task_arguments(self, cells: list) -> tuple[list[str], list[dict], list[bool]]:
        """``map_array`` arguments of `slurm_task.run_cell`: cell folders, task env, requeue."""
        n = len(cells)
        return [str(cdir) for _, cdir in cells], [dict(self.profile.task_env)] * n, [bool(self.profile.requeue)] * n

    def render(self, cells: list) -> list[tuple[list, str]]:
        """The sbatch scripts submitit will submit for ``cells``: ``[(cells, text)]`` (a dependency on
        an array not submitted yet reads ``afterany:<array K>``)."""
        return [(job.cells, render_script(_executor(self.folder, self.profile, job.parameters(), render_only=True),
                                          len(job.cells)))
                for job in self.arrays(cells)]

    def describe(self, cells: list) -> list[str]:
        lines = []
        for k, (members, script) in enumerate(self.render(cells)):
            lines.append(f"# job array {k} of {len(members)} cells: " + ", ".join(
                f"[{i}] {c.id}" for i, (c, _) in enumerate(members)))
            lines.append(script)
        return lines

    # -- the interface ---------------------------------------------------------------------------
    def submit(self, cells: list, out: Callable[[str], None] = print) -> int:
        from orchestrator.launchers.slurm_task import run_cell

        ledger = Ledger(self.sweep_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        script_dir = self.sweep_dir / SCRIPT_DIR
        script_dir.mkdir(parents=True, exist_ok=True)
        running = sorted({r["job_id"].split("_")[0] for r in ledger.read()["cells"].values()
                          if r["state"] in ACTIVE and r.get("job_id")})
        submitted: list[str] = []
        for job in self.arrays(cells, after=running):
            params = job.parameters([submitted[int(a[len("<array "):-1])] if a.startswith("<") else a
                                     for a in job.after])
            ex = _executor(self.folder, self.profile, params)
            for _, cdir in job.cells:
                base.clear_exit_code(cdir)
            job_ids, script = map_array(ex, run_cell, *self.task_arguments(job.cells))
            n = len(list(script_dir.glob("submit-*.sbatch")))
            path = script_dir / f"submit-{n:03d}.sbatch"
            atomic_write_text(path, script)
            with ledger.locked() as data:
                for (c, _), jid in zip(job.cells, job_ids):
                    rec = data["cells"][c.id]
                    set_state(rec, "submitted", job_id=jid, job_ids=[*rec.get("job_ids", []), jid],
                              submissions=rec.get("submissions", 0) + 1, exit_code=None, reason=None)
            array = job_ids[0].split("_")[0]
            submitted.append(array)
            names = ", ".join(c.id for c, _ in job.cells[:10]) + (", ..." if len(job.cells) > 10 else "")
            waits = f", after {', '.join(params['dependency'].split(':')[1:])}" if "dependency" in params else ""
            out(f"submitted job array {array} ({len(job.cells)} cells: {names}{waits}) from {path}")
        return 0

    def refresh(self, data: dict) -> None:
        active = {cid: rec for cid, rec in data["cells"].items() if rec["state"] in ACTIVE and rec.get("job_id")}
        if not active:
            return
        states = job_states([rec["job_id"] for rec in active.values()])
        for rec in active.values():
            cdir = self.cell_dir(rec)
            info = states.get(rec["job_id"]) if states is not None else None
            if states is None:
                continue  # the scheduler did not answer: conclude nothing
            st = (info or {}).get("State", "").split(" ")[0].upper()
            if st in SQUEUE_ACTIVE:
                set_state(rec, SQUEUE_ACTIVE[st], slurm_state=st, reason=(info or {}).get("Reason"))
                continue
            rc = base.read_exit_code(cdir)
            if rc is not None:
                state = base.state_from_exit_code(rc)
                reason = None
                if state in ("preempted", "failed") and base.was_terminated(cdir):  # TERM, not requeued: scancel
                    # killed after TERM (its checkpoint took longer than KillWait) is a cancellation too
                    state, reason = "cancelled", ("terminated (scancel) after a checkpoint" if state == "preempted"
                                                  else f"terminated (scancel), killed with exit {rc} before it exited")
                set_state(rec, state, exit_code=rc, slurm_state=None, reason=reason)
            else:
                set_state(rec, FINAL_STATES.get(st, "cancelled"), slurm_state=st or None,
                          reason="left the queue without an exit code")

    def cancel(self, records: list[dict]) -> list[str]:
        tasks = [r["job_id"] for r in records if r["state"] in ACTIVE and r.get("job_id")]
        if tasks:
            r = _run(["scancel", *tasks])
            if r.returncode != 0 and "Invalid job id" not in r.stderr:
                raise SlurmError(f"scancel failed ({r.returncode}): {r.stderr.strip()}")
        return tasks


# ------------------------------------------------------------------------------ the scheduler

SQUEUE_ACTIVE = {
    "PENDING": "submitted", "CONFIGURING": "submitted", "REQUEUED": "submitted",
    "REQUEUE_HOLD": "submitted", "REQUEUE_FED": "submitted", "RESV_DEL_HOLD": "submitted",
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running", "STAGE_OUT": "running",
    "RESIZING": "running", "SIGNALING": "running",
}
FINAL_STATES = {  # sacct's word for a job that left without an exit-code file
    "COMPLETED": "done", "CANCELLED": "cancelled", "PREEMPTED": "preempted", "FAILED": "failed",
    "TIMEOUT": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise SlurmError(f"{argv[0]} not found: is this a SLURM login node?") from e
    except subprocess.TimeoutExpired as e:
        raise SlurmError(f"{' '.join(argv[:2])} timed out after {timeout:.0f}s") from e


_SACCT_OK: bool | None = None


def sacct_available() -> bool:
    """True when ``sacct`` answers (the cluster keeps accounting); asked once per process."""
    global _SACCT_OK
    if _SACCT_OK is None:
        try:
            _SACCT_OK = _run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], timeout=20).returncode == 0
        except SlurmError:
            _SACCT_OK = False
    return _SACCT_OK


def state_command(job_ids: Sequence[str]) -> list[str]:
    """The one scheduler call that answers for every job: ``sacct`` on the arrays (as submitit asks),
    or, where the cluster keeps no accounting, ``squeue`` in the same ``JobID|State|Reason`` shape
    (a job that left the queue then has no state, and the cell's exit-code file decides)."""
    if sacct_available():
        arrays = sorted({str(j).split("_")[0] for j in job_ids})
        return ["sacct", "-o", "JobID,State,NodeList", "--parsable2", *(x for a in arrays for x in ("-j", a))]
    return ["squeue", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"]


def read_states(text: str | bytes) -> dict[str, dict]:
    """``{job_id: {"JobID", "State", ...}}`` from sacct's or squeue's answer (submitit's public parser,
    which expands array ranges such as ``12_[2-3%4]``)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    text = text.decode() if isinstance(text, bytes) else text
    if text.startswith("JOBID|"):  # squeue's header
        text = "JobID|State|Reason\n" + text.split("\n", 1)[1]
    return SlurmInfoWatcher(delay_s=0).read_info(text)


def job_states(job_ids: Sequence[str]) -> dict[str, dict] | None:
    """``{job_id: {"State": ..., ...}}`` for ``job_ids`` (one scheduler call for all); None when the
    call itself failed (conclude nothing)."""
    if not job_ids:
        return {}
    try:
        output = subprocess.check_output(state_command(job_ids), stderr=subprocess.PIPE, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    info = read_states(output)
    return {str(j): info.get(str(j), {}) for j in job_ids}


# ------------------------------------------------------------------------------ shard builds

SHARD_RESOURCES = {"array_tasks": 0, "max_parallel": 64, "partition": None, "account": None, "qos": None,
                   "time_min": 60, "cpus_per_task": 1, "mem_gb": 4}


def shard_build_resources(profile, given: dict) -> dict:
    """One-task jobs (no GPU) with the profile's partition/account/qos unless ``given`` says otherwise."""
    unknown = sorted(set(given) - set(SHARD_RESOURCES))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in SHARD_RESOURCES.items())
        raise UserError(f"--slurm {unknown[0]}: unknown setting; valid: {valid}")
    fromprof = {k: profile.defaults[k] for k in ("partition", "account", "qos") if profile.defaults.get(k)}
    return {**SHARD_RESOURCES, **fromprof, **given, "nodes": 1, "nproc": 1, "gpus_per_node": 0}


def _shard_launcher(resources: dict):
    """The shard build's job shape as a `LauncherConfig` (validated as a run config's ``launcher``)."""
    from common.config import build_config
    from training.config import LauncherConfig

    keys = {f.name for f in dataclasses.fields(LauncherConfig)} - {"max_parallel"}
    return build_config(LauncherConfig, [("--slurm", {k: v for k, v in resources.items() if k in keys})])


def submit_shard_build(plan_path: Path, num_array: int, profile, resources: dict, *,
                       dry_run: bool = False) -> dict:
    """A shard build as submitit jobs with the cluster profile (container, setup, partition,
    account): an array of ``build_job.run_task(plan, i)`` and a ``build_job.run_finalize(plan)``
    job that runs after every task succeeded (``--dependency=afterok``). Logs and submitit's files
    in ``<out>/.build/logs``. ``dry_run``: the two scripts, nothing submitted."""
    from sharding.build_job import run_finalize, run_task

    folder = Path(plan_path).parent / "logs"
    params = executor_parameters(_shard_launcher(resources), profile, "shard-build")
    params["array_parallelism"] = int(resources["max_parallel"])
    fparams = {**params, "job_name": "shard-finalize"}
    args = ([str(plan_path)] * num_array, list(range(num_array)))
    if dry_run:
        scripts = {"array": render_script(_executor(folder, profile, params, render_only=True), num_array),
                   "finalize": render_script(_executor(folder, profile, {**fparams, "dependency": "afterok:<array>"},
                                                       render_only=True), 1)}
        return {"plan": str(plan_path), "array_tasks": num_array, "scripts": scripts}
    job_ids, array_script = map_array(_executor(folder, profile, params), run_task, *args)
    array = job_ids[0].split("_")[0]
    (final_id,), final_script = map_array(_executor(folder, profile, {**fparams, "dependency": f"afterok:{array}"}),
                                          run_finalize, [str(plan_path)])
    return {"plan": str(plan_path), "array_tasks": num_array, "array_job_id": array, "finalize_job_id": final_id,
            "scripts": {"array": array_script, "finalize": final_script}}
