"""The admission store's real daemon for tests: started here as root (it drops to the store
user), its configuration, its audit log, and a few images. Test modules import the fixtures::

    from tests.integration.store_daemon import images, other_user, start_store, store_account  # noqa: F401
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.images import make_sif, mksquashfs

STORE_USER = "sifbox-store"
OTHER_USER = "sifbox-test2"

DPKG_CLEAN = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n"
DPKG_VULNERABLE = (
    DPKG_CLEAN + "\nPackage: libssl3\nStatus: install ok installed\nArchitecture: amd64\n"
    "Source: openssl\nVersion: 3.0.11-1~deb12u2\n"
)
OSV = [
    {"id": "DSA-9001-1", "summary": "openssl security update",
     "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.15-1~deb12u1"}]}]}],
     "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}]},
    {"id": "DEBIAN-CVE-2023-0001", "summary": "zlib minor issue",
     "affected": [{"package": {"ecosystem": "Debian:12", "name": "zlib"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-2"}]}]}],
     "database_specific": {"severity": "low"}},
]  # fmt: skip


# --- users -----------------------------------------------------------------------------------


def _ensure_user(name: str, system: bool) -> bool:
    """Create `name` if missing; True if this call created it."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    argv = ["useradd", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    if system:
        argv.append("--system")
    subprocess.run([*argv, name], check=True, capture_output=True)
    return True


@pytest.fixture(scope="module")
def store_account() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("starting the store daemon needs root")
    created = _ensure_user(STORE_USER, system=True)
    yield STORE_USER
    if created:
        subprocess.run(["userdel", STORE_USER], check=False, capture_output=True)


@pytest.fixture
def other_user() -> Iterator[object]:
    from tests.integration.images import user_named

    created = _ensure_user(OTHER_USER, system=False)
    yield user_named(OTHER_USER)
    if created:
        subprocess.run(["userdel", OTHER_USER], check=False, capture_output=True)


# --- images ----------------------------------------------------------------------------------


def rootfs(dest: Path, dpkg_status: str) -> Path:
    (dest / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", dest / "bin/busybox")
    (dest / "bin/sh").symlink_to("busybox")
    (dest / "etc").mkdir()
    (dest / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (dest / "var/lib/dpkg").mkdir(parents=True)
    (dest / "var/lib/dpkg/status").write_text(dpkg_status)
    return dest


@pytest.fixture(scope="module")
def images(sifbox_cli: str, store_account: str) -> Iterator[dict[str, Path]]:
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs is not installed (Debian package squashfs-tools)")
    base = Path(tempfile.mkdtemp(prefix="sifbox-store-images-", dir="/tmp"))
    base.chmod(0o755)
    out = {}
    for name, status in (("clean", DPKG_CLEAN), ("vulnerable", DPKG_VULNERABLE)):
        sqfs = mksquashfs(rootfs(base / f"{name}-root", status), base / f"{name}.sqfs")
        out[name] = make_sif(sifbox_cli, sqfs, base / f"{name}.sif")
        out[f"{name}-sqfs"] = sqfs
    text = base / "notes.sif"
    text.write_text("not an image\n" * 100)
    text.chmod(0o644)
    out["text"] = text
    db = base / "osv" / "Debian"
    db.mkdir(parents=True)
    for entry in OSV:
        (db / f"{entry['id']}.json").write_text(json.dumps(entry))
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    out["db"] = base / "osv"
    out["base"] = base
    yield out
    shutil.rmtree(base, ignore_errors=True)


# --- the daemon ------------------------------------------------------------------------------


class Daemon:
    def __init__(self, cli: str, base: Path, directives: str, **paths: Path) -> None:
        self.cli = cli
        self.base = base
        self.root = paths.get("root", base / "store")
        self.socket = paths.get("socket", base / "run" / "store.sock")
        self.audit = paths.get("audit", base / "log" / "audit.log")
        self.conf = base / "sifbox.conf"
        self.directives = directives
        self.user = STORE_USER
        self.write_conf()
        self.proc: subprocess.Popen[str] | None = None
        #: the daemon's standard error (a file: a pipe nobody reads would block it)
        self.errfile = base / "daemon.err"

    def write_conf(self) -> None:
        self.conf.write_text(
            f"store path = {self.root}\nstore socket = {self.socket}\n"
            f"store audit log = {self.audit}\nstore user = {self.user}\n{self.directives}"
        )
        self.conf.chmod(0o644)

    @property
    def stderr(self) -> str:
        return self.errfile.read_text() if self.errfile.exists() else ""

    def spawn(self, nofile: int | None = None) -> subprocess.Popen[str]:
        def limit() -> None:
            import resource

            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.errfile, "w") as err:
            self.proc = subprocess.Popen(
                [self.cli, "-c", str(self.conf), "store", "serve"], preexec_fn=limit,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True,
            )  # fmt: skip
        return self.proc

    def start(self, nofile: int | None = None) -> None:
        """Start the daemon and wait until it serves as the store user (fail the test if not)."""
        proc = self.spawn(nofile)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the store daemon did not start: {self.stderr}")
            time.sleep(0.05)
        # It runs as the store user once it listens.
        store_uid = pwd.getpwnam(STORE_USER).pw_uid
        while os.stat(f"/proc/{proc.pid}").st_uid != store_uid:
            assert time.monotonic() < deadline, "the daemon did not switch to the store user"
            time.sleep(0.02)

    def refused_start(self) -> str:
        """Start the daemon expecting it to refuse: its standard error (fail if it serves)."""
        proc = self.spawn()
        deadline = time.monotonic() + 20
        while proc.poll() is None:
            if "sifbox store: serving" in self.stderr or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the store daemon started where it must refuse to: {self.stderr}")
            time.sleep(0.02)
        self.proc = None
        assert proc.returncode != 0, self.stderr
        return self.stderr

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli_as(self, run_as, who, *argv: str):  # type: ignore[no-untyped-def]
        return run_as(who, [self.cli, "-c", str(self.conf), "store", *argv])

    def audit_lines(self) -> list[dict]:  # type: ignore[type-arg]
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def leftovers(self) -> list[str]:
        return [str(p) for p in self.root.rglob("*.tmp")]

    def written(self) -> int:
        """Bytes the daemon (and its children that ended) wrote so far (`wchar`)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
        return int(fields["wchar"])

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@pytest.fixture
def start_store(sifbox_cli: str, store_account: str) -> Iterator:  # type: ignore[type-arg]
    """`start_store(directives="", nofile=None, start=True, **paths) -> Daemon`: a daemon in a
    fresh directory under /tmp (`paths` may place its store, socket or audit log elsewhere)."""
    daemons: list[Daemon] = []
    bases: list[Path] = []

    def start(directives: str = "", nofile: int | None = None, start: bool = True,
              base: Path | None = None, **paths: Path) -> Daemon:  # fmt: skip
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="sifbox-store-run-", dir="/tmp"))
            base.chmod(0o755)
            bases.append(base)
        d = Daemon(sifbox_cli, base, directives, **paths)
        daemons.append(d)
        if start:
            d.start(nofile)
        return d

    yield start
    for d in daemons:
        d.stop()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def wait_for(predicate, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
