"""sifbox on a multi-node Slurm (tests/integration/slurm_multinode.py: two nodes, each in its own
namespaces), as root and as the test user:

* `srun -N2 -n4 sifbox exec IMG hostname` runs on both nodes, one node mount holder started on
  each, the other rank of each node joining it;
* an MPI job across both nodes over TCP (OpenMPI in the image, Slurm's PMIx);
* while a job runs, exactly one holder per node for the user and image; once it ended, or was
  cancelled with scancel, the epilog (sifbox/data/slurm-epilog.sh) leaves nothing of it on any
  node: no holder, no FUSE server, no container process, no mount, no loop device;
* a state directory that both nodes share (XDG_RUNTIME_DIR on a shared file system) still
  gives one holder per node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images, slurm_multinode
from tests.integration import mpi_images as hpc
from tests.integration.mpi_images import MpiImages
from tests.integration.slurm_multinode import MultiNodeCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

multinode_cluster = slurm_multinode.multinode_cluster
mpi_images = hpc.mpi_images
TIMEOUT = 120
NODES, IDLE_NODE = slurm_multinode.NODES, slurm_multinode.IDLE_NODE


@pytest.fixture(scope="module")
def image(multinode_cluster: MultiNodeCluster, sifbox_cli: str) -> Iterator[Path]:
    """The busybox test image, as a SIF in the cluster's shared directory."""
    base = multinode_cluster.shared / "images"
    base.mkdir(mode=0o755)
    root = images.make_busybox_rootfs(base / "root")
    sif = images.make_sif(sifbox_cli, images.mksquashfs(root, base / "busybox.sqfs"), base / "busybox.sif")
    sif.chmod(0o644)
    yield sif


def _srun(cluster: MultiNodeCluster, run_as, who, argv, *opts: str, **env: str):  # type: ignore[no-untyped-def]
    return run_as(who, ["srun", f"--chdir={cluster.shared}", "-N2", "-n4", *opts, *argv],
                  env=cluster.env(who, **env), timeout=TIMEOUT)  # fmt: skip


def _holders(cluster: MultiNodeCluster, node: str, uid: int) -> list[int]:
    """The live holder processes of `uid` in `node`."""
    found = []
    for pid, comm in cluster.node_processes(node).items():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        owner = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
        if comm == "sifbox-holder" and owner == uid:
            found.append(pid)
    return found


