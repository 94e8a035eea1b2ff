"""containerd drives sifbox: Debian's containerd, started here on a private socket and root,
runs an image imported from an OCI tarball with its runc shim (io.containerd.runc.v2) whose
runc binary (BinaryName; `ctr --runc-binary`) is `sifbox-runc`, runc's command line of sifbox.
Output, exit statuses, exec and kill are checked, and nothing is left afterwards.

containerd runs as root (rootless containerd needs rootlesskit, which Debian does not package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import oci_bundle

CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")
IMAGE = "docker.io/library/sifbox-busybox:1"
NS = "sifbox-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd runs as root")


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "c.sock"
        self.runc_root = base / "runc"
        self.shim = base / "sifbox-runc"
        self.proc: subprocess.Popen[bytes] | None = None

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-a", str(self.sock), "-n", NS, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    def run(self, *args: str, detach: bool = False) -> subprocess.CompletedProcess[str]:
        return self.ctr("run", *(["-d"] if detach else ["--rm"]), "--runc-binary", str(self.shim),
                        "--runc-root", str(self.runc_root), "--fifo-dir", str(self.base / "fifo"), *args)  # fmt: skip


@pytest.fixture
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian package `containerd`)")
    base = Path(tmp_path_factory.mktemp("containerd"))
    c = Containerd(base)
    # sifbox-runc, as scripts/install.sh installs it (`sifbox oci ARGS`), for this tree's CLI.
    c.shim.write_text(f'#!/bin/sh\nexec {CLI} oci "$@"\n')
    c.shim.chmod(0o755)
    disabled = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]  # fmt: skip
    (base / "config.toml").write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\ndisabled_plugins = {disabled!r}\n'
        f'[grpc]\n  address = "{c.sock}"\n[ttrpc]\n  address = "{c.sock}.ttrpc"\n'
    )
    shims_before = set(os.listdir("/run/containerd/s")) if os.path.isdir("/run/containerd/s") else set()
    with open(base / "containerd.log", "wb") as log:
        c.proc = subprocess.Popen(["containerd", "-c", str(base / "config.toml")], stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while c.ctr("version", timeout=10).returncode != 0:
            if time.monotonic() > deadline or c.proc.poll() is not None:
                pytest.fail("containerd did not start: " + (base / "containerd.log").read_text()[-2000:])
            time.sleep(0.2)
        image = oci_bundle.oci_image_tar(base / "busybox-oci.tar", IMAGE, ["sh"])
        r = c.ctr("images", "import", str(image))
        assert r.returncode == 0, r.stderr
        yield c
        r = c.ctr("images", "rm", IMAGE)
        assert r.returncode == 0, r.stderr
    finally:
        c.proc.terminate()
        try:
            c.proc.wait(30)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if f" {base}/" in line]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
    left = sorted(os.listdir(c.runc_root / NS)) if (c.runc_root / NS).is_dir() else []
    assert left == [], f"sifbox state left behind: {left}"
    shims = (set(os.listdir("/run/containerd/s")) if os.path.isdir("/run/containerd/s") else set()) - shims_before
    assert not shims, f"shim sockets left behind: {shims}"
    assert mounts == [], f"mounts left behind: {mounts}"


def _processes_of(c: Containerd) -> list[str]:
    """Processes (but containerd itself) whose command line names the test's directory."""
    base = c.base
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and c.proc is not None and int(entry) != c.proc.pid:
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(base).encode() in cmd:
                found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_ctr_run(containerd: Containerd) -> None:
    """`ctr run --rm`: the process's output and exit status come back; the shim called sifbox-runc."""
    r = containerd.run(IMAGE, "run1", "sh", "-c", "echo hello from sifbox; id -u; ps -o pid,comm; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.split()[:8] == ["hello", "from", "sifbox", "0", "PID", "COMMAND", "1", "sh"]  # PID 1
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []


def test_ctr_detached_exec_kill(containerd: Containerd) -> None:
    """`ctr run -d`, `ctr task exec` (runc exec --detach --pid-file), `ctr task ps`, `ctr task
    pause|resume`, `ctr task kill`:
    the task's status is SIGKILL's, and once deleted nothing of it is left."""
    assert containerd.run(IMAGE, "bg1", "sleep", "100", detach=True).returncode == 0
    tasks = containerd.ctr("task", "ls").stdout
    assert "bg1" in tasks and "RUNNING" in tasks
    r = containerd.ctr("task", "exec", "--exec-id", "e1", "bg1", "sh", "-c", "ps -o comm | grep -c sleep; exit 4")
    assert (r.returncode, r.stdout.split()) == (4, ["1"]), r.stderr
    assert len(containerd.ctr("task", "ps", "bg1").stdout.splitlines()) == 2  # header, the sleep
    assert containerd.ctr("task", "pause", "bg1").returncode == 0
    assert "PAUSED" in containerd.ctr("task", "ls").stdout
    assert containerd.ctr("task", "resume", "bg1").returncode == 0
    assert "RUNNING" in containerd.ctr("task", "ls").stdout
    assert containerd.ctr("task", "kill", "-s", "SIGKILL", "bg1").returncode == 0
    deadline = time.monotonic() + 20
    while "STOPPED" not in containerd.ctr("task", "ls").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "STOPPED" in containerd.ctr("task", "ls").stdout
    assert containerd.ctr("task", "rm", "bg1").returncode == 0
    assert containerd.ctr("containers", "rm", "bg1").returncode == 0
    deadline = time.monotonic() + 10
    while _processes_of(containerd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_of(containerd) == []


def test_ctr_run_missing_program(containerd: Containerd) -> None:
    """A program the image lacks: create fails, and containerd shows sifbox's error from --log."""
    r = containerd.run(IMAGE, "bad1", "/bin/nonexistent")
    assert r.returncode != 0
    assert "nonexistent" in r.stderr
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []
