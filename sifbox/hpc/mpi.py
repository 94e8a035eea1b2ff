"""MPI ranks in containers: environment defaults (pure).

Each unprivileged rank runs in a user namespace of its own. Shared memory
between ranks works (the container uses the host's /dev/shm and IPC
namespace unless `--contain`/`--ipc` asks otherwise, as Apptainer), but the
kernel refuses the cross-process tricks that need ptrace rights on a peer in
another user namespace: CMA (process_vm_readv) and opening a peer's memory
through /proc/PID/fd. OpenMPI then warns once per rank and falls back; UCX
(MPICH's ch4:ucx, OpenMPI's pml/ucx) fails to start or hangs. Under a
launcher, sifbox sets the fallbacks itself, unless the user chose otherwise:

* `OMPI_MCA_btl_vader_single_copy_mechanism=none` (OpenMPI's vader BTL),
* `UCX_TLS=^cma` and `UCX_POSIX_USE_PROC_LINK=n` (UCX: no CMA, shared
  memory through named files in /dev/shm).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # (not at run time: `collections` costs every MPI rank a millisecond)
    from collections.abc import Mapping

SINGLE_COPY = "OMPI_MCA_btl_vader_single_copy_mechanism"
DEFAULTS = (
    (SINGLE_COPY, "none"),
    ("UCX_TLS", "^cma"),
    ("UCX_POSIX_USE_PROC_LINK", "n"),
)
ENV_PREFIXES = ("", "SIFBOXENV_", "APPTAINERENV_", "SINGULARITYENV_")


def env_defaults(env: Mapping[str, str], *, own_userns: bool) -> dict[str, str]:
    """Variables to add to a rank's container environment."""
    if not own_userns:
        return {}
    return {key: value for key, value in DEFAULTS if not any(p + key in env for p in ENV_PREFIXES)}


#: Where images keep MPICH's library (Debian/Ubuntu, RHEL-like, source builds).
MPICH_LIBS = tuple(f"{d}/libmpich.so.12" for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                                    "/usr/lib64", "/usr/lib", "/usr/local/lib",
                                                    "/usr/lib64/mpich/lib"))  # fmt: skip
PMIX_LIBS = tuple(f"{d}/libpmix.so.2" for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                                "/usr/lib64", "/usr/lib", "/usr/local/lib"))  # fmt: skip


OPENMPI_LIBS = tuple(f"{d}/libmpi.so.40" for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                                    "/usr/lib64", "/usr/lib", "/usr/local/lib",
                                                    "/usr/lib64/openmpi/lib"))  # fmt: skip


def mismatch_hint(env: Mapping[str, str], present) -> str | None:  # type: ignore[no-untyped-def]
    """A warning when the launcher's process-management interface can't be
    the image's MPI's, so that its ranks would never find each other:

    * a PMIx step (`srun --mpi=pmix`, no PMI_FD) and an image whose MPI is
      MPICH without PMIx, which then waits for a PMI that never answers;
    * a Slurm step without any PMI (`srun --mpi=none`) and an image with an
      MPI: each rank would start a world of its own (or wait forever).

    `present(path)` says whether a path exists in the image."""
    pmix = "PMIX_RANK" in env
    pmi = "PMI_FD" in env or "PMI_PORT" in env
    mpich = any(present(p) for p in MPICH_LIBS)
    if pmix and not pmi:
        if mpich and not any(present(p) for p in PMIX_LIBS):
            return ("this job step offers PMIx, but the image's MPI is MPICH without PMIx support: "
                    "its ranks would not find each other; run the step with `srun --mpi=pmi2`")
        return None
    if "SLURM_STEP_ID" in env and not pmix and not pmi and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        if mpich:
            return ("this job step offers no PMI (srun --mpi=none) and the image's MPI is MPICH: "
                    "its ranks would not find each other; run the step with `srun --mpi=pmi2`")
        if any(present(p) for p in OPENMPI_LIBS):
            return ("this job step offers no PMI (srun --mpi=none) and the image's MPI is OpenMPI: "
                    "each rank would run alone; run the step with `srun --mpi=pmix`")
    return None
