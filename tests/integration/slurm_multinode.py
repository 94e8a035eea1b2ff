"""A real multi-node Slurm on one machine: a head and N nodes (2 by default), each node a set
of namespaces of its own.

* head = the machine's own namespaces: a munged (own key and socket) and a slurmctld, and a
  bridge with the subnet's first address;
* node K = an init process (it reaps orphans) in new PID, network, UTS and mount namespaces:
  hostname ``nodeK``, ``eth0`` on a veth into the bridge, its own /proc, sysfs
  (/sys/class/net lists lo and eth0), private tmpfs /tmp, /dev/shm and /run, an /etc/hosts of the
  cluster bound over the host's, and ``slurmd -N nodeK`` running there. A job step, the
  mounts it makes and the processes it leaves (sifbox's node mount holders) live in that
  node only; the epilog (sifbox/data/slurm-epilog.sh, with the CLI under test) runs there.

The root file system is shared, as a parallel file system would be: binaries, /home and
the cluster's directory under /var/tmp (configuration, munge socket, spools, logs and
``shared``, a world-writable directory for the jobs' files: the head's /tmp is not the
nodes'). Nothing of the host's configuration is touched: every daemon and client uses
``SLURM_CONF`` of the cluster's directory, on random free ports; bridge name and subnet are
chosen at random. Everything (node namespaces and what runs in them, veths, bridge,
daemons, directory) goes at the end of the session, whatever the tests did::

    from tests.integration import slurm_multinode

    multinode_cluster = slurm_multinode.multinode_cluster

    def test_x(multinode_cluster, run_as, as_who):
        run_as(as_who, ["srun", "-N2", "-n2", "hostname"], env=multinode_cluster.env(as_who))
        multinode_cluster.node_run("node1", ["findmnt"])   # a command inside node1
        with multinode_cluster.oci_conf(text): ...          # srun --container, every node

By hand (as root), for debugging: ``python -m tests.integration.slurm_multinode up [N]`` prints
the ``SLURM_CONF`` to export; ``... down`` stops it (see DEVELOPERS.md).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.slurm import (
    POLICY,
    _free_port,
    _pid,
    _stop,
    client_env,
    oci_conf_file,
    stage_epilog,
)

if TYPE_CHECKING:
    from tests.conftest import User

START_TIMEOUT = 60.0
MANUAL_DIR = Path("/var/tmp/sifbox-multinode")  # `up` by hand
#: PID 1 of a node: reaps every orphan (holders, daemons) until killed.
NODE_INIT = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.2)\n"
)


@dataclass
class Node:
    name: str
    addr: str
    init: int  # pid (in the head's PID namespace) of the node's PID 1
    pidns: int  # inode of the node's PID namespace, to find its processes from the head
    veth: str
    unshare: int = 0  # its parent (`unshare --fork`), the head's child


@dataclass
class MultiNodeCluster:
    base: Path  # configuration, munge, logs, spools
    shared: Path  # the jobs' directory, every user can write it (sticky)
    conf: Path
    head: str
    bridge: str
    subnet: str  # "10.A.B": head .1, node K .(10+K)
    nodes: list[Node] = field(default_factory=list)

    def env(self, user: User, **extra: str) -> dict[str, str]:
        """`user`'s environment for Slurm's clients (srun, sbatch, squeue): SLURM_CONF of the cluster."""
        return client_env(self.conf, user, **extra)

    @contextmanager
    def oci_conf(self, text: str) -> Iterator[Path]:
        """`oci.conf` next to slurm.conf (`srun --container`) for the duration of the `with`:
        every node's slurmstepd reads it at each step (the directory is shared), so no daemon
        restarts and the other tests never see it."""
        with oci_conf_file(self.base, text) as path:
            yield path

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def node_run(self, name: str, argv: Sequence[str], user: str | None = None, **kw: object
                 ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run `argv` inside node `name` (all its namespaces), as root or as `user`."""
        cmd = ["nsenter", "-t", str(self.node(name).init), "-p", "-n", "-u", "-m", "--", *argv]
        if user and user != "root":
            cmd[cmd.index("--") + 1 : cmd.index("--") + 1] = ["runuser", "-u", user, "--"]
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        check = bool(kw.pop("check", False))
        kw.setdefault("timeout", 60)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("env", {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        return subprocess.run(cmd, check=check, **kw)  # type: ignore[call-overload, no-any-return]

    def node_processes(self, name: str) -> dict[int, str]:
        """pid (the head's) -> comm of every live process of node `name`."""
        return {pid: comm for pid, comm in _in_pidns(self.node(name).pidns).items() if pid != self.node(name).init}

    def logs(self) -> str:
        out = []
        for log in sorted((self.base / "log").glob("*.log")):
            try:
                out.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def save(self) -> None:
        doc = asdict(self)
        doc.update(base=str(self.base), shared=str(self.shared), conf=str(self.conf))
        (self.base / "cluster.json").write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, base: Path) -> MultiNodeCluster:
        doc = json.loads((base / "cluster.json").read_text())
        nodes = [Node(**n) for n in doc.pop("nodes")]
        return cls(**{**doc, "base": Path(doc["base"]), "shared": Path(doc["shared"]), "conf": Path(doc["conf"])},
                   nodes=nodes)  # fmt: skip


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _pick_subnet() -> str:
    """A random 10.A.B/24 no interface or route of the machine uses (sessions in other PID
    namespaces share the network namespace: a pid is no unique seed)."""
    used = _ip("-4", "-o", "addr").stdout + _ip("-4", "route").stdout
    rng = random.SystemRandom()
    for _ in range(200):
        net = f"10.{rng.randrange(100, 250)}.{rng.randrange(1, 255)}"
        if f" {net}." not in used and f"\n{net}." not in used and not used.startswith(f"{net}."):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet")


def _ns_inode(pid: int, ns: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{ns}").st_ino


def _in_pidns(inode: int) -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != inode:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2 :].startswith("Z"):
            continue
        found[int(entry)] = stat[stat.index("(") + 1 : stat.rindex(")")]
    return found


def _conf(base: Path, head: str, subnet: str, n: int) -> str:
    from tests.conftest import INSTALLED_CLI

    epilog = stage_epilog(base, INSTALLED_CLI)
    nodes = "\n".join(f"NodeName=node{k} NodeAddr={subnet}.{10 + k}" for k in range(1, n + 1))
    return f"""ClusterName=sifboxmn
SlurmctldHost={head}({subnet}.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={base / "msock" / "sock"}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base / "state"}
SlurmdSpoolDir={base / "%n" / "spool"}
SlurmctldPidFile={base / "slurmctld.pid"}
SlurmdPidFile={base / "%n" / "slurmd.pid"}
SlurmctldLogFile={base / "log" / "slurmctld.log"}
SlurmdLogFile={base / "log" / "slurmd-%n.log"}
Epilog={epilog}
KillWait=3
{POLICY}NodeName=DEFAULT CPUs=2 State=UNKNOWN
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


#: Inside a new node (as root, all its namespaces): name, address, route; drop the copies of
#: the head's /tmp, /dev/shm, FUSE, SquashFS and overlay mounts (a copy would keep another
#: session's FUSE server or loop device busy), then private tmpfs /tmp, /dev/shm and /run (root's
#: holders keep their state in /run/sifbox, the node's own), a sysfs
#: of the node's network namespace (keeping the cgroup mounts), the cluster's /etc/hosts.
NODE_SETUP = r"""
hostname "$NODE"; ip link set lo up; ip addr add "$ADDR/24" dev eth0; ip link set eth0 up
ip route add default via "$GW"
findmnt -rn -o TARGET,FSTYPE | awk '$1 ~ "^/(tmp|dev/shm)/" || $2 ~ "^(fuse|squashfs|overlay)"' \
    | cut -d' ' -f1 | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
mount -t tmpfs -o mode=1777,nosuid,nodev "$NODE-tmp" /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev "$NODE-shm" /dev/shm
mount -t tmpfs -o mode=755,nosuid,nodev "$NODE-run" /run; mkdir -m 755 /run/user /run/mount; mkdir -m 1777 /run/lock
mkdir /tmp/.cg; mount --rbind /sys/fs/cgroup /tmp/.cg
mount -t sysfs "$NODE-sys" /sys; mount --move /tmp/.cg /sys/fs/cgroup; rmdir /tmp/.cg
mount --bind "$HOSTS" /etc/hosts
exec slurmd -f "$SLURM_CONF" -N "$NODE"
"""


def start_cluster(n: int = 2, base: Path | None = None) -> MultiNodeCluster:
    """Start a cluster of `n` nodes in `base` (a fresh directory under /var/tmp if None)."""
    for tool in ("munged", "mungekey", "slurmctld", "slurmd", "srun", "unshare", "nsenter", "ip", "findmnt"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"{tool} is not installed (Debian packages slurm-wlm, munge, iproute2, util-linux)")
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="sifbox-multinode-", dir="/var/tmp"))
    else:
        base.mkdir(mode=0o755)
    base.chmod(0o755)
    head = os.uname().nodename.split(".")[0]
    br = f"sbmn{secrets.token_hex(4)}"  # random: another PID namespace's session may have our pid
    cluster = MultiNodeCluster(base, base / "shared", base / "slurm.conf", head, br, _pick_subnet())
    try:
        _start(cluster, n)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _start(cluster: MultiNodeCluster, n: int) -> None:
    base, net = cluster.base, cluster.subnet
    for d in ("state", "log", "msock", *(f"node{k}/spool" for k in range(1, n + 1))):
        (base / d).mkdir(mode=0o755, parents=True)
    cluster.shared.mkdir(mode=0o755)
    cluster.shared.chmod(0o1777)
    (base / "munge").mkdir(mode=0o700)
    key = base / "munge" / "key"
    subprocess.run(["mungekey", "-c", "-k", str(key), "-b", "1024"], check=True, capture_output=True)
    key.chmod(0o400)
    subprocess.run(
        ["munged", f"--socket={base / 'msock' / 'sock'}", f"--key-file={key}", f"--pid-file={base / 'munge' / 'pid'}",
         f"--log-file={base / 'munge' / 'log'}", f"--seed-file={base / 'munge' / 'seed'}", "--force"],
        check=True, capture_output=True,
    )  # fmt: skip
    hosts = base / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{net}.1 head {cluster.head}\n"
                     + "".join(f"{net}.{10 + k} node{k}\n" for k in range(1, n + 1)))  # fmt: skip
    hosts.chmod(0o644)
    cluster.conf.write_text(_conf(base, cluster.head, net, n))
    cluster.conf.chmod(0o644)
    cluster.save()
    _ip("link", "add", cluster.bridge, "type", "bridge")
    _ip("addr", "add", f"{net}.1/24", "dev", cluster.bridge)
    _ip("link", "set", cluster.bridge, "up")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(cluster.conf)}
    subprocess.run(["slurmctld", "-f", str(cluster.conf)], check=True, capture_output=True, env=env)
    for k in range(1, n + 1):
        _start_node(cluster, k, env)
    cluster.save()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=env,
                              check=False)  # fmt: skip
        states = dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)
        if len(states) == n and all(s == "idle" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not come up: {proc.stdout}{proc.stderr}\n{cluster.logs()}")
        time.sleep(0.3)


def _start_node(cluster: MultiNodeCluster, k: int, env: dict[str, str]) -> None:
    name, addr, veth = f"node{k}", f"{cluster.subnet}.{10 + k}", f"{cluster.bridge}n{k}"
    init = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--uts", "--mount", "--propagation", "private",
         sys.executable, "-I", "-c", NODE_INIT],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    # `unshare --fork`: the node's PID 1 is unshare's child, the python init.
    deadline = time.monotonic() + 10
    pid = 0
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{init.pid}/task/{init.pid}/children").read_text().split()
        if kids and os.readlink(f"/proc/{kids[0]}/ns/pid") != os.readlink("/proc/self/ns/pid"):
            pid = int(kids[0])
            if Path(f"/proc/{pid}/exe").resolve() == Path(sys.executable).resolve():
                break
        time.sleep(0.02)
    if not pid:
        init.kill()
        init.wait()
        raise RuntimeError(f"{name}: its init did not start")
    cluster.nodes.append(Node(name, addr, pid, _ns_inode(pid, "pid"), veth, init.pid))
    cluster.save()
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
    _ip("link", "set", veth, "master", cluster.bridge, "up")
    proc = cluster.node_run(name, ["sh", "-ec", NODE_SETUP], timeout=30,
                            env={**env, "NODE": name, "ADDR": addr, "GW": f"{cluster.subnet}.1",
                                 "HOSTS": str(cluster.base / "hosts")})  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: setting up failed: {proc.stderr}\n{cluster.logs()}")


def stop_cluster(cluster: MultiNodeCluster, timeout: float = 10.0) -> list[str]:
    """Stop everything; returns what was still there at the end (should be nothing)."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLURM_CONF": str(cluster.conf)}
    if cluster.conf.exists():
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=env, timeout=30, check=False)
    # A node's PID 1 dies: the kernel kills every process of its PID namespace (slurmd, job
    # steps, holders, FUSE servers), and its mount namespace, with the mounts and loop
    # devices made there, goes with the last of them.
    for node in cluster.nodes:
        for pid in (node.init,):
            try:
                if os.stat(f"/proc/{pid}/ns/pid").st_ino == node.pidns:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for node in cluster.nodes:
        try:
            os.waitpid(node.unshare, 0)
        except ChildProcessError:
            pass  # not this process's child (a cluster started by `up`)
    deadline = time.monotonic() + timeout
    left: list[str] = []
    while time.monotonic() < deadline:
        left = [f"{n.name}: {pid} {comm}" for n in cluster.nodes for pid, comm in _in_pidns(n.pidns).items()]
        if not left:
            break
        time.sleep(0.05)
    # A veth normally dies with its network namespace, but a namespace can outlive its
    # processes for a while (sockets in FIN-WAIT): delete it by name now.
    for link in [n.veth for n in cluster.nodes] + [cluster.bridge]:
        _ip("link", "del", link, check=False)
    _stop(cluster.base / "slurmctld.pid")
    _stop(cluster.base / "munge" / "pid")
    links = _ip("-o", "link", "show", check=False).stdout
    left += [f"link {link}" for link in [cluster.bridge, *(n.veth for n in cluster.nodes)] if f" {link}:" in links
             or f" {link}@" in links]  # fmt: skip
    for pidfile in ("slurmctld.pid", "munge/pid"):
        pid = _pid(cluster.base / pidfile)
        if pid and _alive(pid):
            left.append(f"{pidfile} {pid}")
    shutil.rmtree(cluster.base, ignore_errors=True)
    return left


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


