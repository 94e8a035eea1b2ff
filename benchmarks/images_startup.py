"""Warm start-up on real images: an image built from Apptainer's own e2e definition (with its
/.singularity.d environment scripts and %environment) and a Debian root with python3 and numpy,
through `sifbox exec` next to Charliecloud's `ch-run` on the same SquashFS and `chroot` into
the same tree as a local directory.

    /usr/bin/python3 benchmarks/images_startup.py [--runs 20] [--warmup 3] [--user sifbox-test]
        [--sifbox PATH] [--debian-root DIR] [--workdir DIR] [--keep]

Run as root. --debian-root is a Debian root with python3-numpy, as benchmarks/read.py builds
it (default: /var/tmp/sifbox-bench/root, its work directory); without one, the Debian rows
print n/a. The script builds, in --workdir (default: a temporary directory):

    apptainer.sif    `sifbox build` of tests/e2e/apptainer/data/Apptainer.def (busybox),
                     apptainer.sqfs its SquashFS partition (`sifbox sif dump`), for ch-run
    debian.sif       `sifbox build` of the Debian root (its /.singularity.d: sifbox's own),
                     debian.sqfs its SquashFS partition, for ch-run

Rows, as root and as the user (through `runuser -u USER --`): `/bin/true` in both images and
`python3 -c 'import numpy'` in the Debian one, each through sifbox (the node's shared mount,
warm), ch-run and chroot (the user's chroot: `unshare -r chroot`, a user namespace of its own).
Runs are interleaved round-robin over all rows (the machine's load weighs on every row alike);
each row: median and minimum, and the ratios of its median to ch-run's and to chroot's for the
same user and command. Prints tables, never asserts. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Unavailable
from startup import PY, Env, Row, fmt, fmt_ratio, measure, table

REPO = Path(__file__).resolve().parents[1]
APPTAINER_DEF = REPO / "tests" / "e2e" / "apptainer" / "data" / "Apptainer.def"
DEBIAN_ROOT = Path("/var/tmp/sifbox-bench/root")
NUMPY = ["/usr/bin/python3", "-c", "import numpy"]


def step(argv: list[str], cwd: Path | None = None, out: Path | None = None) -> None:
    with open(out, "wb") if out else open(os.devnull, "wb") as f:
        proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.PIPE,
                              check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise Unavailable(f"`{' '.join(argv)}` exited {proc.returncode}: {tail[0]}")


def partition(sifbox: str, sif: Path, sqfs: Path) -> None:
    """The SquashFS partition of `sif` as a file of its own."""
    listing = subprocess.run([sifbox, "sif", "list", str(sif)], capture_output=True, text=True, check=False)
    ids = [ln.split("|")[0].strip() for ln in listing.stdout.splitlines() if "Squashfs" in ln]
    if not ids:
        raise Unavailable(f"no SquashFS partition in {sif}")
    step([sifbox, "sif", "dump", ids[0], str(sif)], out=sqfs)
    os.chmod(sqfs, 0o644)


def build(sifbox: str, work: Path, debian: Path | None) -> dict[str, tuple[Path, Path] | str]:
    """name -> (sif, sqfs), or why it's missing."""
    images: dict[str, tuple[Path, Path] | str] = {}
    try:
        defdir = work / "def"
        defdir.mkdir(exist_ok=True)
        shutil.copy(APPTAINER_DEF, defdir / APPTAINER_DEF.name)
        sif, sqfs = work / "apptainer.sif", work / "apptainer.sqfs"
        if not sif.exists():
            step([sifbox, "build", "--force", str(sif), APPTAINER_DEF.name], cwd=defdir)
        os.chmod(sif, 0o644)
        partition(sifbox, sif, sqfs)
        images["apptainer"] = (sif, sqfs)
    except (Unavailable, OSError) as err:
        images["apptainer"] = str(err)
    if debian is None or not (debian / "usr/bin/python3").exists():
        images["debian"] = f"no Debian root with python3 at {debian} (benchmarks/read.py --keep builds one)"
        return images
    try:
        sif, sqfs = work / "debian.sif", work / "debian.sqfs"
        if not sif.exists():
            step([sifbox, "build", "--force", str(sif), str(debian)])
        os.chmod(sif, 0o644)
        partition(sifbox, sif, sqfs)
        images["debian"] = (sif, sqfs)
    except (Unavailable, OSError) as err:
        images["debian"] = str(err)
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--user", default="sifbox-test")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    parser.add_argument("--debian-root", type=Path, default=DEBIAN_ROOT)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("images_startup.py: run as root", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sifbox-bench-img.", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    env = Env(args.user, "/")
    chrun, unshare = shutil.which("ch-run"), shutil.which("unshare")
    try:
        images = build(args.sifbox, work, args.debian_root)
        whos = ["root", args.user]

        def row(label: str, who: str, argv: list[str] | None, note: str = "") -> Row:
            if argv is None:
                return Row(label, who, None, note=note)
            try:
                return Row(label, who, env.wrap(who, argv))
            except Unavailable as err:
                return Row(label, who, None, note=str(err))

        rows: list[Row] = [row("python3 -I -S -c pass (floor)", w, [PY, "-I", "-S", "-c", "pass"]) for w in whos]
        groups: list[tuple[str, dict[str, Row], dict[str, Row], list[Row]]] = []
        cases = [("apptainer", "/bin/true", ["/bin/true"]), ("debian", "/bin/true", ["/bin/true"]),
                 ("debian", "python3 -c 'import numpy'", NUMPY)]  # fmt: skip
        for name, shown, cmd in cases:
            got = images.get(name)
            ref_ch: dict[str, Row] = {}
            ref_chroot: dict[str, Row] = {}
            mine: list[Row] = []
            for who in whos:
                if isinstance(got, str) or got is None:
                    mine.append(row(f"sifbox exec {name}.sif {shown}", who, None, got or "not built"))
                    continue
                sif, sqfs = got
                mine.append(row(f"sifbox exec {name}.sif {shown}", who, [args.sifbox, "exec", str(sif), *cmd]))
                ref_ch[who] = row(f"ch-run {name}.sqfs -- {shown}", who,
                                  [chrun, str(sqfs), "--", *cmd] if chrun else None, "ch-run not installed")  # fmt: skip
                mine.append(ref_ch[who])
                if name == "debian":
                    root = str(args.debian_root)
                    argv = ["chroot", root, *cmd] if who == "root" else (
                        [unshare, "-r", "chroot", root, *cmd] if unshare else None)  # fmt: skip
                    label = "chroot DIR" if who == "root" else "unshare -r chroot DIR"
                    ref_chroot[who] = row(f"{label} {shown}", who, argv, "unshare not installed")
                    mine.append(ref_chroot[who])
            rows += mine
            groups.append((f"{name}: {shown}", ref_ch, ref_chroot, mine))

        print("Warm start-up on real images (ms)")
        print(f"  sifbox: {args.sifbox}; CPUs: {os.cpu_count()}; load average at start: {os.getloadavg()[0]:.1f}")
        for name, got in images.items():
            print(f"  {name}: " + (got if isinstance(got, str) else f"{got[0]} ({got[0].stat().st_size} bytes), {got[1].name}"))
        print(f"  runs: {args.runs} after {args.warmup} warm-up runs, round-robin over all rows; user rows through runuser")
        print()
        t0 = time.perf_counter()
        measure(env, rows, args.runs, args.warmup)
        head = f"{'N':>3}  {'median':>8}  {'min':>8}  {'/ch-run':>7}  {'/chroot':>7}"
        for title, ref_ch, ref_chroot, mine in [("floor", {}, {}, rows[: len(whos)]), *groups]:
            print(title)
            for prefix, r in table(mine, head):
                if r.error:
                    print(f"{prefix}  failed ({r.error})")
                    continue
                ch, cr = ref_ch.get(r.who), ref_chroot.get(r.who)
                print(f"{prefix}  {len(r.times):3d}  {fmt(r.median)}  {fmt(r.minimum)}  "
                      f"{fmt_ratio(r.median, ch.median if ch else None):>7}  "
                      f"{fmt_ratio(r.median, cr.median if cr else None):>7}")  # fmt: skip
            print()
        print(f"load average at the end: {os.getloadavg()[0]:.1f}; measured in {time.perf_counter() - t0:.0f} s")
        return 0
    finally:
        env.close()  # its own holders only (its own XDG_RUNTIME_DIR)
        if args.keep or args.workdir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
