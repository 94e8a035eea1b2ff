"""Test images for the action commands (`sifbox exec/run/shell/test`), and a leak guard.

One busybox-static root filesystem, laid out like an image Apptainer built (``/.singularity.d``
with runscript, test, env scripts and labels), in the three forms an action accepts:

* ``sif``     a SIF whose primary system partition is SquashFS (made with the installed
              ``sifbox sif new`` / ``sifbox sif add``),
* ``sqfs``    the bare SquashFS file,
* ``sandbox`` the directory itself,

plus ``static_sif``: a SIF holding only ``/bin/busybox`` (no ``/bin/sh``, no ``/.singularity.d``),
and ``notest_sandbox``: the sandbox without ``/.singularity.d/test``.

Everything lives in one directory under /tmp that the unprivileged test user can read, built once
per session as root. Test modules import the fixtures they need::

    from tests.integration.images import ActionImages, action_images, no_leaks  # noqa: F401

`no_leaks` is autouse: after every test of a module that imports it, no new FUSE/squashfs/overlay
mount is visible on the host, no new ``squashfuse*`` process runs, no process still names one of
the test images or runs in a sifbox instance (``SIFBOX_INSTANCE`` in its environment, or the
holder's name ``sifbox-instance``), and no loop device is attached to one of them. Only processes
of this test session count (its descendants: the session is a child subreaper, so orphans stay
its own): the machine may run other sessions at the same time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import User

#: Apptainer's default PATH inside a container (what `--cleanenv` leaves).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGES_PREFIX = "sifbox-images-"
SHARED_TMP_PREFIX = "/tmp/sifbox-test-"  # conftest's shared_tmp
LAUNCH_TIMEOUT = 30  # seconds; one launch should take well under one
TEARDOWN_GRACE = 2.5  # seconds allowed for mounts/processes/loop devices to go away

APPLETS = [
    "sh", "ls", "cat", "echo", "id", "env", "pwd", "touch", "mkdir", "sleep", "true", "false",
    "test", "[", "readlink", "stat", "grep", "sed", "wc", "head", "kill", "rm", "ln",
    "chmod", "tr", "cut", "awk",
]  # fmt: skip
IMAGE_DIRS = [
    "bin", "proc", "sys", "dev", "tmp", "var/tmp", "home", "etc", "root", "mnt", "opt", "data",
    ".singularity.d/env", ".singularity.d/libs", ".singularity.d/actions",
]  # fmt: skip
PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = "root:x:0:\n"
HELLO = "hello from image\n"
RUNSCRIPT = '#!/bin/sh\necho "runscript args: $*"\n'
TESTSCRIPT = "#!/bin/sh\necho TEST-OK\n"
OTHER_SHELL = '#!/bin/sh\necho "OTHER-SHELL $*"\nexec /bin/sh "$@"\n'
BASE_ENV = """#!/bin/sh
# Copyright (c) Contributors to the Apptainer project (layout only; sifbox test image).
# This file is sourced first; it sets nothing on purpose.
"""
ENVIRONMENT = """#!/bin/sh
# Custom environment shell code should follow

