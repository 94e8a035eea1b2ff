"""Reading from the image: `sifbox exec` on SIF (kernel squashfs / squashfuse_ll) and on a directory,
next to Charliecloud's ch-run and a plain chroot, cold and warm.

    /usr/bin/python3 benchmarks/read.py [--workdir /var/tmp/sifbox-bench] [--keep]
                                        [--runs 5] [--cold-runs 3] [--user sifbox-test] [--no-diag]
                                        [--sharing-rounds 9] [--only-sharing]

Run as root. Builds (once; reused from WORKDIR when present) a Debian bookworm root with
`debootstrap --variant=minbase --include=python3,python3-numpy` from the machine's configured
Debian mirror, packs it with mksquashfs (gzip, the default, plus zstd and lz4 when mksquashfs
knows them) and wraps each SquashFS into a SIF with `sifbox sif`. Then times three workloads in
every runner, as root and as an unprivileged user (through `runuser -u USER --`):

    true   /bin/true                         the runner's start-up floor
    numpy  python3 -c 'import numpy'         many small files and shared libraries
    tar    sh -c 'tar -C / -cf - usr | wc -c'  bulk read of /usr (through a pipe: GNU tar
                                             skips reading the files when it writes to /dev/null)

cold = `sync; echo 3 > /proc/sys/vm/drop_caches` before each run (median of --cold-runs);
warm = repeated runs without dropping (median of --runs after one warm-up). The `sifbox exec`
rows join the node mount holder the first run started (the default), so "warm" keeps the
decompressed files in the page cache, as for a directory; with `--no-share` every container
mounts its image afresh and pays decompression again (the sharing table below has both).

A second table ("file system only") takes the container runtimes out: the script mounts each
SquashFS itself (kernel `mount -o loop` or `squashfuse_ll`, with option variants), times only
`chroot MNT ...`, and unmounts; fresh mount every run, like a container. Then it lists the
options squashfuse_ll offers and which extra `-o` options it accepts.

A third table ("sharing", benchmarks/readshare.py) times warm `import numpy` through the node
mount holder (the default), with `--no-share` and through the mount service (`sifbox mounts
serve`, started for the table on a store of hard links of the image in WORKDIR/msvc), root and
user, against `chroot` into the directory, in interleaved rounds (`--only-sharing` prints just
the header and it).

Prints tables and never asserts timings. A row whose tool or image is missing prints
"n/a (reason)"; a row whose command fails prints "failed (reason)". Without --keep the image
files this script manages in WORKDIR are removed at the end (WORKDIR itself too, if then empty);
with --keep they stay and the next run reuses them. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import Failed, Unavailable, UserEnv, drop_caches

PARTARCH = {"x86_64": "2", "amd64": "2", "i686": "1", "i386": "1", "aarch64": "4", "arm64": "4",
            "armv7l": "3", "ppc64le": "6", "s390x": "11", "riscv64": "12", "loongarch64": "13"}
SUITE = "bookworm"
PACKAGES = "python3,python3-numpy"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
COMPRESSORS = ("gzip", "zstd", "lz4")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WORKLOADS: dict[str, list[str]] = {
    "true": ["/bin/true"],
    "numpy": ["/usr/bin/python3", "-c", "import numpy"],
    "tar": ["/bin/sh", "-c", "tar -C / -cf - usr | wc -c"],  # no /dev/null: nodev mounts in the 2nd table
}
MIN_TAR_BYTES = 1 << 20  # a smaller count means tar failed inside the pipe (sh reports only wc's status)
MANAGED = ("root", "root.partial", ".root-complete", "build.json", "mnt", "msvc",
           *(f"img-{c}.{ext}" for c in COMPRESSORS for ext in ("sqfs", "sif", "sqfs.partial", "sif.partial")))
# Extra `-o` options probed on squashfuse_ll (accepted or refused); none of them is used by sifbox.
PROBE_OPTIONS = ("uid=1001", "gid=1001", "timeout=60", "kernel_cache", "auto_cache", "entry_timeout=60",
                 "attr_timeout=60", "max_read=131072", "allow_other", "auto_unmount", "clone_fd",
                 "max_threads=2", "max_idle_threads=2", "cache_size=64")


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def last_line(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def run_step(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise Failed(f"`{shlex.join(argv)}` exited {proc.returncode}: "
                     f"{last_line(proc.stderr) or last_line(proc.stdout)}")
    return proc




# ---------------------------------------------------------------------------- environment ---

class Env(UserEnv):
    """UserEnv that times whole runs."""

    def run(self, who: str, argv: list[str], timeout: float = 600) -> tuple[float, bytes]:
        """Wall time in seconds and stdout; raises Failed on a non-zero exit."""
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd="/", env=self.env[who])  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise Failed(f"timed out after {timeout:.0f} s") from None
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise Failed(f"exit {proc.returncode}: {last_line(err) or last_line(out)}")
        return elapsed, out


# ------------------------------------------------------------------------------- the image ---

def debian_mirror() -> tuple[str, str]:
    """The mirror apt uses for the main Debian archive, and where it was found."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    try:
        stanzas = re.split(r"\n\s*\n", deb822.read_text())
    except OSError:
        stanzas = []
    fallback = None
    for stanza in stanzas:
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m and not line.lstrip().startswith("#"):
                fields[m.group(1).lower()] = m.group(2)
        uris = fields.get("uris", "").split()
        if not uris or "deb" not in fields.get("types", "deb").split():
            continue
        suites = fields.get("suites", "").split()
        if "security" in uris[0] or all("security" in s for s in suites):
            continue
        if SUITE in suites:
            return uris[0], str(deb822)
        fallback = fallback or uris[0]
    if fallback:
        return fallback, str(deb822)
    try:
        lines = Path("/etc/apt/sources.list").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
            return parts[1], "/etc/apt/sources.list"
    return DEFAULT_MIRROR, "default (no mirror found in the apt sources)"


