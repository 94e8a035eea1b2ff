"""MPI in containers under a real Slurm, as root and as the unprivileged test user.

* hybrid model: `srun --mpi=pmix -n 4 sifbox exec IMAGE ./ring`: Slurm's PMIx server on the
  host, the image's OpenMPI (the host's version) in each rank's container;
* `mpirun` inside one container;
* bind model: an image without MPI, the host's OpenMPI bound in with `--bind`, found through
  `SIFBOXENV_LD_LIBRARY_PATH` or an env script of the image (`/.singularity.d/env`);

each rank reports itself, the ring completes, and a 1 MiB message between neighbours (the
shared-memory transport on one node) arrives intact.
"""

from __future__ import annotations

import re

import pytest

from tests.integration import mpi_images as hpc
from tests.integration import slurm
from tests.integration.mpi_images import MpiImages
from tests.integration.slurm import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

mpi_images = hpc.mpi_images
slurm_cluster = slurm.slurm_cluster

TIMEOUT = 180
HOST_LIB = "/usr/lib/x86_64-linux-gnu"
#: The bind model: the host's OpenMPI (Debian's, spread over the multiarch directory).
BIND_MODEL = ["-B", f"{HOST_LIB}:/host/lib:ro", "-B", "/usr/share/openmpi:/usr/share/openmpi:ro",
              "-B", "/etc/openmpi:/etc/openmpi:ro"]  # fmt: skip
BIND_MODEL_LIBS = "/host/lib/openmpi/lib:/host/lib"


def _ranks(out: str, n: int) -> None:
    seen = sorted(int(m) for m in re.findall(rf"^rank (\d+) of {n} in the ring$", out, re.MULTILINE))
    assert seen == list(range(n)), out
    assert f"ring done: token {n} after {n} ranks, big messages ok" in out, out


def _srun(cluster, run_as, who, n, argv, **env):  # type: ignore[no-untyped-def]
    return run_as(who, ["srun", "-O", "--mpi=pmix", "-n", str(n), *argv],
                  env=cluster.env(who, **env), timeout=TIMEOUT)  # fmt: skip


