"""`sifbox doctor` catches a /dev/fuse that users can't open (mode 0600 without udev)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fuse_0600():  # type: ignore[no-untyped-def]
    if not os.path.exists("/dev/fuse") or os.getuid() != 0:
        pytest.skip("needs root and /dev/fuse")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o600)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def test_doctor_passes_here(run_as, as_who, sifbox_cli) -> None:
    proc = run_as(as_who, [sifbox_cli, "doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    assert checks["fuse"]["status"] == "ok"
    assert checks["tool:squashfuse_ll"]["status"] == "ok"
    assert proc.returncode == 0, proc.stdout


def test_doctor_catches_dev_fuse_0600(run_as, as_who, sifbox_cli, fuse_0600) -> None:
    proc = run_as(as_who, [sifbox_cli, "doctor"])
    assert proc.returncode == 1
    line = next(ln for ln in proc.stdout.splitlines() if "/dev/fuse" in ln)
    assert line.strip().startswith("FAIL") and "0600" in line
    assert "chmod 0666 /dev/fuse" in proc.stdout


# --- which path an image's mount takes (sifbox.runtime.mountpath), said by doctor and at -v ----------

action_images = images.action_images


def _multithreaded() -> bool | None:
    import shutil

    from sifbox.image import squashfuse

    path = shutil.which("squashfuse_ll")
    return squashfuse.probe(path).multithreaded if path else None


def test_doctor_says_how_an_image_is_mounted(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    proc = run_as(as_who, [sifbox_cli, "doctor", "--json", str(action_images.sif)], env=env_for(as_who),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    image = checks["image"]["detail"]
    assert f"`{action_images.sif}` (SIF)" in image
    assert "one mount per node that containers join (node holder)" in image
    mounts = checks["mounts"]["detail"]
    assert "with --no-share:" in mounts and "per container (--no-share" in mounts
    threads = _multithreaded()
    if as_who.is_root:
        assert "kernel squashfs" in image and "threaded" not in image
    else:
        assert "squashfuse_ll, " + ("multithreaded" if threads else "single-threaded") in image
    fuse = checks["squashfuse"]["detail"]
    assert ("multithreaded" if threads else "single-threaded") in fuse, fuse
    sandbox = run_as(as_who, [sifbox_cli, "doctor", str(action_images.sandbox)], env=env_for(as_who),
                     timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert "(directory): directory (a sandbox directory is bound, not mounted)" in sandbox.stdout
    missing = run_as(as_who, [sifbox_cli, "doctor", "/nonexistent/x.sif"], env=env_for(as_who))
    assert missing.returncode == 1 and "FAIL  can't" in missing.stdout


@pytest.mark.parametrize("setting", ["auto", "no", "yes"])
def test_squashfuse_threads_setting_reaches_the_server(run_as, test_user, sifbox_cli, shared_tmp,
                                                      action_images: ActionImages, setting: str) -> None:  # fmt: skip
    """A user's per-container squashfuse_ll: `-s` unless multithreaded is chosen; the
    choice and its reason at -v, and in doctor's line."""
    conf = shared_tmp / "sifbox.conf"
    conf.write_text(f"squashfuse threads = {setting}\n")
    conf.chmod(0o644)
    # The container sees the host's processes (no PID namespace): the squashfuse_ll whose
    # parent is one of this shell's ancestors is its own.
    script = ("a=; p=$$; while [ $p -gt 1 ]; do a=\"$a $p \"; p=$(cut -d' ' -f4 /proc/$p/stat); done; "
              "for p in /proc/[0-9]*; do grep -qx squashfuse_ll $p/comm 2>/dev/null || continue; "
              "case \"$a\" in *\" $(cut -d' ' -f4 $p/stat) \"*) tr '\\0' ' ' < $p/cmdline; echo;; esac; done")
    argv = [sifbox_cli, "-c", str(conf), "-v", "exec", "--no-share", str(action_images.sif), "sh", "-c", script]
    proc = run_as(test_user, argv, env=env_for(test_user), timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    capable = _multithreaded()
    threads = setting == "yes" and capable is not False
    line = next(ln for ln in proc.stderr.splitlines() if "squashfuse_ll " in ln and "threaded:" in ln)
    assert ("multithreaded" if threads else "single-threaded") in line, line
    if setting == "no":
        assert "`squashfuse threads = no` in sifbox.conf" in line
    elif capable is False:
        assert "has no multithreaded server" in line
    ours = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(ours) == 1 and "offset=" in ours[0], proc.stdout
    assert all((" -s " in f" {ln} ") is not threads for ln in ours), ours
    doctor = run_as(test_user, [sifbox_cli, "-c", str(conf), "doctor", str(action_images.sif)], env=env_for(test_user))
    image = next(ln for ln in doctor.stdout.splitlines() if "image `" in ln)
    # doctor speaks of the default (a node holder): multithreaded with auto or yes where the binary has it.
    assert ("multithreaded" if setting != "no" and capable else "single-threaded") in image, image


def test_a_node_holders_server_gets_the_threads_when_it_has_them(run_as, as_who, sifbox_cli,
                                                                 action_images: ActionImages) -> None:  # fmt: skip
    """`squashfuse threads = auto`: a holder's squashfuse_ll runs multithreaded (no `-s`)
    where the binary has the server, on one thread (`-s`) where it has not."""
    import re

    if as_who.is_root:
        pytest.skip("root's holder mounts the kernel's SquashFS: no squashfuse_ll")
    proc = run_as(as_who, [sifbox_cli, "-v", "exec", str(action_images.sif), "true"], env=env_for(as_who),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"node mount holder \(pid (\d+)\)", proc.stderr)
    assert found, proc.stderr
    holder = int(found.group(1))
    servers = []
    for entry in os.listdir("/proc"):
        try:
            proc_dir = Path("/proc", entry)
            if entry.isdigit() and (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(holder):
                servers.append((proc_dir / "cmdline").read_bytes().split(b"\0"))
        except (OSError, IndexError):
            continue
    assert len(servers) == 1 and servers[0][0].endswith(b"squashfuse_ll"), servers
    assert (b"-s" in servers[0]) is (_multithreaded() is not True), servers
