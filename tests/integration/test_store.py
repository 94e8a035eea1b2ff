"""The admission store with its real daemon (`sifbox store serve`, started here as root and
dropping to the store user), and clients as root and as the unprivileged test user."""

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

from tests.integration.images import make_sif, mksquashfs, popen_as

pytestmark = pytest.mark.integration

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


def _rootfs(dest: Path, dpkg_status: str) -> Path:
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
        sqfs = mksquashfs(_rootfs(base / f"{name}-root", status), base / f"{name}.sqfs")
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
    yield out
    shutil.rmtree(base, ignore_errors=True)


# --- the daemon ------------------------------------------------------------------------------


class Daemon:
    def __init__(self, cli: str, base: Path, directives: str) -> None:
        self.cli = cli
        self.base = base
        self.root = base / "store"
        self.socket = base / "run" / "store.sock"
        self.audit = base / "log" / "audit.log"
        self.conf = base / "sifbox.conf"
        self.conf.write_text(
            f"store path = {self.root}\nstore socket = {self.socket}\n"
            f"store audit log = {self.audit}\nstore user = {STORE_USER}\n{directives}"
        )
        self.conf.chmod(0o644)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.cli, "-c", str(self.conf), "store", "serve"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _, err = self.proc.communicate(timeout=5) if self.proc.poll() is not None else ("", "")
                pytest.fail(f"the store daemon did not start: {err}")
            time.sleep(0.05)
        # It runs as the store user once it listens.
        store_uid = pwd.getpwnam(STORE_USER).pw_uid
        while os.stat(f"/proc/{self.proc.pid}").st_uid != store_uid:
            assert time.monotonic() < deadline, "the daemon did not switch to the store user"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.communicate(timeout=20)
        self.proc = None

    def cli_as(self, run_as, who, *argv: str):  # type: ignore[no-untyped-def]
        return run_as(who, [self.cli, "-c", str(self.conf), "store", *argv])

    def audit_lines(self) -> list[dict]:  # type: ignore[type-arg]
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def leftovers(self) -> list[str]:
        return [str(p) for p in self.root.rglob("*.tmp")]


@pytest.fixture
def start_store(sifbox_cli: str, store_account: str) -> Iterator:  # type: ignore[type-arg]
    daemons: list[Daemon] = []
    bases: list[Path] = []

    def start(directives: str = "") -> Daemon:
        base = Path(tempfile.mkdtemp(prefix="sifbox-store-run-", dir="/tmp"))
        base.chmod(0o755)
        bases.append(base)
        d = Daemon(sifbox_cli, base, directives)
        d.start()
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        d.stop()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


# --- tests -----------------------------------------------------------------------------------


def test_cp_ls_info_rm(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "app")
    assert proc.returncode == 0, proc.stderr
    path = store.root / as_who.name / "app.sif"
    assert f"app: admitted as {path} (sha256:" in proc.stdout
    listing = json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout)
    assert [i["name"] for i in listing] == ["app"]
    info = store.cli_as(run_as, as_who, "info", "app", "--json")
    record = json.loads(info.stdout)
    steps = {c["step"]: c["result"] for c in record["checks"]}
    assert steps == {"quota": "pass", "sif": "pass", "signature": "skipped", "sbom": "appended",
                     "scan": "skipped", "external": "skipped"}  # fmt: skip
    # The SBOM object is in the stored image, and `sifbox sbom` shows it as is.
    sbom = run_as(as_who, [store.cli, "sbom", str(path)])
    assert sbom.returncode == 0, sbom.stderr
    assert "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib" in sbom.stdout.replace("%3A", ":")
    # The owner can read (and run) the image; the daemon owns it.
    assert run_as(as_who, ["head", "-c", "1", str(path)]).returncode == 0
    assert pwd.getpwuid(path.stat().st_uid).pw_name == STORE_USER
    run = run_as(as_who, [store.cli, "exec", str(path), "/bin/busybox", "echo", "ran"])
    assert run.stdout == "ran\n", run.stderr
    assert store.cli_as(run_as, as_who, "rm", "app").returncode == 0
    assert not path.exists()
    gone = store.cli_as(run_as, as_who, "rm", "app")
    assert gone.returncode == 255 and "no image `app` in your store" in gone.stderr
    verdicts = [(a["op"], a["user"], a["verdict"]) for a in store.audit_lines()]
    assert verdicts == [("cp", as_who.name, "admitted"), ("rm", as_who.name, "removed")]
    first = store.audit_lines()[0]
    assert first["uid"] == as_who.uid and first["digest"].startswith("sha256:") and first["checks"]