def ensure_debootstrap() -> str:
    found = shutil.which("debootstrap", path=PATH)
    if found:
        return found
    log("debootstrap missing: apt-get install -y debootstrap")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"],
                 ["apt-get", "update"],
                 ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]):
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
        if proc.returncode == 0 and argv[1] == "install":
            break
    found = shutil.which("debootstrap", path=PATH)
    if not found:
        raise Unavailable("debootstrap is not installed and `apt-get install debootstrap` failed")
    return found


def make_readable(path: Path) -> None:
    """chmod -R a+rX, without following symbolic links."""
    run_step(["chmod", "-R", "a+rX", str(path)])


def traversal_problem(path: Path) -> str | None:
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError as err:
            return str(err)
        if not mode & 0o001:
            return f"{p} is not traversable by other users (mode {mode & 0o7777:o})"
    return None


@dataclass
class Images:
    workdir: Path
    root: Path
    root_ok: bool = False
    root_note: str = ""
    sqfs: dict[str, Path | None] = field(default_factory=dict)
    sif: dict[str, Path | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)   # compressor -> why missing
    build: dict[str, Any] = field(default_factory=dict)   # build times and provenance
    reused: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)


def mksquashfs_compressors(mksquashfs: str) -> set[str]:
    proc = subprocess.run([mksquashfs, "-help"], capture_output=True, check=False)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    m = re.search(r"Compressors available[^\n]*\n(.*?)(?:\n\S|\n\s*\n|\Z)", text, re.DOTALL)
    block = m.group(1) if m else text
    return {c for c in COMPRESSORS if re.search(rf"^\s*{c}\b", block, re.MULTILINE)}


