"""Plain `srun sifbox exec IMAGE ...` under a real single-node Slurm, as root and as the test user.

Many ranks per node (`srun -O` oversubscribes the 2 cores): every rank starts, sees its Slurm
and PMI variables, and finds the PMIx server's directory at the same path as on the host.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.integration import mpi_images as hpc
from tests.integration import slurm
from tests.integration.slurm import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

hpc_image = hpc.hpc_image
slurm_cluster = slurm.slurm_cluster

TIMEOUT = 180
PROBE = ('echo "rank $SLURM_PROCID of $SLURM_NTASKS step $SLURM_JOB_ID.$SLURM_STEP_ID '
         'pmix ${PMIX_RANK:-none} ns ${PMIX_NAMESPACE:-none} dir $(test -d "$PMIX_SERVER_TMPDIR" && echo yes || echo no)"')  # fmt: skip


def test_every_rank_starts_with_slurm_variables(slurm_cluster: SlurmCluster, hpc_image: Path,
                                                run_as, as_who, sifbox_cli) -> None:  # fmt: skip
    proc = run_as(as_who, ["srun", "-O", "-n", "8", sifbox_cli, "exec", str(hpc_image), "sh", "-c", PROBE],
                  env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + slurm_cluster.logs()
    found = re.findall(r"^rank (\d+) of 8 step (\d+)\.(\d+) pmix (\d+) ns (\S+) dir (\w+)$", proc.stdout, re.MULTILINE)
    assert sorted(int(r[0]) for r in found) == list(range(8)), proc.stdout
    assert all(r[0] == r[3] for r in found), "PMIX_RANK is the Slurm task id"
    assert len({r[1:3] for r in found}) == 1 and len({r[4] for r in found}) == 1, "one job step, one PMIx namespace"
    assert all(r[5] == "yes" for r in found), "the PMIx server directory is visible in every rank"


def test_pmi2_descriptor_passes(slurm_cluster: SlurmCluster, hpc_image: Path,
                                run_as, as_who, sifbox_cli) -> None:  # fmt: skip
    """With `--mpi=pmi2` the rank talks to slurmstepd through an inherited descriptor (PMI_FD)."""
    probe = 'echo "pmi $PMI_RANK/$PMI_SIZE fd $PMI_FD open $(test -e /proc/self/fd/$PMI_FD && echo yes || echo no)"'
    proc = run_as(as_who, ["srun", "-O", "--mpi=pmi2", "-n", "3", sifbox_cli, "exec", str(hpc_image),
                           "sh", "-c", probe], env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = re.findall(r"^pmi (\d)/3 fd (\d+) open (\w+)$", proc.stdout, re.MULTILINE)
    assert sorted(f[0] for f in found) == ["0", "1", "2"], proc.stdout
    assert all(f[2] == "yes" for f in found), proc.stdout


def test_exit_status_and_failed_rank(slurm_cluster: SlurmCluster, hpc_image: Path,
                                     run_as, as_who, sifbox_cli) -> None:  # fmt: skip
    """A failing rank's status reaches srun; a container failure (126/127) is told apart."""
    proc = run_as(as_who, ["srun", "-O", "-n", "4", sifbox_cli, "exec", str(hpc_image), "sh", "-c",
                           'test "$SLURM_PROCID" = 2 && exit 7; exit 0'],
                  env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 7, proc.stderr
    proc = run_as(as_who, ["srun", "-O", "-n", "2", sifbox_cli, "exec", str(hpc_image), "no-such-program"],
                  env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 127, proc.stderr + slurm_cluster.logs()
    assert "can't run `no-such-program` in the container: command not found" in proc.stderr


def test_ranks_run_side_by_side(slurm_cluster: SlurmCluster, hpc_image: Path, run_as, as_who, sifbox_cli) -> None:
    """16 ranks in containers at once: every rank is inside its container before any leaves
    (start-up is not serialised: no lock held while a container runs, none taken across ranks)."""
    # Each rank marks its arrival, then waits (up to 60 s) until all 16 have arrived.
    marks = Path(f"/tmp/sifbox-hpc-marks-{as_who.name}")
    shutil.rmtree(marks, ignore_errors=True)
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)
    script = (f'touch {marks}/$SLURM_PROCID; i=0; while [ $(ls {marks} | wc -l) -lt 16 ] && [ $i -lt 600 ]; do '
              'sleep 0.1; i=$((i+1)); done; echo "rank $SLURM_PROCID saw $(ls ' + str(marks) + ' | wc -l)"')  # fmt: skip
    try:
        proc = run_as(as_who, ["srun", "-O", "-n", "16", sifbox_cli, "exec", str(hpc_image), "sh", "-c", script],
                      env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    finally:
        shutil.rmtree(marks, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    seen = re.findall(r"^rank (\d+) saw (\d+)$", proc.stdout, re.MULTILINE)
    assert sorted(int(r) for r, _ in seen) == list(range(16)), proc.stdout
    assert all(n == "16" for _, n in seen), proc.stdout
