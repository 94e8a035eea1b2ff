"""`srun -N2 --container=BUNDLE` with sifbox as Slurm's OCI runtime (sifbox/data/oci.conf) on
the two-node test cluster (tests/integration/slurm_multinode.py), as root and as the test user:

* one task per node (Slurm 22.05 with --container), each in its node: hostnames node1, node2;
* MPI: `mpirun` inside each node's container runs that node's ranks; a rank on another node
  is out of its reach (no PMIx server for the container, no launcher to the other node):
  MPI across nodes is `srun -N2 -n4 sifbox exec` (test_slurm_multinode.py);
* after the step, and after scancel, nothing is left on any node: no container process, no
  mount, no loop device, no state under the runtime root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import mpi_images as hpc
from tests.integration import slurm_multinode
from tests.integration.mpi_images import MpiImages
from tests.integration.slurm_multinode import MultiNodeCluster
from tests.integration.test_slurm_container import MPIRUN_ENV, RECIPE, _config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

multinode_cluster = slurm_multinode.multinode_cluster
mpi_images = hpc.mpi_images
TIMEOUT = 120
NODES, IDLE_NODE = slurm_multinode.NODES, slurm_multinode.IDLE_NODE


@pytest.fixture(scope="module")
def bundles(multinode_cluster: MultiNodeCluster, mpi_images: MpiImages, test_user: Any) -> Iterator[dict[str, Path]]:
    """root's and the test user's bundles in the shared directory (seen by both nodes), `rootfs`
    a link to the MPI test image; the node's UTS namespace (no hostname of the bundle's)."""
    base = multinode_cluster.shared / "oci-bundles"
    base.mkdir(mode=0o755)
    found = {}
    try:
        for name, uid in (("root", None), ("user", test_user.uid)):
            b = found[name] = base / name
            b.mkdir(mode=0o755)
            (b / "rootfs").symlink_to(mpi_images.hybrid)
            doc = _config(uid)
            doc["linux"]["namespaces"] = [n for n in doc["linux"]["namespaces"] if n["type"] != "uts"]
            doc.pop("hostname", None)
            (b / "config.json").write_text(json.dumps(doc))
        yield found
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def oci_cluster(multinode_cluster: MultiNodeCluster, sifbox_cli: str) -> Iterator[MultiNodeCluster]:
    """The two-node cluster with sifbox's oci.conf (the CLI under test as the runtime)."""
    with multinode_cluster.oci_conf(RECIPE.read_text().replace("/usr/local/bin/sifbox", sifbox_cli)):
        yield multinode_cluster


def _bundle(bundles: dict[str, Path], who: Any) -> Path:
    return bundles["root" if who.is_root else "user"]


def _states(who: Any, job: str) -> list[str]:
    root = Path(who.home) / ".sifbox" / "oci"
    return sorted(p.name for p in root.iterdir() if f".{job}." in p.name) if root.is_dir() else []


