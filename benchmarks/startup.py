"""Container start-up time: `sifbox exec` next to Charliecloud's ch-run and bubblewrap, and
`sifbox oci run` next to `runc run` on one OCI bundle.

    /usr/bin/python3 benchmarks/startup.py [--runs 30] [--warmup 3] [--batch 64] [--user sifbox-test]
                                          [--oci]   (the OCI rows only: oci run vs runc run)

Run as root. Builds a busybox-static root in a temporary directory readable by every user, packs
it into a SquashFS and a SIF, and times `/bin/true` in it through each runtime, as root and as an
unprivileged user (through `runuser -u USER --`, whose own cost is timed as a row and subtracted
in the "net" columns). Each row: median and minimum wall time over --runs runs after --warmup
warm-up runs, taken round-robin (one run of every row per round, so that load from elsewhere on
the machine weighs on all rows alike), and the ratio of the median to `ch-run` on the same SquashFS for the same user.
Then --batch concurrent launches of the SIF (sifbox, through the node's shared mount and with
--no-share) and of the SquashFS (ch-run), as root and as the user, followed by a check for
left-over squashfuse processes, loop devices and mounts once the benchmark has stopped the
idle holders of the shared mounts it started (which outlive launches by design). Each user runs
with its own XDG_RUNTIME_DIR under /tmp, so those holders are the benchmark's own: the holders
of other users and runs on the node are left alone.

sifbox's rows without --no-share join the node's shared mount of the image (one holder per
user and image): after the warm-up runs, a warm launch. The --no-share rows mount the image
for each container, as sifbox did before. The "mount service" rows run the same SIF from a
store laid out as the admission store's (root's and the user's copy), with a mount service
(`sifbox mounts serve`) started for them on a socket of the temporary directory: one kernel
mount that root's and the user's containers bind; the service is stopped after those rows.

Prints a table and never asserts timings. A row whose tool or image is missing prints
"n/a (reason)"; a row whose command fails prints "failed (reason)". Standard library only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchlib import Failed, Unavailable, UserEnv
from mountservice import MountService

PY = "/usr/bin/python3"
PARTARCH = {"x86_64": "2", "amd64": "2", "i686": "1", "i386": "1", "aarch64": "4", "arm64": "4",
            "armv7l": "3", "ppc64le": "6", "s390x": "11", "riscv64": "12", "loongarch64": "13"}
APPLETS = ("sh", "true", "ls")
# Mount points and bind targets the other runtimes need to exist in the image: ch-run binds
# /dev, /proc, /sys, /tmp, /etc/{passwd,group,hosts,resolv.conf}; bwrap mounts /proc and /dev.
# sifbox needs none of them (it runs on a busybox-only root too).
MOUNT_DIRS = ("dev", "proc", "sys", "tmp", "home", "root", "etc")
BIND_FILES = ("etc/passwd", "etc/group", "etc/hosts", "etc/resolv.conf")


Builder = Callable[[str, str], list[str]]  # (tool, image) -> argv


@dataclass
class Row:
    label: str
    who: str                      # "root" or the unprivileged user's name
    argv: list[str] | None        # None: unavailable, see `note`
    note: str = ""
    times: list[float] = field(default_factory=list)  # seconds
    error: str = ""
    ref: str | None = None        # key of the row it's compared with

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) * 1000 if self.times and not self.error else None

    @property
    def minimum(self) -> float | None:
        return min(self.times) * 1000 if self.times and not self.error else None


# ---------------------------------------------------------------------------- environment ---

class Env(UserEnv):
    """UserEnv, run from a fixed working directory."""

    def __init__(self, user: str, cwd: str) -> None:
        super().__init__(user, lang=os.environ.get("LANG", "C.UTF-8"))
        self.cwd = cwd

    def spawn(self, who: str, argv: list[str], stderr: int | IO[Any]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, cwd=self.cwd, env=self.env[who])


def last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode(errors="replace").strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def time_once(env: Env, who: str, argv: list[str]) -> float:
    start = time.perf_counter()
    proc = env.spawn(who, argv, subprocess.PIPE)
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise Failed(f"exit {proc.returncode}: {last_line(err)}")
    return elapsed


def measure(env: Env, rows: list[Row], runs: int, warmup: int) -> None:
    """Time every row `runs` times, round-robin (one run of each row per round), so that a
    change of load on the machine weighs on all rows alike; a failing row drops out."""
    live = [r for r in rows if r.argv is not None]
    for round_ in range(warmup + runs):
        for row in list(live):
            assert row.argv is not None
            try:
                elapsed = time_once(env, row.who, row.argv)
            except Failed as err:
                row.error = f"run {len(row.times) + 1}: {err}"
            except OSError as err:
                row.error = str(err)
            else:
                if round_ >= warmup:
                    row.times.append(elapsed)
                continue
            live.remove(row)


def tool_version(argv: list[str], env: dict[str, str], stream: str = "stdout") -> str:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"n/a ({err})"
    out = proc.stderr if stream == "stderr" else proc.stdout
    text = last_line(out) or last_line(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return f"n/a (`{shlex.join(argv)}` exited {proc.returncode}: {text})"
    return text or "n/a (no output)"


# ------------------------------------------------------------------------------- the image ---

@dataclass
class Images:
    root: Path
    sqfs: Path | None = None
    sif: Path | None = None
    root_note: str = ""
    sqfs_note: str = ""
    sif_note: str = ""


def run_step(argv: list[str]) -> None:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        raise Unavailable(f"`{shlex.join(argv)}` exited {proc.returncode}: "
                          f"{last_line(proc.stderr) or last_line(proc.stdout)}")


def build_images(tmp: Path, sifbox: str | None) -> Images:
    images = Images(root=tmp / "root")
    busybox = shutil.which("busybox") or ("/bin/busybox" if os.path.exists("/bin/busybox") else None)
    if busybox is None:
        images.root_note = images.sqfs_note = images.sif_note = "busybox not installed (busybox-static)"
        return images
    bindir = images.root / "bin"
    bindir.mkdir(parents=True, mode=0o755)
    shutil.copy2(busybox, bindir / "busybox")
    os.chmod(bindir / "busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", bindir / applet)
    for name in MOUNT_DIRS:
        (images.root / name).mkdir(mode=0o755, exist_ok=True)
    for name in BIND_FILES:
        (images.root / name).touch(mode=0o644)
    for path in [images.root, *images.root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)

    mksquashfs = shutil.which("mksquashfs")
    if mksquashfs is None:
        images.sqfs_note = images.sif_note = "mksquashfs not installed (squashfs-tools)"
        return images
    sqfs = tmp / "img.sqfs"
    try:
        run_step([mksquashfs, str(images.root), str(sqfs), "-noappend", "-all-root", "-quiet",
                  "-no-progress"])
        os.chmod(sqfs, 0o644)
        images.sqfs = sqfs
    except Unavailable as err:
        images.sqfs_note = images.sif_note = str(err)
        return images

    if sifbox is None:
        images.sif_note = "sifbox not installed"
        return images
    machine = platform.machine()
    partarch = PARTARCH.get(machine)
    if partarch is None:
        images.sif_note = f"no SIF partarch known for `{machine}`"
        return images
    sif = tmp / "img.sif"
    try:
        run_step([sifbox, "sif", "new", str(sif)])
        run_step([sifbox, "sif", "add", str(sif), str(sqfs), "--datatype", "4", "--partfs", "1",
                  "--parttype", "2", "--partarch", partarch])
        os.chmod(sif, 0o644)
        images.sif = sif
    except Unavailable as err:
        images.sif_note = str(err)
    return images


# ----------------------------------------------------------------------- mount service ---

# ---------------------------------------------------------------------------- leftovers -----

def squashfuse_processes() -> list[str]:
    """Live (non-zombie) processes whose name starts with squashfuse: `pid state comm`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2:].split()[0]
        if comm.startswith("squashfuse") and state != "Z":
            found.append(f"{entry} {state} {comm}")
    return found