def _listing(cluster: MultiNodeCluster, node: str, who, cli: str, **env: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """`sifbox mounts list --json`, run as `who` inside `node`."""
    proc = cluster.node_run(node, ["env", f"HOME={who.home}", *(f"{k}={v}" for k, v in env.items()), cli, "mounts",
                                   "list", "--json"], user=who.name)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def _leftovers(cluster: MultiNodeCluster, image: Path) -> dict[str, list[str]]:
    """What a job of sifbox left on each node: processes besides slurmd, FUSE/SquashFS mounts in
    the node, loop devices of the image."""
    found: dict[str, list[str]] = {}
    for node in NODES:
        left = [f"{pid} {comm}" for pid, comm in cluster.node_processes(node).items() if comm not in IDLE_NODE]
        mountinfo = Path(f"/proc/{cluster.node(node).init}/mountinfo").read_text()
        left += [line.split(" - ")[1] for line in mountinfo.splitlines()
                 if line.split(" - ")[1].startswith(("fuse", "squashfs"))]  # fmt: skip
        if left:
            found[node] = left
    loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
    if loops.strip():
        found["loop devices"] = loops.splitlines()
    return found


def _settled(cluster: MultiNodeCluster, image: Path, limit: float = 30.0) -> dict[str, list[str]]:
    """Wait for the epilogs: nothing left on any node (else what is left)."""
    deadline = time.monotonic() + limit
    while (left := _leftovers(cluster, image)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _jobs(cluster: MultiNodeCluster, who) -> str:  # type: ignore[no-untyped-def]
    proc = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True,
                          env=cluster.env(who), check=False)  # fmt: skip
    return proc.stdout.strip()


def test_exec_on_both_nodes(multinode_cluster: MultiNodeCluster, image: Path, run_as, as_who, sifbox_cli) -> None:
    proc = _srun(multinode_cluster, run_as, as_who, [sifbox_cli, "-v", "exec", str(image), "hostname"])
    assert proc.returncode == 0, proc.stderr + multinode_cluster.logs()
    assert sorted(proc.stdout.split()) == ["node1", "node1", "node2", "node2"], proc.stdout
    # One holder started on each node, the other rank there joined it.
    assert proc.stderr.count("started the node mount holder") == 2, proc.stderr
    assert proc.stderr.count("joining the node mount holder") == 2, proc.stderr
    assert not (left := _settled(multinode_cluster, image)), left


def test_mpi_across_nodes_over_tcp(multinode_cluster: MultiNodeCluster, mpi_images: MpiImages, image: Path, run_as,
                                   as_who, sifbox_cli) -> None:  # fmt: skip
    tcp = {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "tcp,self"}  # every message over TCP, across the bridge
    hello = _srun(multinode_cluster, run_as, as_who, [sifbox_cli, "exec", str(mpi_images.hybrid), "/opt/mpitest/hello"],
                  "--mpi=pmix", **tcp)  # fmt: skip
    assert hello.returncode == 0, hello.stderr + multinode_cluster.logs()
    ranks = sorted(re.findall(r"^hello from rank (\d) of 4 on (node\d)$", hello.stdout, re.MULTILINE))
    assert ranks == [("0", "node1"), ("1", "node1"), ("2", "node2"), ("3", "node2")], hello.stdout
    ring = _srun(multinode_cluster, run_as, as_who, [sifbox_cli, "exec", str(mpi_images.hybrid), "/opt/mpitest/ring"],
                 "--mpi=pmix", **tcp)  # fmt: skip
    assert ring.returncode == 0, ring.stderr
    assert "ring done: token 4 after 4 ranks, big messages ok" in ring.stdout, ring.stdout
    assert not (left := _settled(multinode_cluster, image)), left


def test_one_holder_per_node_and_scancel_leaves_nothing(multinode_cluster: MultiNodeCluster, image: Path, run_as,
                                                         as_who, sifbox_cli) -> None:  # fmt: skip
    cluster = multinode_cluster
    script = f"srun {sifbox_cli} exec {image} sleep 300"
    sub = run_as(as_who, ["sbatch", "--parsable", "-N2", "-n4", f"--chdir={cluster.shared}", "--output=/dev/null",
                          "--wrap", script], env=cluster.env(as_who))  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + TIMEOUT
    try:
        rows: dict[str, list[dict]] = {}  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            rows = {n: [r for r in _listing(cluster, n, as_who, sifbox_cli) if r["in_use"]] for n in NODES}
            sleeps = {n: sum(c == "sleep" for c in cluster.node_processes(n).values()) for n in NODES}
            if all(rows.values()) and sleeps == {"node1": 2, "node2": 2}:
                break
            time.sleep(0.2)
        for node in NODES:  # exactly one holder of the user per node, the one `mounts list` shows
            assert [r["image"] for r in rows[node]] == [str(image)], (rows, cluster.logs())
            assert _holders(cluster, node, as_who.uid) != []
            assert len(_holders(cluster, node, as_who.uid)) == 1, cluster.node_processes(node)
    finally:
        cancel = run_as(as_who, ["scancel", job], env=cluster.env(as_who))
        assert cancel.returncode == 0, cancel.stderr
    while _jobs(cluster, as_who) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (left := _settled(cluster, image)), left
    for node in NODES:
        assert _listing(cluster, node, as_who, sifbox_cli) == []


def test_a_state_directory_shared_by_the_nodes(multinode_cluster: MultiNodeCluster, image: Path, run_as, test_user,
                                               sifbox_cli) -> None:  # fmt: skip
    """XDG_RUNTIME_DIR on the shared file system: still one holder per node (each node its own
    key), `mounts list` on a node shows its node's only, and the epilog's prune on one node
    leaves the other node's state alone."""
    xdg = multinode_cluster.shared / f"xdg-{test_user.uid}"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, test_user.uid, test_user.gid)
    proc = _srun(multinode_cluster, run_as, test_user, [sifbox_cli, "-v", "exec", str(image), "hostname"],
                 XDG_RUNTIME_DIR=str(xdg))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("started the node mount holder") == 2, proc.stderr
    assert proc.stderr.count("joining the node mount holder") == 2, proc.stderr
    assert not (left := _settled(multinode_cluster, image)), left
    # Two holders of one node at once in the shared directory (an idle timeout far away).
    for node in NODES:
        run = multinode_cluster.node_run(node, ["env", f"HOME={test_user.home}", f"XDG_RUNTIME_DIR={xdg}", sifbox_cli,
                                                "exec", str(image), "true"], user=test_user.name)  # fmt: skip
        assert run.returncode == 0, run.stderr
    try:
        for node in NODES:
            rows = _listing(multinode_cluster, node, test_user, sifbox_cli, XDG_RUNTIME_DIR=str(xdg))
            assert [(r["state"], r["pid"] in _pids_in_node(multinode_cluster, node)) for r in rows] == [("running", True)]
        assert len(list((xdg / "sifbox").glob("*.state"))) == 2
        prune = multinode_cluster.node_run("node1", ["env", f"XDG_RUNTIME_DIR={xdg}", sifbox_cli, "mounts", "prune"],
                                           user=test_user.name)  # fmt: skip
        assert prune.returncode == 0 and prune.stdout.count("stopped") == 1, prune.stdout + prune.stderr
        assert _holders(multinode_cluster, "node1", test_user.uid) == []
        assert len(_holders(multinode_cluster, "node2", test_user.uid)) == 1
        assert len(list((xdg / "sifbox").glob("*.state"))) == 1
    finally:
        for node in NODES:
            multinode_cluster.node_run(node, ["env", f"XDG_RUNTIME_DIR={xdg}", sifbox_cli, "mounts", "prune", "--force"],
                                       user=test_user.name)  # fmt: skip
    assert not (left := _settled(multinode_cluster, image)), left