def _in_node(cluster: MultiNodeCluster, node: str) -> dict[int, str]:
    """pid -> comm of every live process under the node's init, containers included (their
    PID namespaces are the node's children, which `node_processes` does not list)."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                parent[int(entry)] = int(fields[1])
                comm[int(entry)] = stat[stat.index("(") + 1 : stat.rindex(")")]
    init = cluster.node(node).init
    found = {}
    for pid in parent:
        p = pid
        while p in parent and p != init and p > 1:
            p = parent[p]
        if p == init and pid != init:
            found[pid] = comm[pid]
    return found


def _leftovers(cluster: MultiNodeCluster, image: Path) -> dict[str, list[str]]:
    """Processes besides slurmd, FUSE/SquashFS mounts in each node, loop devices of the image."""
    found: dict[str, list[str]] = {}
    for node in NODES:
        left = [f"{pid} {comm}" for pid, comm in _in_node(cluster, node).items() if comm not in IDLE_NODE]
        mountinfo = Path(f"/proc/{cluster.node(node).init}/mountinfo").read_text()
        left += [line.split(" - ")[1] for line in mountinfo.splitlines()
                 if line.split(" - ")[1].startswith(("fuse", "squashfs"))]  # fmt: skip
        if left:
            found[node] = left
    loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
    if loops.strip():
        found["loop devices"] = loops.splitlines()
    return found


def _settled(cluster: MultiNodeCluster, image: Path, who: Any, job: str) -> dict[str, list[str]]:
    """Wait for the steps' clean-up: nothing left (else what is left)."""
    deadline = time.monotonic() + 30
    while True:
        left = _leftovers(cluster, image)
        if states := _states(who, job):
            left["state"] = states
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_srun_container_on_both_nodes(oci_cluster: MultiNodeCluster, bundles: dict[str, Path],
                                      mpi_images: MpiImages, run_as, as_who) -> None:  # fmt: skip
    """One task per node, each in a container of its node; then `mpirun` inside each node's
    container runs that node's two ranks (the ring closes on each node)."""
    script = ('echo "task on $(cat /proc/sys/kernel/hostname) uid $(id -u) job $SLURM_JOB_ID '
              'pid1 $(tr "\\0" " " </proc/1/cmdline)"; exec mpirun --oversubscribe -n 2 /opt/mpitest/ring')  # fmt: skip
    proc = run_as(as_who, ["srun", "-N2", f"--container={_bundle(bundles, as_who)}", "--mpi=none", "sh", "-c", script],
                  env=oci_cluster.env(as_who, **MPIRUN_ENV), timeout=TIMEOUT, cwd="/")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr + oci_cluster.logs()
    # The task is PID 1 of its container, in its node's UTS namespace (Slurm 22.05 gives the
    # container the step's environment: no SLURM_PROCID or SLURMD_NODENAME of the task's).
    tasks = re.findall(r"^task on (node\d) uid (\d+) job (\d+) pid1 sh -c ", proc.stdout, re.MULTILINE)
    assert sorted((node, int(uid)) for node, uid, _ in tasks) == [("node1", as_who.uid), ("node2", as_who.uid)], \
        proc.stdout
    assert proc.stdout.count("ring done: token 2 after 2 ranks, big messages ok") == 2, proc.stdout
    assert not (left := _settled(oci_cluster, mpi_images.hybrid, as_who, tasks[0][2])), left


def test_srun_container_more_tasks_than_nodes_refused(oci_cluster: MultiNodeCluster, bundles: dict[str, Path],
                                                      mpi_images: MpiImages, run_as, as_who) -> None:  # fmt: skip
    """Slurm 22.05: one task per node with --container; -n4 on two nodes is refused by every
    node's slurmstepd ("Task launch ... failed"), nothing runs, nothing is left."""
    proc = run_as(as_who, ["srun", "-N2", "-n4", f"--container={_bundle(bundles, as_who)}", "--mpi=none",
                           "sh", "-c", "echo ran"], env=oci_cluster.env(as_who), timeout=TIMEOUT, cwd="/")  # fmt: skip
    assert proc.returncode != 0
    assert "ran" not in proc.stdout
    assert proc.stderr.count("Task launch for StepId=") == 2, proc.stderr
    job = re.search(r"StepId=(\d+)\.", proc.stderr).group(1)  # type: ignore[union-attr]
    assert not (left := _settled(oci_cluster, mpi_images.hybrid, as_who, job)), left


def test_srun_container_scancel_on_both_nodes(oci_cluster: MultiNodeCluster, bundles: dict[str, Path],
                                              mpi_images: MpiImages, as_who) -> None:  # fmt: skip
    """A container on each node whose PID 1 ignores SIGTERM: scancel ends both, and nothing of
    them (process, mount, loop device, state) is left on either node."""
    cluster = oci_cluster
    name = f"sifbox-mn-cancel-{as_who.name}"
    argv = ["srun", "-N2", f"--container={_bundle(bundles, as_who)}", "--mpi=none", "-J", name, "sleep", "4323"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    env = cluster.env(as_who)
    srun = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        job = ""
        deadline = time.monotonic() + TIMEOUT
        while True:
            sleeps = {n: sum(c == "sleep" for c in _in_node(cluster, n).values()) for n in NODES}
            if job and sleeps == {"node1": 1, "node2": 1}:
                break
            if srun.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the containers did not start: {sleeps} {srun.poll()} {srun.stderr.read() if srun.stderr else ''}"
                            + cluster.logs())
            job = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                                 env=env, check=False).stdout.strip()  # fmt: skip
            time.sleep(0.2)
        assert len(_states(as_who, job)) == 2, _states(as_who, job)  # one container per node
        cancel = subprocess.run(["scancel", job], capture_output=True, text=True, env=env, check=False)
        assert cancel.returncode == 0, cancel.stderr
        _, err = srun.communicate(timeout=TIMEOUT)
        assert not (left := _settled(cluster, mpi_images.hybrid, as_who, job)), (left, err)
    finally:
        if srun.poll() is None:
            srun.kill()
            srun.wait()