def loop_devices(image: Path | None) -> list[str] | str:
    if image is None:
        return []
    losetup = shutil.which("losetup")
    if losetup is None:
        return "n/a (losetup not installed)"
    proc = subprocess.run([losetup, "-j", str(image)], capture_output=True, check=False)
    if proc.returncode != 0:
        return f"n/a (losetup exited {proc.returncode}: {last_line(proc.stderr)})"
    return [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()]


def host_mounts(tmp: Path, ignore: str | None = None) -> list[str]:
    """Mounts in root's (this script's) namespace that involve the temp dir or a sifbox session
    (but `ignore`: the running mount service's own socket directory)."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        if ignore is not None and f" {ignore} " in line:
            continue
        if str(tmp) in line or "sifbox" in line:
            found.append(line)
    return found


@dataclass
class Leftovers:
    lines: list[str]
    dirty: bool

    def __str__(self) -> str:
        return "; ".join(self.lines) + ("   <-- NOT CLEAN" if self.dirty else "")


def leftovers(env: Env, tmp: Path, images: Images, ignore: str | None = None) -> Leftovers:
    lines, dirty = [], False
    env.stop_holders()
    procs = squashfuse_processes()
    dirty |= bool(procs)
    lines.append(f"live squashfuse processes: {len(procs)}" + (f" {procs}" if procs else ""))
    for image in (images.sif, images.sqfs):
        if image is None:
            continue
        loops = loop_devices(image)
        if isinstance(loops, str):
            lines.append(f"losetup -j {image.name}: {loops}")
        else:
            dirty |= bool(loops)
            lines.append(f"losetup -j {image.name}: {len(loops)} attached" + (f" {loops}" if loops else ""))
    mounts = host_mounts(tmp, ignore)
    dirty |= bool(mounts)
    lines.append(f"host mounts of the image dir or sifbox: {len(mounts)}" + (f" {mounts[:3]}" if mounts else ""))
    return Leftovers(lines, dirty)


# ---------------------------------------------------------------------------- the batch -----

@dataclass
class Batch:
    label: str
    who: str
    argv: list[str] | None
    note: str = ""
    wall: float | None = None
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    after: Leftovers | None = None
    after_late: Leftovers | None = None


def run_batch(env: Env, batch: Batch, count: int, tmp: Path, images: Images) -> None:
    if batch.argv is None:
        return
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    with ExitStack() as stack:
        logs: list[IO[bytes]] = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(count)]
        start = time.perf_counter()
        for log in logs:
            try:
                started.append((env.spawn(batch.who, batch.argv, log), log))
            except OSError as err:
                batch.errors[f"spawn: {err}"] = batch.errors.get(f"spawn: {err}", 0) + 1
        codes = [(proc.wait(), log) for proc, log in started]
        batch.wall = time.perf_counter() - start
        for code, log in codes:
            if code == 0:
                batch.ok += 1
                continue
            log.seek(0)
            key = f"exit {code}: {last_line(log.read())}"
            batch.errors[key] = batch.errors.get(key, 0) + 1
    batch.after = leftovers(env, tmp, images)
    if batch.after.dirty:
        time.sleep(2)
        batch.after_late = leftovers(env, tmp, images)


# ------------------------------------------------------------------------------- printing ---

def fmt(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den <= 0:
        return f"{'-':>6}"
    return f"{num / den:6.2f}"


def table(items: list[Row] | list[Batch], columns: str) -> list[tuple[str, Any]]:
    """Print the head of a table whose rows start with the label and the user; return each
    item with its line prefix, the items without a command printed as n/a already."""
    width = max(len(i.label) for i in items)
    whow = max(len(i.who) for i in items)
    head = f"{'command':<{width}}  {'as':<{whow}}  {columns}"
    print(head)
    print("-" * len(head))
    out = []
    for item in items:
        prefix = f"{item.label:<{width}}  {item.who:<{whow}}"
        if item.argv is None:
            print(f"{prefix}  n/a ({item.note})")
        else:
            out.append((prefix, item))
    return out


SPEC = Path(__file__).resolve().parents[1] / "tests" / "data" / "oci" / "runc-spec.json"


def oci_bundle(tmp: Path, root: Path, who: str) -> Path:
    """An OCI bundle on the benchmark's root directory running /bin/true: runc's default
    config.json (read-only root), made rootless as `runc spec --rootless` makes it for a user."""
    import json
    import pwd

    doc = json.loads(SPEC.read_text())
    doc["root"] = {"path": str(root), "readonly": True}
    doc["process"].update(args=["/bin/true"], terminal=False)
    bundle = tmp / f"bundle-{who}"
    bundle.mkdir()
    states = [tmp / f"oci-state-{who}", tmp / f"oci-state-{who}-runc"]  # sifbox's, runc's
    for state in states:
        state.mkdir()
    if who != "root":
        pw = pwd.getpwnam(who)
        doc["linux"].pop("resources", None)
        doc["linux"]["uidMappings"] = [{"containerID": 0, "hostID": pw.pw_uid, "size": 1}]
        doc["linux"]["gidMappings"] = [{"containerID": 0, "hostID": pw.pw_gid, "size": 1}]
        doc["linux"]["namespaces"] = [n for n in doc["linux"]["namespaces"] if n["type"] != "network"]
        doc["linux"]["namespaces"].append({"type": "user"})
        for m in doc["mounts"]:
            if m["type"] == "devpts":
                m["options"] = [o for o in m["options"] if o != "gid=5"]
            if m["type"] == "sysfs":
                m.update(type="none", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])
        for state in states:
            os.chown(state, pw.pw_uid, pw.pw_gid)
    (bundle / "config.json").write_text(json.dumps(doc))
    os.chmod(bundle, 0o755)
    os.chmod(bundle / "config.json", 0o644)
    return bundle


def print_rows(rows: list[Row], ref: dict[str, Row], wrapper: Row, runs_note: str) -> None:
    wrap_ms = wrapper.median
    columns = (f"{'N':>3}  {'median':>8}  {'min':>8}  "
               f"{'ratio':>6}  {'net med':>8}  {'net min':>8}  {'net rat':>7}")
    for prefix, row in table(rows, columns):
        if row.error:
            print(f"{prefix}  failed ({row.error})")
            continue
        med, mn = row.median, row.minimum
        cmp_row = ref.get(row.who)
        cmp_med = cmp_row.median if cmp_row is not None else None
        line = f"{prefix}  {len(row.times):3d}  {fmt(med)}  {fmt(mn)}  {fmt_ratio(med, cmp_med)}"
        if row.who != "root" and row is not wrapper and wrap_ms is not None and med is not None:
            net_med, net_min = med - wrap_ms, (mn - wrap_ms if mn is not None else None)
            net_ref = cmp_med - wrap_ms if cmp_med is not None else None
            line += f"  {fmt(net_med)}  {fmt(net_min)}  {fmt_ratio(net_med, net_ref):>7}"
        elif row.who == "root":
            line += f"  {'=':>8}  {'=':>8}  {'=':>7}"
        print(line)
    print(runs_note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per row (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up runs per row (default 3)")
    parser.add_argument("--batch", type=int, default=64, help="concurrent launches (default 64)")
    parser.add_argument("--user", default="sifbox-test", help="unprivileged user (default sifbox-test)")
    parser.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--oci", action="store_true",
                        help="only `sifbox oci run` and `runc run` (with the floor and the wrapper), no batches")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("startup.py: run as root (it times root and an unprivileged user through runuser)",
              file=sys.stderr)
        return 2

    sifbox = args.sifbox if os.access(args.sifbox, os.X_OK) else None
    chrun = shutil.which("ch-run")
    bwrap = shutil.which("bwrap")
    python3 = PY if os.access(PY, os.X_OK) else None

    tmp = Path(tempfile.mkdtemp(prefix="sifbox-bench.", dir="/tmp"))
    os.chmod(tmp, 0o755)
    env = Env(args.user, str(tmp))
    t0 = time.perf_counter()
    try:
        images = build_images(tmp, sifbox)
        root_ok = (images.root / "bin" / "true").exists()

        # ------------------------------------------------------------------ header ---
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = None
        uname = os.uname()
        chrun_env = env.env["root"]
        print("sifbox exec start-up benchmark")
        print(f"  CPUs:        {os.cpu_count()} (usable: {affinity})   machine: {uname.machine}")
        print(f"  kernel:      {uname.release} {uname.version}")
        print(f"  Python:      {sys.version.split()[0]} ({sys.executable})")
        print("  sifbox:      " + (tool_version([sifbox, "--version"], chrun_env) + f" ({sifbox})"
                                    if sifbox else "n/a (not installed)"))
        print("  ch-run:      " + (tool_version([chrun, "--version"], chrun_env, "stderr")
                                    if chrun else "n/a (charliecloud-runtime not installed)"))
        sqfuse = tool_version(["dpkg-query", "-W", "-f", "${Version}", "squashfuse"], chrun_env)
        print(f"  squashfuse:  {sqfuse}"
              + ("" if shutil.which("squashfuse_ll") else "  (squashfuse_ll not on PATH)"))
        print("  bwrap:       " + (tool_version([bwrap, "--version"], chrun_env) if bwrap
                                    else "n/a (bubblewrap not installed)"))
        print(f"  user:        {args.user} via `{env.runuser or 'runuser'} -u {args.user} --`"
              + (f"  n/a ({env.user_problem()})" if env.user_problem() else ""))
        print(f"  image dir:   {tmp}  (root/: busybox + {', '.join(APPLETS)}; "
              f"empty {', '.join(MOUNT_DIRS)} and {', '.join(BIND_FILES)} for ch-run/bwrap)")
        for path in (images.sqfs, images.sif):
            if path is not None:
                print(f"               {path.name}: {path.stat().st_size} bytes")
        print(f"  runs:        median and min wall time, ms, over {args.runs} runs after "
              f"{args.warmup} warm-up runs, round-robin over the rows; cwd {tmp}; minimal env (PATH, LANG, USER, LOGNAME, HOME)")
        print()
        sys.stdout.flush()

        # ------------------------------------------------------------------- rows ---
        def row(label: str, who: str, argv: list[str] | None, missing: str = "") -> Row:
            if argv is None:
                return Row(label, who, None, note=missing)
            try:
                return Row(label, who, env.wrap(who, argv))
            except Unavailable as err:
                return Row(label, who, None, note=str(err))

        whos = ["root", args.user]

        def image_cmd(tool: str | None, tool_name: str, image: Path | None, image_note: str,
                      build: Builder) -> tuple[list[str] | None, str]:
            if tool is None:
                return None, f"{tool_name} not installed"
            if image is None or (image == images.root and not root_ok):
                return None, image_note or "image not built"
            return build(tool, str(image)), ""

        rows: list[Row] = []
        floor = row("python3 -I -S -c pass (floor)", "root",
                    [python3, "-I", "-S", "-c", "pass"] if python3 else None, f"{PY} missing")
        wrapper = row("runuser -u USER -- /bin/true (wrapper)", args.user, ["/bin/true"])
        rows += [floor, wrapper]
        specs = [
            ("sifbox exec img.sif /bin/true (shared)", sifbox, "sifbox", images.sif, images.sif_note,
             lambda t, i: [t, "exec", i, "/bin/true"]),
            ("sifbox exec --no-share img.sif /bin/true", sifbox, "sifbox", images.sif, images.sif_note,
             lambda t, i: [t, "exec", "--no-share", i, "/bin/true"]),
            ("sifbox exec img.sqfs /bin/true", sifbox, "sifbox", images.sqfs, images.sqfs_note,
             lambda t, i: [t, "exec", i, "/bin/true"]),
            ("sifbox exec DIR /bin/true", sifbox, "sifbox", images.root, images.root_note,
             lambda t, i: [t, "exec", i, "/bin/true"]),
            ("ch-run img.sqfs -- /bin/true", chrun, "ch-run (charliecloud-runtime)", images.sqfs,
             images.sqfs_note, lambda t, i: [t, i, "--", "/bin/true"]),
            ("ch-run DIR -- /bin/true", chrun, "ch-run (charliecloud-runtime)", images.root,
             images.root_note, lambda t, i: [t, i, "--", "/bin/true"]),
            ("bwrap --ro-bind DIR / --proc --dev /bin/true", bwrap, "bwrap (bubblewrap)",
             images.root, images.root_note,
             lambda t, i: [t, "--ro-bind", i, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"]),
        ]
        ref: dict[str, Row] = {}
        for label, tool, tool_name, image, note, build in specs:
            argv, missing = image_cmd(tool, tool_name, image, note, build)
            for who in whos:
                r = row(label, who, argv, missing)
                rows.append(r)
                if label.startswith("ch-run img.sqfs"):
                    ref[who] = r
        # The mount service: one kernel mount for every user's containers.
        service: MountService | None = None
        service_note = images.sif_note or ("sifbox not installed" if sifbox is None else "")
        if sifbox is not None and images.sif is not None and not args.oci:
            try:
                service = MountService(tmp / "msvc", tmp / "msvc" / "store", sifbox, images.sif, args.user)
            except (Unavailable, OSError) as err:
                service_note = str(err)
        for who in whos:
            argv = ([sifbox, "-c", str(service.conf), "exec", str(service.images[who]), "/bin/true"]
                    if service is not None and sifbox is not None else None)  # fmt: skip
            rows.append(row("sifbox exec STORE/img.sif /bin/true (mount service)", who, argv, service_note))
        # What containing root's containers costs: the same launch with Apptainer's uncontained
        # root (`root default capabilities = full`) beside the default one above.
        full_conf = tmp / "uncontained.conf"
        full_conf.write_text("root default capabilities = full\n")
        argv, missing = image_cmd(sifbox, "sifbox", images.sif, images.sif_note,
                                  lambda t, i: [t, "-c", str(full_conf), "exec", i, "/bin/true"])
        rows.append(row("sifbox exec img.sif /bin/true, root not contained (`full`)", "root", argv, missing))
        # OCI runtime mode: `sifbox oci run` next to `runc run` on the same bundle (runc's default
        # config.json on the root directory; rootless for the user).
        runc = shutil.which("runc")
        oci_rows: dict[tuple[str, str], Row] = {}
        for who in whos:
            try:
                bundle = oci_bundle(tmp, images.root, who) if root_ok else None
            except (KeyError, OSError) as err:
                bundle, note = None, str(err)
            else:
                note = images.root_note or "image not built"
            state = str(tmp / f"oci-state-{who}")
            for tool, name, label, build in (
                (sifbox, "sifbox", "sifbox oci run BUNDLE (/bin/true)",
                 lambda t, b, state=state: [t, "oci", "--root", state, "run", "--bundle", b, "bench"]),
                (runc, "runc", "runc run BUNDLE (/bin/true)",
                 lambda t, b, state=state: [t, "--root", state + "-runc", "run", "--bundle", b, "bench"]),
            ):  # fmt: skip
                argv = build(tool, str(bundle)) if tool and bundle else None
                r = row(label, who, argv, note if bundle is None else f"{name} not installed")
                rows.append(r)
                oci_rows[(name, who)] = r

        if args.oci:
            rows = [r for r in rows if r in (floor, wrapper) or r in oci_rows.values()]
        before = leftovers(env, tmp, images, ignore=str(service.base / "run") if service is not None else None)
        try:
            measure(env, rows, args.runs, args.warmup)
        finally:
            if service is not None:
                service.stop()
        print("Single launches (ms). ratio = median / median of `ch-run img.sqfs` for the same user;")
        print("net = minus the runuser wrapper's median (user rows only; `=` means same as raw for root).")
        print()
        print_rows(rows, ref, wrapper, "")
        for who in whos:
            ours, theirs = oci_rows.get(("sifbox", who)), oci_rows.get(("runc", who))
            if ours is not None and theirs is not None:
                print(f"sifbox oci run / runc run, {who}: {fmt_ratio(ours.median, theirs.median).strip()}")
        single_done = leftovers(env, tmp, images)
        print(f"leftovers before the single launches: {before}")
        print(f"leftovers after the single launches:  {single_done}")
        print()
        sys.stdout.flush()

        if args.oci:
            print(f"total time: {time.perf_counter() - t0:.0f} s")
            return 0
        # ----------------------------------------------------------------- batches ---
        batches: list[Batch] = []
        for label, tool, tool_name, image, note, build in (specs[0], specs[1], specs[4]):
            argv, missing = image_cmd(tool, tool_name, image, note, build)
            for who in whos:
                if argv is None:
                    batches.append(Batch(label, who, None, note=missing))
                    continue
                try:
                    batches.append(Batch(label, who, env.wrap(who, argv)))
                except Unavailable as err:
                    batches.append(Batch(label, who, None, note=str(err)))
        for b in batches:
            run_batch(env, b, args.batch, tmp, images)

        print(f"{args.batch} concurrent launches ({os.cpu_count()} CPUs): Popen all, then wait all")
        for prefix, b in table(batches, f"{'wall ms':>8}  {'ok':>7}  {'per launch':>10}"):
            wall_ms = b.wall * 1000 if b.wall is not None else None
            per = wall_ms / args.batch if wall_ms is not None else None
            print(f"{prefix}  {fmt(wall_ms)}  {b.ok:3d}/{args.batch:<3d}  {fmt(per, 10)}")
            for msg, n in sorted(b.errors.items(), key=lambda kv: -kv[1]):
                print(f"    {n} x {msg}")
            print(f"    after: {b.after}")
            if b.after_late is not None:
                print(f"    2 s later: {b.after_late}")
        print()
        final = leftovers(env, tmp, images)
        print(f"leftovers at the end: {final}")
        print(f"total time: {time.perf_counter() - t0:.0f} s")
        return 0
    finally:
        env.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp.exists():
                print(f"warning: could not remove {tmp} completely", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
