#!/bin/sh
# Slurm epilog: stop the job user's shared image mounts on this node (sifbox mounts prune).
#
# The holders a job's containers joined outlive them by design (`share image idle timeout`
# of sifbox.conf); once the job is over, this ends those no container of the user still
# uses (another job of the same user on the node keeps its own) and removes stale state, so
# nothing is left on the node. In slurm.conf (slurmd runs it as root):
#
#     Epilog=/path/to/sifbox/data/slurm-epilog.sh
#
# SIFBOX names the sifbox command (default: sifbox on PATH). It never fails the job: a
# failing epilog would drain the node.
[ -n "${SLURM_JOB_UID:-}" ] || [ -n "${SLURM_JOB_USER:-}" ] || exit 0
user=${SLURM_JOB_UID:-$SLURM_JOB_USER}
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"${SIFBOX:-sifbox}" mounts prune --user "$user" >/dev/null 2>&1 || true
exit 0