export FROM_IMAGE=image
export OVERRIDE_ME=image
"""
LABELS = {
    "org.label-schema.build-arch": "amd64",
    "org.label-schema.schema-version": "1.0",
    "org.label-schema.usage.singularity.deffile.bootstrap": "busybox",
    "org.label-schema.usage.singularity.version": "sifbox-tests",
}
KINDS = ("sif", "sqfs", "sandbox")


@dataclass(frozen=True)
class ActionImages:
    """Paths of the test images (all absolute, all readable by the test user)."""

    root: Path  # directory holding all of them
    sandbox: Path  # directory image
    sqfs: Path  # bare SquashFS of `sandbox`
    sif: Path  # SIF with `sqfs` as primary system partition
    static_sif: Path  # SIF with only /bin/busybox
    notest_sandbox: Path  # directory image like `sandbox`, without /.singularity.d/test

    def kind(self, kind: str) -> Path:
        """The image of `kind` ("sif", "sqfs" or "sandbox")."""
        return {"sif": self.sif, "sqfs": self.sqfs, "sandbox": self.sandbox}[kind]

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.sif, self.sqfs, self.static_sif)


# --- building ------------------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def make_busybox_rootfs(dest: Path) -> Path:
    """A busybox-static root with Apptainer's metadata tree, at `dest` (created)."""
    dest.mkdir(mode=0o755)
    for d in IMAGE_DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (dest / d).chmod(0o1777)
    shutil.copy2("/bin/busybox", dest / "bin/busybox")
    (dest / "bin/busybox").chmod(0o755)
    listed = subprocess.run(
        ["/bin/busybox", "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in APPLETS:
        assert applet in listed, f"/bin/busybox has no `{applet}` applet"
        (dest / "bin" / applet).symlink_to("busybox")
    _write(dest / "bin/othershell", OTHER_SHELL, 0o755)
    _write(dest / "etc/passwd", PASSWD)
    _write(dest / "etc/group", GROUP)
    # Apptainer's build creates these empty so the host's can be bound over them.
    _write(dest / "etc/hosts", "")
    _write(dest / "etc/resolv.conf", "")
    _write(dest / "data/hello.txt", HELLO)
    sd = dest / ".singularity.d"
    _write(sd / "runscript", RUNSCRIPT, 0o755)
    _write(sd / "test", TESTSCRIPT, 0o755)
    _write(sd / "env/01-base.sh", BASE_ENV, 0o755)
    _write(sd / "env/90-environment.sh", ENVIRONMENT, 0o755)
    _write(sd / "labels.json", json.dumps(LABELS, indent=2) + "\n")
    (dest / "singularity").symlink_to(".singularity.d/runscript")
    return dest


def make_static_rootfs(dest: Path) -> Path:
    """A root holding /bin/busybox and empty mount points, and nothing else (no /bin/sh)."""
    dest.mkdir(mode=0o755)
    for d in ("bin", "proc", "sys", "dev", "tmp", "var/tmp", "home", "etc", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", dest / "bin/busybox")
    (dest / "bin/busybox").chmod(0o755)
    return dest


def mksquashfs(src: Path, out: Path) -> Path:
    """`mksquashfs src out -noappend -all-root`, readable by everyone."""
    subprocess.run(
        ["mksquashfs", str(src), str(out), "-noappend", "-all-root", "-quiet", "-no-progress"],
        check=True,
        capture_output=True,
    )
    out.chmod(0o644)
    return out


def make_sif(sifbox_cli: str, partition: Path, out: Path) -> Path:
    """A SIF with `partition` as primary system partition (SquashFS, amd64)."""
    subprocess.run([sifbox_cli, "sif", "new", str(out)], check=True, capture_output=True)
    subprocess.run(
        [sifbox_cli, "sif", "add", str(out), str(partition),
         "--datatype", "4", "--partfs", "1", "--parttype", "2", "--partarch", "2"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    out.chmod(0o644)
    return out


def build_action_images(sifbox_cli: str, base: Path) -> ActionImages:
    """Build every test image under `base` (an existing, world-readable directory)."""
    sandbox = make_busybox_rootfs(base / "sandbox")
    sqfs = mksquashfs(sandbox, base / "busybox.sqfs")
    sif = make_sif(sifbox_cli, sqfs, base / "busybox.sif")
    static_root = make_static_rootfs(base / "static-root")
    static_sqfs = mksquashfs(static_root, base / "static.sqfs")
    static_sif = make_sif(sifbox_cli, static_sqfs, base / "static.sif")
    notest = base / "notest-sandbox"
    shutil.copytree(sandbox, notest, symlinks=True)
    (notest / ".singularity.d/test").unlink()
    return ActionImages(base, sandbox, sqfs, sif, static_sif, notest)


_BUILT: dict[str, ActionImages] = {}  # one build per session, even if several modules import it


@pytest.fixture(scope="session")
def action_images(sifbox_cli: str) -> Iterator[ActionImages]:
    """The test images, built once per session as root; removed at the end of the session."""
    if os.geteuid() != 0:
        pytest.skip("building the action test images needs root")
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs is not installed (Debian package squashfs-tools)")
    if sifbox_cli not in _BUILT:
        base = Path(tempfile.mkdtemp(prefix=IMAGES_PREFIX, dir="/tmp"))
        base.chmod(0o755)
        _BUILT[sifbox_cli] = build_action_images(sifbox_cli, base)
    images = _BUILT[sifbox_cli]
    yield images
    if _BUILT.pop(sifbox_cli, None) is not None:
        shutil.rmtree(images.root, ignore_errors=True)


# --- running -------------------------------------------------------------------------------------

_DROP_PREFIXES = ("SIFBOX", "APPTAINER", "SINGULARITY")


def env_for(user: User, **extra: str) -> dict[str, str]:
    """The environment `user` would have (as conftest's run_as gives it), plus `extra`.

    HOME/USER/LOGNAME are the user's, root included.

    Any SIFBOX*/APPTAINER*/SINGULARITY* variable of the test runner is dropped, so a test sees
    only the ones it sets.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    if not user.is_root:
        path = [
            p for p in env.get("PATH", DEFAULT_PATH).split(":") if p and not p.startswith("/root")
        ]
        env["PATH"] = ":".join(path) or DEFAULT_PATH
        for var in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
            env.pop(var, None)
    env.update(extra)
    return env


def user_named(name: str) -> User:
    """The `User` record (as conftest's fixtures give it) of the account `name`."""
    import pwd

    from tests.conftest import User

    pw = pwd.getpwnam(name)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def popen_as(user: User, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
    """Start `argv` as `user` directly (no runuser in between), so its pid is the program's.

    Needed to signal the sifbox process itself. Output is piped as text unless `kw` says otherwise.
    """
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    kw.setdefault("env", env_for(user))
    if not user.is_root:
        kw.update(user=user.uid, group=user.gid, extra_groups=[])
    return subprocess.Popen(list(argv), **kw)  # type: ignore[call-overload, no-any-return]


def run_direct(user: User, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Like conftest's run_as, but without runuser in between: the status is the program's own.

    (runuser turns a child's death by signal N into exit status 128+N; this does not.)
    """
    timeout = kw.pop("timeout", LAUNCH_TIMEOUT)
    proc = popen_as(user, argv, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)  # type: ignore[arg-type]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _processes() -> Iterator[tuple[int, str, int, str]]:
    """(pid, state, parent pid, comm) of every process, from /proc/PID/stat."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if ")" not in stat:
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        yield int(entry), rest[0], int(rest[1]), stat[stat.index("(") + 1 : stat.rindex(")")]


def descendants(pid: int) -> dict[int, str]:
    """pid -> comm of every live descendant of `pid`."""
    parent_of, comm_of = {}, {}
    for proc, state, parent, comm in _processes():
        if state != "Z":
            parent_of[proc] = parent
            comm_of[proc] = comm
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        for child, parent in parent_of.items():
            if parent == p and child not in found:
                found[child] = comm_of[child]
                todo.append(child)
    return found


# --- leak guard ----------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _live_processes(among: set[int] | None = None) -> dict[int, tuple[str, str]]:
    """pid -> (comm, cmdline) of every process that is not a zombie (of those `among`)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (among is not None and int(entry) not in among):
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat or ")" not in stat:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
        if state == "Z":
            continue
        cmdline = _read(f"/proc/{entry}/cmdline").replace("\0", " ")
        procs[int(entry)] = (comm, cmdline)
    return procs


def _environ(pid: int) -> bytes:
    """NUL-framed environment of `pid` (empty when unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + f.read() + b"\0"
    except OSError:
        return b""


def _mounts() -> dict[str, tuple[str, str, str]]:
    """Host mount id -> (mount point, fstype, source), from /proc/self/mountinfo."""
    found = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2:
            found[fields[0]] = (fields[4].replace("\\040", " "), tail[0], tail[1])
    return found


def loops_for(paths: Sequence[Path]) -> list[str]:
    lines = []
    for path in paths:
        if path.exists():
            out = subprocess.run(
                ["losetup", "-j", str(path)], check=False, capture_output=True, text=True
            )
            lines += [ln for ln in out.stdout.splitlines() if ln.strip()]
    return lines


def _all_loops() -> set[str]:
    """`/dev/loopN: (BACKING FILE)` of every attached loop device, read from /sys (the leak
    guard runs after every test: no `losetup -a` to start each time)."""
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        target = _read(str(backing)).strip()
        if target:
            found.add(f"/dev/{backing.parts[3]}: ({target})")
    return found


def _image_loops(paths: Sequence[Path]) -> list[str]:
    """The `_all_loops` lines of the loop devices attached to one of `paths` (what `loops_for`
    finds, without a `losetup -j` per path)."""
    names = {str(p) for p in paths} | {str(p.resolve()) for p in paths}
    found = [(ln, ln.split(": (", 1)[1][:-1].removesuffix(" (deleted)")) for ln in _all_loops()]
    return [ln for ln, target in found if target in names]


def _dm_mappings() -> set[str]:
    """The device-mapper mappings (dm-crypt of encrypted images), by name."""
    try:
        return {name for name in os.listdir("/dev/mapper") if name != "control"}
    except OSError:
        return set()


class LeakGuard:
    """Snapshot of the host before a test; `leaks()` lists what the test left behind."""

    OURS = (f"/tmp/{IMAGES_PREFIX}", SHARED_TMP_PREFIX)
    FSTYPES = ("squashfs", "fuse", "overlay")

    def __init__(self, images: Sequence[Path]) -> None:
        self.images = list(images)
        self.mounts = _mounts()
        self.procs = {pid for pid, state, _, _ in _processes() if state != "Z"}
        self.loops = _all_loops()
        self.mappings = _dm_mappings()

    def _ours(self, text: str) -> bool:
        return any(prefix in text for prefix in self.OURS) or any(
            str(p) in text for p in self.images
        )

    def leaked_mounts(self) -> list[str]:
        return [
            f"{mnt} ({fstype} from {src})"
            for mid, (mnt, fstype, src) in _mounts().items()
            if mid not in self.mounts
            and (fstype.startswith(self.FSTYPES) or self._ours(mnt) or self._ours(src))
        ]

    def leaked_processes(self) -> dict[int, str]:
        # Only this test session's processes: orphans are reparented to it
        # (a child subreaper), so other runs on the same machine don't count.
        mine = set(descendants(os.getpid())) - self.procs - {os.getpid()}
        return {
            pid: f"{comm}: {cmdline}"
            for pid, (comm, cmdline) in _live_processes(mine).items()
            if (comm.startswith(("squashfuse", "fuse2fs", "fuse-overlayfs", "gocryptfs"))
                 or comm in ("sifbox-instance", "sifbox-holder")
                 or self._ours(cmdline) or b"\0SIFBOX_INSTANCE=" in _environ(pid))
        }

    def leaked_loops(self) -> list[str]:
        new = [ln for ln in _all_loops() - self.loops if self._ours(ln)]
        return sorted(set(new) | set(_image_loops(self.images)))

    def leaks(self) -> list[str]:
        return (
            [f"mount {m}" for m in self.leaked_mounts()]
            + [f"process {pid} {what}" for pid, what in self.leaked_processes().items()]
            + [f"loop device {ln}" for ln in self.leaked_loops()]
            + [f"device-mapper mapping /dev/mapper/{name}" for name in sorted(_dm_mappings() - self.mappings)]
        )

    def wait_clean(self, grace: float = TEARDOWN_GRACE) -> list[str]:
        deadline = time.monotonic() + grace
        while True:
            leaks = self.leaks()
            if not leaks or time.monotonic() > deadline:
                return leaks
            time.sleep(0.05)

    def clean_up(self) -> None:
        """Undo leaks so that one faulty test does not fail the next ones too."""
        for pid in self.leaked_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for mnt in reversed(self.leaked_mounts()):
            subprocess.run(["umount", "-l", mnt.split(" (")[0]], check=False, capture_output=True)
        for ln in self.leaked_loops():
            subprocess.run(["losetup", "-d", ln.split(":")[0]], check=False, capture_output=True)


def _become_subreaper() -> None:
    """Make this process the parent of orphaned descendants (PR_SET_CHILD_SUBREAPER), so that a
    FUSE helper a test leaked is still seen as this session's."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _reap_orphans() -> None:
    """Reap the orphans this session adopted as subreaper (exited FUSE helpers and the like):
    only zombie children, so no live Popen of a test or fixture is touched."""
    me = os.getpid()
    for proc, state, parent, _ in _processes():
        if state == "Z" and parent == me:
            try:
                os.waitpid(proc, os.WNOHANG)
            except ChildProcessError:
                pass


# Images made by single tests (in shared_tmp) are matched by the shared_tmp prefix; pass extra
# paths only for images elsewhere.
@pytest.fixture(autouse=True)
def no_leaks(action_images: ActionImages, sifbox_cli: str) -> Iterator[LeakGuard]:
    """Fail a test that leaves a mount, a squashfuse process or a loop device behind
    (shared image mount holders are stopped first: they outlive launches by design)."""
    from tests.conftest import prune_holders

    _become_subreaper()
    guard = LeakGuard(action_images.files)
    yield guard
    prune_holders(sifbox_cli)
    _reap_orphans()
    leaks = guard.wait_clean()
    if leaks:
        guard.clean_up()
        pytest.fail("left behind after the test:\n  " + "\n  ".join(leaks), pytrace=False)
