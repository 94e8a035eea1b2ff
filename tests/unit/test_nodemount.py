"""The shared image mounts' state (sifbox.runtime.nodemount), without namespaces or holders:
the key, the state file, the private state directory, the lock, the reasons not to share."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from sifbox.runtime import nodemount
from sifbox.runtime.options import LaunchOptions
from sifbox.runtime.sandbox.ops import Namespaces, RootImage


def _doc(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {"version": nodemount.VERSION, "pid": 123, "starttime": 456, "dev": 42, "fd": 3,
                              "uid": os.getuid(), "key": "k", "mount": "/var/lib/sifbox/mnt/session/image",
                              "image": "/data/app.sif", "helper": [124, 457]}  # fmt: skip
    doc.update(kw)
    return doc


@pytest.fixture
def state_dir(tmp_path: Path) -> int:
    d = tmp_path / "sifbox"
    d.mkdir(mode=0o700)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_the_key_is_the_file_and_partition(tmp_path: Path) -> None:
    image = tmp_path / "a.sif"
    image.write_bytes(b"x" * 100)
    fd = os.open(image, os.O_RDONLY)
    try:
        key = nodemount.identity(fd, 4096, 8192)
        assert key == nodemount.identity(fd, 4096, 8192)
        assert key != nodemount.identity(fd, 0, 8192)  # another partition
        os.utime(image, ns=(1, 2))
        assert key != nodemount.identity(fd, 4096, 8192)  # changed since
        assert "/" not in key and not key.startswith(".")
    finally:
        os.close(fd)


def test_the_key_names_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state directory shared between nodes (/tmp or XDG_RUNTIME_DIR on a shared file system)
    holds one key per node: each node has its own holder, and sees only its own keys."""
    image = tmp_path / "a.sif"
    image.write_bytes(b"x" * 100)
    fd = os.open(image, os.O_RDONLY)
    try:
        keys, tags = {}, {}
        for node in ("node1", "node2"):
            monkeypatch.setattr(os, "uname", lambda node=node: SimpleNamespace(nodename=node))
            keys[node], tags[node] = nodemount.identity(fd, 0, 100), nodemount.node_tag()
    finally:
        os.close(fd)
    assert keys["node1"] != keys["node2"]
    assert keys["node1"].rsplit("-", 1)[0] == keys["node2"].rsplit("-", 1)[0]  # the same image
    assert nodemount.of_this_node(keys["node1"], tags["node1"])
    assert not nodemount.of_this_node(keys["node2"], tags["node1"])
    assert nodemount.of_this_node("fe00-eae4a1-106000-18eec27653e264c9-8000-fe000", tags["node1"])  # no node


def test_prune_leaves_other_nodes_state(state_dir: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prune` removes this node's stale state, never another node's (its holder is not here)."""
    path = os.readlink(f"/proc/self/fd/{state_dir}")
    monkeypatch.setattr(nodemount, "_own_dirs", lambda uid: [(path, os.dup(state_dir))])
    monkeypatch.setattr(nodemount, "holder_pids", lambda uid: {})  # never the machine's real holders
    here, there = f"1-2-3-4-0-5-{nodemount.node_tag()}", "1-2-3-4-0-5-n00000000"
    if there == here:
        there = "1-2-3-4-0-5-n00000001"
    for key in (here, there):
        nodemount._write(state_dir, key, _doc(key=key, pid=2**22 + 1))  # no such process
    done = nodemount.prune(os.getuid())
    assert [d["state"] for d in done] == ["stale"]
    assert sorted(os.listdir(state_dir)) == [f"{there}.{nodemount.STATE}"]
    assert [r["key"] for r in nodemount.listing(os.getuid())] == []


def test_state_round_trip(state_dir: int) -> None:
    nodemount._write(state_dir, "k", _doc())
    assert nodemount.load(state_dir, "k") == _doc()
    nodemount._write(state_dir, "k", _doc(helper=None))
    assert nodemount.load(state_dir, "k")["helper"] is None  # type: ignore[index]
    assert not [n for n in os.listdir(state_dir) if n.startswith(".")]  # written atomically


@pytest.mark.parametrize("text", ["", "version 99\n", "version 1\npid x\n", "version 1\npid 1\n"])
def test_malformed_or_other_state_is_none(state_dir: int, text: str) -> None:
    fd = os.open("k.state", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=state_dir)
    os.write(fd, text.encode())
    os.close(fd)
    assert nodemount.load(state_dir, "k") is None


def test_a_path_with_a_newline_is_not_stored(state_dir: int) -> None:
    with pytest.raises(nodemount.Unshared):
        nodemount._write(state_dir, "k", _doc(image="/a\nversion 2"))


def test_state_dir_is_made_private(tmp_path: Path) -> None:
    fd = nodemount.open_state_dir(str(tmp_path / "sifbox"), os.getuid(), create=True)
    try:
        assert os.fstat(fd).st_mode & 0o777 == 0o700
    finally:
        os.close(fd)


def test_a_planted_state_dir_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(nodemount.Unshared, match="not a private directory"):
        nodemount.open_state_dir(str(open_dir), os.getuid(), create=False)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(nodemount.Unshared, match="can't open"):
        nodemount.open_state_dir(str(link), os.getuid(), create=True)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    with pytest.raises(nodemount.Unshared, match="not a private directory of uid"):
        nodemount.open_state_dir(str(mine), os.getuid() + 1, create=False)


def test_state_dirs_prefer_the_runtime_dir() -> None:
    assert nodemount.state_dirs(1000, "/run/user/1000") == ["/run/user/1000/sifbox", "/tmp/sifbox-1000"]
    assert nodemount.state_dirs(0, None) == ["/run/sifbox", "/tmp/sifbox-0"]
    assert nodemount.state_dirs(1000, "relative") == ["/run/user/1000/sifbox", "/tmp/sifbox-1000"]


def test_the_lock_is_the_file_the_directory_names(state_dir: int) -> None:
    first = nodemount._lock(state_dir, "k.lock")
    os.unlink("k.lock", dir_fd=state_dir)  # as prune does, under the lock
    os.close(first)
    second = nodemount._lock(state_dir, "k.lock")
    try:
        assert os.fstat(second).st_ino == os.stat("k.lock", dir_fd=state_dir).st_ino
    finally:
        os.close(second)


def test_idle_only_when_no_container_holds_refs(state_dir: int) -> None:
    refs = os.open("k.refs", os.O_RDONLY | os.O_CREAT, 0o600, dir_fd=state_dir)
    fcntl.flock(refs, fcntl.LOCK_SH)
    assert nodemount.idle_now(state_dir, "k") is None
    assert nodemount._in_use(state_dir, "k")
    os.close(refs)
    lock = nodemount.idle_now(state_dir, "k")
    assert lock is not None
    os.close(lock)
    assert not nodemount._in_use(state_dir, "k")


def test_a_dead_holder_is_not_alive() -> None:
    assert not nodemount.holder_alive(_doc(pid=2**22 + 12345), os.getuid())
    me = nodemount._proc(os.getpid())
    assert me is not None
    assert not nodemount.holder_alive(_doc(pid=os.getpid(), starttime=me[1]), os.getuid())  # not named so


def _prepared(**kw: object) -> SimpleNamespace:
    class Cfg:
        def __init__(self, share: bool) -> None:
            self.share = share

        def get_bool(self, name: str) -> bool:
            assert name == "share image mounts"
            return self.share

    values: dict[str, object] = {
        "options": LaunchOptions(), "cfg": Cfg(True), "joining": None, "fixed": None,
        "image": RootImage("squashfs", 3, 0, 10, "/a.sif"), "ns": Namespaces(True, 1000, 1000),
        "userns": True, "host": SimpleNamespace(is_root=False), "site": SimpleNamespace(mount_slave=True),
    }  # fmt: skip
    values.update(kw)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(("change", "reason"), [
    ({}, None),
    ({"options": LaunchOptions(share=False)}, "--no-share"),
    ({"cfg": type("C", (), {"get_bool": lambda self, n: False})()}, "`share image mounts = no` in sifbox.conf"),
    ({"image": RootImage("dir", 3, 0, 0, "/sandbox")}, ""),
    ({"fixed": (["true"], {})}, ""),
    ({"ns": Namespaces(True, 1000, 1000, inside=0)}, "--fakeroot"),
    ({"ns": Namespaces(False, 0, 0), "userns": True, "host": SimpleNamespace(is_root=True)},
     "root with a user namespace"),
    ({"ns": Namespaces(False, 0, 0), "userns": False, "host": SimpleNamespace(is_root=True)}, None),
    ({"site": SimpleNamespace(mount_slave=False)}, "`mount slave = no` in sifbox.conf"),
])  # fmt: skip
def test_when_the_mount_is_shared(change: dict[str, object], reason: str | None) -> None:
    assert nodemount._why_not(_prepared(**change), None) == reason
    # An instance starts (or joins) the holder as any launch does.
    assert nodemount._why_not(_prepared(**change), "an-instance") == reason


@pytest.mark.parametrize(("change", "reason"), [
    ({}, None),
    ({"options": LaunchOptions(share=False)}, "--no-share"),
    # The mount service's mount is the host's: holders' settings don't apply to it.
    ({"cfg": type("C", (), {"get_bool": lambda self, n: False})()}, None),
    ({"site": SimpleNamespace(mount_slave=False)}, None),
    ({"image": RootImage("dir", 3, 0, 0, "/sandbox")}, ""),
    ({"ns": Namespaces(True, 1000, 1000, inside=0)}, "--fakeroot"),
])  # fmt: skip
def test_when_the_mount_service_is_asked(change: dict[str, object], reason: str | None) -> None:
    assert nodemount._why_not(_prepared(**change), None, service=True) == reason


def test_the_service_is_not_asked_unless_configured() -> None:
    class Cfg:
        def get_bool(self, name: str) -> bool:
            assert name == "mount service"
            return False

    assert nodemount._from_service(SimpleNamespace(cfg=Cfg())) is None


def test_a_holder_being_started_is_in_use(state_dir: int) -> None:
    """A holder a launch is starting has no state yet: `prune` (an epilog, while another job of
    the user starts on the node) waits for that launch's lock and finds the holder used, rather
    than stopping it under the containers joining it."""
    import signal
    import threading
    import time

    key = f"1-2-3-4-0-5-{nodemount.node_tag()}"
    log = os.open(f"{key}.log", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=state_dir)
    lock = nodemount._lock(state_dir, f"{key}.lock")  # the starting launch's
    pid = os.fork()
    if pid == 0:  # the holder, not yet ready: stderr is its log
        os.close(lock)
        os.dup2(log, 2)
        time.sleep(60)
        os._exit(0)
    os.close(log)
    try:
        for _ in range(500):  # the child's stderr is the log once it has run its dup2
            if os.readlink(f"/proc/{pid}/fd/2").endswith(f"/{key}.log"):
                break
            time.sleep(0.01)
        found: list[bool] = []
        pruner = threading.Thread(target=lambda: found.append(nodemount._holder_in_use(pid, os.getuid())))
        pruner.start()
        time.sleep(0.2)
        assert found == []  # waits for the launch
        refs = os.open(f"{key}.refs", os.O_RDONLY | os.O_CREAT, 0o600, dir_fd=state_dir)
        fcntl.flock(refs, fcntl.LOCK_SH)  # the launch's refs, taken before it lets the lock go
        os.close(lock)
        pruner.join(10)
        assert found == [True]
        os.close(refs)
        assert nodemount._holder_in_use(pid, os.getuid()) is False  # no container uses it any more
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
