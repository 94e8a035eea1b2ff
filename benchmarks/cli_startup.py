"""Start-up time of the installed CLI, next to a bare Python start and siftool (Go).

    /usr/bin/python3 benchmarks/cli_startup.py [--runs 20] [--sifbox PATH] [--image SIF]

Prints one row per command: median wall time over --runs runs (after 2 warm-up runs) and the
ratio to `/usr/bin/python3 -I -S -c pass`, the floor for any Python CLI. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = "/usr/bin/python3"
DEFAULT_IMAGES = (
    Path("/opt/sifbox/demo/demo.sif"),
    Path(__file__).resolve().parents[1] / "tests/data/sif-corpus/images/one-group.sif",
)


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else ""
        raise RuntimeError(f"`{shlex.join(argv)}` exited {proc.returncode}: {last}")
    return elapsed


def median_ms(argv: list[str], runs: int) -> float:
    for _ in range(2):
        time_once(argv)
    return statistics.median(time_once(argv) for _ in range(runs)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    parser.add_argument("--image", type=Path, default=None, help="SIF image for `sif header`")
    args = parser.parse_args()

    image = args.image or next((p for p in DEFAULT_IMAGES if p.exists()), None)
    commands: list[list[str]] = [
        [PY, "-I", "-S", "-c", "pass"],
        [PY, "-c", "pass"],
        [args.sifbox, "--help"],
        [args.sifbox, "version"],
    ]
    if image is not None:
        commands.append([args.sifbox, "sif", "header", str(image)])
        if siftool := shutil.which("siftool"):
            commands.append([siftool, "header", str(image)])
    else:
        print("no SIF image found: run scripts/install.sh or pass --image", file=sys.stderr)

    python = sys.version.split()[0]
    print(f"start-up, median of {args.runs} runs, {os.cpu_count()} CPUs, Python {python}")
    rows: list[tuple[str, float | None, str]] = []
    for argv in commands:
        try:
            rows.append((shlex.join(argv), median_ms(argv, args.runs), ""))
        except (OSError, RuntimeError) as err:
            rows.append((shlex.join(argv), None, str(err)))

    base = rows[0][1] or 1.0
    width = max(len(r[0]) for r in rows)
    print(f"{'command':<{width}}  {'median ms':>9}  {'ratio':>6}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 6}")
    for cmd, ms, err in rows:
        if ms is None:
            print(f"{cmd:<{width}}  {'failed':>9}  {'':>6}  {err}")
        else:
            print(f"{cmd:<{width}}  {ms:9.1f}  {ms / base:6.2f}")
    return 1 if any(ms is None for _, ms, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