def test_hybrid_srun_pmix(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    proc = _srun(slurm_cluster, run_as, as_who, 4, [sifbox_cli, "exec", str(mpi_images.hybrid), "/opt/mpitest/ring"])
    assert proc.returncode == 0, proc.stderr + slurm_cluster.logs()
    _ranks(proc.stdout, 4)


def test_hybrid_hello_sees_slurm(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    proc = _srun(slurm_cluster, run_as, as_who, 3,
                 [sifbox_cli, "exec", str(mpi_images.hybrid), "sh", "-c",
                  'echo "task $SLURM_PROCID/$SLURM_NTASKS job $SLURM_JOB_ID pmix $PMIX_RANK"; exec /opt/mpitest/hello'])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tasks = sorted(re.findall(r"^task (\d+)/3 job \d+ pmix (\d+)$", proc.stdout, re.MULTILINE))
    assert tasks == [(str(i), str(i)) for i in range(3)], proc.stdout
    assert sorted(re.findall(r"^hello from rank (\d) of 3", proc.stdout, re.MULTILINE)) == ["0", "1", "2"]


def test_mpirun_inside_one_container(mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    from tests.integration.images import env_for

    # No ssh in the image: mpirun starts its local daemon itself.
    env = env_for(as_who, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                  OMPI_MCA_plm_rsh_agent="/bin/false")
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "PMIX_"))}
    proc = run_as(as_who, [sifbox_cli, "exec", str(mpi_images.hybrid),
                           "mpirun", "--oversubscribe", "-n", "4", "/opt/mpitest/ring"],
                  env=env, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _ranks(proc.stdout, 4)


#: The bind model's variables for a relocated OpenMPI (where it finds its components).
BIND_MODEL_ENV = {
    "SIFBOXENV_LD_LIBRARY_PATH": BIND_MODEL_LIBS,
    "OMPI_MCA_mca_base_component_path": "/host/lib/openmpi/lib/openmpi3",
    "PMIX_MCA_mca_base_component_path": "/host/lib/pmix2/lib/pmix",
}


def test_bind_model_env_variable(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    proc = _srun(slurm_cluster, run_as, as_who, 4,
                 [sifbox_cli, "exec", *BIND_MODEL, str(mpi_images.bare), "/opt/mpitest/ring"], **BIND_MODEL_ENV)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _ranks(proc.stdout, 4)


def test_bind_model_image_env_script(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    proc = _srun(slurm_cluster, run_as, as_who, 4,
                 [sifbox_cli, "exec", *BIND_MODEL, str(mpi_images.bind_ready), "/opt/mpitest/ring"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _ranks(proc.stdout, 4)


def test_bind_model_needs_the_libraries(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    """Without the host's MPI the program can't start: a clear loader error, no hang."""
    proc = _srun(slurm_cluster, run_as, as_who, 2, [sifbox_cli, "exec", str(mpi_images.bare), "/opt/mpitest/ring"])
    assert proc.returncode != 0
    assert "libmpi.so" in proc.stderr


def test_mpich_hybrid_srun_pmi2(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who, sifbox_cli) -> None:
    """MPICH (ch4/UCX) in the image, Slurm's PMI-2 through the inherited PMI_FD descriptor.

    Two ranks, one per core: Debian's MPICH 4.0 with UCX 1.13 under `srun --mpi=pmi2` hangs now
    and then in its final barrier when more busy-polling ranks than cores start a few tenths of
    a second apart, with or without containers (`srun -O -n 4 sh -c 'sleep 0.$((SLURM_PROCID*3));
    exec ./ring'` on the host does it too)."""
    if mpi_images.mpich is None:
        pytest.skip("MPICH is not installed (Debian packages mpich, libmpich-dev)")
    proc = run_as(as_who, ["srun", "-O", "--mpi=pmi2", "-n", "2", sifbox_cli, "exec", str(mpi_images.mpich),
                           "/opt/mpitest/ring"], env=slurm_cluster.env(as_who), timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _ranks(proc.stdout, 2)


def test_mpich_under_pmix_gets_a_hint(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who,
                                      sifbox_cli) -> None:  # fmt: skip
    """An MPICH image in a PMIx step: one warning naming the fix (any command still runs)."""
    if mpi_images.mpich is None:
        pytest.skip("MPICH is not installed (Debian packages mpich, libmpich-dev)")
    proc = _srun(slurm_cluster, run_as, as_who, 3, [sifbox_cli, "exec", str(mpi_images.mpich), "true"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("image's MPI is MPICH without PMIx support") == 1, proc.stderr
    assert "srun --mpi=pmi2" in proc.stderr
    proc = _srun(slurm_cluster, run_as, as_who, 2, [sifbox_cli, "exec", str(mpi_images.hybrid), "true"])
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr


def test_openmpi_under_pmi2_fails_fast(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who,
                                       sifbox_cli) -> None:  # fmt: skip
    """The image's OpenMPI speaks PMIx only: under `--mpi=pmi2` it stops with its own message, no hang."""
    proc = run_as(as_who, ["srun", "-O", "--mpi=pmi2", "-n", "2", sifbox_cli, "exec", str(mpi_images.hybrid),
                           "/opt/mpitest/ring"], env=slurm_cluster.env(as_who), timeout=60)  # fmt: skip
    assert proc.returncode != 0
    assert "PMI" in proc.stderr


def test_step_without_pmi_gets_a_hint(slurm_cluster: SlurmCluster, mpi_images: MpiImages, run_as, as_who,
                                      sifbox_cli) -> None:  # fmt: skip
    """`srun --mpi=none` with an MPI image: one warning naming the fix, and no hang (OpenMPI's
    ranks find a Slurm step without PMI and stop)."""
    proc = run_as(as_who, ["srun", "-O", "--mpi=none", "-n", "3", sifbox_cli, "exec", str(mpi_images.hybrid),
                           "/opt/mpitest/hello"], env=slurm_cluster.env(as_who), timeout=60)  # fmt: skip
    assert proc.stderr.count("this job step offers no PMI (srun --mpi=none)") == 1, proc.stderr
    assert "srun --mpi=pmix" in proc.stderr
