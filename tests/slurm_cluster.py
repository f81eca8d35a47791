"""A real two-node SLURM cluster on this one machine, for the `@pytest.mark.slurm` tests.

Starts munged (own key and socket), slurmctld and two slurmd (``node1``, ``node2``, both on
127.0.0.1 with their own ports) under one base directory, as root and in the background; stops them
by PID. No accounting (no slurmdbd): ``sacct`` is unavailable, so the orchestrator must (and does)
work from ``squeue`` plus the files each job writes, and every wait here is bounded.

Partitions:
  ``debug`` (default, PriorityTier=1, PreemptMode=REQUEUE): where sweeps run.
  ``urgent`` (PriorityTier=10): a job here preempts (requeues) ``debug`` jobs on its node, after
  sending them their ``--signal`` (``preempt_send_user_signal``) and a ``GraceTime``.
The main scheduler runs every 2 s and backfill every second (``sched_interval=2,bf_interval=1``;
SLURM's defaults are 60 s and 30 s): a requeued job starts again ~10 s after its preemption
instead of ~35 s, and the tests wait that much less.

Usage::

    with SlurmCluster(tmp_dir) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)
    with SlurmCluster(tmp_dir).as_default() as cluster:   # SLURM_CONF set for this process too
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
GRACE_TIME_S = 20


def slurm_available() -> str | None:
    """None when the SLURM and munge daemons are installed, else the reason to skip."""
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (daemons run as SlurmUser=root)"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return (
            f"{', '.join(missing)} not installed: apt-get install -y slurm-wlm slurmctld slurmd "
            "slurm-client munge"
        )
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """munged + slurmctld + slurmd×2 rooted at ``base``; ``env`` points clients at it. More CPUs per node
    than the machine has (the scale rehearsal's slots for waiting ranks) use `config_overrides`."""

    def __init__(self, base: Path, cpus_per_node: int = 2, mem_mb_per_node: int = 8000):
        self.base = Path(base)
        self.cpus_per_node = cpus_per_node
        self.mem_mb_per_node = mem_mb_per_node
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.base / "etc" / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- configuration -------------------------------------------------------------------------
    def _write_conf(self) -> None:
        b = self.base
        for sub in ("etc", "state", "spool", "log", "munge", "run"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, n1, n2 = _free_ports(3)
        node = (
            f"CPUs={self.cpus_per_node} RealMemory={self.mem_mb_per_node} "
            "NodeHostname=localhost NodeAddr=127.0.0.1 State=UNKNOWN"
        )
        self.conf.write_text(
            f"""ClusterName=testcluster
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool/%n
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd-%n.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobRequeue=1
KillWait=30
MailProg=/bin/true
MinJobAge=600
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{"SlurmdParameters=config_overrides" + chr(10) if self.cpus_per_node > (os.cpu_count() or 1) else ""}PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=node1 Port={n1} {node}
NodeName=node2 Port={n2} {node}
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={GRACE_TIME_S}
PartitionName=urgent Nodes=node1,node2 MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""
        )
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    # -- lifecycle -------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 (lives with the proc)
        self.procs[name] = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def start(self, timeout_s: float = 60.0) -> SlurmCluster:
        self._write_conf()
        m = self.base / "munge"
        self._spawn(
            "munged",
            [
                _exe("munged"), "-F", "--force", f"--key-file={m / 'munge.key'}",
                f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), timeout_s, "munged socket")
        self._spawn("slurmctld", [_exe("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout_s, "slurmctld ping")
        for n in ("node1", "node2"):
            self._spawn(f"slurmd-{n}", [_exe("slurmd"), "-D", "-N", n, "-f", str(self.conf)])
        self._wait(self._nodes_idle, timeout_s, "both nodes idle")
        return self

    def stop(self) -> None:
        """SIGTERM each daemon we started (by PID, slurmd first), then SIGKILL what is left."""
        for name in sorted(self.procs, key=lambda n: DAEMONS.index(n.split("-")[0]), reverse=True):
            p = self.procs[name]
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def as_default(self):
        """Started, with this process's SLURM clients (in-process sbatch/squeue/scontrol, submitit) pointed
        at it through ``SLURM_CONF``; at exit the jobs still queued or running are cancelled (they end
        with the cluster, not after it), ``SLURM_CONF`` is restored and the daemons stop."""
        old = os.environ.get("SLURM_CONF")
        with self:
            os.environ["SLURM_CONF"] = str(self.conf)
            try:
                yield self
            finally:
                subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True, timeout=30)
                if old is None:
                    os.environ.pop("SLURM_CONF", None)
                else:
                    os.environ["SLURM_CONF"] = old

    # -- helpers ---------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; returns stdout."""
        r = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def _ok(self, argv: list[str], needle: str) -> bool:
        try:
            r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0 and needle in r.stdout

    def _nodes_idle(self) -> bool:
        try:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        except subprocess.TimeoutExpired:
            return False
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return {states.get("node1"), states.get("node2")} <= {"idle"} and len(states) >= 2

    def _wait(self, cond, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}); logs in {self.base / 'log'}")
            if cond():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}; logs in {self.base / 'log'}")

    def log_tail(self, n: int = 40) -> str:
        """The last lines of every daemon log, for failure messages."""
        parts = []
        for f in sorted((self.base / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"== {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)
