"""Where the time of one `sifbox oci run` goes, next to `runc run` on the same bundle.

    /usr/bin/python3 benchmarks/oci_phases.py [--runs 15] [--user sifbox-test] [--sifbox PATH]
                     [--runc PATH] [--untraced 20]

Run as root. Builds a busybox root in a temporary directory and an OCI bundle on it for root
(runc's default config.json, read-only root) and for the user (made rootless as
`runc spec --rootless` makes it), as benchmarks/startup.py does, then:

1. times `sifbox oci run BUNDLE` and `runc run BUNDLE` (/bin/true) without tracing, --untraced
   rounds, one run of every row per round (load from elsewhere weighs on all rows alike): the
   median, the minimum and the ratio of sifbox's median to runc's, per user;
2. traces --runs launches of each with `strace --seccomp-bpf -f -ttt` limited to a handful of
   calls (execve, execveat, clone, clone3, unshare, pivot_root, exit_group), so the traced
   launch runs at nearly full speed, and cuts each at these events:

    start   -> ns      the runtime's start (sifbox: Python, imports, config.json, the plan,
                       the state directory, cgroups, the fork of the watcher; runc: Go, its
                       `runc init` re-exec) up to the first unshare of the container
    ns      -> pivot   the namespaces, the container's process, its mounts, pivot_root
    pivot   -> exec    lock-down (capabilities, no_new_privs, ids), the ready handshake, the
                       exec of the payload (sifbox: through its sealed trampoline)
    exec    -> exit    /bin/true itself
    exit    -> end     the runtime's teardown: the waiter's exit, cgroups and state removed,
                       the runtime's own exit

Each phase: the median over the traced launches, as root and as the user (through `runuser -u
USER --`; the wrapper's time is in the first phase). Timings under strace are a little longer
than without: compare phases with each other, totals with the untraced table. The interpreter's
own start (`python3 -I -S -c pass`, untraced) is printed as sifbox's floor. Prints tables, never
asserts. Standard library only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Failed, UserEnv, root_strace, trace_events
from startup import oci_bundle

PHASES = ("start -> ns", "ns -> pivot", "pivot -> exec", "exec -> exit", "exit -> end")
CALLS = "execve,execveat,clone,clone3,unshare,pivot_root,exit_group"
PAYLOAD = "/bin/true"


def parse(trace: str) -> list[float]:
    """The phase durations (ms) of one trace (`strace -f -ttt` lines: PID TIME CALL...)."""
    start = ns = pivot = run = pexit = end = None
    cli_pid = payload_pid = None
    for pid, stamp, rest in trace_events(trace):
        if start is None:
            if rest.startswith("execve(") and rest.rstrip().endswith("= 0"):
                start, cli_pid = stamp, pid
            continue
        if rest.startswith(("execve(", "execveat(")) and "= -1 " not in rest:  # done, or <unfinished ...>
            if pivot is not None and run is None:
                run = stamp  # the first exec after pivot_root: the payload, or sifbox's trampoline
            if rest.startswith(f'execve("{PAYLOAD}"'):
                payload_pid = pid
        elif ns is None and rest.startswith("unshare("):
            ns = stamp
        elif pivot is None and rest.startswith("pivot_root("):
            pivot = stamp
        elif rest.startswith(("+++ exited", "+++ killed")):
            if pid == payload_pid and pexit is None:
                pexit = stamp
            elif pid == cli_pid:
                end = stamp
    if None in (start, ns, pivot, run, pexit, end):
        raise Failed("the trace lacks an event (start, unshare, pivot_root, exec, exits)")
    assert start is not None and ns is not None and pivot is not None and run is not None
    assert pexit is not None and end is not None
    marks = [start, ns, pivot, run, pexit, end]
    return [(b - a) * 1000 for a, b in itertools.pairwise(marks)]


def busybox_root(tmp: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("oci_phases.py: busybox is not installed (busybox-static)")
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "true"):
        os.symlink("busybox", root / "bin" / applet)
    for name in ("dev", "proc", "sys", "tmp", "etc"):
        (root / name).mkdir()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="traced launches per row (default 15)")
    parser.add_argument("--untraced", type=int, default=20, help="untraced rounds (default 20; 0: none)")
    parser.add_argument("--user", default="sifbox-test")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    args = parser.parse_args()
    strace = root_strace("oci_phases.py")
    if strace is None:
        return 2
    users = UserEnv(args.user)
    tmp = Path(tempfile.mkdtemp(prefix="sifbox-ociphases.", dir="/tmp"))
    os.chmod(tmp, 0o755)
    try:
        root = busybox_root(tmp)
        whos = ["root"] + ([args.user] if users.user_problem() is None else [])
        tools = {"sifbox": args.sifbox, "runc": args.runc}
        argvs: dict[tuple[str, str], list[str]] = {}
        for who in whos:
            bundle = oci_bundle(tmp, root, who)
            state = tmp / f"oci-state-{who}"
            argvs[("sifbox", who)] = users.wrap(who, [tools["sifbox"], "oci", "--root", str(state), "run",
                                                      "--bundle", str(bundle), "bench"])  # fmt: skip
            argvs[("runc", who)] = users.wrap(who, [tools["runc"], "--root", f"{state}-runc", "run",
                                                    "--bundle", str(bundle), "bench"])  # fmt: skip
        rows = [(tool, who) for who in whos for tool in tools]
        errors: dict[tuple[str, str], str] = {}

        def launch(row: tuple[str, str], prefix: list[str], out: str | None = None) -> float:
            t = time.perf_counter()
            proc = subprocess.run([*prefix, *argvs[row]], env=users.env[row[1]], cwd=str(tmp),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  check=False)  # fmt: skip
            elapsed = (time.perf_counter() - t) * 1000
            if proc.returncode != 0:
                raise Failed(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-200:]}")
            return elapsed

        wall: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
        floor: list[float] = []
        for round_ in range(args.untraced + 2 if args.untraced else 0):
            t = time.perf_counter()
            subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", "pass"], check=False)
            if round_ >= 2:
                floor.append((time.perf_counter() - t) * 1000)
            for row in rows:
                if row in errors:
                    continue
                try:
                    elapsed = launch(row, [])
                except Failed as err:
                    errors[row] = str(err)
                    continue
                if round_ >= 2:
                    wall[row].append(elapsed)

        phases: dict[tuple[str, str], list[list[float]]] = {row: [] for row in rows}
        out = str(tmp / "trace")
        for round_ in range(args.runs + 2):
            for row in rows:
                if row in errors:
                    continue
                try:
                    launch(row, [strace, "--seccomp-bpf", "-f", "-ttt", "-e", f"trace={CALLS}", "-o", out])
                    with open(out) as f:
                        cut = parse(f.read())
                except (Failed, OSError) as err:
                    errors[row] = str(err)
                    continue
                if round_ >= 2:
                    phases[row].append(cut)

        print(f"`sifbox oci run` next to `runc run`, one bundle (busybox, {PAYLOAD}); CPUs: {os.cpu_count()}; "
              f"load average: {os.getloadavg()[0]:.2f}")
        print(f"  sifbox: {args.sifbox}   runc: {args.runc}")
        print()
        if args.untraced:
            print(f"Untraced, ms over {args.untraced} interleaved rounds (user rows through runuser)")
            print(f"{'row':<22}{'median':>9}{'min':>9}{'ratio':>8}")
            for row in rows:
                if not wall[row]:
                    continue
                med = statistics.median(wall[row])
                ref = wall[("runc", row[1])]
                ratio = f"{med / statistics.median(ref):8.2f}" if ref else f"{'-':>8}"
                print(f"{row[0] + ' ' + row[1]:<22}{med:9.1f}{min(wall[row]):9.1f}{ratio}")
            if floor:
                print(f"{'python3 -I -S -c pass':<22}{statistics.median(floor):9.1f}{min(floor):9.1f}")
            print()
        print(f"Phases, median ms over {args.runs} launches traced with strace --seccomp-bpf")
        print(f"{'phase':<16}" + "".join(f"{t + ' ' + w:>22}" for t, w in rows))
        print("-" * (16 + 22 * len(rows)))
        for i, name in enumerate(PHASES):
            cells = [f"{statistics.median(r[i] for r in phases[row]):22.2f}" if phases[row] else f"{'-':>22}"
                     for row in rows]  # fmt: skip
            print(f"{name:<16}" + "".join(cells))
        totals = [f"{statistics.median(sum(r) for r in phases[row]):22.2f}" if phases[row] else f"{'-':>22}"
                  for row in rows]  # fmt: skip
        print(f"{'total (traced)':<16}" + "".join(totals))
        for row, err in errors.items():
            print(f"{row[0]} {row[1]}: failed ({err})")
        return 0
    finally:
        users.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
