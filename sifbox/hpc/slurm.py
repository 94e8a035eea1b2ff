"""Running under a parallel launcher (Slurm's srun, mpirun): what a rank's
container needs from the host beyond the default mounts (pure planning).

Slurm and PMI variables pass into the container with the rest of the host
environment, and a PMI descriptor (`PMI_FD`) stays open across the launch.
PMIx servers (Slurm's pmix plugin, OpenMPI's) keep a per-step directory,
`PMIX_SERVER_TMPDIR` (under slurmd's spool, e.g. /var/spool/slurmd/pmix.J.S),
with the shared-memory data store the clients map; it is bound into the
container at the same path, so that the image's PMIx finds it. Nothing here
depends on the number of ranks: each rank plans alone, from its own
environment, without locks or files shared between ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sifbox.runtime.plan import Mount

#: Variables that say a launcher started this process as one rank of a job.
RANK_VARS = ("PMIX_RANK", "PMI_RANK", "SLURM_STEP_ID", "OMPI_COMM_WORLD_RANK", "PMI_FD")
#: Directories of the PMIx server's data for its clients.
PMIX_DIRS = ("PMIX_SERVER_TMPDIR",)


def under_launcher(env: Mapping[str, str]) -> bool:
    return any(v in env for v in RANK_VARS)


def launcher_mounts(env: Mapping[str, str], planned: list[Mount], isdir=os.path.isdir) -> list[Mount]:  # type: ignore[no-untyped-def]
    """Binds of the launcher's directories that the plan does not cover yet."""
    covered = [m.target for m in planned if m.kind in ("bind", "rbind") and not m.file]
    out: list[Mount] = []
    for var in PMIX_DIRS:
        path = env.get(var, "")
        if not path.startswith("/"):
            continue
        path = os.path.normpath(path)
        if path == "/" or not isdir(path) or any(_under(path, t) for t in covered):
            continue
        out.append(Mount("rbind", path, path))
        covered.append(path)
    return out


def _under(path: str, top: str) -> bool:
    top = os.path.normpath(top)
    return path == top or path.startswith(top.rstrip("/") + "/")
