"""Fixtures of the ported Apptainer e2e tests (see cases.py for how a case is written).

The images, built once per session as root with `sifbox build` from the definition files in
data/, in one directory every user can read (under /tmp, named with cases.TMP_PREFIX):

    test       e2e/testdata/Apptainer, the image most e2e tests run (c.env.ImagePath)
    busybox    e2e.BusyboxSIF: busybox and nothing else
    debian     e2e.EnsureDebianImage: glibc, dash, Debian's ld.so.conf, no /dev/null, and the
               99-base.sh an Apptainer-built image carries
    sandbox    `build --sandbox` of `test`, owned by the test user (as Apptainer's tests build it
               with the user profile), so that both users may run it --writable
    inspector  e2e/testdata/inspector_container.def, as SIF, bare SquashFS and sandbox

Commands run without runuser in between, so the exit status is sifbox's own, with the user's
environment (HOME, USER, PATH without /root) minus every SIFBOX*/APPTAINER*/SINGULARITY*
variable of the test runner, plus what the case sets.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import TMP_PREFIX, Runner, new_dir, remove_dir
from tests.integration.images import _become_subreaper

DATA = Path(__file__).resolve().parent / "data"
BUILD_TIMEOUT = 120
#: How long one command may take (instances and overlays included).
TIMEOUT = 60


@dataclass(frozen=True)
class Images:
    root: Path
    test: Path
    busybox: Path
    debian: Path
    sandbox: Path
    inspector_sif: Path
    inspector_sqfs: Path
    inspector_sandbox: Path


def _build(cli: str, out: Path, source: str | Path, *flags: str, cwd: Path) -> None:
    proc = subprocess.run(
        [cli, "build", "--force", *flags, str(out), str(source)],
        cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(
            f"can't build {out.name}: sifbox build exited {proc.returncode}\n{proc.stderr[-3000:]}"
        )


def build_images(cli: str, base: Path) -> Images:
    work = base / "work"
    work.mkdir()
    for name in ("Apptainer.def", "busybox.def", "debian.def", "inspector_container.def"):
        shutil.copy(DATA / name, work / name)
    test = base / "test.sif"
    _build(cli, test, work / "Apptainer.def", cwd=work)
    busybox = base / "busybox.sif"
    _build(cli, busybox, work / "busybox.def", cwd=work)
    # The Debian-like image: built as a sandbox, given Apptainer's 99-base.sh, then made a SIF.
    deb_dir = work / "debian"
    _build(cli, deb_dir, work / "debian.def", "--sandbox", cwd=work)
    shutil.copy(DATA / "apptainer-99-base.sh", deb_dir / ".singularity.d/env/99-base.sh")
    debian = base / "debian.sif"
    _build(cli, debian, deb_dir, cwd=work)
    sandbox = base / "sandbox"
    _build(cli, sandbox, test, "--sandbox", cwd=work)
    user = pwd.getpwnam(os.environ.get("SIFBOX_TEST_USER", "sifbox-test"))
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(sandbox)], check=True)
    inspector_sif = base / "inspector.sif"
    _build(cli, inspector_sif, work / "inspector_container.def", cwd=work)
    inspector_sqfs = base / "inspector.sqfs"
    _build(cli, inspector_sqfs, inspector_sif, cwd=work)
    inspector_sandbox = base / "inspector-sandbox"
    _build(cli, inspector_sandbox, inspector_sif, "--sandbox", cwd=work)
    shutil.rmtree(work)
    for path in (test, busybox, debian, inspector_sif, inspector_sqfs):
        path.chmod(0o644)
    return Images(base, test, busybox, debian, sandbox, inspector_sif, inspector_sqfs,
                  inspector_sandbox)  # fmt: skip


def need_image_tools(what: str) -> None:
    """Skip (saying why) unless this runs as root with mksquashfs and busybox to build `what`."""
    if os.geteuid() != 0:
        pytest.skip(f"building {what} needs root")
    for tool in ("mksquashfs", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"`{tool}` is not installed (Debian packages squashfs-tools, busybox-static)"
            )


@pytest.fixture(scope="session")
def e2e_images(sifbox_cli: str) -> Iterator[Images]:
    """The images of the ported tests, built once per session as root; removed at the end."""
    need_image_tools("the e2e images")
    base = new_dir("images")
    try:
        yield build_images(sifbox_cli, base)
    finally:
        remove_dir(base)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that root and the test user can both write (0777)."""
    base = new_dir("work", 0o777)
    try:
        yield base
    finally:
        remove_dir(base)


# --- leak guard ----------------------------------------------------------------------------------
# The checks of tests/integration/images.py's LeakGuard, for this session's own resources only
# (other test sessions run on this machine at the same time): new mounts of or on its
# directories; new squashfuse, fuse2fs, fuse-overlayfs or instance processes among its
# descendants (the session is a child subreaper, so orphans stay its own; a leaked FUSE mount
# keeps its helper alive); loop devices on its files. Cheap enough to run after each of several
# hundred cases: one pass over /proc, loop devices read from /sys rather than with losetup.