def _pids_in_node(cluster: MultiNodeCluster, node: str) -> set[int]:
    """The node's own pids (in its PID namespace) of its processes."""
    found = set()
    for pid in cluster.node_processes(node):
        try:
            ns_pids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("NSpid:"))  # fmt: skip
        except (OSError, StopIteration):
            continue
        found.add(int(ns_pids.split()[-1]))
    return found


def test_a_prune_on_the_head_leaves_the_nodes_holders(multinode_cluster: MultiNodeCluster, image: Path, run_as,
                                                      as_who, sifbox_cli) -> None:  # fmt: skip
    """`sifbox mounts prune` on the head sees the nodes' holders in /proc (their PID namespaces
    are children of its own) but leaves them alone: they are the nodes' to prune."""
    run = multinode_cluster.node_run("node1", ["env", f"HOME={as_who.home}", sifbox_cli, "exec", str(image), "true"],
                                     user=as_who.name)  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        (holder,) = _holders(multinode_cluster, "node1", as_who.uid)
        prune = run_as("root", [sifbox_cli, "mounts", "prune", "--user", as_who.name],
                       env=images.env_for(images.user_named("root")))  # fmt: skip
        assert prune.returncode == 0, prune.stderr
        assert _holders(multinode_cluster, "node1", as_who.uid) == [holder]
        assert [r["state"] for r in _listing(multinode_cluster, "node1", as_who, sifbox_cli)] == ["running"]
    finally:
        multinode_cluster.node_run("node1", [sifbox_cli, "mounts", "prune", "--force", "--user", as_who.name])
    assert not (left := _settled(multinode_cluster, image)), left
