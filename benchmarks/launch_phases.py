"""Where the time of one `sifbox exec` goes: a launch cut into phases by its own system calls.

    /usr/bin/python3 benchmarks/launch_phases.py IMAGE [--runs 15] [--user sifbox-test]
                     [--sifbox PATH] [-- COMMAND...]           (default command: /bin/true)

Run as root. After one untraced launch per user (which starts the node's shared mount of the
image, when it isn't there yet), traces each launch with `strace --seccomp-bpf -f -ttt` limited to a handful of
calls (execve, clone, setns, unshare, pivot_root, exit_group), so the traced launch runs at
nearly full speed, and cuts it at these events:

    start    -> ns        Python start, imports, options, config, image and admission,
                          finding the node's shared mount (up to the first setns/unshare)
    ns       -> pivot     fork of the container's process, its mounts, pivot_root
    pivot    -> sh        fork of the payload's process, trampoline, exec of /bin/sh
    sh       -> payload   the prelude: the image's /.singularity.d/env scripts, the user's
                          values, the command's look-up (0 when no shell runs)
    payload  -> exit      the command itself
    exit     -> end       the supervisor's and the CLI's exits, teardown

Each phase: the median over --runs launches (after 2 warm-up launches), as root and as the
user (through `runuser -u USER --`; the wrapper's time is in the first phase). The interpreter's
own start (`python3 -I -S -c pass`, timed without strace) is printed beside it. Timings under
strace are a little longer than without; compare phases, not totals, with other tables.
Prints a table, never asserts. Standard library only.
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

from benchlib import Failed, Unavailable, UserEnv, root_strace, trace_events

PHASES = ("start -> ns", "ns -> pivot", "pivot -> sh", "sh -> payload", "payload -> exit", "exit -> end")
CALLS = "execve,clone,clone3,setns,unshare,pivot_root,exit_group"


def parse(trace: str, cli: str, payload: str) -> list[float]:
    """The phase durations (ms) of one trace (`strace -f -ttt` lines: PID TIME CALL...)."""
    start = ns = pivot = sh = run = pexit = end = None
    cli_pid = payload_pid = None
    for pid, stamp, rest in trace_events(trace):
        if rest.startswith("execve(") and "= 0" in rest[-6:]:
            prog = rest[len('execve("'):].split('"', 1)[0]
            if start is None and prog == cli:
                start, cli_pid = stamp, pid
            elif pivot is not None and sh is None and prog == "/bin/sh" and '"-c"' in rest:
                sh = stamp
            elif pivot is not None and prog == payload:
                run, payload_pid = stamp, pid
        elif ns is None and pid == cli_pid and rest.startswith(("setns(", "unshare(")):
            ns = stamp
        elif pivot is None and rest.startswith("pivot_root("):
            pivot = stamp
        elif rest.startswith("+++ exited") and pid == payload_pid and pexit is None:
            pexit = stamp
        elif rest.startswith("+++ exited") and pid == cli_pid:
            end = stamp
    if None in (start, ns, pivot, run, pexit, end):
        raise Failed("the trace lacks an event (start, ns, pivot, payload, exits)")
    assert start is not None and ns is not None and pivot is not None and run is not None
    assert pexit is not None and end is not None
    sh = sh if sh is not None else run
    marks = [start, ns, pivot, sh, run, pexit, end]
    return [(b - a) * 1000 for a, b in itertools.pairwise(marks)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("command", nargs="*", default=["/bin/true"])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--user", default="sifbox-test")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    args = parser.parse_args()
    strace = root_strace("launch_phases.py")
    if strace is None:
        return 2
    users = UserEnv(args.user)
    try:
        whos = ["root"] + ([args.user] if users.user_problem() is None else [])
        payload = args.command[0]
        results: dict[str, list[list[float]]] = {who: [] for who in whos}
        floor: dict[str, list[float]] = {who: [] for who in whos}
        errors: dict[str, str] = {}
        for who in whos:
            # An untraced launch first: it starts the node's shared mount (its holder and
            # squashfuse outlive the launch, which strace must not own).
            proc = subprocess.run(users.wrap(who, [args.sifbox, "exec", args.image, *args.command]),
                                  env=users.env[who], cwd="/", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, check=False)  # fmt: skip
            if proc.returncode != 0:
                errors[who] = f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-200:]}"
        with tempfile.TemporaryDirectory(prefix="sifbox-phases.") as tmp:
            out = os.path.join(tmp, "trace")
            for round_ in range(args.runs + 2):
                for who in whos:  # interleaved: one launch of each user per round
                    if who in errors:
                        continue
                    argv = users.wrap(who, [args.sifbox, "exec", args.image, *args.command])
                    t = time.perf_counter()
                    subprocess.run(users.wrap(who, ["/usr/bin/python3", "-I", "-S", "-c", "pass"]),
                                   env=users.env[who], cwd="/", check=False)  # fmt: skip
                    if round_ >= 2:
                        floor[who].append((time.perf_counter() - t) * 1000)
                    proc = subprocess.run([strace, "--seccomp-bpf", "-f", "-ttt", "-e", f"trace={CALLS}",
                                           "-o", out, *argv], env=users.env[who], cwd="/",
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)  # fmt: skip
                    try:
                        if proc.returncode != 0:
                            raise Failed(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-200:]}")
                        with open(out) as f:
                            phases = parse(f.read(), args.sifbox, payload)
                    except (Failed, Unavailable, OSError) as err:
                        errors[who] = str(err)
                        continue
                    if round_ >= 2:
                        results[who].append(phases)
        print(f"sifbox exec {args.image} {' '.join(args.command)}: phases, median ms over {args.runs} traced launches")
        print(f"  sifbox: {args.sifbox}; CPUs: {os.cpu_count()}; load average: {os.getloadavg()[0]:.2f}")
        print()
        print(f"{'phase':<18}" + "".join(f"{who:>14}" for who in whos))
        print("-" * (18 + 14 * len(whos)))
        for i, name in enumerate(PHASES):
            cells = []
            for who in whos:
                runs = results[who]
                cells.append(f"{statistics.median(r[i] for r in runs):14.2f}" if runs else f"{'-':>14}")
            print(f"{name:<18}" + "".join(cells))
        totals = [f"{statistics.median(sum(r) for r in results[w]):14.2f}" if results[w] else f"{'-':>14}" for w in whos]
        print(f"{'total (traced)':<18}" + "".join(totals))
        floors = [f"{statistics.median(floor[w]):14.2f}" if floor[w] else f"{'-':>14}" for w in whos]
        print(f"{'python3 -I -S':<18}" + "".join(floors) + "   (untraced; in `start -> ns`)")
        for who, err in errors.items():
            print(f"{who}: failed ({err})")
        return 0
    finally:
        users.close()  # its own holders only (its own XDG_RUNTIME_DIR)


if __name__ == "__main__":
    sys.exit(main())
