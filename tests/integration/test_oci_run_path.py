"""What `sifbox oci run` does without, for its start-up time (benchmarks/oci_phases.py), checked
as root and as the unprivileged user, and against runc where it is installed:

- the watcher scans /proc for the container's mount-namespace peers only when the container has
  no PID namespace of its own: with one, a process `oci exec` started in it ends with it anyway;
- `run` ends without interpreter finalization (os._exit), its watcher without the /proc scan:
  every process it started is reaped by sifbox itself, none is left to the subreaper that ran it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import oci_bundle

CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")
RUNC = shutil.which("runc")


@pytest.fixture(scope="module", autouse=True)
def _subreaper() -> None:
    oci_bundle.become_subreaper()


def _orphans() -> list[int]:
    """The processes that ended and came to this subreaper unreaped (reaped now)."""
    found = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        found.append(pid)


def _reap_until(pids: set[int], timeout: float = 10) -> set[int]:
    """Reap what comes to this subreaper until every one of `pids` is reaped; those that were
    not. (A PID namespace's PID 1 ends once every process of the namespace has been reaped by
    its parent: a process runc exec'd, which comes here, must be reaped first.)"""
    left, deadline = set(pids), time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
        left.discard(pid)
    return left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.parametrize("runtime", ["sifbox", "runc"])
def test_an_exec_process_ends_with_the_container(runtime: str, as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    if runtime == "runc" and RUNC is None:
        pytest.skip("runc is not installed (Debian package `runc`)")
    argv = [CLI, "oci"] if runtime == "sifbox" else [RUNC]
    state = shared_tmp / "state"
    bundle = oci_bundle.make(shared_tmp / "bundle", ["sleep", "100"], uid=as_who.uid, gid=as_who.gid)
    pid_file, exec_pid_file = shared_tmp / "c.pid", shared_tmp / "e.pid"

    def rt(*args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_as(as_who, [*argv, "--root", state, *args], **kw)  # type: ignore[no-any-return]

    r = rt("run", "-d", "--bundle", bundle, "--pid-file", pid_file, "c1", capture_output=False,
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode == 0
    try:
        r = rt("exec", "-d", "--pid-file", exec_pid_file, "c1", "sleep", "101", capture_output=False,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        assert r.returncode == 0
        exec_pid = int(exec_pid_file.read_text())
        assert _alive(exec_pid)
        assert rt("kill", "c1", "KILL").returncode == 0
        assert _reap_until({int(pid_file.read_text())}) == set(), f"{runtime}: the container did not end"
        deadline = time.monotonic() + 10
        while _alive(exec_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(exec_pid), f"{runtime}: the exec'd process outlived its container"
    finally:
        rt("delete", "--force", "c1")
        _orphans()


def test_run_leaves_no_process_behind(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    bundle = oci_bundle.make(shared_tmp / "bundle", ["true"], uid=as_who.uid, gid=as_who.gid)
    _orphans()
    for i in range(3):
        r = run_as(as_who, [CLI, "oci", "--root", shared_tmp / "state", "run", "--bundle", bundle, f"r{i}"])
        assert (r.returncode, r.stderr) == (0, "")
    assert _orphans() == []
