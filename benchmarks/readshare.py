"""read.py's sharing table: warm `import numpy` through sifbox's node mount holder (the
default) and with `--no-share` (a mount per container), as root (kernel SquashFS) and as a
user (squashfuse_ll), next to `chroot` into the same tree as a local directory.

Interleaved rounds (every row once per round, in turn), medians: the machine is shared, and
a slow moment then costs every row alike. The holder stays between runs (its idle timeout),
so the shared rows measure what rank 2..N of a job pays: join, bind, run. Goals (issue 15):
shared <= 1.25x chroot as root, <= 1.4x as a user. Standard library only.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable

from benchlib import Failed, Unavailable, UserEnv

NUMPY = ["/usr/bin/python3", "-c", "import numpy"]
GOALS = {"root": 1.25, "user": 1.4}


def _once(env: UserEnv, who: str, argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd="/", env=env.env[who],
                          timeout=600, check=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise Failed(f"exit {proc.returncode}: {tail[-1] if tail else ''}")
    return elapsed


def sharing_table(env: UserEnv, *, sifbox: str | None, sif: str | None, root_dir: str | None,
                  chroot: str | None, chrun: str | None, rounds: int,
                  log: Callable[[str], None]) -> list[str]:  # fmt: skip
    """The table's lines."""
    user = env.user
    rows: list[tuple[str, str, list[str] | None, str]] = [  # label, who, argv, note
        ("chroot root/ (dir) [ref]", "root", [chroot, root_dir, *NUMPY] if chroot and root_dir else None,
         "chroot or the tree missing"),
    ]
    for who in ("root", user):
        for label, opts in (("sifbox exec, shared holder", []), ("sifbox exec --no-share", ["--no-share"])):
            argv = [sifbox, "exec", *opts, sif, *NUMPY] if sifbox and sif else None
            rows.append((f"{label} img-gzip.sif", who, argv, "sifbox or the image missing"))
    rows.append(("ch-run root/ (dir)", user, [chrun, root_dir, "--", *NUMPY] if chrun and root_dir else None,
                 "ch-run not installed"))
    wrapped: list[list[str] | None] = []
    notes: list[str] = []
    for _, who, argv, note in rows:
        try:
            wrapped.append(env.wrap(who, argv) if argv else None)
            notes.append(note)
        except Unavailable as err:
            wrapped.append(None)
            notes.append(str(err))
    times: list[list[float]] = [[] for _ in rows]
    errors = ["" for _ in rows]
    for i, argv in enumerate(wrapped):  # warm-up: page cache, the holders
        if argv:
            try:
                _once(env, rows[i][1], argv)
            except (Failed, OSError, subprocess.TimeoutExpired) as err:
                errors[i] = str(err)
    for r in range(rounds):
        log(f"sharing: round {r + 1}/{rounds}")
        for i, argv in enumerate(wrapped):
            if argv and not errors[i]:
                try:
                    times[i].append(_once(env, rows[i][1], argv))
                except (Failed, OSError, subprocess.TimeoutExpired) as err:
                    errors[i] = str(err)
    ref = statistics.median(times[0]) * 1000 if times[0] else None
    width = max(len(label) for label, *_ in rows)
    uw = max(len(who) for _, who, *_ in rows)
    head = f"{'runner':<{width}}  {'user':<{uw}}  {'warm ms':>8}  {'min ms':>7}  {'/chroot':>7}  goal"
    lines = [head, "-" * len(head)]
    for i, (label, who, _, _) in enumerate(rows):
        prefix = f"{label:<{width}}  {who:<{uw}}"
        if wrapped[i] is None:
            lines.append(f"{prefix}  n/a ({notes[i]})")
            continue
        if not times[i]:
            lines.append(f"{prefix}  failed ({errors[i]})")
            continue
        med = statistics.median(times[i]) * 1000
        rel = med / ref if ref else None
        goal = ""
        if "shared holder" in label:
            limit = GOALS["root" if who == "root" else "user"]
            goal = f"<= {limit}x: " + ("met" if rel is not None and rel <= limit else "NOT met")
        lines.append(f"{prefix}  {med:8.1f}  {min(times[i]) * 1000:7.1f}  "
                     f"{(f'{rel:7.2f}' if rel is not None else '      -')}  {goal}")  # fmt: skip
        if errors[i]:
            lines.append(f"{'':<{width}}  (then failed: {errors[i]})")
    lines.append(f"median of {rounds} interleaved rounds after one warm-up run per row; "
                 f"workload: {' '.join(NUMPY)}")
    return lines
