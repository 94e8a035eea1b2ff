"""`sifbox instance start|run|list|stop` and `exec|run|shell instance://NAME`, as root and as the
test user. After each test, `no_leaks` checks that no instance process, mount or loop device is
left; a test that fails half-way has its instances stopped first (the `name` fixture).

Instances start with --contain (a private /tmp), so that mounts other sessions on this machine
make under the host's /tmp can't get in the way of binding it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

STARTSCRIPT = """#!/bin/sh
echo "startscript out $*"
echo "startscript err $*" >&2
echo "started $*" > /tmp/started
[ -w / ] && echo "root change" > /startscript-was-here
if [ "$1" = trap ]; then
    trap 'echo got-usr1' USR1
    while :; do sleep 0.1; done
fi
exec sleep 100000
"""
RUNSCRIPT = '#!/bin/sh\necho "runscript $*"\n'


@pytest.fixture(scope="module")
def inst_images(sifbox_cli: str, action_images: ActionImages) -> Iterator[dict[str, Path]]:
    """The busybox test image with a startscript, as SIF, SquashFS and sandbox."""
    base = Path(tempfile.mkdtemp(prefix=images.IMAGES_PREFIX + "instances-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "sandbox"
    shutil.copytree(action_images.sandbox, root, symlinks=True)
    (root / "bin/ps").symlink_to("busybox")
    for name, text in (("startscript", STARTSCRIPT), ("runscript", RUNSCRIPT)):
        path = root / ".singularity.d" / name
        path.write_text(text)
        path.chmod(0o755)
    sqfs = images.mksquashfs(root, base / "inst.sqfs")
    sif = images.make_sif(sifbox_cli, sqfs, base / "inst.sif")
    yield {"sif": sif, "sqfs": sqfs, "sandbox": root}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sb(run_as, as_who, sifbox_cli):  # type: ignore[no-untyped-def]
    def launch(*args: str, **kw: object):  # type: ignore[no-untyped-def]
        kw.setdefault("timeout", LAUNCH_TIMEOUT)
        return run_as(as_who, [sifbox_cli, *args], env=env_for(as_who), cwd="/", **kw)

    return launch


@pytest.fixture
def name(sb) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh instance name; every instance of the user is stopped after the test."""
    fresh = f"t{uuid.uuid4().hex[:8]}"
    yield fresh
    sb("instance", "stop", "--all", "--force")
    for who in {"root", os.environ.get("SIFBOX_TEST_USER", "sifbox-test")}:
        try:
            logs = _state_dir(pwd.getpwnam(who), "x").parents[3] / "logs"
        except KeyError:
            continue
        for log in logs.glob(f"*/{who}/{fresh}*"):
            log.unlink()


