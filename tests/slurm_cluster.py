"""A throw-away single-node Slurm cluster for tests: munged, slurmctld and slurmd as the current user.

Everything lives in one temporary folder (munge key and socket, slurm.conf, state, spool, logs);
nothing under /etc, /run or /var is read or written, no systemd, no cgroups, no root needed. The
daemons run in the foreground as children of the test process and are stopped by their process
ids at the end.

    cluster folder (one per start: try1/, and try2/ when a daemon failed, e.g. on a taken port)
    |-- munge/      munge.key (made by mungekey), munge.socket, munged.log
    |-- slurm.conf  SlurmctldHost = this host's short name at 127.0.0.1, NodeName=localhost,
    |               free ports, proctrack/linuxproc, task/none, no accounting
    |-- state/      StateSaveLocation          spool/  SlurmdSpoolDir
    `-- slurmctld.log, slurmd.log

Use the session fixture ``slurm`` (import ``slurm_fixture`` from this module into a test module),
or ``with running_cluster() as cluster:`` outside pytest;
it yields a :class:`SlurmCluster` whose ``env`` has SLURM_CONF set, so ``sbatch``, ``squeue``,
``srun``... talk to this cluster. It skips, with the reason (and the daemon's last log line),
when the binaries are missing (Debian: ``apt-get install slurm-wlm munge``) or the daemons do not
come up. Every wait here has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("mungekey", "munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel", "srun")
NODE = "localhost"
PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """The cluster cannot run here; the message says why."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin (where Debian puts the daemons; often not on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (the kernel picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def last_line(path: Path) -> str:
    """The last non-empty line of a log file, or a note that there is none."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no log at {path}"
    return lines[-1].strip() if lines else f"{path.name} is empty"


def slurm_conf(root: Path, user: str, ctld_port: int, slurmd_port: int, cpus: int, memory_mb: int) -> str:
    """The slurm.conf of a one-node cluster kept under ``root``."""
    host = socket.gethostname().split(".")[0]
    return "\n".join([
        "ClusterName=emtools-test",
        # slurmctld only runs where its host name is listed; the address keeps traffic on loopback
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # no cgroups in a container: processes are tracked through /proc, tasks are not bound
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        # start dependent jobs within a second or two of their dependency ending
        "SchedulerParameters=sched_interval=2,batch_sched_delay=0,sched_min_interval=0",
        # keep finished jobs' records (JobState, ExitCode) long enough for a test to read them
        "MinJobAge=600",
        "ReturnToService=2",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=5",
        # this node's real hardware may differ from the small node declared here
        "SlurmdParameters=config_overrides",
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class SlurmCluster:
    """A running one-node cluster: its folder, the environment its clients need, its daemons."""

    root: Path
    env: dict
    user: str
    processes: dict = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 30, cwd=None, check: bool = False) -> subprocess.CompletedProcess:
        """Run a Slurm client (``sbatch``, ``squeue``, ...) against this cluster (text mode)."""
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=self.env,
                              cwd=cwd, timeout=timeout, check=check)

    def logs(self) -> str:
        """The last line of each daemon's log: for failure messages."""
        return "; ".join(f"{name}: {last_line(self.root / log)}" for name, log in
                         (("munged", "munge/munged.log"), ("slurmctld", "slurmctld.log"), ("slurmd", "slurmd.log")))

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job``: one {field: value} per job, or per task of a job array; [] once
        Slurm has forgotten the job (MinJobAge after it ended)."""
        done = self.run("scontrol", "-o", "show", "job", str(job_id), timeout=20)
        if done.returncode != 0:
            return []
        return [dict(part.split("=", 1) for part in line.split() if "=" in part)
                for line in done.stdout.splitlines() if line.strip()]

    def wait_for_jobs(self, job_ids, timeout: float) -> None:
        """Wait until none of ``job_ids`` (or their array tasks) is in the queue any more; past
        ``timeout`` seconds cancel them and raise TimeoutError."""
        job_ids = [str(j) for j in job_ids]
        deadline = time.monotonic() + timeout
        left = ["?"]
        while time.monotonic() < deadline:
            # the whole queue, not `squeue -j`: that fails on ids Slurm has already forgotten
            queued = self.run("squeue", "-h", "-o", "%i %T %r", timeout=20)
            if queued.returncode == 0:
                left = [line for line in queued.stdout.splitlines() if line.split()[0].split("_")[0] in job_ids]
                if not left:
                    return
            time.sleep(0.5)
        self.run("scancel", *job_ids, timeout=20)
        raise TimeoutError(f"jobs {','.join(job_ids)} not done after {timeout:.0f} s: {'; '.join(left)} ({self.logs()})")


def _wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (subprocess.TimeoutExpired, OSError):
            pass  # a client that hangs or fails now may answer on the next try
        time.sleep(interval)
    return False


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def start_cluster(root: Path, cpus: int = 2, memory_mb: int = 1000, timeout: float = 30) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root``; return once ``sinfo`` shows the node idle.

    Raises SlurmUnavailable with the reason (a missing binary, or the failing daemon's last log
    line); the daemons already started are stopped first.
    """
    paths = {name: find_binary(name) for name in DAEMONS + CLIENTS}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise SlurmUnavailable(f"Slurm/munge not installed (missing {', '.join(missing)}; "
                               "on Debian: apt-get install slurm-wlm munge)")
    # Unix socket paths are limited to 108 bytes
    if len(str(root / "munge" / "munge.socket")) > 100:
        raise SlurmUnavailable(f"cluster folder path too long for a Unix socket: {root}")
    for folder in ("munge", "state", "spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o755)  # munged wants its socket's folder searchable by all
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise SlurmUnavailable(f"user id {os.getuid()} has no name (SlurmUser needs one)") from None
    ctld_port, slurmd_port = free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, user, ctld_port, slurmd_port, cpus, memory_mb))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    # the clients by name, as in the job scripts: their folders first on PATH
    client_dirs = dict.fromkeys(str(Path(paths[name]).parent) for name in CLIENTS)
    env["PATH"] = os.pathsep.join([*client_dirs, env.get("PATH", os.defpath)])
    cluster = SlurmCluster(root=root, env=env, user=user)
    try:
        key = root / "munge" / "munge.key"
        made = subprocess.run([paths["mungekey"], "--create", "--bits", "1024", "--keyfile", str(key)],
                              capture_output=True, text=True, timeout=20)
        if made.returncode != 0:
            raise SlurmUnavailable(f"mungekey failed: {made.stderr.strip()}")
        daemons = {
            # -F: foreground, so the Popen is the daemon; --force: run although /tmp is world-writable
            "munged": [paths["munged"], "-F", "--force", f"--key-file={key}",
                       f"--socket={root / 'munge' / 'munge.socket'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                       f"--log-file={root / 'munge' / 'munged.log'}", f"--seed-file={root / 'munge' / 'munged.seed'}"],
            # -D: foreground (a fresh StateSaveLocation: no jobs or nodes carried over)
            "slurmctld": [paths["slurmctld"], "-D", "-f", str(conf)],
            "slurmd": [paths["slurmd"], "-D", "-N", NODE, "-f", str(conf)],
        }
        logs = {"munged": root / "munge" / "munged.log", "slurmctld": root / "slurmctld.log", "slurmd": root / "slurmd.log"}
        ready = {
            "munged": lambda: (root / "munge" / "munge.socket").exists(),
            "slurmctld": lambda: cluster.run("scontrol", "ping", timeout=10).stdout.count("UP") > 0,
            "slurmd": lambda: True,
        }
        for name, command in daemons.items():
            with open(root / f"{name}.out", "wb") as out:
                cluster.processes[name] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                                           stderr=subprocess.STDOUT, env=env, cwd=root)
            process = cluster.processes[name]
            if not _wait_for(lambda: process.poll() is not None or ready[name](), timeout):
                raise SlurmUnavailable(f"{name} did not come up in {timeout:.0f} s: {last_line(logs[name])}")
            if process.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with {process.returncode}: "
                                       f"{last_line(logs[name])} / {last_line(root / f'{name}.out')}")

        def node_idle():
            if any(p.poll() is not None for p in cluster.processes.values()):
                return True
            shown = cluster.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T", timeout=10)
            return shown.stdout.strip() == "idle"

        if not _wait_for(node_idle, timeout, interval=0.3):
            state = cluster.run("sinfo", "-h", "-N", "-o", "%N %T %E", timeout=10).stdout.strip()
            raise SlurmUnavailable(f"node not idle after {timeout:.0f} s ({state}): {cluster.logs()}")
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with {process.returncode}: {last_line(logs[name])}")
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel what is left in the queue, then stop slurmd, slurmctld and munged (by their ids)."""
    if cluster.processes.get("slurmctld") is not None and cluster.processes["slurmctld"].poll() is None:
        with contextlib.suppress(Exception):
            cluster.run("scancel", "--full", "-u", cluster.user, timeout=10)
    for name in ("slurmd", "slurmctld", "munged"):
        process = cluster.processes.get(name)
        if process is not None:
            with contextlib.suppress(Exception):
                _stop(process)


def _make_root() -> Path:
    # a short path under /tmp: the munge socket's path must fit in 108 bytes
    return Path(tempfile.mkdtemp(prefix="emtools-slurm-", dir="/tmp" if os.path.isdir("/tmp") else None))


def start_with_retry(root: Path, attempts: int = 2, **options) -> SlurmCluster:
    """:func:`start_cluster` in ``root/try<n>``, once more with new ports if a daemon fails (another
    program may have taken a port between its choice and the daemon's bind)."""
    for attempt in range(1, attempts + 1):
        try:
            return start_cluster(root / f"try{attempt}", **options)
        except SlurmUnavailable as reason:
            if attempt == attempts or "not installed" in str(reason):
                raise


@contextlib.contextmanager
def running_cluster(**options):
    """``with running_cluster() as cluster:`` a cluster in a new temporary folder, stopped and the
    folder removed on leaving (also when it fails to start: SlurmUnavailable)."""
    root = _make_root()
    try:
        cluster = start_with_retry(root, **options)
        try:
            yield cluster
        finally:
            stop_cluster(cluster)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="slurm")
def slurm_fixture():
    """The session's one-node Slurm cluster (a :class:`SlurmCluster`), or a skip saying why not."""
    try:
        with running_cluster() as cluster:
            yield cluster
    except SlurmUnavailable as reason:
        pytest.skip(f"no single-node Slurm here: {reason}")