def test_non_sif_refused(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    for key in ("text", "clean-sqfs"):
        proc = store.cli_as(run_as, as_who, "cp", str(images[key]), "x")
        assert proc.returncode == 255, proc.stderr
        assert "sifbox: error: can't admit" in proc.stderr and "not a SIF" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not list((store.root / as_who.name).glob("*"))
    assert [a["verdict"] for a in store.audit_lines()] == ["refused", "refused"]


def test_vulnerable_image_refused_above_threshold(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store(f"store vulnerability db = {images['db']}\nstore severity threshold = high\n")
    proc = store.cli_as(run_as, as_who, "cp", str(images["vulnerable"]), "vuln")
    assert proc.returncode == 255
    assert "1 known vulnerability at or above `high`: DSA-9001-1 (openssl 3.0.11-1~deb12u2, high)" in proc.stderr
    assert not (store.root / as_who.name / "vuln.sif").exists()
    # A low-severity finding does not cross the threshold: admitted, and recorded.
    ok = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "ok")
    assert ok.returncode == 0, ok.stderr
    info = json.loads(store.cli_as(run_as, as_who, "info", "ok", "--json").stdout)
    assert [f["id"] for f in info["findings"]] == ["DEBIAN-CVE-2023-0001"]
    refused, admitted = store.audit_lines()
    assert refused["verdict"] == "refused" and "DSA-9001-1" in refused["reason"]
    assert admitted["verdict"] == "admitted"


@pytest.mark.slow
def test_21st_image_refused(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store sbom = no\n")
    for i in range(20):
        proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), f"img{i}")
        assert proc.returncode == 0, (i, proc.stderr)
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "img20")
    assert proc.returncode == 255
    assert "quota exceeded: 20 images stored, at most 20 per user" in proc.stderr
    # Replacing an image is not a new one; removing one frees a place.
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "img3").returncode == 0
    assert store.cli_as(run_as, as_who, "rm", "img0").returncode == 0
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "img20").returncode == 0
    assert len(json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout)) == 20


def test_one_user_cannot_read_or_remove_anothers_image(run_as, test_user, other_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "mine").returncode == 0
    path = store.root / test_user.name / "mine.sif"
    read = run_as(other_user, ["cat", str(path)])
    assert read.returncode != 0 and "Permission denied" in read.stderr
    listing = run_as(other_user, ["ls", str(store.root)])
    assert listing.returncode != 0  # the store root cannot be listed
    rm = store.cli_as(run_as, other_user, "rm", "mine")
    assert rm.returncode == 255 and "no image `mine` in your store" in rm.stderr
    assert json.loads(store.cli_as(run_as, other_user, "ls", "--json").stdout) == []
    info = store.cli_as(run_as, other_user, "info", "mine")
    assert info.returncode == 255
    run = run_as(other_user, [store.cli, "exec", str(path), "/bin/true"])
    assert run.returncode != 0
    assert path.exists() and run_as(test_user, ["head", "-c", "1", str(path)]).returncode == 0


def test_restart_loses_nothing(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "keep").returncode == 0
    before = json.loads(store.cli_as(run_as, as_who, "info", "keep", "--json").stdout)
    store.stop()
    down = store.cli_as(run_as, as_who, "ls")
    assert down.returncode == 255 and "the image store is not running" in down.stderr
    assert "hint: start it: `systemctl start sifbox-store`" in down.stderr
    store.start()
    after = json.loads(store.cli_as(run_as, as_who, "info", "keep", "--json").stdout)
    assert after == before
    # Even after SIGKILL.
    store.stop(signal.SIGKILL)
    store.start()
    assert json.loads(store.cli_as(run_as, as_who, "info", "keep", "--json").stdout) == before


