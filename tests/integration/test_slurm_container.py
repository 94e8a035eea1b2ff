"""`srun --container=BUNDLE` with sifbox as Slurm's OCI runtime (sifbox/data/oci.conf), on the
real single-node Slurm of the tests, as root and as the unprivileged test user.

The bundle's root file system is the MPI test image (tests/integration/mpi_images.py), a SIF
that `rootfs` links to (or, for root, the image extracted to a directory); the
task runs `mpirun` inside its container (Slurm 22.05 starts one task per node with
--container), whose 4 ranks complete the ring. Slurm's step environment reaches the
container, the exit status passes through, the container's state is gone once the step ends,
a user can't run a bundle that would make them root on the host, and scancel ends a container
whose PID 1 ignores SIGTERM (nothing of it is left, not even its state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import mpi_images as hpc
from tests.integration import slurm
from tests.integration.mpi_images import MpiImages
from tests.integration.slurm import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

mpi_images = hpc.mpi_images
slurm_cluster = slurm.slurm_cluster

TIMEOUT = 120
RECIPE = Path(__file__).resolve().parents[2] / "sifbox" / "data" / "oci.conf"
#: mpirun inside the container starts its ranks itself (not through Slurm's srun).
MPIRUN_ENV = {"OMPI_MCA_plm": "rsh", "OMPI_MCA_ras": "^slurm", "OMPI_MCA_plm_rsh_agent": "/bin/false",
              "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # fmt: skip


def _config(uid: int | None) -> dict[str, Any]:
    """runc spec's config.json for root (no user namespace) or for `uid` (mapped to itself);
    the host's network (as Slurm runs containers) and a writable /tmp."""
    from sifbox.runtime.ocimode import runc_spec

    doc = runc_spec(rootless=uid is not None)
    doc["process"]["terminal"] = False
    linux = doc["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    if uid is not None:
        linux["uidMappings"] = [{"containerID": uid, "hostID": uid, "size": 1}]
        linux["gidMappings"] = [{"containerID": uid, "hostID": uid, "size": 1}]
        doc["process"]["user"] = {"uid": uid, "gid": uid}
    doc["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "nodev", "mode=1777"]})  # fmt: skip
    return doc


@pytest.fixture(scope="module")
def bundles(mpi_images: MpiImages, test_user: Any) -> Iterator[dict[str, Path]]:
    """Bundles whose root file system is the MPI test image, a SIF (`rootfs` links to it:
    mounted, never extracted): `root`'s, the test user's, and a hostile one of the user's that
    maps host root into its user namespace; and root's with the image extracted (`dir`)."""
    from sifbox.formats.sif.image import SifImage

    base = Path(tempfile.mkdtemp(prefix="sifbox-ocislurm-", dir="/tmp"))
    base.chmod(0o755)
    try:
        found = {name: base / name for name in ("root", "user", "hostile", "dir")}
        for name, uid in (("root", None), ("user", test_user.uid), ("hostile", 0), ("dir", None)):
            b = found[name]
            b.mkdir()
            if name == "dir":
                with open(mpi_images.hybrid, "rb") as f:
                    part = SifImage.load(f).primary_partition()
                assert part is not None
                subprocess.run(["unsquashfs", "-q", "-n", "-d", str(b / "rootfs"), "-o", str(part.offset),
                                str(mpi_images.hybrid)], check=True, capture_output=True)  # fmt: skip
            else:
                (b / "rootfs").symlink_to(mpi_images.hybrid)
            (b / "config.json").write_text(json.dumps(_config(uid)))  # hostile: host uid 0 mapped
            b.chmod(0o755)
        yield found
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def oci_slurm(slurm_cluster: SlurmCluster, sifbox_cli: str) -> Iterator[SlurmCluster]:
    """The test cluster with sifbox's oci.conf (the CLI under test as the runtime)."""
    with slurm_cluster.oci_conf(RECIPE.read_text().replace("/usr/local/bin/sifbox", sifbox_cli)):
        yield slurm_cluster


def _srun(cluster: SlurmCluster, run_as, who, bundle: Path, argv: list[str], **env: str):  # type: ignore[no-untyped-def]
    return run_as(who, ["srun", f"--container={bundle}", "-n", "1", "--mpi=none", *argv],
                  env=cluster.env(who, **env), timeout=TIMEOUT, cwd="/")  # fmt: skip


def _states(who: Any) -> list[str]:
    root = Path(who.home) / ".sifbox" / "oci"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.parametrize("rootfs", ["sif", "dir"])
def test_srun_container_mpi_ring(oci_slurm: SlurmCluster, bundles: dict[str, Path], run_as, as_who,
                                 rootfs: str) -> None:  # fmt: skip
    if rootfs == "dir" and not as_who.is_root:
        pytest.skip("the extracted root file system is root's bundle")
    bundle = bundles["root" if as_who.is_root else "user"] if rootfs == "sif" else bundles["dir"]
    script = ('echo "uid $(id -u) job $SLURM_JOB_ID pid1 $(tr "\\0" " " </proc/1/cmdline)"; '
              "exec mpirun --oversubscribe -n 4 /opt/mpitest/ring")  # fmt: skip
    proc = _srun(oci_slurm, run_as, as_who, bundle, ["sh", "-c", script], **MPIRUN_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr + oci_slurm.logs()
    m = re.search(r"^uid (\d+) job (\d+) pid1 sh -c ", proc.stdout, re.MULTILINE)
    assert m and int(m.group(1)) == as_who.uid, proc.stdout  # the task is PID 1 of its container
    ranks = sorted(int(r) for r in re.findall(r"^rank (\d+) of 4 in the ring$", proc.stdout, re.MULTILINE))
    assert ranks == [0, 1, 2, 3], proc.stdout
    assert "ring done: token 4 after 4 ranks, big messages ok" in proc.stdout
    assert not [s for s in _states(as_who) if f".{m.group(2)}." in s], "the container's state outlived the step"


def test_srun_container_exit_status(oci_slurm: SlurmCluster, bundles: dict[str, Path], run_as, as_who) -> None:
    bundle = bundles["root" if as_who.is_root else "user"]
    proc = _srun(oci_slurm, run_as, as_who, bundle, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.splitlines() == ["out"]
    assert "err" in proc.stderr


@pytest.mark.parametrize("which", ["root", "hostile"])
def test_srun_container_user_cannot_be_host_root(oci_slurm: SlurmCluster, bundles: dict[str, Path], run_as,
                                                 test_user: Any, which: str) -> None:  # fmt: skip
    """Root's bundle (no user namespace), or one mapping host root, run by a user: refused before
    anything runs, with the reason; nothing ran as root."""
    proc = _srun(oci_slurm, run_as, test_user, bundles[which], ["sh", "-c", "id -u; touch /proof"])
    assert proc.returncode != 0
    assert "sifbox: error: can't create a rootless container" in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert not (bundles["root"] / "rootfs" / "proof").exists()


def _pids_of(cmdline: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == cmdline:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _cgroups_of(job: str) -> list[str]:
    """The cgroup directories sifbox made for the containers of Slurm job `job` (sifbox-oci-ID,
    ID = node.user.job.step.task), in any hierarchy."""
    top = Path("/sys/fs/cgroup")
    found = [*top.glob("sifbox-oci-*"), *top.glob("*/sifbox-oci-*"), *top.glob("*/*/sifbox-oci-*")]
    return [str(d) for d in found if f".{job}." in d.name]


@pytest.mark.parametrize("recipe", ["shipped", "no-exec"])
def test_srun_container_scancel_ends_everything(oci_slurm: SlurmCluster, bundles: dict[str, Path], as_who,
                                                sifbox_cli: str, recipe: str) -> None:  # fmt: skip
    """`sleep` as PID 1 of its PID namespace ignores SIGTERM: after scancel, Slurm's SIGKILL (or
    sifbox, once the task's shell is gone) must still reach it; no container process and no
    state are left. `no-exec`: an oci.conf whose RunTimeRun lacks the `exec` (the shell ends at
    the SIGTERM, and the run it orphans left the container running)."""
    bundle = bundles["root" if as_who.is_root else "user"]
    conf = oci_slurm.base / "oci.conf"
    shipped = conf.read_text()
    if recipe == "no-exec":
        conf.write_text(shipped.replace('RunTimeRun="exec ', 'RunTimeRun="'))
    name = f"sifbox-cancel-{recipe}-{as_who.name}"
    seconds = "4321" if as_who.is_root else "4322"
    argv = ["srun", f"--container={bundle}", "-n", "1", "--mpi=none", "-J", name, "sleep", seconds]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    env = oci_slurm.env(as_who)
    srun = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    payload = f"sleep\0{seconds}\0".encode()
    try:
        job = ""
        deadline = time.monotonic() + TIMEOUT
        while not (job and _pids_of(payload)):
            assert srun.poll() is None and time.monotonic() < deadline, "the container did not start"
            job = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                                 env=env, check=False).stdout.strip()  # fmt: skip
            time.sleep(0.2)
        assert [s for s in _states(as_who) if f".{job}." in s]
        cancel = subprocess.run(["scancel", job], capture_output=True, text=True, env=env, check=False)
        assert cancel.returncode == 0, cancel.stderr
        _, err = srun.communicate(timeout=TIMEOUT)
        deadline = time.monotonic() + 30  # the step's clean-up, after srun has returned
        while ((_pids_of(payload) or [s for s in _states(as_who) if f".{job}." in s] or _cgroups_of(job))
               and time.monotonic() < deadline):  # fmt: skip
            time.sleep(0.2)
        assert not _pids_of(payload), f"the container outlived scancel: {err}"
        assert not [s for s in _states(as_who) if f".{job}." in s], "the container's state outlived scancel"
        assert not _cgroups_of(job), "the container's cgroups outlived scancel"
    finally:
        conf.write_text(shipped)
        if srun.poll() is None:
            srun.kill()
            srun.wait()
        for pid in _pids_of(payload):
            os.kill(pid, 9)
