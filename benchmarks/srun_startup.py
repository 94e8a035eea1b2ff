"""Start-up under Slurm: `srun -n N sifbox exec IMG /bin/true` next to bare `srun -n N /bin/true`
and Charliecloud's `srun -n N ch-run IMG.sqfs -- /bin/true`; sifbox through the node's shared
mount of the image (its default) and with --no-share (per rank).

    /opt/sifbox/venv/bin/python benchmarks/srun_startup.py [--nodes 1|2|...] [--ranks 1,8,32,64] [--runs 3]
                                                           [--user sifbox-test] [--sifbox /usr/local/bin/sifbox]

Run as root, with a Python that has pytest (scripts/test.sh installs it in the venv). With
`--nodes 1` (the default) it starts the tests' single-node Slurm (munged, slurmctld, slurmd on
127.0.0.1, see tests/integration/slurm.py); with `--nodes K` the tests' multi-node cluster
(tests/integration/slurm_multinode.py: K nodes in namespaces of their own, one machine) and
measures every row on 1 node and on all K (`srun -N1`, `srun -NK`, ranks spread evenly).
`srun -O` oversubscribes the cores. It builds a busybox image as SquashFS and SIF, then prints,
for root and for the unprivileged user, the median wall time of --runs runs per cell (the rows
measured in interleaved rounds, so a load that changes meanwhile hits them all), the per-rank
overhead over bare srun, (t - t_bare) / N, and the ratio to ch-run measured in the same round
set (x1.00 = as fast as ch-run). A flat overhead column means start-up does not serialise
across ranks. Stops Slurm at the end. Timings are printed, never asserted.
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

from tests.integration import images, slurm, slurm_multinode


def _once(argv: list[str], env: dict[str, str], user: str | None, cwd: Path) -> tuple[float | None, str]:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    t = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False, cwd=cwd)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:80]
    return time.monotonic() - t, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1, help="1: one node; K > 1: K nodes (rows on 1 and on K)")
    ap.add_argument("--ranks", default=None, help="default 1,8,32,64 (one node), 16,64 (several)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--user", default="sifbox-test")
    ap.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("srun_startup.py: run as root (it starts Slurm's daemons)", file=sys.stderr)
        return 2
    os.environ["SIFBOX_CLI"] = args.sifbox  # the clusters' epilog runs it (tests/conftest.py INSTALLED_CLI)
    ranks = [int(n) for n in (args.ranks or ("1,8,32,64" if args.nodes == 1 else "16,64")).split(",")]
    node_counts = [1] if args.nodes == 1 else [1, args.nodes]
    # The nodes of a multi-node cluster do not see the head's /tmp: the images go under /var/tmp.
    base = Path(tempfile.mkdtemp(prefix="sifbox-bench-srun-", dir="/tmp" if args.nodes == 1 else "/var/tmp"))
    base.chmod(0o755)
    cluster = multi = None
    try:
        root = images.make_busybox_rootfs(base / "root")
        for f in ("etc/hosts", "etc/resolv.conf"):  # ch-run binds these
            (root / f).touch()
        sqfs = images.mksquashfs(root, base / "busybox.sqfs")
        sif = images.make_sif(args.sifbox, sqfs, base / "busybox.sif")
        if args.nodes == 1:
            cluster = slurm.start_cluster()
            conf, where = cluster.conf, "one node"
        else:
            multi = slurm_multinode.start_cluster(args.nodes)
            conf, where = multi.conf, f"{args.nodes} nodes (namespaces of one machine)"
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(conf),
               "USER": "root", "HOME": "/root"}  # runuser sets them for the user
        runtimes = [("srun /bin/true", ["/bin/true"])]
        if shutil.which("ch-run"):
            runtimes.append(("srun ch-run", ["ch-run", str(sqfs), "--", "/bin/true"]))
        # Shared: the ranks of a node join one holder of the image (the node's first rank starts
        # it, the epilog takes it down); --no-share: every rank mounts the image itself.
        runtimes.append(("srun sifbox exec", [args.sifbox, "exec", str(sif), "/bin/true"]))
        runtimes.append(("  --no-share", [args.sifbox, "exec", "--no-share", str(sif), "/bin/true"]))
        cells = [(who, label, cmd, nodes, n) for who in ("root", args.user) for label, cmd in runtimes
                 for nodes in node_counts for n in ranks if n >= nodes]  # fmt: skip
        times: dict[tuple[str, str, int, int], list[float]] = {}
        failures: dict[tuple[str, str, int, int], int] = {}
        for _ in range(args.runs):  # interleaved rounds
            for who, label, cmd, nodes, n in cells:
                cell = (who, label, nodes, n)
                argv = ["srun", "-O", "--mpi=none", f"-N{nodes}", "-n", str(n), *cmd]
                t, err = _once(argv, env, None if who == "root" else who, base)
                if t is None:  # counted, and shown; the cell is the median of the runs that worked
                    failures[cell] = failures.get(cell, 0) + 1
                    print(f"#   {who} {label} -N{nodes} -n{n}: {err}", file=sys.stderr)
                else:
                    times.setdefault(cell, []).append(t)
        med = {cell: statistics.median(ts) for cell, ts in times.items()}
        print(f"# srun -O -N nodes -n N ... on {where}, {os.cpu_count()} cores, median of {args.runs} "
              "interleaved runs, seconds")  # fmt: skip
        print(f"{'user':<12} {'runtime':<18} {'nodes':>5} " + " ".join(f"{'N=' + str(n):>24}" for n in ranks))
        for who in ("root", args.user):
            for label, _ in runtimes:
                for nodes in node_counts:
                    row = []
                    for n in ranks:
                        t = med.get((who, label, nodes, n))
                        bare = med.get((who, "srun /bin/true", nodes, n))
                        ch = med.get((who, "srun ch-run", nodes, n))
                        if n < nodes:
                            row.append(f"{'-':>24}")
                        elif t is None:
                            row.append(f"{'failed':>24}")
                        elif label == "srun /bin/true":
                            row.append(f"{t:>24.3f}")
                        else:
                            per = f"{(t - bare) / n * 1000:>4.0f}ms" if bare is not None else "   ?"
                            ratio = f"x{t / ch:.2f}" if ch else ""
                            bad = "!" * failures.get((who, label, nodes, n), 0)
                            row.append(f"{bad}{t:>7.3f} ({per}) {ratio:>6}".rjust(24))
                    print(f"{who:<12} {label:<18} {nodes:>5} " + " ".join(row))
        print("# (per-rank overhead over bare srun in parentheses; xR = time / ch-run's time, same nodes and ranks;"
              " ! = a run that failed, left out)")  # fmt: skip
    finally:
        if cluster is not None:
            slurm.stop_cluster(cluster)
        if multi is not None:
            left = slurm_multinode.stop_cluster(multi)
            if left:
                print(f"# left behind by the cluster: {left}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