def _ok(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, (
        f"status {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    return str(proc.stdout)


def _listed(sb) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    doc = json.loads(_ok(sb("instance", "list", "--json")))
    return {i["instance"]: i for i in doc["instances"]}


def _state_dir(who, name: str) -> Path:  # type: ignore[no-untyped-def]
    """NAME's state directory for `who` (a User, or a pwd entry)."""
    user = getattr(who, "pw_name", None) or who.name
    home = pwd.getpwnam(user).pw_dir
    return Path(home, ".sifbox/instances/app", os.uname().nodename, user, name)


@pytest.mark.parametrize("kind", ["sif", "sandbox"])
def test_start_list_join_stop(sb, as_who, inst_images, name, kind) -> None:  # type: ignore[no-untyped-def]
    proc = sb("instance", "start", "--contain", str(inst_images[kind]), name, "a", "b")
    _ok(proc)
    assert "instance started successfully" in proc.stderr
    # the table, Apptainer's shape
    table = _ok(sb("instance", "list")).splitlines()
    assert table[0].split() == ["INSTANCE", "NAME", "PID", "IP", "IMAGE"]
    row = next(line.split() for line in table[1:] if line.split()[0] == name)
    info = _listed(sb)[name]
    assert row == [name, str(info["pid"]), str(inst_images[kind])]
    assert info["img"] == str(inst_images[kind]) and info["ip"] == ""
    # the startscript ran with its arguments; its /tmp (private: --contain) is the joiners'
    wait = "i=0; while [ ! -s /tmp/started ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done"
    assert _ok(sb("exec", f"instance://{name}", "sh", "-c", f"{wait}; cat /tmp/started")) == "started a b\n"
    assert (
        not Path("/tmp/started").exists() or "started a b" not in Path("/tmp/started").read_text()
    )
    out = _ok(sb("exec", f"instance://{name}", "sh", "-c", 'echo "$SIFBOX_INSTANCE $(id -u)"'))
    assert out == f"{name} {as_who.uid}\n"
    assert _ok(sb("run", f"instance://{name}", "x", "y")) == "runscript x y\n"
    assert "started a b" in _ok(sb("shell", f"instance://{name}", input="cat /tmp/started\n"))
    # the state file, and the logs
    state = json.loads((_state_dir(as_who, name) / f"{name}.json").read_text())
    assert state["pid"] == info["pid"] and state["name"] == name and state["user"] == as_who.name
    assert state["userns"] is (not as_who.is_root)
    assert set(state) >= {"pid", "ppid", "name", "user", "image", "config", "userns", "cgroup", "ip",
                          "logErrPath", "logOutPath", "checkpoint"}  # fmt: skip
    assert "startscript out a b" in Path(str(info["logOutPath"])).read_text()
    assert "startscript err a b" in Path(str(info["logErrPath"])).read_text()
    logs = _ok(sb("instance", "list", "--logs", name)).splitlines()
    assert logs[1].split() == [name, str(info["pid"]), str(info["logErrPath"])]
    assert logs[2].split() == [str(info["logOutPath"])]
    # stop: nothing listed, no state, nothing left running (no_leaks checks the rest)
    proc = sb("instance", "stop", name)
    _ok(proc)
    assert f"Stopping {name} instance" in proc.stderr
    assert name not in _listed(sb)
    assert not _state_dir(as_who, name).exists()


def test_writable_tmpfs_change_is_seen_by_joins(sb, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "start", "--contain", "--writable-tmpfs", str(inst_images["sif"]), name))
    # `instance start` returns once the instance runs, not once its startscript is done.
    wait = "i=0; while [ ! -e /startscript-was-here ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done"
    assert _ok(sb("exec", f"instance://{name}", "sh", "-c", f"{wait}; cat /startscript-was-here")) == "root change\n"
    _ok(sb("exec", f"instance://{name}", "sh", "-c", "echo joined > /joined"))
    assert _ok(sb("exec", f"instance://{name}", "cat", "/joined")) == "joined\n"
    _ok(sb("instance", "stop", name))


def test_pid_file_and_pid_namespace(sb, inst_images, name, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    pid_file = shared_tmp / "inst.pid"
    _ok(
        sb(
            "instance",
            "start",
            "--contain",
            "--pid",
            "--pid-file",
            str(pid_file),
            str(inst_images["sif"]),
            name,
        )
    )
    pid = int(pid_file.read_text())
    assert _listed(sb)[name]["pid"] == pid
    # the holder is PID 1 of the instance's PID namespace; a join runs in it
    out = _ok(
        sb(
            "exec",
            f"instance://{name}",
            "sh",
            "-c",
            'echo $$; cat /proc/1/comm; ls /proc | grep -c "^[0-9]"',
        )
    )
    me, comm, count = out.split()
    assert int(me) > 1 and comm == "sifbox-instance" and int(count) < 10
    _ok(sb("instance", "stop", name))


def test_second_instance_with_the_same_name_fails_clearly(sb, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "start", "--contain", str(inst_images["sif"]), name))
    pid = _listed(sb)[name]["pid"]
    proc = sb("instance", "start", "--contain", str(inst_images["sqfs"]), name)
    assert proc.returncode == 255
    assert proc.stderr.splitlines()[0] == (
        f"sifbox: error: can't start instance `{name}`: an instance of that name already exists"
    )
    assert proc.stderr.splitlines()[1].startswith("hint: ")
    assert _listed(sb)[name]["pid"] == pid  # the first one runs on
    _ok(sb("instance", "stop", name))


def test_stop_all(sb, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    for suffix in ("-1", "-2"):
        _ok(sb("instance", "start", "--contain", str(inst_images["sif"]), name + suffix))
    assert {name + "-1", name + "-2"} <= set(_listed(sb))
    _ok(sb("instance", "stop", "--all"))
    assert _listed(sb) == {}


def test_stop_with_signal_and_timeout(sb, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "start", "--contain", str(inst_images["sif"]), name, "trap"))
    log = Path(str(_listed(sb)[name]["logOutPath"]))
    time.sleep(0.3)  # let the startscript install its trap
    started = time.monotonic()
    proc = sb("instance", "stop", "--signal", "USR1", "--timeout", "1", name)
    _ok(proc)
    assert time.monotonic() - started >= 1
    assert "(Timeout)" in proc.stderr  # USR1 does not stop the script: it was killed after 1 s
    assert "got-usr1" in log.read_text()
    assert name not in _listed(sb)


def test_kill_9_of_the_holder_then_list_cleans_up(sb, as_who, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "start", "--contain", str(inst_images["sif"]), name))
    pid = int(_listed(sb)[name]["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}/stat") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    assert name not in _listed(sb)
    assert not _state_dir(as_who, name).exists()
    proc = sb("exec", f"instance://{name}", "true")
    assert proc.returncode == 255 and "no instance of that name is running" in proc.stderr


def test_stale_state_of_a_reused_pid_is_cleaned(sb, as_who, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "start", "--contain", str(inst_images["sif"]), name))
    _ok(sb("instance", "stop", name))
    # forge the state of a crashed instance whose pid now belongs to another process
    state_dir = _state_dir(as_who, name)
    entry = pwd.getpwnam(as_who.name)
    state_dir.mkdir(parents=True, mode=0o700)
    (state_dir / f"{name}.json").write_text(json.dumps(
        {"pid": os.getpid(), "ppid": os.getppid(), "name": name, "user": as_who.name, "image": "/x.sif",
         "config": "", "userns": False, "cgroup": False, "ip": "", "logErrPath": "", "logOutPath": "",
         "checkpoint": "", "starttime": 1, "ppidStarttime": 1}))  # fmt: skip
    os.chown(state_dir, entry.pw_uid, entry.pw_gid)
    os.chown(state_dir / f"{name}.json", entry.pw_uid, entry.pw_gid)
    assert name not in _listed(sb)
    assert not state_dir.exists()