def test_killed_cp_leaves_nothing(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store scanner command = /bin/sh -c 'sleep 2' scanner\n")
    client = popen_as(as_who, [store.cli, "-c", str(store.conf), "store", "cp", str(images["clean"]), "half"])
    deadline = time.monotonic() + 20
    while not any("sleep" in _cmdline(p) for p in _children_of(store.proc.pid)):
        assert time.monotonic() < deadline, "the external scanner never started"
        time.sleep(0.02)
    assert store.leftovers(), "the candidate should be in a temporary file now"
    client.kill()
    client.communicate()
    deadline = time.monotonic() + 20
    while not store.audit_lines():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (line,) = store.audit_lines()
    assert line["verdict"] == "refused" and "client disconnected" in line["reason"]
    assert not (store.root / as_who.name / "half.sif").exists()
    assert store.leftovers() == []
    # A daemon killed in the middle leaves a temporary file, removed when it starts again.
    client = popen_as(as_who, [store.cli, "-c", str(store.conf), "store", "cp", str(images["clean"]), "half"])
    while not any("sleep" in _cmdline(p) for p in _children_of(store.proc.pid)):
        time.sleep(0.02)
    for p in _children_of(store.proc.pid):
        os.kill(p, signal.SIGKILL)
    store.stop(signal.SIGKILL)
    _, err = client.communicate(timeout=20)
    assert client.returncode == 255 and "can't admit" in err
    assert store.leftovers()
    store.start()
    assert store.leftovers() == []
    assert json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout) == []


def test_signature_required(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store require signature = yes\n")
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "unsigned")
    assert proc.returncode == 255
    try:
        import sifbox.security.verify  # noqa: F401
    except ImportError:
        assert "a signature is required but signature checking is not available" in proc.stderr
    else:
        assert "signature" in proc.stderr
    assert not (store.root / as_who.name / "unsigned.sif").exists()


def test_bad_names_and_missing_files(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    for name in ("../escape", ".hidden", "a/b", "x" * 101):
        proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), name)
        assert proc.returncode == 255 and "is not a valid image name" in proc.stderr, name
    proc = store.cli_as(run_as, as_who, "cp", "/nonexistent.sif")
    assert proc.returncode == 255 and "no such file" in proc.stderr.lower()
    assert store.leftovers() == [] and not (store.root / "escape.sif").exists()


def _children_of(pid: int) -> list[int]:
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


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def test_root_looks_after_every_users_images(run_as, test_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store max total size = 3\n")
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "a").returncode == 0
    listing = json.loads(store.cli_as(run_as, "root", "ls", "--json", "--user", test_user.name).stdout)
    assert [i["name"] for i in listing] == ["a"]
    denied = store.cli_as(run_as, test_user, "ls", "--user", "root")
    assert denied.returncode == 255 and "only root may act on another user's images" in denied.stderr
    # The per-user size quota (3 MiB; each image is about 1 MiB).
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "b").returncode == 0
    full = store.cli_as(run_as, test_user, "cp", str(images["clean"]), "c")
    assert full.returncode == 255 and "quota exceeded:" in full.stderr and "at most 3 MiB per user" in full.stderr
    assert store.cli_as(run_as, "root", "rm", "a", "--user", test_user.name).returncode == 0
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "c").returncode == 0
    rm = [a for a in store.audit_lines() if a["op"] == "rm"]
    assert rm == [dict(rm[0], user=test_user.name, by="root", verdict="removed")]


def test_bad_requests_and_special_files(run_as, as_who, start_store, images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    import socket

    store = start_store()
    # Garbage, and a client that says nothing and leaves: answered or dropped, daemon lives on.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(store.socket))
    s.sendall(b"\xff not json")
    assert json.loads(s.recv(4096))["error"] == "malformed request"
    s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(store.socket))
    s.sendall(json.dumps({"op": "cp", "name": "nofd"}).encode())
    assert json.loads(s.recv(4096))["error"] == "no image descriptor received"
    s.close()
    socket.socket(socket.AF_UNIX).connect(str(store.socket))
    # A FIFO or a directory is not an image.
    fifo = shared_tmp / "fifo"
    os.mkfifo(fifo, 0o666)
    for path in (fifo, shared_tmp):
        proc = store.cli_as(run_as, as_who, "cp", str(path), "special")
        assert proc.returncode == 255 and "not a regular file" in proc.stderr, proc.stderr
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "fine").returncode == 0
