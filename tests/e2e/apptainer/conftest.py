"""Fixtures of the ported Apptainer e2e tests (see cases.py for how a case is written).

The images, built once per session as root with `sifbox build` from the definition files in
data/, in one directory every user can read (/tmp/sifbox-images-e2e-*, which the leak guard of
tests/integration/images.py recognises as ours):

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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import Result, Runner
from tests.integration.images import (
    IMAGES_PREFIX,
    LeakGuard,
    _become_subreaper,
    _reap_orphans,
    env_for,
)

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

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.test, self.busybox, self.debian, self.inspector_sif, self.inspector_sqfs)


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


@pytest.fixture(scope="session")
def e2e_images(sifbox_cli: str) -> Iterator[Images]:
    """The images of the ported tests, built once per session as root; removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("building the e2e images needs root")
    for tool in ("mksquashfs", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"`{tool}` is not installed (Debian packages squashfs-tools, busybox-static)"
            )
    base = Path(tempfile.mkdtemp(prefix=f"{IMAGES_PREFIX}e2e-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield build_images(sifbox_cli, base)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that root and the test user can both write (0777)."""
    base = Path(tempfile.mkdtemp(prefix="sifbox-test-e2e-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture(autouse=True)
def no_leaks(e2e_images: Images) -> Iterator[None]:
    """Fail a test that leaves a mount, a FUSE helper, a loop device or an instance behind."""
    _become_subreaper()
    guard = LeakGuard(e2e_images.files)
    yield
    _reap_orphans()
    leaks = guard.wait_clean()
    if leaks:
        guard.clean_up()
        pytest.fail("left behind after the test:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture
def sb(as_who, sifbox_cli: str, e2e_images: Images, work_dir: Path) -> Runner:  # type: ignore[no-untyped-def]
    """The runner of one test: `sb.run(argv, env=..., cwd=..., stdin=..., umask=...)` runs
    `sifbox ARGV` as `as_who` and gives (status, stdout, stderr); `sb.subst(text)` fills the
    @...@ placeholders of a case."""
    return Runner(who=as_who, cli=sifbox_cli, images=e2e_images, work=work_dir, timeout=TIMEOUT)


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


__all__ = ["Images", "Result", "Runner", "env_for", "wait_for"]