def build_images(workdir: Path, sifbox: str | None) -> Images:
    images = Images(workdir=workdir, root=workdir / "root")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    info_file = workdir / "build.json"
    try:
        images.build = json.loads(info_file.read_text())
    except (OSError, ValueError):
        images.build = {}

    def save() -> None:
        info_file.write_text(json.dumps(images.build, indent=1) + "\n")

    # -- the Debian root --------------------------------------------------------------------
    stamp = workdir / ".root-complete"
    if stamp.exists() and (images.root / "usr/bin/python3").exists():
        images.reused.append("root/")
        images.root_ok = True
    else:
        for stale in (images.root, workdir / "root.partial"):
            if stale.exists():
                shutil.rmtree(stale)
        for c in COMPRESSORS:
            for ext in ("sqfs", "sif"):
                (workdir / f"img-{c}.{ext}").unlink(missing_ok=True)
        images.build = {}
        try:
            debootstrap = ensure_debootstrap()
            mirror, where = debian_mirror()
            partial = workdir / "root.partial"
            argv = [debootstrap, "--variant=minbase", f"--include={PACKAGES}", SUITE, str(partial), mirror]
            log(f"building the Debian root: {shlex.join(argv)}")
            t = time.perf_counter()
            run_step(argv)
            partial.rename(images.root)
            make_readable(images.root)
            images.build["debootstrap"] = {"argv": shlex.join(argv).replace(".partial", ""),
                                           "seconds": time.perf_counter() - t, "mirror_from": where}  # fmt: skip
            stamp.touch()
            save()
            images.built.append("root/")
            images.root_ok = True
        except (Unavailable, Failed, OSError) as err:
            images.root_note = str(err)
    if not images.root_ok:
        for c in COMPRESSORS:
            images.sqfs[c] = images.sif[c] = None
            images.notes[c] = images.root_note or "no root"
        return images

    # -- SquashFS images --------------------------------------------------------------------
    mksquashfs = shutil.which("mksquashfs", path=PATH)
    supported = mksquashfs_compressors(mksquashfs) if mksquashfs else set()
    machine = platform.machine()
    partarch = PARTARCH.get(machine)
    for c in COMPRESSORS:
        images.sqfs[c] = images.sif[c] = None
        sqfs, sif = workdir / f"img-{c}.sqfs", workdir / f"img-{c}.sif"
        if mksquashfs is None:
            images.notes[c] = "mksquashfs not installed (squashfs-tools)"
            continue
        if c not in supported:
            images.notes[c] = f"mksquashfs has no {c} compressor"
            continue
        if sqfs.exists() and f"mksquashfs {c}" in images.build:
            images.reused.append(sqfs.name)
        else:
            argv = [mksquashfs, str(images.root), str(sqfs) + ".partial", "-noappend", "-quiet", "-no-progress"]
            if c != "gzip":
                argv += ["-comp", c]
            log(f"packing: {shlex.join(argv)}")
            t = time.perf_counter()
            try:
                run_step(argv)
            except Failed as err:
                images.notes[c] = str(err)
                continue
            os.rename(str(sqfs) + ".partial", sqfs)
            os.chmod(sqfs, 0o644)
            images.build[f"mksquashfs {c}"] = {"argv": shlex.join(argv).replace(".partial", ""),
                                                "seconds": time.perf_counter() - t}  # fmt: skip
            images.build.pop(f"sif {c}", None)
            sif.unlink(missing_ok=True)
            save()
            images.built.append(sqfs.name)
        images.sqfs[c] = sqfs

        if sifbox is None:
            images.notes[c] = "sifbox not installed"
            continue
        if partarch is None:
            images.notes[c] = f"no SIF partarch known for `{machine}`"
            continue
        if sif.exists() and f"sif {c}" in images.build:
            images.reused.append(sif.name)
            images.sif[c] = sif
            continue
        partial = Path(str(sif) + ".partial")
        partial.unlink(missing_ok=True)
        t = time.perf_counter()
        try:
            run_step([sifbox, "sif", "new", str(partial)])
            run_step([sifbox, "sif", "add", str(partial), str(sqfs), "--datatype", "4", "--partfs", "1",
                      "--parttype", "2", "--partarch", partarch])  # fmt: skip
        except Failed as err:
            images.notes[c] = str(err)
            continue
        os.rename(partial, sif)
        os.chmod(sif, 0o644)
        images.build[f"sif {c}"] = {"seconds": time.perf_counter() - t}
        save()
        images.built.append(sif.name)
        images.sif[c] = sif
    os.chmod(info_file, 0o644)
    return images


