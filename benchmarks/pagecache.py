"""Page-cache memory of 16 concurrent `import numpy` next to one: node mount holder vs
`--no-share`, root and user, and `chroot` into the unpacked tree as the peer.

    /usr/bin/python3 benchmarks/pagecache.py [--workdir /var/tmp/sifbox-bench] [--ranks 16]
                                             [--user sifbox-test] [--sifbox PATH]

Run as root, after benchmarks/read.py --keep has built WORKDIR. For each row and N in (1,
--ranks): holders stopped, `sync; echo 3 > /proc/sys/vm/drop_caches`, a fresh memory cgroup
(v2 `memory.stat` file, or v1 total_cache) that the N ranks start in (so does a holder one of
them starts), the ranks start at once and, once every one has imported numpy (and while all
of them still run, their mounts with them), the page cache charged to the cgroup is read. The
kernel charges a page to the cgroup that first brings it in, so other work on the machine
does not count; /proc/meminfo's Cached delta is printed too, as a noisier cross-check.

With a holder, every rank reads the same mount: its files' pages are cached once. With
--no-share each rank has its own squashfuse_ll mount (or SquashFS superblock for root): the
same file has a page-cache copy per mount. Goal (issue 15): 16 ranks <= 1.2x one rank with
the holder. Prints a table, asserts nothing. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchlib import Unavailable, UserEnv, drop_caches, prune_holders
from mountservice import MountService

#: Each rank imports numpy, says so, and stays (its mount with it) until its stdin closes:
#: the page cache is measured while all N run (a --no-share mount's cache goes with its mount).
NUMPY = ["/usr/bin/python3", "-c", "import sys, numpy; print('ready', flush=True); sys.stdin.read()"]


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def own_cgroup() -> tuple[Path, str]:
    """The memory cgroup directory of this process, and its kind ("v1" or "v2")."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "v1"
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/"), "v2"
    raise RuntimeError("no memory cgroup")


class Cgroup:
    def __init__(self, parent: Path, kind: str, name: str) -> None:
        self.path, self.kind = parent / name, kind
        self.path.mkdir()

    def cache(self) -> int:
        stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        if self.kind == "v2":
            return int(stat["file"])
        return int(stat.get("total_cache", stat.get("cache", "0")))

    def remove(self) -> None:
        for _ in range(200):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)
        log(f"could not remove {self.path}")


def cached_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1])
    return 0






def measure(env: UserEnv, sifbox: str | None, parent: Path, kind: str, who: str, argv: list[str],
            n: int, tag: str) -> tuple[int, int, int]:  # fmt: skip
    """(bytes charged to the cgroup, Cached delta in bytes, failed ranks)."""
    prune_holders(env, sifbox)
    drop_caches()
    cg = Cgroup(parent, kind, f"sifbox-bench-{os.getpid()}-{tag}")
    try:
        before = cached_kib()
        enter = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cg.path), *env.wrap(who, argv)]
        procs = [subprocess.Popen(enter, env=env.env[who], cwd="/", stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]  # fmt: skip
        ready = sum(1 for p in procs if p.stdout is not None and p.stdout.readline() == b"ready\n")
        charged, delta = cg.cache(), (cached_kib() - before) * 1024
        failed = n - ready
        for p in procs:
            _, err = p.communicate(b"", timeout=900)
            if p.returncode:
                failed += 1
                log(f"  rank failed: {err.decode(errors='replace').strip()[-300:]}")
    finally:
        prune_holders(env, sifbox)
        cg.remove()
    return charged, delta, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/var/tmp/sifbox-bench")
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--user", default="sifbox-test")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pagecache.py: run as root (it drops caches and makes cgroups)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    tree, sif = workdir / "root", workdir / "img-gzip.sif"
    if not (tree / "usr/bin/python3").exists() or not sif.exists():
        print(f"pagecache.py: no image in {workdir}: run `benchmarks/read.py --keep` first", file=sys.stderr)
        return 2
    env = UserEnv(args.user)
    sifbox = args.sifbox if os.access(args.sifbox, os.X_OK) else None
    parent, kind = own_cgroup()
    rows: list[tuple[str, str, list[str] | None]] = [("chroot root/ (dir)", "root", ["chroot", str(tree), *NUMPY])]
    for who in ("root", env.user):
        rows.append(("sifbox exec, node holder", who, [sifbox, "exec", str(sif), *NUMPY] if sifbox else None))
        rows.append(("sifbox exec --no-share", who, [sifbox, "exec", "--no-share", str(sif), *NUMPY]
                     if sifbox else None))  # fmt: skip
    service: MountService | None = None
    if sifbox:
        try:
            service = MountService(workdir / "msvc", workdir / "msvc" / "store", sifbox, sif, env.user)
        except (Unavailable, OSError) as err:
            log(f"no mount service: {err}")
    for who in ("root", env.user):
        rows.append(("sifbox exec, mount service", who, [*service.argv(sifbox, who), *NUMPY]
                     if service and sifbox else None))  # fmt: skip
    load = os.getloadavg()[0]
    results = []
    try:
        for i, (label, who, argv) in enumerate(rows):
            if argv is None:
                results.append(None)
                continue
            got = []
            for n in (1, args.ranks):
                log(f"{label} as {who}: {n} rank(s)")
                got.append(measure(env, sifbox, parent, kind, who, argv, n, f"{i}-{n}"))
            results.append(got)
    finally:
        if service is not None:
            service.stop()
        env.close()
    mib = 2**20
    print(f"Page cache of {args.ranks} concurrent `import numpy` vs 1 (MiB charged to a fresh memory cgroup "
          f"({kind}) after drop_caches; Cached = /proc/meminfo delta)")
    print(f"  machine: {os.cpu_count()} CPUs, load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print()
    width = max(len(r[0]) for r in rows)
    uw = max(len(r[1]) for r in rows)
    n = args.ranks
    head = (f"{'runner':<{width}}  {'user':<{uw}}  {'1 rank':>7}  {f'{n} ranks':>8}  {'ratio':>6}  "
            f"{'Cached 1':>8}  {f'Cached {n}':>9}  goal")
    print(head)
    print("-" * len(head))
    for (label, who, _), got in zip(rows, results, strict=True):
        prefix = f"{label:<{width}}  {who:<{uw}}"
        if got is None:
            print(f"{prefix}  n/a (sifbox not installed, or the mount service did not start: see the log)")
            continue
        (c1, d1, f1), (cn, dn, fn) = got
        goal = ("<= 1.2x: " + ("met" if c1 and cn / c1 <= 1.2 else "NOT met")) if "holder" in label or "service" in label else ""
        flag = " (failed ranks)" if f1 or fn else ""
        print(f"{prefix}  {c1 / mib:7.1f}  {cn / mib:8.1f}  {cn / max(1, c1):6.2f}  {d1 / mib:8.1f}  "
              f"{dn / mib:9.1f}  {goal}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
