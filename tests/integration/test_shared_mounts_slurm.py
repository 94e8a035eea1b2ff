"""Shared image mounts under a real Slurm (tests/integration/slurm.py), whose Epilog is the
script sifbox ships (sifbox/data/slurm-epilog.sh): the ranks of a step share one holder, and
once a job is over (ended or cancelled) nothing of the user's is left on the node: no
holder, no FUSE server, no mount, no state."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration import images, slurm
from tests.integration.images import ActionImages, env_for
from tests.integration.slurm import SlurmCluster
from tests.integration.test_shared_mounts import _holder_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

action_images = images.action_images
no_leaks = images.no_leaks
slurm_cluster = slurm.slurm_cluster
TIMEOUT = 180


def _state_files(uid: int) -> list[str]:
    found = []
    for d in (Path(f"/tmp/sifbox-{uid}"), Path("/run/sifbox") if uid == 0 else Path(f"/run/user/{uid}/sifbox")):
        if d.is_dir():
            found += [str(p) for p in d.glob("*.state")]
    return found


def _settled(uid: int, limit: float = 60.0) -> bool:
    """Wait until the user has no holder process and no holder state on the node."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not _holder_processes(uid) and not _state_files(uid):
            return True
        time.sleep(0.1)
    return False


def _jobs(cluster: SlurmCluster, user) -> str:  # type: ignore[no-untyped-def]
    proc = subprocess.run(["squeue", "-h", "-u", user.name, "-o", "%i %T"], capture_output=True, text=True,
                          env=cluster.env(user), check=False)  # fmt: skip
    return proc.stdout.strip()


def test_ranks_share_one_holder_and_the_epilog_prunes(slurm_cluster: SlurmCluster, run_as, as_who, sifbox_cli,
                                                      action_images: ActionImages) -> None:  # fmt: skip
    run_as(as_who, [sifbox_cli, "mounts", "prune", "--force"], env=env_for(as_who))
    # A holder the user started outside the job (idle, its timeout far away): the job's epilog ends it too.
    outside = run_as(as_who, [sifbox_cli, "exec", str(action_images.sif), "true"], env=env_for(as_who))
    assert outside.returncode == 0, outside.stderr
    assert len(_holder_processes(as_who.uid)) == 1
    proc = run_as(as_who, ["srun", "-O", "-n", "8", sifbox_cli, "-v", "exec", str(action_images.static_sif),
                           "/bin/busybox", "echo", "rank"], env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + slurm_cluster.logs()
    assert proc.stdout.split() == ["rank"] * 8
    started = proc.stderr.count("started the node mount holder")
    joined = proc.stderr.count("joining the node mount holder")
    assert (started, joined) == (1, 7), proc.stderr
    # Well within the holders' idle timeout (60 s): the epilog ended them.
    assert _settled(as_who.uid, limit=30), (_holder_processes(as_who.uid), _state_files(as_who.uid))


def test_the_epilog_script_prunes_the_job_users_holders(run_as, test_user, sifbox_cli,
                                                        action_images: ActionImages) -> None:  # fmt: skip
    """The script as slurmd runs it (as root, SLURM_JOB_USER/SLURM_JOB_UID set): the user's idle
    holder goes, root's stays (another user's)."""
    for who in ("root", test_user):
        user = images.user_named(who) if isinstance(who, str) else who
        assert run_as(user, [sifbox_cli, "exec", str(action_images.sif), "true"], env=env_for(user)).returncode == 0
    assert len(_holder_processes(test_user.uid)) == 1 and len(_holder_processes(0)) == 1
    script = Path(__file__).resolve().parents[2] / "sifbox" / "data" / "slurm-epilog.sh"
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_USER": test_user.name, "SLURM_JOB_UID": str(test_user.uid),
           "SLURM_JOB_ID": "1", "SIFBOX": sifbox_cli}  # fmt: skip
    proc = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _holder_processes(test_user.uid) == [] and not _state_files(test_user.uid)
    assert len(_holder_processes(0)) == 1
    run_as("root", [sifbox_cli, "mounts", "prune"], env=env_for(images.user_named("root")))
    assert _holder_processes(0) == []


def test_nothing_is_left_after_scancel(slurm_cluster: SlurmCluster, run_as, as_who, sifbox_cli,
                                       action_images: ActionImages) -> None:  # fmt: skip
    run_as(as_who, [sifbox_cli, "mounts", "prune", "--force"], env=env_for(as_who))
    script = f"srun -O -n 4 {sifbox_cli} exec {action_images.sif} sleep 300"
    sub = run_as(as_who, ["sbatch", "--parsable", "-n", "4", "-O", "--chdir=/tmp", "--output=/dev/null", "--wrap", script],
                 env=slurm_cluster.env(as_who))  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().split(";")[0]
    deadline = time.monotonic() + TIMEOUT
    rows: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        out = run_as(as_who, [sifbox_cli, "mounts", "list", "--json"], env=env_for(as_who)).stdout
        rows = [r for r in json.loads(out or "[]") if r["state"] == "running" and r["in_use"]]
        if rows:
            break
        time.sleep(0.2)
    try:
        assert len(rows) == 1, (rows, slurm_cluster.logs())
    finally:
        cancel = run_as(as_who, ["scancel", job], env=slurm_cluster.env(as_who))
        assert cancel.returncode == 0, cancel.stderr
    while _jobs(slurm_cluster, as_who) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _settled(as_who.uid), (_holder_processes(as_who.uid), _state_files(as_who.uid))
    out = run_as(as_who, [sifbox_cli, "mounts", "list", "--json"], env=env_for(as_who)).stdout
    assert json.loads(out) == []
