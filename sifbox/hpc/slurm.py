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

TYPE_CHECKING = False
if TYPE_CHECKING:  # (not at run time: `collections` costs every MPI rank a millisecond)
    from collections.abc import Mapping

from sifbox.runtime.sandbox.ops import Mount

#: Variables that say a launcher started this process as one rank of a job.
RANK_VARS = ("PMIX_RANK", "PMI_RANK", "SLURM_STEP_ID", "OMPI_COMM_WORLD_RANK", "PMI_FD")
#: Directories of the PMIx server's data for its clients.
PMIX_DIRS = ("PMIX_SERVER_TMPDIR",)


def under_launcher(env: Mapping[str, str]) -> bool:
    return any(v in env for v in RANK_VARS)


def launcher_mounts(env: Mapping[str, str], planned: list[Mount], isdir=os.path.isdir,  # type: ignore[no-untyped-def]
                    *, steered_ok: bool = True, uid: int | None = None, warn=None) -> list[Mount]:
    """Binds of the launcher's directories that the plan does not cover yet.

    The environment is the caller's to set. When the site forbids user binds
    (`user bind control = no`, `steered_ok` False), a directory is bound only
    if it is what Slurm made for this step: named `pmix.JOB.STEP` in a
    directory that the caller (`uid`) neither owns nor may write, the way
    slurmd lays out its spool; anything else is left out (`warn` says so).
    """
    covered = [m.target for m in planned if m.kind in ("bind", "rbind") and not m.file]
    out: list[Mount] = []
    for var in PMIX_DIRS:
        path = env.get(var, "")
        if not path.startswith("/"):
            continue
        path = os.path.normpath(path)
        if path == "/" or not isdir(path) or any(_under(path, t) for t in covered):
            continue
        if not steered_ok:
            reason = step_dir_problem(path, uid if uid is not None else os.getuid())
            if reason is not None:
                if warn is not None:
                    warn(f"not binding {var} `{path}`: {reason} (`user bind control = no`)")
                continue
        out.append(Mount("rbind", path, path))
        covered.append(path)
    return out


def step_dir_problem(path: str, uid: int) -> str | None:
    """Why `path` is not a PMIx directory slurmd made for a step (None: it is)."""
    import stat

    name = os.path.basename(path)
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "pmix" or not (parts[1].isdigit() and parts[2].isdigit()):
        return "not a Slurm step directory (pmix.JOB.STEP)"
    try:
        if os.path.realpath(path) != path:
            return "a symbolic link is on its path"
        st = os.stat(path)
        parent = os.stat(os.path.dirname(path))
    except OSError as err:
        return err.strerror or "can't be examined"
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (uid, 0):
        return "not a directory of the caller's step"
    writable_by_caller = (
        parent.st_uid == uid
        or parent.st_mode & 0o002
        or (parent.st_mode & 0o020 and parent.st_gid in os.getgroups())
    )
    if writable_by_caller:
        return "its parent directory is the caller's to write, not slurmd's spool"
    return None


def _under(path: str, top: str) -> bool:
    top = os.path.normpath(top)
    return path == top or path.startswith(top.rstrip("/") + "/")