def cleanup(workdir: Path) -> None:
    for name in MANAGED:
        p = workdir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)
    try:
        workdir.rmdir()
    except OSError:
        pass


def kernel_squashfs_config() -> str:
    """The kernel's SquashFS build options that matter for reading (decompressor threads, page cache)."""
    import gzip

    text = ""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        try:
            text = Path(f"/boot/config-{os.uname().release}").read_text()
        except OSError:
            return "n/a (no /proc/config.gz or /boot/config-*)"
    keep = [m.group(1) for m in re.finditer(r"^CONFIG_SQUASHFS_(\w+)=y", text, re.MULTILINE)
            if m.group(1).startswith(("DECOMP_", "FILE_", "ZLIB", "LZ4", "ZSTD", "XZ", "LZO"))]
    return " ".join(keep) or "no CONFIG_SQUASHFS_* options"


def du(path: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, number of entries) of a tree, without following links."""
    apparent = allocated = count = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            count += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated, count


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


# ---------------------------------------------------------------------------------- rows ---

@dataclass
class Row:
    runner: str
    who: str
    image: str
    workload: str
    argv: list[str] | None            # None: unavailable, see `note`
    note: str = ""
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    error: str = ""
    output: str = ""                  # stdout of the last run (the byte count for tar)
    setup: Any = None                 # for file-system-only rows: a Mounter

    @property
    def cold_ms(self) -> float | None:
        return statistics.median(self.cold) * 1000 if self.cold else None

    @property
    def warm_ms(self) -> float | None:
        return statistics.median(self.warm) * 1000 if self.warm else None


class Mounter:
    """Mounts a SquashFS at a fixed mount point for one run (kernel loop mount or squashfuse_ll)."""

    def __init__(self, kind: str, image: Path, mnt: Path, options: list[str]) -> None:
        self.kind, self.image, self.mnt, self.options = kind, image, mnt, options

    def mount(self) -> None:
        self.mnt.mkdir(exist_ok=True)
        if self.kind == "kernel":
            run_step(["mount", "-t", "squashfs", "-o", "loop,ro,nodev,nosuid", str(self.image), str(self.mnt)])
        else:
            run_step([self.kind, *self.options, str(self.image), str(self.mnt)])
            for _ in range(200):  # squashfuse_ll daemonizes after the mount is made; be safe anyway
                if os.path.ismount(self.mnt):
                    break
                time.sleep(0.01)

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", str(self.mnt)], capture_output=True, check=False)
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, check=False)


def measure(env: Env, row: Row, runs: int, cold_runs: int) -> None:
    if row.argv is None:
        return
    argv = row.argv

    def once(cold: bool) -> float:
        if cold and row.setup is None:
            drop_caches()
        if row.setup is not None:
            row.setup.mount()
            if cold:
                drop_caches()
        try:
            elapsed, out = env.run(row.who, argv)
        finally:
            if row.setup is not None:
                row.setup.umount()
        row.output = out.decode(errors="replace").strip()
        if row.workload == "tar" and not (row.output.isdigit() and int(row.output) >= MIN_TAR_BYTES):
            raise Failed(f"tar wrote {row.output or 'nothing'} bytes")
        return elapsed

    phase = "cold"
    try:
        for _ in range(cold_runs):
            row.cold.append(once(True))
        phase = "warm-up"
        once(False)
        phase = "warm"
        for _ in range(runs):
            row.warm.append(once(False))
    except (Failed, OSError) as err:
        row.error = f"{phase} run: {err}"


# ------------------------------------------------------------------------------- printing ---

def fmt(value: float | None, width: int = 8, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den <= 0:
        return f"{'-':>6}"
    return f"{num / den:6.2f}"


def print_table(rows: list[Row], ref: dict[str, Row], floor: dict[tuple[str, str, str], Row] | None,
                ref_label: str) -> None:  # fmt: skip
    """ref: workload -> reference row; floor: (runner, who, image) -> the same runner's `true` row."""
    rw = max(len(r.runner) for r in rows)
    uw = max(len(r.who) for r in rows)
    iw = max(len(r.image) for r in rows)
    ww = max(len(r.workload) for r in rows)
    head = (f"{'runner':<{rw}}  {'user':<{uw}}  {'image':<{iw}}  {'workload':<{ww}}  {'cold ms':>8}  "
            f"{'warm ms':>8}  {'warm/ref':>8}  {'cold/ref':>8}")
    if floor is not None:
        head += f"  {'warm-true':>9}  {'net/ref':>7}"
    print(head)
    print("-" * len(head))
    last_workload = None
    for r in rows:
        if last_workload is not None and r.workload != last_workload:
            print()
        last_workload = r.workload
        prefix = f"{r.runner:<{rw}}  {r.who:<{uw}}  {r.image:<{iw}}  {r.workload:<{ww}}"
        if r.argv is None:
            print(f"{prefix}  n/a ({r.note})")
            continue
        if r.error and not r.cold and not r.warm:
            print(f"{prefix}  failed ({r.error})")
            continue
        ref_row = ref.get(r.workload)
        rc = ref_row.cold_ms if ref_row else None
        rwm = ref_row.warm_ms if ref_row else None
        line = (f"{prefix}  {fmt(r.cold_ms)}  {fmt(r.warm_ms)}  {ratio(r.warm_ms, rwm):>8}  "
                f"{ratio(r.cold_ms, rc):>8}")
        if floor is not None:
            f = floor.get((r.runner, r.who, r.image))
            net = (r.warm_ms - f.warm_ms if f is not None and r.warm_ms is not None and f.warm_ms is not None
                   and r.workload != "true" else None)  # fmt: skip
            ref_floor = floor.get((ref_row.runner, ref_row.who, ref_row.image)) if ref_row else None
            ref_net = (rwm - ref_floor.warm_ms if ref_floor is not None and rwm is not None
                       and ref_floor.warm_ms is not None else None)  # fmt: skip
            line += f"  {fmt(net, 9)}  {ratio(net, ref_net):>7}"
        if r.error:
            line += f"  (then failed: {r.error})"
        print(line)
    print(f"ref = {ref_label}, same workload.")


