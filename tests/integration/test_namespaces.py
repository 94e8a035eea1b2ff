"""--pid, --ipc, --uts/--hostname, --net and -C/--containall, as root and as the test user."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for, popen_as

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


@pytest.fixture
def sb(run_as, as_who, sifbox_cli, action_images: ActionImages):  # type: ignore[no-untyped-def]
    def launch(*args: str):  # type: ignore[no-untyped-def]
        return run_as(as_who, [sifbox_cli, *args], env=env_for(as_who), cwd=str(action_images.root),
                      timeout=LAUNCH_TIMEOUT)  # fmt: skip

    return launch


def test_pid_namespace(sb, action_images: ActionImages) -> None:
    proc = sb("exec", "--pid", str(action_images.sif), "sh", "-c",
              'echo "me=$$"; ls /proc | grep -c "^[0-9]*$"')  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    me, count = proc.stdout.split()
    # PID 1 is sifbox's init; the payload (and squashfuse for a user) come next.
    assert me in ("me=2", "me=3")
    assert int(count) < 10


def test_hostname_and_uts(sb, action_images: ActionImages) -> None:
    proc = sb("exec", "--hostname", "box42", str(action_images.sif), "hostname")
    assert (proc.returncode, proc.stdout.strip()) == (0, "box42"), proc.stderr
    assert os.uname().nodename != "box42"


def test_network_none_has_only_loopback(sb, action_images: ActionImages) -> None:
    proc = sb("exec", "--net", "--network", "none", str(action_images.sif), "sh", "-c",
              "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")  # fmt: skip
    assert (proc.returncode, proc.stdout.split()) == (0, ["lo"]), proc.stderr


def test_ipc_namespace(sb, as_who, action_images: ActionImages) -> None:
    inside = sb("exec", "--ipc", str(action_images.sif), "readlink", "/proc/self/ns/ipc")
    default = sb("exec", str(action_images.sif), "readlink", "/proc/self/ns/ipc")
    assert inside.returncode == default.returncode == 0
    assert inside.stdout.strip() != os.readlink("/proc/self/ns/ipc")
    # A user's container shares the host's IPC namespace, as Apptainer's; a contained
    # root container has its own (sifbox's divergence: no host segment within its reach).
    assert (default.stdout.strip() == os.readlink("/proc/self/ns/ipc")) == (not as_who.is_root)


def test_containall_forwards_signals_to_the_payload(as_who, sifbox_cli, action_images: ActionImages) -> None:
    script = 'trap "echo got TERM; exit 9" TERM; echo ready; while :; do sleep 0.1; done'
    p = popen_as(as_who, [sifbox_cli, "exec", "-C", str(action_images.sif), "sh", "-c", script],
                 cwd=str(action_images.root))  # fmt: skip
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, out.strip()) == (9, "got TERM")
