"""One image mount per user, image and node, that launches join (sifbox.runtime.nodemount),
as root (kernel SquashFS) and as the test user (squashfuse_ll in a user namespace):

* the first launch starts a holder, the next ones join it; `sifbox mounts list` shows it,
  `sifbox mounts prune` stops it and nothing is left (process, mount, loop device);
* 64 launches at once: all succeed, exactly one holder;
* a dead FUSE server or a dead holder never reaches a container: a new holder is started;
* --no-share, SIFBOX_NO_SHARE and `share image mounts = no` mount per container;
* a holder that no container uses ends by itself after the idle timeout, and one that short
  containers keep using does not;
* the site's policy judges every launch, joins included;
* a state directory planted by another user is never used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


def _exec(run_as, who, cli, image, *words, opts=(), env=None):  # type: ignore[no-untyped-def]
    who = images.user_named(who) if isinstance(who, str) else who
    return run_as(who, [cli, "-v", "exec", *opts, str(image), *(words or ("cat", "/data/hello.txt"))],
                  env=env or env_for(who), timeout=LAUNCH_TIMEOUT)  # fmt: skip


def _holders(run_as, who, cli) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    who = images.user_named(who) if isinstance(who, str) else who
    proc = run_as(who, [cli, "mounts", "list", "--json"], env=env_for(who), timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return [row for row in json.loads(proc.stdout) if row["state"] == "running"]


def _prune(run_as, who, cli, *opts: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    who = images.user_named(who) if isinstance(who, str) else who
    proc = run_as(who, [cli, "mounts", "prune", *opts], env=env_for(who), timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc


def _holder_processes(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state = stat[stat.rindex(")") + 2 :].split()[0]
        owner = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
        if comm == "sifbox-holder" and state != "Z" and owner == uid:
            found.append(int(entry))
    return found


def _wait_gone(pid: int, limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2 :].startswith("Z"):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def clean_holders(run_as, as_who, sifbox_cli):  # type: ignore[no-untyped-def]
    """No holder of the user before the test; none left after it."""
    _prune(run_as, as_who, sifbox_cli, "--force")
    yield
    _prune(run_as, as_who, sifbox_cli, "--force")


def test_launches_join_one_holder(run_as, as_who, sifbox_cli, action_images: ActionImages, clean_holders) -> None:
    first = _exec(run_as, as_who, sifbox_cli, action_images.sif)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "hello from image\n"
    assert "started the node mount holder" in first.stderr, first.stderr
    second = _exec(run_as, as_who, sifbox_cli, action_images.sif)
    assert second.returncode == 0, second.stderr
    assert "joining the node mount holder" in second.stderr, second.stderr
    assert "image driver: shared node mount" in second.stderr, second.stderr
    rows = _holders(run_as, as_who, sifbox_cli)
    assert [r["image"] for r in rows] == [str(action_images.sif)], rows
    assert rows[0]["in_use"] is False
    assert _holder_processes(as_who.uid) == [rows[0]["pid"]]
    # Another image (the bare SquashFS) has its own holder.
    other = _exec(run_as, as_who, sifbox_cli, action_images.sqfs)
    assert other.returncode == 0 and "started the node mount holder" in other.stderr, other.stderr
    assert len(_holders(run_as, as_who, sifbox_cli)) == 2
    out = _prune(run_as, as_who, sifbox_cli).stdout
    assert out.count("stopped holder") == 2, out
    assert _holder_processes(as_who.uid) == []
    assert _holders(run_as, as_who, sifbox_cli) == []


def test_a_used_holder_is_not_pruned(run_as, as_who, sifbox_cli, action_images: ActionImages,
                                     clean_holders) -> None:  # fmt: skip
    argv = [sifbox_cli, "exec", str(action_images.sif), "sh", "-c", "echo up; read line; cat /data/hello.txt"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    proc = subprocess.Popen(argv, env=env_for(as_who), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        rows = _holders(run_as, as_who, sifbox_cli)
        assert len(rows) == 1 and rows[0]["in_use"] is True, rows
        assert "stopped" not in _prune(run_as, as_who, sifbox_cli).stdout
        out, err = proc.communicate("go\n", timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == "hello from image\n"
    assert _holders(run_as, as_who, sifbox_cli)[0]["in_use"] is False


def test_64_launches_at_once_share_one_holder(run_as, as_who, sifbox_cli, action_images: ActionImages,
                                              clean_holders) -> None:  # fmt: skip
    argv = [sifbox_cli, "-v", "exec", str(action_images.sif), "cat", "/data/hello.txt"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    procs = [subprocess.Popen(argv, env=env_for(as_who), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(64)]  # fmt: skip
    results = [p.communicate(timeout=LAUNCH_TIMEOUT * 4) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert out == "hello from image\n"
        assert "Transport endpoint" not in err
    started = sum("started the node mount holder" in err for _, err in results)
    joined = sum("joining the node mount holder" in err for _, err in results)
    assert (started, joined) == (1, 63), [err for _, err in results if "node mount holder" not in err][:3]
    assert len(_holder_processes(as_who.uid)) == 1
    assert len(_holders(run_as, as_who, sifbox_cli)) == 1


def test_a_dead_holder_is_replaced(run_as, as_who, sifbox_cli, action_images: ActionImages, clean_holders) -> None:
    assert _exec(run_as, as_who, sifbox_cli, action_images.sif).returncode == 0
    (row,) = _holders(run_as, as_who, sifbox_cli)
    os.kill(row["pid"], signal.SIGKILL)
    assert _wait_gone(row["pid"])
    proc = _exec(run_as, as_who, sifbox_cli, action_images.sif)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from image\n"
    assert "started the node mount holder" in proc.stderr, proc.stderr
    assert [r["pid"] for r in _holders(run_as, as_who, sifbox_cli)] != [row["pid"]]


def test_a_dead_fuse_server_never_reaches_a_container(run_as, test_user, sifbox_cli, action_images: ActionImages) -> None:
    _prune(run_as, test_user, sifbox_cli, "--force")
    try:
        assert _exec(run_as, test_user, sifbox_cli, action_images.sif).returncode == 0
        (row,) = _holders(run_as, test_user, sifbox_cli)
        children = Path(f"/proc/{row['pid']}/task/{row['pid']}/children").read_text().split()
        (server,) = [int(c) for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "squashfuse_ll"]
        os.kill(server, signal.SIGKILL)
        for _ in range(3):  # whether the holder saw it die yet or not
            proc = _exec(run_as, test_user, sifbox_cli, action_images.sif)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == "hello from image\n"
            assert "Transport endpoint" not in proc.stderr
        assert _wait_gone(row["pid"])  # the holder ended with its server
    finally:
        _prune(run_as, test_user, sifbox_cli, "--force")


@pytest.mark.parametrize("how", ["flag", "env", "conf"])
def test_no_share_mounts_per_container(run_as, as_who, sifbox_cli, shared_tmp: Path, action_images: ActionImages,
                                       clean_holders, how: str) -> None:  # fmt: skip
    env = env_for(as_who, **({"SIFBOX_NO_SHARE": "1"} if how == "env" else {}))
    opts: tuple[str, ...] = ("--no-share",) if how == "flag" else ()
    cli = [sifbox_cli]
    if how == "conf":
        conf = shared_tmp / "sifbox.conf"
        conf.write_text("share image mounts = no\n")
        conf.chmod(0o644)
        cli = [sifbox_cli, "-c", str(conf)]
    proc = run_as(as_who, [*cli, "-v", "exec", *opts, str(action_images.sif), "cat", "/data/hello.txt"], env=env,
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from image\n"
    assert "mounted for this container alone" in proc.stderr, proc.stderr
    assert "node mount holder" not in proc.stderr
    assert _holder_processes(as_who.uid) == []


def test_an_idle_holder_ends_by_itself(run_as, as_who, sifbox_cli, action_images: ActionImages, clean_holders) -> None:
    proc = _exec(run_as, as_who, sifbox_cli, action_images.sif, env=env_for(as_who, SIFBOX_SHARE_IDLE_TIMEOUT="0"))
    assert proc.returncode == 0, proc.stderr
    assert "started the node mount holder" in proc.stderr
    deadline = time.monotonic() + 30
    while _holder_processes(as_who.uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _holder_processes(as_who.uid) == [], "the idle holder did not end"
    assert _holders(run_as, as_who, sifbox_cli) == []


def test_short_containers_keep_their_holder(run_as, test_user, sifbox_cli, action_images: ActionImages) -> None:
    """The holder looks at its use every quarter of its idle timeout: a container that comes
    and goes between two looks is use all the same. Launches every ~0.5 s keep a holder whose
    idle timeout is 3 s (it once ended 3 s after its start, in use or not)."""
    _prune(run_as, test_user, sifbox_cli, "--force")
    env = env_for(test_user, SIFBOX_SHARE_IDLE_TIMEOUT="3")
    try:
        first = _exec(run_as, test_user, sifbox_cli, action_images.sif, "true", env=env)
        assert first.returncode == 0 and "started the node mount holder" in first.stderr, first.stderr
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            time.sleep(0.5)
            proc = _exec(run_as, test_user, sifbox_cli, action_images.sif, "true", env=env)
            assert proc.returncode == 0, proc.stderr
            assert "joining the node mount holder" in proc.stderr, proc.stderr
    finally:
        _prune(run_as, test_user, sifbox_cli, "--force")


def test_policy_judges_joins(run_as, sifbox_cli, shared_tmp: Path, action_images: ActionImages) -> None:
    """Root (-c is root's): a holder runs for the image, and a site limit that refuses it
    refuses the next launch all the same."""
    _prune(run_as, "root", sifbox_cli, "--force")
    try:
        assert _exec(run_as, "root", sifbox_cli, action_images.sif).returncode == 0
        assert len(_holders(run_as, "root", sifbox_cli)) == 1
        conf = shared_tmp / "sifbox.conf"
        conf.write_text(f"limit container paths = {shared_tmp}\n")
        conf.chmod(0o644)
        proc = run_as("root", [sifbox_cli, "-c", str(conf), "exec", str(action_images.sif), "true"],
                      env=env_for(images.user_named("root")), timeout=LAUNCH_TIMEOUT)  # fmt: skip
        assert proc.returncode == 126, proc.stderr
        assert "image is not in an allowed configured path" in proc.stderr
    finally:
        _prune(run_as, "root", sifbox_cli, "--force")


def test_a_planted_state_directory_is_not_used(run_as, test_user, sifbox_cli, shared_tmp: Path,
                                               action_images: ActionImages) -> None:  # fmt: skip
    """XDG_RUNTIME_DIR/sifbox made by someone else (root here, 0777): the launch works and
    writes nothing there."""
    _prune(run_as, test_user, sifbox_cli, "--force")
    xdg = shared_tmp / "xdg"
    xdg.mkdir()
    os.chown(xdg, test_user.uid, test_user.gid)
    planted = xdg / "sifbox"
    planted.mkdir()
    planted.chmod(0o777)
    try:
        proc = _exec(run_as, test_user, sifbox_cli, action_images.sif, env=env_for(test_user, XDG_RUNTIME_DIR=str(xdg)))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "hello from image\n"
        assert list(planted.iterdir()) == []
    finally:
        _prune(run_as, test_user, sifbox_cli, "--force")


def test_only_root_prunes_for_others(run_as, test_user, sifbox_cli) -> None:
    proc = run_as(test_user, [sifbox_cli, "mounts", "prune", "--user", "root"], env=env_for(test_user))
    assert proc.returncode != 0
    assert proc.stderr.startswith("sifbox: error: can't prune the shared mounts of other users: only root can")


def test_an_instance_and_an_exec_share_one_holder(run_as, as_who, sifbox_cli, action_images: ActionImages,
                                                   clean_holders, no_leaks) -> None:  # fmt: skip
    """`instance start` starts (or joins) the node mount holder as a launch does; an exec of
    the same image joins it; once the instance is stopped, nothing is left."""
    env = env_for(as_who, SIFBOX_SHARE_IDLE_TIMEOUT="0")
    name = f"share{os.getpid()}"
    try:
        start = run_as(as_who, [sifbox_cli, "-v", "instance", "start", str(action_images.sif), name], env=env,
                       timeout=LAUNCH_TIMEOUT)  # fmt: skip
        assert start.returncode == 0, start.stderr
        assert "started the node mount holder" in start.stderr, start.stderr
        proc = _exec(run_as, as_who, sifbox_cli, action_images.sif, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "hello from image\n"
        assert "joining the node mount holder" in proc.stderr, proc.stderr
        joined = run_as(as_who, [sifbox_cli, "exec", f"instance://{name}", "cat", "/data/hello.txt"], env=env,
                        timeout=LAUNCH_TIMEOUT)  # fmt: skip
        assert joined.stdout == "hello from image\n", joined.stderr
        # (Other test sessions of the node may have holders of their own images.)
        rows = [r for r in _holders(run_as, as_who, sifbox_cli) if r["image"] == str(action_images.sif)]
        assert len(rows) == 1 and rows[0]["in_use"] is True, rows
        assert rows[0]["pid"] in _holder_processes(as_who.uid)
    finally:
        stop = run_as(as_who, [sifbox_cli, "instance", "stop", name], env=env, timeout=LAUNCH_TIMEOUT)
    assert stop.returncode == 0, stop.stderr
    assert _wait_gone(rows[0]["pid"]), "the holder outlived the instance (idle timeout 0)"
