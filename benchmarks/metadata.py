"""Requests reaching the file server when N ranks of one node import numpy at once.

    /usr/bin/python3 benchmarks/metadata.py [--workdir /var/tmp/sifbox-bench] [--ranks 1,8,32,64]
                                            [--user sifbox-test] [--sifbox PATH] [--timeout 1.0]
                                            [--only LABEL,...]

Run as root, after benchmarks/read.py --keep has built WORKDIR (the Debian tree with numpy,
root/, and img-gzip.sif). This kernel has no NFS or GPFS server to count on, so a counting
passthrough FUSE file system (benchmarks/countfs.py, on pyfuse3) serves a directory holding
the image and the unpacked tree, and counts every request the kernel sends it (lookup,
getattr, open, read, readdir, ...): what an NFS/GPFS client would send to its server, with
the same kind of client caching (attributes for --timeout s, file pages across opens).

Rows (each from a cold node: holders stopped, caches dropped, counters reset; then N ranks
start together and each runs `python3 -c 'import numpy'`):

    unpacked tree, chroot      root: chroot into the tree on the file server
    unpacked tree, ch-run      the user: Charliecloud's ch-run into the tree
    sifbox --no-share          the user: one squashfuse_ll per rank, reading the SIF
    sifbox (node holder)       the user: the default, one squashfuse_ll per node
    sifbox root --no-share / (node holder): root, kernel SquashFS on a loop device
    mount service              the user and root: `sifbox mounts serve` (started here) kernel-
                               mounts the image once for every user, from a store on the file
                               server (STORE/USER/img.sif, hard links of the image, with its
                               admission record); its idle timeout (1 s) unmounts it between
                               rows, and one launch before the first row lets it hash the image
                               (its digest is kept while it runs: a service's steady state)

Goal (issue 15): per-node requests independent of N, and >= 100x fewer than the unpacked tree
at 32 ranks. Prints tables, asserts nothing. Needs Debian's python3-pyfuse3 for countfs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchlib import PATH, Unavailable, UserEnv, drop_caches, prune_holders
from mountservice import MountService

NUMPY = ["/usr/bin/python3", "-c", "import numpy"]
METADATA = ("lookup", "getattr", "open", "opendir", "readdir", "readlink", "statfs", "getxattr", "listxattr",
            "access")  # fmt: skip
HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


class CountFS:
    """benchmarks/countfs.py serving `source` at `mnt`."""

    def __init__(self, source: Path, mnt: Path, timeout: float) -> None:
        self.mnt, self.stats = mnt, mnt.parent / "countfs-stats.json"
        mnt.mkdir(exist_ok=True)
        self.log = open(mnt.parent / "countfs.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "countfs.py"), str(source), str(mnt), "--stats",
                                      str(self.stats), "--timeout", str(timeout)],
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        for _ in range(500):
            if os.path.ismount(mnt):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"countfs ended: {(mnt.parent / 'countfs.log').read_text()[-500:]}")
            time.sleep(0.02)
        raise RuntimeError("countfs did not mount")

    def take(self) -> dict[str, int]:
        """The counts since the last take (and reset them)."""
        self.stats.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120  # a loaded machine: the server may be busy a while
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                return dict(json.loads(self.stats.read_text()))
            except (OSError, ValueError):
                time.sleep(0.02)
        log_text = (self.mnt.parent / "countfs.log").read_text()[-2000:]
        raise RuntimeError(f"countfs wrote no counts (exit {self.proc.poll()}): {log_text}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        self.log.close()






def run_ranks(env: UserEnv, who: str, argv: list[str], n: int) -> tuple[float, int]:
    """Start `n` ranks at once; (wall seconds, failures)."""
    wrapped = env.wrap(who, argv)
    start = time.perf_counter()
    procs = [subprocess.Popen(wrapped, env=env.env[who], cwd="/", stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(n)]  # fmt: skip
    failed = 0
    first_error = ""
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            failed += 1
            first_error = first_error or err.decode(errors="replace").strip()[-300:]
    if first_error:
        log(f"  failed rank: {first_error}")
    return time.perf_counter() - start, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/var/tmp/sifbox-bench")
    parser.add_argument("--ranks", default="1,8,32,64")
    parser.add_argument("--user", default="sifbox-test")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    parser.add_argument("--timeout", type=float, default=1.0, help="countfs entry/attribute cache seconds")
    parser.add_argument("--no-root-sifbox", action="store_true", help="skip sifbox's rows as root")
    parser.add_argument("--keep", action="store_true", help="keep WORKDIR/metadata (hard links of the image)")
    parser.add_argument("--only", default="", help="only the rows whose label holds one of these (comma-separated)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("metadata.py: run as root (it mounts the counting file system and drops caches)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    tree, sif = workdir / "root", workdir / "img-gzip.sif"
    if not (tree / "usr/bin/python3").exists() or not sif.exists():
        print(f"metadata.py: no image in {workdir}: run `benchmarks/read.py --keep` first", file=sys.stderr)
        return 2
    ranks = [int(n) for n in args.ranks.split(",")]
    env = UserEnv(args.user)
    sifbox = args.sifbox if os.access(args.sifbox, os.X_OK) else None
    chrun = shutil.which("ch-run", path=PATH)
    base = workdir / "metadata"
    served = base / "server"
    mnt = base / "mnt"
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    served.mkdir(exist_ok=True)
    os.chmod(served, 0o755)
    # The server's directory holds the image and the tree (hard links: no copy, same data).
    for name, src in (("img-gzip.sif", sif),):
        if not (served / name).exists():
            os.link(src, served / name)
    if not (served / "root").exists():
        subprocess.run(["cp", "-al", str(tree), str(served / "root")], check=True)
    fs = CountFS(served, mnt, args.timeout)
    restarts = 0
    image, root = str(mnt / "img-gzip.sif"), str(mnt / "root")
    rows: list[tuple[str, str, list[str] | None, str]] = [
        ("unpacked tree, chroot", "root", ["chroot", root, *NUMPY], ""),
        ("unpacked tree, ch-run", env.user, [chrun, root, "--", *NUMPY] if chrun else None, "ch-run not installed"),
        ("sifbox --no-share (squashfuse_ll per rank)", env.user,
         [sifbox, "exec", "--no-share", image, *NUMPY] if sifbox else None, "sifbox not installed"),
        ("sifbox (node holder, squashfuse_ll)", env.user, [sifbox, "exec", image, *NUMPY] if sifbox else None,
         "sifbox not installed"),
    ]  # fmt: skip
    if not args.no_root_sifbox:
        rows += [
            ("sifbox --no-share (kernel squashfs per rank)", "root",
             [sifbox, "exec", "--no-share", image, *NUMPY] if sifbox else None, "sifbox not installed"),
            ("sifbox (node holder, kernel squashfs)", "root", [sifbox, "exec", image, *NUMPY] if sifbox else None,
             "sifbox not installed"),
        ]  # fmt: skip
    service: MountService | None = None
    service_note = "sifbox not installed"
    if sifbox:
        try:
            service = MountService(base / "msvc", served / "store", sifbox, sif, env.user, seen_as=mnt / "store",
                                   idle=1)  # fmt: skip
            warm = subprocess.run(env.wrap("root", [*service.argv(sifbox, "root"), "/bin/true"]), env=env.env["root"],
                                  capture_output=True, check=False, timeout=600)  # fmt: skip
            if warm.returncode:
                raise Unavailable(f"a launch through it failed: {warm.stderr.decode(errors='replace').strip()[-200:]}")
        except (Unavailable, OSError) as err:
            service_note = str(err)
            if service is not None:
                service.stop()
            service = None
    for who in (env.user, *(() if args.no_root_sifbox else ("root",))):
        rows.append((f"mount service (kernel squashfs{', root' if who == 'root' else ''})", who,
                     [*service.argv(sifbox, who), *NUMPY] if service and sifbox else None, service_note))  # fmt: skip
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        rows = [r for i, r in enumerate(rows) if i == 0 or any(w in r[0] for w in wanted)]  # the tree: the ratios
    results: dict[tuple[int, int], tuple[dict[str, int], float, int]] = {}
    load = os.getloadavg()
    try:
        for n in ranks:
            for i, (label, who, argv, _) in enumerate(rows):
                if argv is None:
                    continue
                for attempt in range(3):
                    log(f"{label} as {who}: {n} rank(s)" + (f" (again: {attempt + 1})" if attempt else ""))
                    prune_holders(env, sifbox)
                    if service is not None and not service.wait_unmounted():
                        log("  the mount service still has the image mounted")
                    drop_caches()
                    try:
                        fs.take()
                        try:
                            wall, failed = run_ranks(env, who, argv, n)
                        except Unavailable as err:
                            log(f"  n/a: {err}")
                            break
                        prune_holders(env, sifbox)  # a holder's FUSE server ends: its last requests counted
                        results[(i, n)] = (fs.take(), wall, failed)
                        break
                    except RuntimeError as err:
                        # The counting server ended under the row (on a shared machine, other
                        # work's clean-up may unmount FUSE mounts it did not make): start it again.
                        log(f"  {err}; restarting countfs")
                        restarts += 1
                        fs.stop()
                        fs = CountFS(served, mnt, args.timeout)
    finally:
        prune_holders(env, sifbox)
        if service is not None:
            service.stop()
        fs.stop()
        env.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    load_end = os.getloadavg()

    def total(c: dict[str, int]) -> int:
        return sum(v for k, v in c.items() if k != "read_bytes")

    print("File-server requests for N ranks importing numpy at once (counting FUSE passthrough, "
          f"attr/entry cache {args.timeout:g} s)")
    print(f"  machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} at start, {load_end[0]:.1f} at end "
          "(shared with other work: wall times are indicative only)")
    if restarts:
        print(f"  countfs ended under a row {restarts} time(s) (unmounted from outside) and was restarted; "
              "those rows were run again")
    print()
    width = max(len(r[0]) for r in rows)
    uw = max(len(r[1]) for r in rows)
    head = f"{'rows: requests (all kinds)':<{width}}  {'user':<{uw}}" + "".join(f"  {f'N={n}':>9}" for n in ranks)
    print(head)
    print("-" * len(head))
    for i, (label, who, argv, note) in enumerate(rows):
        line = f"{label:<{width}}  {who:<{uw}}"
        if argv is None:
            print(f"{line}  n/a ({note})")
            continue
        for n in ranks:
            got = results.get((i, n))
            cell = "-" if got is None else f"{total(got[0])}" + ("!" if got[2] else "")
            line += f"  {cell:>9}"
        print(line)
    print("(! = some ranks failed; see the log)")
    print()
    for n in ranks:
        print(f"N={n}: by kind (metadata = {', '.join(METADATA)}; wall s of the N ranks)")
        kinds = ("lookup", "getattr", "open", "readdir", "read", "MiB read", "metadata", "wall s")
        head = f"  {'row':<{width}}" + "".join(f"  {k:>9}" for k in kinds)
        print(head)
        for i, (label, *_rest) in enumerate(rows):
            got = results.get((i, n))
            if got is None:
                continue
            c, wall, _ = got
            cells = [c.get("lookup", 0), c.get("getattr", 0), c.get("open", 0), c.get("readdir", 0), c.get("read", 0),
                     f"{c.get('read_bytes', 0) / 2**20:.1f}", sum(c.get(k, 0) for k in METADATA), f"{wall:.1f}"]  # fmt: skip
            print(f"  {label:<{width}}" + "".join(f"  {x!s:>9}" for x in cells))
        print()
    tree_row = 0
    shared_rows = [i for i, (label, who, *_r) in enumerate(rows)
                   if who == env.user and ("node holder" in label or label.startswith("mount service"))]  # fmt: skip
    for i in shared_rows:
        name = f"{rows[i][0]} ({rows[i][1]})"
        for n in ranks:
            t, h = results.get((tree_row, n)), results.get((i, n))
            if t and h:
                meta_t, meta_h = (sum(c[0].get(k, 0) for k in METADATA) for c in (t, h))
                print(f"N={n}: unpacked tree / {name} = {total(t[0])} / {total(h[0])} = "
                      f"{total(t[0]) / max(1, total(h[0])):.0f}x; metadata only {meta_t} / {meta_h} = "
                      f"{meta_t / max(1, meta_h):.0f}x" + ("  (goal at N=32: >= 100x)" if n == 32 else ""))
        hs = [total(results[(i, n)][0]) for n in ranks if (i, n) in results]
        if hs:
            print(f"{name} requests across N={ranks}: {hs} (goal: independent of N)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
