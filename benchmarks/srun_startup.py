"""Start-up under Slurm: `srun -n N sifbox exec IMG /bin/true` next to bare `srun -n N /bin/true`
and Charliecloud's `srun -n N ch-run IMG.sqfs -- /bin/true`, for N ranks on one node; sifbox
through the node's shared mount of the image (its default) and with --no-share (per rank).

    /opt/sifbox/venv/bin/python benchmarks/srun_startup.py [--ranks 1,8,32,64] [--runs 3] [--user sifbox-test]
                                                           [--sifbox /usr/local/bin/sifbox]

Run as root, with a Python that has pytest (scripts/test.sh installs it in the venv). Starts the
tests' single-node Slurm (munged, slurmctld, slurmd on 127.0.0.1, see tests/integration/slurm.py)
with `srun -O` oversubscribing the cores, builds a busybox image as SquashFS and SIF, and prints,
for root and for the unprivileged user, the median wall time of --runs runs per row and the
per-rank overhead over bare srun: (t - t_bare) / N. A flat overhead column means start-up does
not serialise across ranks. Stops Slurm at the end. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test harness's Slurm and image helpers (a dev script, not the product)

from tests.integration import images, slurm


def _time(argv: list[str], env: dict[str, str], user: str | None, runs: int) -> tuple[float | None, str]:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    times = []
    for _ in range(runs):
        t = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            return None, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:60]
        times.append(time.monotonic() - t)
    return statistics.median(times), ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,8,32,64")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--user", default="sifbox-test")
    ap.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("srun_startup.py: run as root (it starts Slurm's daemons)", file=sys.stderr)
        return 2
    ranks = [int(n) for n in args.ranks.split(",")]
    base = Path(tempfile.mkdtemp(prefix="sifbox-bench-srun-", dir="/tmp"))
    base.chmod(0o755)
    cluster = None
    try:
        root = images.make_busybox_rootfs(base / "root")
        for f in ("etc/hosts", "etc/resolv.conf"):  # ch-run binds these
            (root / f).touch()
        sqfs = images.mksquashfs(root, base / "busybox.sqfs")
        sif = images.make_sif(args.sifbox, sqfs, base / "busybox.sif")
        cluster = slurm.start_cluster()
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(cluster.conf)}
        runtimes = [("srun /bin/true", ["/bin/true"])]
        # Shared: the step's ranks join one holder of the image (the first rank starts it, the
        # step's end takes it down); --no-share: every rank mounts the image itself.
        runtimes.append(("srun sifbox exec", [args.sifbox, "exec", str(sif), "/bin/true"]))
        runtimes.append(("  --no-share", [args.sifbox, "exec", "--no-share", str(sif), "/bin/true"]))
        if shutil.which("ch-run"):
            runtimes.append(("srun ch-run", ["ch-run", str(sqfs), "--", "/bin/true"]))
        print(f"# srun -O -n N ... on one node ({os.cpu_count()} cores), median of {args.runs} runs, seconds")
        print(f"{'user':<12} {'runtime':<18} " + " ".join(f"{'N=' + str(n):>16}" for n in ranks))
        for who in ("root", args.user):
            user = None if who == "root" else who
            bare: dict[int, float] = {}
            for label, cmd in runtimes:
                cells = []
                for n in ranks:
                    t, err = _time(["srun", "-O", "--mpi=none", "-n", str(n), *cmd], env, user, args.runs)
                    if t is None:
                        cells.append(f"{'failed':>16}")
                        print(f"#   {who} {label} N={n}: {err}", file=sys.stderr)
                        continue
                    if label == "srun /bin/true":
                        bare[n] = t
                        cells.append(f"{t:>16.3f}")
                    else:
                        per = (t - bare.get(n, 0.0)) / n * 1000
                        cells.append(f"{t:>7.3f} ({per:>4.0f}ms)")
                print(f"{who:<12} {label:<18} " + " ".join(cells))
        print("# (per-rank overhead over bare srun in parentheses)")
    finally:
        if cluster is not None:
            slurm.stop_cluster(cluster)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