OURS = (f"/tmp/{TMP_PREFIX}",)
HELPERS = ("squashfuse", "fuse2fs", "fuse-overlayfs")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _mounts() -> dict[str, str]:
    """mount id -> "MOUNTPOINT (FSTYPE from SOURCE)" of the mounts worth watching."""
    found = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mnt = fields[4].replace("\\040", " ")
        if mnt.startswith(OURS) or tail[1].startswith(OURS):
            found[fields[0]] = f"{mnt} ({tail[0]} from {tail[1]})"
    return found


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            rest = stat[stat.rfind(")") + 2 :].split()
            if len(rest) > 1 and rest[0] != "Z":
                children.setdefault(int(rest[1]), []).append(int(entry))
    return children


def _descendants() -> set[int]:
    children, found, todo = _children(), set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _suspect(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = b"\0" + f.read()
    except OSError:
        environ = b""
    if comm.startswith(HELPERS) or comm in ("sifbox-instance", "sifbox-holder") or any(o in cmdline for o in OURS) \
            or b"\0SIFBOX_INSTANCE=" in environ:  # fmt: skip
        return f"{comm}: {cmdline}"
    return None


def _loops() -> set[str]:
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        target = _read(str(backing)).strip()
        if target.startswith(OURS):
            found.add(f"{backing.parts[3]}: {target}")
    return found


class Guard:
    def __init__(self) -> None:
        self.mounts, self.procs, self.loops = _mounts(), _descendants(), _loops()

    def leaks(self) -> list[str]:
        mounts = [f"mount {m}" for k, m in _mounts().items() if k not in self.mounts]
        procs = [
            f"process {p} {what}" for p in _descendants() - self.procs if (what := _suspect(p))
        ]
        return mounts + procs + [f"loop device {ln}" for ln in sorted(_loops() - self.loops)]

    def wait_clean(self, grace: float = 2.5) -> list[str]:
        deadline = time.monotonic() + grace
        while (leaks := self.leaks()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return leaks

    def clean_up(self, leaks: list[str]) -> None:
        """Undo leaks so that one faulty test does not fail the next ones too."""
        for leak in leaks:
            kind, _, what = leak.partition(" ")
            if kind == "process":
                try:
                    os.kill(int(what.split()[0]), 9)
                except (ProcessLookupError, ValueError):
                    pass
            elif kind == "mount":
                subprocess.run(
                    ["umount", "-l", what.split(" (")[0]], check=False, capture_output=True
                )
            elif what.startswith("device "):
                dev = "/dev/" + what.split()[1].rstrip(":")
                subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


def _reap() -> None:
    """Reap the zombies this session adopted as subreaper (exited FUSE helpers and the like)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture(autouse=True)
def no_leaks(e2e_images: Images, sifbox_cli: str) -> Iterator[None]:
    """Fail a test that leaves a mount, a FUSE helper, a loop device or an instance behind."""
    yield from leak_guard(sifbox_cli)


def leak_guard(sifbox_cli: str) -> Iterator[None]:
    """The body of a leak-guard fixture: after the test, idle node mount holders stopped and
    children reaped, the test fails if a mount, FUSE helper, loop device or instance is left."""
    _become_subreaper()
    guard = Guard()
    yield
    from tests.conftest import prune_holders

    prune_holders(sifbox_cli)
    _reap()
    leaks = guard.wait_clean()
    if leaks:
        guard.clean_up(leaks)
        pytest.fail("left behind after the test:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture
def sb(as_who, sifbox_cli: str, e2e_images: Images, work_dir: Path) -> Runner:  # type: ignore[no-untyped-def]
    """The runner of one test: `sb.run(argv, env=..., cwd=..., stdin=..., umask=...)` runs
    `sifbox ARGV` as `as_who` and gives (status, stdout, stderr); `sb.subst(text)` fills the
    @...@ placeholders of a case."""
    return Runner(who=as_who, cli=sifbox_cli, images=e2e_images, work=work_dir, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def oras_image(sifbox_cli: str, e2e_images) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """e2e.PrepRegistry/EnsureORASImage: the test image pushed (`sifbox push`) to a
    docker-registry on 127.0.0.1 that the module using it starts and stops; its oras:// URI."""
    from tests.integration.registry_server import RegistryServer, need

    need("docker-registry")
    work = new_dir("oras-registry")
    try:
        with RegistryServer(work / "registry") as reg:
            uri = f"oras://{reg.host}/e2e/test_sif:latest"
            proc = subprocess.run([sifbox_cli, "push", str(e2e_images.test), uri], capture_output=True, text=True,
                                  timeout=300, check=False)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            yield uri
    finally:
        remove_dir(work)