def test_unknown_instance_and_bad_names(sb, name) -> None:  # type: ignore[no-untyped-def]
    proc = sb("exec", f"instance://{name}", "true")
    assert proc.returncode == 255
    assert proc.stderr.splitlines()[0] == (
        f"sifbox: error: can't exec instance `{name}`: no instance of that name is running"
    )
    proc = sb("instance", "stop", name)
    assert proc.returncode == 255 and "no instance found" in proc.stderr
    proc = sb("instance", "start", "/nonexistent.sif", "bad/name")
    assert proc.returncode == 125 and "not a valid instance name" in proc.stderr


def test_failure_while_starting_is_reported_and_leaves_nothing(
    sb, as_who, inst_images, name
) -> None:  # type: ignore[no-untyped-def]
    proc = sb("instance", "start", "--pwd", "/no/such/dir", str(inst_images["sif"]), name)
    assert proc.returncode == 126, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("sifbox: error: can't start a container from")
    assert "/no/such/dir" in proc.stderr and "Traceback" not in proc.stderr
    assert name not in _listed(sb)
    assert not _state_dir(as_who, name).exists()


def test_stop_ends_commands_that_joined(as_who, sb, sifbox_cli, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "start", "--contain", str(inst_images["sif"]), name))
    joined = images.popen_as(
        as_who, [sifbox_cli, "exec", f"instance://{name}", "sleep", "1000"], cwd="/"
    )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while (
            "sleep" not in images.descendants(joined.pid).values() and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        _ok(sb("instance", "stop", name))
        joined.communicate(timeout=LAUNCH_TIMEOUT)
        assert joined.returncode != 0  # killed with the instance
    finally:
        if joined.poll() is None:
            joined.kill()
            joined.communicate()


def test_instance_run_runs_the_runscript_detached(sb, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    _ok(sb("instance", "run", "--contain", str(inst_images["sqfs"]), name, "p", "q"))
    info = _listed(sb)[name]  # the instance outlives its runscript, as Apptainer's
    log = Path(str(info["logOutPath"]))
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while "runscript p q" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "runscript p q" in log.read_text()
    assert _ok(sb("exec", f"instance://{name}", "echo", "still here")) == "still here\n"
    _ok(sb("instance", "stop", name))


def test_user_option_is_for_root(run_as, as_who, test_user, sifbox_cli, inst_images, name) -> None:  # type: ignore[no-untyped-def]
    def as_test_user(*args: str):  # type: ignore[no-untyped-def]
        return run_as(test_user, [sifbox_cli, *args], env=env_for(test_user), cwd="/",
                      timeout=LAUNCH_TIMEOUT)  # fmt: skip

    def as_caller(*args: str):  # type: ignore[no-untyped-def]
        return run_as(
            as_who, [sifbox_cli, *args], env=env_for(as_who), cwd="/", timeout=LAUNCH_TIMEOUT
        )

    _ok(as_test_user("instance", "start", "--contain", str(inst_images["sif"]), name))
    try:
        listed = as_caller("instance", "list", "--user", test_user.name)
        stopped = as_caller("instance", "stop", "--user", test_user.name, name)
        if as_who.is_root:
            assert name in _ok(listed)
            _ok(stopped)
            assert name not in _ok(as_test_user("instance", "list"))
        else:
            assert listed.returncode == 125 and "only root can" in listed.stderr
            assert stopped.returncode == 125 and "only root can" in stopped.stderr
    finally:
        as_test_user("instance", "stop", "--all", "--force")
