"""read.py's sharing table: warm `import numpy` through sifbox's node mount holder (the
default) and with `--no-share` (a mount per container), as root (kernel SquashFS) and as a
user (squashfuse_ll), next to `chroot` into the same tree as a local directory.

Interleaved rounds (every row once per round, in turn), medians: the machine is shared, and
a slow moment then costs every row alike. The holder stays between runs (its idle timeout),
so the shared rows measure what rank 2..N of a job pays: join, bind, run. Each round also runs
/bin/true in every runner: "net" is numpy minus true (the runner's start-up taken out), the
cost of reading through the mount. The mount service rows (when read.py could start one) run
the same image from a store, kernel-mounted once for every user. Goals (issue 15): shared
<= 1.25x chroot as root and through the mount service, <= 1.4x as a user. Standard library only.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable

from benchlib import Failed, Unavailable, UserEnv

NUMPY = ["/usr/bin/python3", "-c", "import numpy"]
TRUE = ["/bin/true"]
GOALS = {"root": 1.25, "user": 1.4}


def _once(env: UserEnv, who: str, argv: list[str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd="/", env=env.env[who],
                          timeout=600, check=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise Failed(f"exit {proc.returncode}: {tail[-1] if tail else ''}")
    return elapsed, proc.stderr


def sharing_table(env: UserEnv, *, sifbox: str | None, sif: str | None, root_dir: str | None,
                  chroot: str | None, chrun: str | None, rounds: int, log: Callable[[str], None],
                  service: dict[str, list[str]] | None = None, service_note: str = "",
                  service_mounts: Callable[[], int] | None = None) -> list[str]:  # fmt: skip
    """The table's lines. `service`: per user (root, the user), the `sifbox exec` prefix of a
    launch through the mount service (kernel SquashFS for every user), else `service_note`;
    `service_mounts`: how many times the service has mounted the image so far (a run during
    which it mounted it again found its mount gone, and paid the mount: not counted)."""
    user = env.user
    rows: list[tuple[str, str, list[str] | None, str]] = [  # label, who, argv prefix, note
        ("chroot root/ (dir) [ref]", "root", [chroot, root_dir] if chroot and root_dir else None,
         "chroot or the tree missing"),
    ]
    for who in ("root", user):
        # -v: a shared run says whether it joined the holder or (re)started it.
        for label, opts in (("sifbox exec, shared holder", ["-v", "exec"]),
                            ("sifbox exec --no-share", ["exec", "--no-share"])):  # fmt: skip
            prefix = [sifbox, *opts, sif] if sifbox and sif else None
            rows.append((f"{label} img-gzip.sif", who, prefix, "sifbox or the image missing"))
        rows.append(("sifbox exec, mount service STORE/img.sif", who, (service or {}).get(who),
                     service_note or "no mount service"))
    rows.append(("ch-run root/ (dir)", user, [chrun, root_dir, "--"] if chrun and root_dir else None,
                 "ch-run not installed"))
    runs: list[tuple[int, str, list[str]]] = []  # row, workload, argv
    notes = [note for *_, note in rows]
    usable = [False] * len(rows)
    for i, (_, who, prefix, _) in enumerate(rows):
        if prefix is None:
            continue
        try:
            runs += [(i, "numpy", env.wrap(who, [*prefix, *NUMPY])), (i, "true", env.wrap(who, [*prefix, *TRUE]))]
            usable[i] = True
        except Unavailable as err:
            notes[i] = str(err)
    times: dict[tuple[int, str], list[float]] = {(i, w): [] for i, w, _ in runs}
    errors = ["" for _ in rows]
    restarts = [0 for _ in rows]
    for r in range(rounds + 1):  # round 0: the warm-up (page cache, the holders)
        if r:
            log(f"sharing: round {r}/{rounds}")
        for i, workload, argv in runs:
            if errors[i]:
                continue
            mounted = service_mounts() if service_mounts and "mount service" in rows[i][0] else 0
            try:
                elapsed, err_out = _once(env, rows[i][1], argv)
            except (Failed, OSError, subprocess.TimeoutExpired) as err:
                errors[i] = f"{workload}: {err}"
                continue
            if r and service_mounts and "mount service" in rows[i][0] and service_mounts() != mounted:
                restarts[i] += 1  # its mount was gone (unmounted from outside): this run paid a new one
            elif r and b"started the node mount holder" in err_out:
                # Its holder was gone (ended by `sifbox mounts prune --force` of other work on
                # this machine, or its idle timeout): this run paid the mount; not counted.
                restarts[i] += 1
            elif r:
                times[(i, workload)].append(elapsed * 1000)

    def med(i: int, workload: str) -> float | None:
        got = times.get((i, workload))
        return statistics.median(got) if got else None

    ref, ref_true = med(0, "numpy"), med(0, "true")
    ref_net = ref - ref_true if ref is not None and ref_true is not None else None
    width = max(len(label) for label, *_ in rows)
    uw = max(len(who) for _, who, *_ in rows)
    head = (f"{'runner':<{width}}  {'user':<{uw}}  {'numpy ms':>8}  {'/chroot':>7}  {'true ms':>7}  "
            f"{'net ms':>6}  {'net/chroot':>10}  {'best':>6}  {'/chroot':>7}  goal (numpy/chroot)")
    lines = [head, "-" * len(head)]
    for i, (label, who, _, _) in enumerate(rows):
        prefix = f"{label:<{width}}  {who:<{uw}}"
        numpy_ms, true_ms = med(i, "numpy"), med(i, "true")
        if not usable[i]:
            lines.append(f"{prefix}  n/a ({notes[i]})")
            continue
        if numpy_ms is None or true_ms is None:
            lines.append(f"{prefix}  failed ({errors[i]})")
            continue
        net = numpy_ms - true_ms
        rel = numpy_ms / ref if ref else None
        goal = ""
        if "shared holder" in label or "mount service" in label:
            limit = GOALS["root" if who == "root" or "mount service" in label else "user"]
            goal = f"<= {limit}x: " + ("met" if rel is not None and rel <= limit else "NOT met")
        best, ref_best = min(times[(i, "numpy")]), min(times[(0, "numpy")] or [0.0])
        lines.append(f"{prefix}  {numpy_ms:8.1f}  {(f'{rel:7.2f}' if rel else '      -')}  {true_ms:7.1f}  "
                     f"{net:6.1f}  {(f'{net / ref_net:10.2f}' if ref_net and ref_net > 0 else '         -')}  "
                     f"{best:6.1f}  {(f'{best / ref_best:7.2f}' if ref_best else '      -')}  {goal}")  # fmt: skip
        if errors[i]:
            lines.append(f"{'':<{width}}  (then failed: {errors[i]})")
        if restarts[i]:
            what = "the service's mount gone" if "mount service" in label else "no holder"
            lines.append(f"{'':<{width}}  ({restarts[i]} run(s) found {what} and mounted the image again: not counted)")
    lines.append(f"medians of {rounds} interleaved rounds after a warm-up round (best: the fastest numpy run, "
                 f"for a machine where other work drops the page cache); numpy: {' '.join(NUMPY)}; "
                 f"true: {' '.join(TRUE)}; load average now {os.getloadavg()[0]:.1f}")
    return lines