# ----------------------------------------------------------------------------- squashfuse ---

def squashfuse_options(binary: str | None, image: Path | None, mnt: Path) -> list[str]:
    lines: list[str] = []
    if binary is None:
        return ["squashfuse_ll not installed (Debian package squashfuse)"]
    helped = subprocess.run([binary, "-h"], capture_output=True, check=False)
    help_text = (helped.stderr + helped.stdout).decode(errors="replace").rstrip()
    lines.append(f"`{binary} -h` (exit {helped.returncode}):")
    lines += ["    " + ln for ln in help_text.splitlines()]
    try:
        with open(binary, "rb") as f:
            blob = f.read()
        for lib in ("/lib/x86_64-linux-gnu/libsquashfuse_ll.so.0", "/usr/lib/x86_64-linux-gnu/libsquashfuse_ll.so.0"):
            if os.path.exists(lib):
                with open(lib, "rb") as f:
                    blob += f.read()
        hidden = sorted({m.decode() for m in re.findall(rb"\b([a-z_]{3,20})=%[a-z]+", blob)})
        lines.append("option templates in the binary/library (`NAME=%fmt`): " + (", ".join(hidden) or "none"))
    except OSError:
        pass
    if image is None:
        lines.append("no SquashFS image: options not probed")
        return lines
    accepted, refused = [], []
    for opt in PROBE_OPTIONS:
        mnt.mkdir(exist_ok=True)
        # -f: a refusal after the mount (libfuse checks some options only at init) is still seen
        proc = subprocess.Popen([binary, "-f", "-o", opt, str(image), str(mnt)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        mounted = False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.ismount(mnt):
                try:
                    os.listdir(mnt)  # the first request: init has run
                    mounted = True
                except OSError:
                    pass
                break
            time.sleep(0.02)
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        if proc.poll() is None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        proc.wait()
        if mounted and proc.returncode == 0:
            accepted.append(opt)
        else:
            refused.append(f"{opt} ({last_line(err) or f'exit {proc.returncode}'})")
    lines.append("probed `-o` options, mounted as root: accepted: " + (", ".join(accepted) or "none"))
    lines.append("  refused: " + ("; ".join(refused) or "none"))
    lines.append("  (FUSE's generic options are accepted by libfuse, not squashfuse_ll; through sifbox, which "
                 "mounts /dev/fuse itself and passes only `-f -o offset=N /dev/fd/M`, kernel-side mount "
                 "options such as max_read or allow_other would have to go into sifbox's mount data)")
    return lines


# ----------------------------------------------------------------------------------- main ---

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/var/tmp/sifbox-bench", help="image cache (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the images in WORKDIR for the next run")
    parser.add_argument("--runs", type=int, default=5, help="warm runs per row after 1 warm-up (default 5)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold runs per row (default 3)")
    parser.add_argument("--user", default="sifbox-test", help="unprivileged user (default sifbox-test)")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    parser.add_argument("--no-diag", action="store_true", help="skip the file-system-only table")
    parser.add_argument("--sharing-rounds", type=int, default=9, help="interleaved rounds of the sharing table")
    parser.add_argument("--only-sharing", action="store_true", help="only the sharing table")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("read.py: run as root (it drops caches, mounts images and runs as an unprivileged user)",
              file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    sifbox = args.sifbox if os.access(args.sifbox, os.X_OK) else None
    chrun = shutil.which("ch-run", path=PATH)
    chroot = shutil.which("chroot", path=PATH)
    squashfuse_ll = shutil.which("squashfuse_ll", path=PATH)
    env = Env(args.user)
    user = args.user
    mnt = workdir / "mnt"
    try:
        tb = time.perf_counter()
        images = build_images(workdir, sifbox)
        build_wall = time.perf_counter() - tb
        problem = traversal_problem(workdir)

        # ---------------------------------------------------------------------- header ---
        uname = os.uname()
        renv = env.env["root"]

        def version(argv: list[str]) -> str:
            try:
                p = subprocess.run(argv, capture_output=True, env=renv, check=False, timeout=20)
            except (OSError, subprocess.TimeoutExpired) as err:
                return f"n/a ({err})"
            return last_line(p.stdout) or last_line(p.stderr) or f"n/a (exit {p.returncode})"

        def pkg(name: str) -> str:
            return version(["dpkg-query", "-W", "-f", "${Version}", name])

        print("sifbox image read benchmark")
        print(f"  CPUs:        {os.cpu_count()}   machine: {uname.machine}   kernel: {uname.release}")
        with open("/proc/meminfo") as f:
            mem = f.readline().split()[1]
        print(f"  memory:      {int(mem) // 1024} MiB")
        print("  sifbox:      " + (version([sifbox, "--version"]) + f" ({sifbox})" if sifbox else "n/a"))
        print("  ch-run:      " + (version([chrun, "--version"]) if chrun else "n/a (charliecloud-runtime)"))
        print(f"  kernel SquashFS: {kernel_squashfs_config()}")
        print(f"  squashfuse:  {pkg('squashfuse')}   squashfs-tools: {pkg('squashfs-tools')}   "
              f"fuse3: {pkg('fuse3')}")
        print(f"  user:        {user} via `runuser -u {user} --`"
              + (f"  n/a ({env.user_problem()})" if env.user_problem() else ""))
        print(f"  workdir:     {workdir}" + (f"   WARNING: {problem}" if problem else ""))
        if images.root_note:
            print(f"  root:        n/a ({images.root_note})")
        print(f"  reused:      {', '.join(images.reused) or 'nothing'}")
        print(f"  built now:   {', '.join(images.built) or 'nothing'} ({build_wall:.1f} s this run)")
        for key, val in images.build.items():
            extra = f"   `{val['argv']}`" if "argv" in val else ""
            where = f" (mirror from {val['mirror_from']})" if "mirror_from" in val else ""
            print(f"    build {key:<16} {val['seconds']:7.1f} s{extra}{where}")
        print("  image sizes:")
        if images.root_ok:
            apparent, allocated, count = du(images.root)
            usr_apparent, _, usr_count = du(images.root / "usr")
            print(f"    root/ (dir)         {mib(apparent)} apparent, {mib(allocated)} on disk, "
                  f"{count} entries  (/usr: {mib(usr_apparent).strip()}, {usr_count} entries)")
        for c in COMPRESSORS:
            sq, sf = images.sqfs.get(c), images.sif.get(c)
            if sq is None:
                print(f"    img-{c}.sqfs       n/a ({images.notes.get(c, '')})")
                continue
            line = f"    img-{c}.sqfs{' ' * (8 - len(c))}{mib(sq.stat().st_size)}"
            if images.root_ok:
                line += f"  ({sq.stat().st_size / apparent:.0%} of the dir)"
            line += f"   img-{c}.sif: " + (mib(sf.stat().st_size).strip() if sf else f"n/a ({images.notes.get(c)})")
            print(line)
        print(f"  runs:        cold = median of {args.cold_runs} (sync + drop_caches before each), "
              f"warm = median of {args.runs} after 1 warm-up; wall time of the whole command, ms")
        print("  workloads:   " + "; ".join(f"{k}: {shlex.join(v)}" for k, v in WORKLOADS.items()))
        print()
        sys.stdout.flush()

        # ---------------------------------------------------------------------- sharing ---
        from mountservice import MountService
        from readshare import sharing_table

        sif_gzip = images.sif.get("gzip")
        service: MountService | None = None
        service_note = "sifbox or img-gzip.sif missing"
        if sifbox and sif_gzip:
            try:
                service = MountService(workdir / "msvc", workdir / "msvc" / "store", sifbox, sif_gzip, user)
            except (Unavailable, OSError) as err:
                service_note = str(err)
        print("Sharing (ms): warm `import numpy`, node mount holder vs --no-share vs the mount service, "
              "ratio to chroot into the dir")
        print()
        try:
            lines = sharing_table(env, sifbox=sifbox, sif=str(sif_gzip) if sif_gzip else None,
                                  root_dir=str(images.root) if images.root_ok else None, chroot=chroot,
                                  chrun=chrun, rounds=args.sharing_rounds, log=log,
                                  service={who: service.argv(sifbox, who) for who in service.images}
                                  if service and sifbox else None, service_note=service_note,
                                  service_mounts=service.mount_count if service else None)  # fmt: skip
        finally:
            if service is not None:
                service.stop()
        for line in lines:
            print(line)
        print()
        sys.stdout.flush()
        if args.only_sharing:
            return 0

        # ------------------------------------------------------------------------ rows ---
        def row(runner: str, who: str, image: str, workload: str, argv: list[str] | None, note: str = "") -> Row:
            if argv is None:
                return Row(runner, who, image, workload, None, note=note)
            try:
                return Row(runner, who, image, workload, env.wrap(who, argv))
            except Unavailable as err:
                return Row(runner, who, image, workload, None, note=str(err))

        root_dir = str(images.root)
        specs: list[tuple[str, str, str, list[str] | None, str]] = []  # runner, who, image, prefix, note
        for c in COMPRESSORS:
            sif = images.sif.get(c)
            for who in ("root", user):
                specs.append(("sifbox exec", who, f"img-{c}.sif",
                              [sifbox, "exec", str(sif)] if sifbox and sif else None,
                              images.notes.get(c, "") or ("" if sifbox else "sifbox not installed")))
        for who in ("root", user):
            specs.append(("sifbox exec", who, "root/ (dir)", [sifbox, "exec", root_dir] if sifbox and images.root_ok
                          else None, images.root_note or "sifbox not installed"))
        sq = images.sqfs.get("gzip")
        for who in ("root", user):
            specs.append(("ch-run", who, "img-gzip.sqfs", [chrun, str(sq), "--"] if chrun and sq else None,
                          "ch-run not installed" if not chrun else images.notes.get("gzip", "")))
        specs.append(("ch-run", user, "root/ (dir)", [chrun, root_dir, "--"] if chrun and images.root_ok else None,
                      "ch-run not installed" if not chrun else images.root_note))
        specs.append(("chroot", "root", "root/ (dir)", [chroot, root_dir] if chroot and images.root_ok else None,
                      "chroot not installed" if not chroot else images.root_note))

        rows: list[Row] = []
        for workload, cmd in WORKLOADS.items():
            for runner, who, image, prefix, note in specs:
                rows.append(row(runner, who, image, workload, prefix + cmd if prefix else None, note))
        ref = {r.workload: r for r in rows if r.runner == "sifbox exec" and r.who == "root"
               and r.image == "img-gzip.sif"}  # fmt: skip
        floor = {(r.runner, r.who, r.image): r for r in rows if r.workload == "true"}

        for r in rows:
            log(f"{r.workload:<6} {r.runner} {r.image} as {r.who}")
            measure(env, r, args.runs, args.cold_runs)
        print("Containers (ms). warm/ref, cold/ref: ratio to `sifbox exec img-gzip.sif` as root (kernel squashfs);")
        print("warm-true: warm minus the same runner's warm `true` (start-up removed); net/ref: its ratio to ref's.")
        print()
        print_table(rows, ref, floor, "sifbox exec img-gzip.sif as root")
        outs = sorted({(r.output, r.runner, r.who, r.image) for r in rows if r.workload == "tar" and r.output})
        counts: dict[str, list[str]] = {}
        for out, runner, who, image in outs:
            counts.setdefault(out, []).append(f"{runner} {image} {who}")
        print("tar byte counts: " + "; ".join(f"{k} ({len(v)} rows)" for k, v in counts.items()))
        for r in rows:
            if r.error and (r.cold or r.warm):
                print(f"  note: {r.runner} {r.image} {r.who} {r.workload}: {r.error}")
        print()
        sys.stdout.flush()

        # ---------------------------------------------------------------- file system ---
        if not args.no_diag and chroot and images.root_ok:
            diag: list[Row] = []
            variants: list[tuple[str, str, list[str]]] = [("kernel", c, []) for c in COMPRESSORS]
            if squashfuse_ll:
                variants += [(squashfuse_ll, c, []) for c in COMPRESSORS]
                variants += [(squashfuse_ll, "gzip", ["-s"]), (squashfuse_ll, "gzip", ["-o", "clone_fd"]),
                             (squashfuse_ll, "gzip", ["-o", "max_threads=1"])]
            for workload in ("numpy", "tar"):
                cmd = WORKLOADS[workload]
                diag.append(row("chroot DIR", "root", "root/ (dir)", workload, [chroot, root_dir, *cmd]))
                for kind, c, opts in variants:
                    sq = images.sqfs.get(c)
                    label = ("mount -o loop" if kind == "kernel" else "squashfuse_ll " + " ".join(opts)).strip()
                    r = row(f"chroot MNT, {label}", "root", f"img-{c}.sqfs", workload,
                            [chroot, str(mnt), *cmd] if sq else None, images.notes.get(c, ""))
                    if sq:
                        r.setup = Mounter(kind, sq, mnt, opts)
                    diag.append(r)
            dref = {r.workload: r for r in diag
                    if r.runner == "chroot MNT, mount -o loop" and r.image == "img-gzip.sqfs"}
            for r in diag:
                log(f"{r.workload:<6} {r.runner} {r.image}")
                measure(env, r, args.runs, args.cold_runs)
            print("File system only (ms): the script mounts the SquashFS (fresh every run, mount/unmount not timed),")
            print("then times `chroot MNT CMD` as root. Cold: caches dropped after mounting.")
            print()
            print_table(diag, dref, None, "chroot on `mount -o loop img-gzip.sqfs`")
            print()

        print("squashfuse_ll options:")
        for line in squashfuse_options(squashfuse_ll, images.sqfs.get("gzip"), mnt):
            print("  " + line)
        print()
        print(f"total time: {time.perf_counter() - t0:.0f} s (build {build_wall:.0f} s)")
        return 0
    finally:
        env.close()  # the holders its runs started (its own runtime directories), and those directories
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        if args.keep:
            print(f"kept {workdir}")
        else:
            cleanup(workdir)
            if workdir.exists():
                print(f"note: {workdir} not removed (it holds other files)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
