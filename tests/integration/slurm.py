"""A real single-node Slurm for the tests: munged + slurmctld + slurmd from Debian.

Everything (configuration, munge key and socket, state, logs) lives in a fresh directory under
/tmp, on 127.0.0.1 with random free ports; the slurmd spool (where Slurm's PMIx plugin puts
each step's server socket) is under /var/lib, which a container does not see unless sifbox binds
it. `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none` need no cgroups, so `srun -O`
can start more ranks than the 2 cores. The daemons run as root; any user submits with
``SLURM_CONF`` set (``cluster.env(user)``). The epilog is sifbox's (sifbox/data/slurm-epilog.sh:
it prunes the job user's shared image mounts). Stopped and removed at the end of the session::

    from tests.integration.slurm import slurm_cluster  # noqa: F401

    def test_x(slurm_cluster, run_as, as_who):
        run_as(as_who, ["srun", "-n", "2", "hostname"], env=slurm_cluster.env(as_who))

`cluster.oci_conf(text)` gives it an oci.conf for a `with` block (`srun --container`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import User

DAEMONS = ("munged", "slurmctld", "slurmd")
START_TIMEOUT = 30.0


#: The plugins and policy of every test cluster's slurm.conf (hosts, ports, auth and paths
#: are each cluster's own): no cgroups (`srun -O` may start more ranks than cores), PMIx.
POLICY = """ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmix
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
"""


def stage_epilog(base: Path, cli: Path) -> Path:
    """BASE/epilog: the Slurm epilog sifbox ships (a copy in BASE: the repository may be
    unreadable to others), run with the CLI under test. It prunes the job user's shared image
    mounts once a job is over."""
    shipped = Path(__file__).resolve().parents[2] / "sifbox" / "data" / "slurm-epilog.sh"
    staged = base / "slurm-epilog.sh"
    shutil.copyfile(shipped, staged)
    epilog = base / "epilog"
    epilog.write_text(f"#!/bin/sh\nSIFBOX={cli} exec /bin/sh {staged} \"$@\"\n")
    epilog.chmod(0o755)
    return epilog


@contextmanager
def oci_conf_file(base: Path, text: str) -> Iterator[Path]:
    """BASE/oci.conf (next to slurm.conf) holding `text` for the duration of the `with`."""
    path = base / "oci.conf"
    path.write_text(text)
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def client_env(conf: Path, user: User, **extra: str) -> dict[str, str]:
    """`user`'s environment for Slurm's clients (srun, sbatch, squeue) of the cluster whose
    slurm.conf is `conf`: none of the caller's own job or MPI variables, but `extra`."""
    from tests.integration.images import env_for

    env = env_for(user, SLURM_CONF=str(conf), **extra)
    for k in list(env):
        if k.startswith(("SLURM_", "PMI", "OMPI_", "PMIX_")) and k != "SLURM_CONF" and k not in extra:
            del env[k]
    return env


@dataclass
class SlurmCluster:
    base: Path  # configuration, logs, munge
    spool: Path  # slurmd spool (PMIx server sockets)
    conf: Path
    node: str

    def env(self, user: User, **extra: str) -> dict[str, str]:
        return client_env(self.conf, user, **extra)

    @contextmanager
    def oci_conf(self, text: str) -> Iterator[Path]:
        """`oci.conf` next to slurm.conf (`srun --container`) for the duration of the `with`:
        slurmstepd reads it at each step, so no daemon restarts and other tests never see it."""
        with oci_conf_file(self.base, text) as path:
            yield path

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            try:
                out.append(f"--- {name}\n" + (self.base / "log" / name).read_text()[-3000:])
            except OSError:
                pass
        return "\n".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pidfile: Path, timeout: float = 10.0) -> None:
    pid = _pid(pidfile)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    # A daemon that forked away is this session's child once it is a subreaper (the leak guards
    # make it one): gone means a zombie too (reaped here), not just no process.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            _reap(pid)
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stepds(cluster: SlurmCluster) -> list[int]:
    """slurmstepd processes of this cluster (they inherit slurmd's SLURM_CONF)."""
    pids = []
    mark = f"SLURM_CONF={cluster.conf}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "slurmstepd":
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if mark in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def start_cluster() -> SlurmCluster:
    for tool in ("munged", "mungekey", "slurmctld", "slurmd", "srun"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"{tool} is not installed (Debian packages slurm-wlm, munge)")
    base = Path(tempfile.mkdtemp(prefix="sifbox-slurm-", dir="/tmp"))
    base.chmod(0o755)
    spool = Path(tempfile.mkdtemp(prefix="sifbox-slurm-spool-", dir="/var/lib"))
    spool.chmod(0o755)
    for d in ("state", "log", "msock"):
        (base / d).mkdir(mode=0o755)
    (base / "munge").mkdir(mode=0o700)
    key = base / "munge" / "key"
    subprocess.run(["mungekey", "-c", "-k", str(key), "-b", "1024"], check=True, capture_output=True)
    key.chmod(0o400)
    sock = base / "msock" / "sock"
    subprocess.run(
        ["munged", f"--socket={sock}", f"--key-file={key}", f"--pid-file={base / 'munge' / 'pid'}",
         f"--log-file={base / 'munge' / 'log'}", f"--seed-file={base / 'munge' / 'seed'}", "--force"],
        check=True, capture_output=True,
    )  # fmt: skip
    node = socket.gethostname().split(".")[0]
    # The epilog sifbox ships, run with the CLI under test: it prunes the job user's shared
    # image mounts once a job is over (tests/integration/test_shared_mounts_slurm.py).
    from tests.conftest import INSTALLED_CLI

    epilog = stage_epilog(base, INSTALLED_CLI)
    conf = base / "slurm.conf"
    conf.write_text(
        f"""ClusterName=sifboxtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base / "state"}
SlurmdSpoolDir={spool}
SlurmctldPidFile={base / "slurmctld.pid"}
SlurmdPidFile={base / "slurmd.pid"}
SlurmctldLogFile={base / "log" / "slurmctld.log"}
SlurmdLogFile={base / "log" / "slurmd.log"}
Epilog={epilog}
KillWait=2
{POLICY}NodeName={node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
    )
    conf.chmod(0o644)
    cluster = SlurmCluster(base, spool, conf, node)
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf)], check=True, capture_output=True, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, check=False)
            if proc.returncode == 0 and proc.stdout.strip() in ("idle", "mix", "alloc"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm did not come up: {proc.stdout}{proc.stderr}\n{cluster.logs()}")
            time.sleep(0.3)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    env = dict(os.environ, SLURM_CONF=str(cluster.conf))
    subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, env=env, timeout=30, check=False)
    _stop(cluster.base / "slurmd.pid")
    _stop(cluster.base / "slurmctld.pid")
    for pid in _stepds(cluster):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _stop(cluster.base / "munge" / "pid")
    shutil.rmtree(cluster.spool, ignore_errors=True)
    shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node Slurm (see the module doc); skips if Slurm/munge are not installed."""
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd/munged needs root")
    cluster = start_cluster()
    pids = [p for p in (_pid(cluster.base / f) for f in ("munge/pid", "slurmctld.pid", "slurmd.pid")) if p]
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
    left = [pid for pid in pids if _alive(pid)] + _stepds(cluster)
    assert not left, f"Slurm/munge processes left running: {left}"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
