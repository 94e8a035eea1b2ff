"""MPI ranks in containers: environment defaults (pure).

Each unprivileged rank runs in its own user namespace, and OpenMPI's
shared-memory transport then can't use CMA (process_vm_readv) between ranks:
it warns once per rank and falls back to copying through /dev/shm. Under a
launcher, sifbox sets that fallback itself
(`OMPI_MCA_btl_vader_single_copy_mechanism=none`) unless the user chose a
mechanism. Shared memory itself works: the container uses the host's /dev/shm
and IPC namespace unless `--contain`/`--ipc` asks otherwise (as Apptainer).
"""

from __future__ import annotations

from collections.abc import Mapping

SINGLE_COPY = "OMPI_MCA_btl_vader_single_copy_mechanism"


def env_defaults(env: Mapping[str, str], *, own_userns: bool) -> dict[str, str]:
    """Variables to add to a rank's container environment."""
    out = {}
    if own_userns and SINGLE_COPY not in env and "SIFBOXENV_" + SINGLE_COPY not in env:
        out[SINGLE_COPY] = "none"
    return out
