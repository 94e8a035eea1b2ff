"""--netns-path: root's container joins an existing network namespace (a named one, as `ip netns
add` makes, and a process's /proc/PID/ns/net), an instance too; hostile paths and users get one
clear error and leave nothing behind.

The namespace is the module's own, kept by a bind mount on a file of its directory (unshare
--net=FILE, as `ip netns add` keeps /run/netns/NAME, without touching the host's /run/netns),
with a veth pair inside; it is unmounted afterwards. Nothing of the host's network changes.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sifbox.config.sysconf import render_default
from tests.conftest import _user
from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

ROOT = _user("root")


class Lab:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.ns = base / "lab"  # the named namespace
        self.conf = base / "sifbox.conf"  # lists the test user and the namespace
        self.inode = 0


@pytest.fixture(scope="module")
def lab(test_user) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("making a network namespace needs root")
    lab = Lab(Path(tempfile.mkdtemp(prefix="sifbox-netns-", dir="/tmp")))
    lab.base.chmod(0o755)
    lab.ns.touch()
    try:
        subprocess.run(["unshare", f"--net={lab.ns}", "ip", "link", "add", "sbxlab0", "type", "veth", "peer",
                        "name", "sbxlab1"], check=True)  # fmt: skip
        lab.inode = os.stat(lab.ns).st_ino
        lab.conf.write_text(render_default() + f"allow net users = {test_user.name}\nallow netns paths = {lab.ns}\n")
        yield lab
    finally:
        subprocess.run(["umount", str(lab.ns)], check=False)
        subprocess.run(["rm", "-rf", str(lab.base)], check=False)


@pytest.fixture
def sb(run_as, sifbox_cli, lab: Lab):  # type: ignore[no-untyped-def]
    def launch(who, *args: str):  # type: ignore[no-untyped-def]
        return run_as(who, [sifbox_cli, *args], env=env_for(who, SIFBOX_CONFIG_FILE=str(lab.conf)), cwd="/",
                      timeout=LAUNCH_TIMEOUT)  # fmt: skip

    return launch


PROBE = "ls /sys/class/net | xargs; readlink /proc/self/ns/net"


def test_root_joins_a_named_namespace(sb, lab: Lab, action_images: ActionImages, no_leaks) -> None:
    proc = sb(ROOT, "exec", "--netns-path", str(lab.ns), str(action_images.sif), "sh", "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"lo sbxlab0 sbxlab1\nnet:[{lab.inode}]\n"
    # in a user namespace of its own (-u), joined before that namespace is made; /proc/net is the
    # namespace's (its /sys stays the host's: sysfs is not the new user namespace's to mount)
    proc = sb(ROOT, "exec", "-u", "--netns-path", str(lab.ns), str(action_images.sif), "sh", "-c",
              "tail -n +3 /proc/net/dev | cut -d: -f1 | sort | xargs; readlink /proc/self/ns/net")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, f"lo sbxlab0 sbxlab1\nnet:[{lab.inode}]\n"), proc.stderr


def test_root_joins_a_process_namespace_and_an_instance_keeps_it(sb, lab: Lab, action_images: ActionImages,
                                                                 no_leaks) -> None:  # fmt: skip
    holder = subprocess.Popen(["nsenter", f"--net={lab.ns}", "sleep", "60"])
    name = f"netns{os.getpid()}"
    try:
        started = sb(ROOT, "instance", "start", "--netns-path", f"/proc/{holder.pid}/ns/net",
                     str(action_images.sif), name)  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:
            proc = sb(ROOT, "exec", f"instance://{name}", "sh", "-c", PROBE)
        finally:
            stopped = sb(ROOT, "instance", "stop", name)
    finally:
        holder.kill()
        holder.wait()
    assert stopped.returncode == 0, stopped.stderr
    assert (proc.returncode, proc.stdout) == (0, f"lo sbxlab0 sbxlab1\nnet:[{lab.inode}]\n"), proc.stderr


def _one_error(stderr: str, text: str) -> None:
    lines = stderr.splitlines()
    assert lines and lines[0].startswith("sifbox: error: ") and text in lines[0], stderr
    assert all(ln.startswith("hint: ") for ln in lines[1:]) and "Traceback" not in stderr, stderr


@pytest.mark.parametrize("kind", ["file", "mnt", "symlink-to-mnt", "fifo", "missing", "directory"])
def test_hostile_paths(sb, lab: Lab, action_images: ActionImages, kind: str, no_leaks) -> None:
    path = lab.base / f"hostile-{kind}"
    if kind == "file":
        path.write_text("net:[4026531840]\n")
    elif kind == "mnt":
        path = Path("/proc/self/ns/mnt")  # sifbox's own mount namespace
    elif kind == "symlink-to-mnt":
        path.symlink_to("/proc/self/ns/mnt")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it to read would hang the launch
    elif kind == "directory":
        path = lab.base
    try:
        proc = sb(ROOT, "exec", "--netns-path", str(path), str(action_images.sif), "true")
    finally:
        if kind not in ("mnt", "directory", "missing"):
            path.unlink()
    assert proc.returncode == 126, proc.stderr
    want = "no such file or directory" if kind == "missing" else "not a network namespace"
    _one_error(proc.stderr, f"can't join the network namespace `{path}`: {want}")


@pytest.mark.parametrize("extra", [("--network", "bridge"), ("--network-args", "IP=10.1.2.3"), ("--fakeroot",)])
def test_with_what_it_excludes(sb, lab: Lab, action_images: ActionImages, extra: tuple[str, ...]) -> None:
    proc = sb(ROOT, "exec", "--net", *extra, "--netns-path", str(lab.ns), str(action_images.sif), "true")
    assert proc.returncode == 125
    _one_error(proc.stderr, f"can't use --netns-path `{lab.ns}` with")


def test_users(sb, run_as, sifbox_cli, lab: Lab, test_user, action_images: ActionImages,
               no_leaks) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    # listed in `allow net users` and `allow netns paths`: sifbox has no setuid helper to join it
    proc = sb(test_user, "exec", "--netns-path", str(lab.ns), str(action_images.sif), "true")
    assert proc.returncode == 125
    _one_error(proc.stderr, "joining a network namespace needs root, and sifbox has no setuid helper")
    link = lab.base / "link-to-lab"  # a symlink to the listed path is the listed path
    link.symlink_to(lab.ns)
    try:
        proc = sb(test_user, "exec", "--netns-path", str(link), str(action_images.sif), "true")
    finally:
        link.unlink()
    assert proc.returncode == 125
    _one_error(proc.stderr, "joining a network namespace needs root, and sifbox has no setuid helper")
    # not listed: Apptainer's refusal
    for path in ("/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net", str(lab.base)):
        proc = sb(test_user, "exec", "--netns-path", path, str(action_images.sif), "true")
        assert proc.returncode == 125
        _one_error(proc.stderr, "joining this network namespace is not permitted for unprivileged users")
    # APPTAINER_NETNS_PATH (and SIFBOX_NETNS_PATH), as the flag
    env = env_for(test_user, SIFBOX_CONFIG_FILE=str(lab.conf), APPTAINER_NETNS_PATH="/proc/self/ns/net")
    proc = run_as(test_user, [sifbox_cli, "exec", str(action_images.sif), "true"], env=env, cwd="/",
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 125 and "not permitted for unprivileged users" in proc.stderr, proc.stderr