#: The nodes of the tests' cluster (`multinode_cluster`).
NODES = ("node1", "node2")
#: What may run in a node with no job: slurmd (and the node's init, never listed).
IDLE_NODE = {"slurmd"}


@pytest.fixture(scope="session")
def multinode_cluster() -> Iterator[MultiNodeCluster]:
    """A running 2-node Slurm (see the module doc); skips if Slurm/munge are not installed."""
    if os.geteuid() != 0:
        pytest.skip("starting a multi-node Slurm needs root (namespaces, veths, daemons)")
    cluster = start_cluster(len(NODES))
    try:
        yield cluster
    finally:
        left = stop_cluster(cluster)
    assert not left, f"the multi-node cluster left behind: {left}"


def main(argv: Sequence[str]) -> int:
    usage = "usage: python -m tests.integration.slurm_multinode up [N] | down [DIR]  (as root)"
    if not argv or argv[0] not in ("up", "down") or os.geteuid() != 0:
        print(usage, file=sys.stderr)
        return 2
    # `down DIR`: a cluster of a test session that was killed (/var/tmp/sifbox-multinode-*).
    where = Path(argv[1]) if argv[0] == "down" and len(argv) > 1 else MANUAL_DIR
    if argv[0] == "down" or (where / "cluster.json").exists():
        if (where / "cluster.json").exists():
            left = stop_cluster(MultiNodeCluster.load(where))
            print(f"slurm_multinode: stopped{'; left: ' + ', '.join(left) if left else ''}")
        if argv[0] == "down":
            return 0
    n = int(argv[1]) if len(argv) > 1 else 2
    t = time.monotonic()
    try:
        cluster = start_cluster(n, MANUAL_DIR)
    except pytest.skip.Exception as err:
        print(f"slurm_multinode: {err}", file=sys.stderr)
        return 1
    print(f"slurm_multinode: {n} nodes idle in {time.monotonic() - t:.1f} s "
          f"(node1..node{n} = {cluster.subnet}.11.., head {cluster.subnet}.1, bridge {cluster.bridge})\n"
          f"export SLURM_CONF={cluster.conf}   # shared directory: {cluster.shared}\n"
          f"inside a node: nsenter -t {cluster.nodes[0].init} -p -n -u -m -- sh    # node1\n"
          f"logs: {cluster.base / 'log'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
