"""Parts of the admission store daemon that need no root and no daemon: its audit log, its
connection limits and accept loop, its intake of descriptors, its safe start-up helpers."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from sifbox.security import store_intake as intake
from sifbox.security.store_audit import BURST, AuditLog
from sifbox.security.store_intake import Refused
from sifbox.security.store_server import Gate, _accept_loop, clients_within
from sifbox.security.store_setup import StartError, bind_socket, open_audit_log, open_dir

# -- audit log --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cheap_lines_are_rate_limited_per_caller() -> None:
    clock, said = Clock(), []
    audit = AuditLog(None, "", None, said.append, clock)
    for _ in range(BURST + 40):
        audit.write({"op": "ls", "by": "eve", "by_uid": 1002, "verdict": "listed"})
    audit.write({"op": "ls", "by": "bob", "by_uid": 1003, "verdict": "listed"})  # others are not hit
    audit.write({"op": "cp", "by": "eve", "by_uid": 1002, "verdict": "admitted"})  # changes: always
    assert len(audit.records) == BURST + 2
    assert said.count("sifbox store: too many requests from uid 1002: audit lines left out until "
                      "it slows down") == 1  # fmt: skip
    # The next line that passes says how many were left out.
    assert audit.records[-1]["suppressed"] == 40 and audit.records[-1]["verdict"] == "admitted"
    audit.write({"op": "ls", "by": "eve", "by_uid": 1002, "verdict": "listed"})
    assert len(audit.records) == BURST + 2
    clock.now += 1.5
    audit.write({"op": "ls", "by": "eve", "by_uid": 1002, "verdict": "refused", "reason": "x"})
    assert audit.records[-1]["suppressed"] == 1


def test_text_lines_are_printable() -> None:
    said: list[str] = []
    audit = AuditLog(None, "", None, said.append)
    audit.write({"op": "cp", "by": "eve", "by_uid": 1, "name": "x\nsifbox store: forged",
                 "verdict": "refused", "reason": "r\n2"})  # fmt: skip
    audit.write({"op": "connect", "by": None, "by_uid": 100000, "verdict": "refused", "reason": "no name"})
    assert said == ["sifbox store: cp by eve x\\nsifbox store: forged: refused: r\\n2",
                    "sifbox store: connect by uid 100000: refused: no name"]  # fmt: skip


def test_log_is_reopened_after_rotation_never_through_a_link(tmp_path: Path) -> None:
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(tmp_path / "a.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        said: list[str] = []
        audit = AuditLog(dfd, "a.log", fd, said.append)
        audit.write({"op": "rm", "by": "u", "by_uid": 1, "verdict": "removed"})
        os.rename(tmp_path / "a.log", tmp_path / "a.log.1")
        audit.write({"op": "rm", "by": "u", "by_uid": 1, "verdict": "removed"})
        assert len((tmp_path / "a.log.1").read_text().splitlines()) == 1
        assert json.loads((tmp_path / "a.log").read_text())["verdict"] == "removed"
        os.unlink(tmp_path / "a.log")
        (tmp_path / "elsewhere").write_text("")
        os.symlink(tmp_path / "elsewhere", tmp_path / "a.log")
        audit.write({"op": "rm", "by": "u", "by_uid": 1, "verdict": "removed"})
        assert (tmp_path / "elsewhere").read_text() == ""
        assert "can't write the audit log" in said[-1] and '"verdict": "removed"' in said[-1]
    finally:
        os.close(dfd)
        if audit.fd is not None:
            os.close(audit.fd)


# -- connections ------------------------------------------------------------------------------


def test_gate_limits_in_all_and_per_user() -> None:
    gate = Gate(total=3, per_user=2)
    assert gate.enter(1) is None and gate.enter(1) is None
    assert "you have 2 requests running" in (gate.enter(1) or "")
    assert gate.enter(2) is None
    assert "3 connections at once at most" in (gate.enter(3) or "")
    gate.leave(1)
    assert gate.enter(3) is None
    assert gate.active == {1: 1, 2: 1, 3: 1} and gate.count == 3


def test_clients_within_the_descriptor_limit() -> None:
    assert clients_within(4096, 64) == 64
    assert clients_within(1024, 64) == 60
    assert clients_within(20, 64) == 1


class FakeServer:
    """accept() fails as a server out of descriptors would, then stops the loop."""

    def __init__(self, errors: list[int], stopping: threading.Event) -> None:
        self.errors = errors
        self.stopping = stopping

    def accept(self) -> tuple[object, object]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        self.stopping.set()
        raise OSError(errno.EBADF, "closed")


def test_accept_loop_waits_out_emfile_and_enfile() -> None:
    stopping, said = threading.Event(), []
    server = FakeServer([errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.ECONNABORTED], stopping)
    _accept_loop(server, None, Gate(1, 1), stopping, said.append)  # type: ignore[arg-type]
    assert server.errors == [] and stopping.is_set()
    assert len([m for m in said if "can't accept connections for now" in m]) == 1


# -- intake -----------------------------------------------------------------------------------


def test_only_regular_files_open_for_reading(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    r, w = os.pipe()
    a, b = socket.socketpair()
    fds = {"pipe": r, "socket": a.fileno(), "dir": os.open(tmp_path, os.O_RDONLY),
           "opath": os.open(path, os.O_PATH), "wronly": os.open(path, os.O_WRONLY)}  # fmt: skip
    try:
        for kind in ("pipe", "socket", "dir"):
            with pytest.raises(Refused, match="^not a regular file$"):
                intake.check_descriptor(fds[kind])
        for kind in ("opath", "wronly"):
            with pytest.raises(Refused, match="not open for reading"):
                intake.check_descriptor(fds[kind])
        with open(path, "rb") as f:
            assert intake.check_descriptor(f.fileno()).st_size == 1
    finally:
        for kind in ("dir", "opath", "wronly"):
            os.close(fds[kind])
        os.close(r)
        os.close(w)
        a.close()
        b.close()


def test_sif_is_checked_from_the_descriptor(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.write_text("hello\n" * 100)
    with open(text, "rb") as f, pytest.raises(Refused, match=r"^not a SIF image \(the store"):
        intake.check_sif(f.fileno(), 600)
    fake = tmp_path / "fake"
    head = bytearray(4096)
    head[32:42] = b"SIF_MAGIC\0"
    fake.write_bytes(bytes(head))
    with open(fake, "rb") as f, pytest.raises(Refused, match="^not a valid SIF image: "):
        intake.check_sif(f.fileno(), 4096)
    # The client's file offset is left alone (every read is a pread).
    with open(text, "rb") as f:
        f.seek(7)
        with pytest.raises(Refused):
            intake.check_sif(f.fileno(), 600)
        assert f.tell() == 7


def test_copy_takes_exactly_the_size_it_was_given(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"a" * 3000)
    dst = tmp_path / "dst"
    with open(src, "rb") as s, open(dst, "wb") as d:
        digest = intake.copy_in(s.fileno(), d.fileno(), 3000, lambda: None)
    assert dst.read_bytes() == b"a" * 3000 and digest.startswith("sha256:")
    # A file that grew since its size was taken: refused, and no more than the size copied.
    with open(src, "rb") as s, open(dst, "wb") as d, pytest.raises(Refused, match="changed size"):
        intake.copy_in(s.fileno(), d.fileno(), 1000, lambda: None)
    assert dst.stat().st_size == 1000
    with open(src, "rb") as s, open(dst, "wb") as d, pytest.raises(Refused, match="shrank"):
        intake.copy_in(s.fileno(), d.fileno(), 5000, lambda: None)


def test_space_check(tmp_path: Path) -> None:
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        intake.check_space(dfd, 1)
        free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
        with pytest.raises(Refused, match="^not enough space in the store: the image needs"):
            intake.check_space(dfd, free)
    finally:
        os.close(dfd)


# -- start-up helpers -------------------------------------------------------------------------


def test_open_dir_refuses_links_others_could_have_made(tmp_path: Path) -> None:
    me = frozenset({0, os.geteuid()})
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could have put the link there
    (tmp_path / "real").mkdir()
    (shared / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StartError, match="is a symbolic link in a directory that other users than root can write"):
        open_dir(str(shared / "link" / "x"), me, create=True)
    assert not (tmp_path / "real" / "x").exists()
    d = open_dir(str(tmp_path / "made" / "here"), me, create=True, mode=0o750)
    try:
        assert d.created and stat.S_IMODE(d.st.st_mode) == 0o750 and d.path == str(tmp_path / "made/here")
    finally:
        d.close()
    with pytest.raises(StartError, match="is not a directory"):
        (tmp_path / "file").write_text("")
        open_dir(str(tmp_path / "file" / "x"), me, create=True)
    with pytest.raises(StartError, match="belongs to uid"):
        open_dir(str(tmp_path), frozenset({12345}), create=False)


def test_socket_is_bound_with_its_mode_and_never_over_a_file(tmp_path: Path) -> None:
    d = open_dir(str(tmp_path), frozenset({0, os.geteuid()}), create=False)
    try:
        (tmp_path / "f").write_text("keep")
        with pytest.raises(StartError, match="exists and is not a socket"):
            bind_socket(d, "f")
        assert (tmp_path / "f").read_text() == "keep"
        for _ in range(2):  # the second time over the stale socket of the first
            server = bind_socket(d, "s.sock")
            server.close()
            assert stat.S_ISSOCK(os.lstat(tmp_path / "s.sock").st_mode)
            assert stat.S_IMODE(os.lstat(tmp_path / "s.sock").st_mode) == 0o666
        assert os.getcwd() != str(tmp_path)
        os.symlink(tmp_path / "f", tmp_path / "a.log")
        with pytest.raises(StartError, match="is a symbolic link"):
            open_audit_log(d, "a.log")
        os.mkfifo(tmp_path / "fifo.log")
        with pytest.raises(StartError):
            open_audit_log(d, "fifo.log")
    finally:
        d.close()


# -- requests ---------------------------------------------------------------------------------


def test_ls_skips_an_image_removed_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sifbox.security.store import Peer, Store, _Answer

    (tmp_path / "eve").mkdir()
    (tmp_path / "eve" / "here.sif").write_bytes(b"x")
    settings = SimpleNamespace(root=str(tmp_path))
    store = Store(settings, AuditLog(None, "", None, lambda m: None))  # type: ignore[arg-type]
    monkeypatch.setattr(store, "images", lambda user: ["gone", "here"])  # listed, then removed
    reply, record = store.respond(None, Peer(1, os.getuid(), "eve"), b'{"op": "ls"}', [], 0)  # type: ignore[arg-type]
    assert [i["name"] for i in reply["images"]] == ["here"] and record["verdict"] == "listed"
    with pytest.raises(_Answer) as info:
        store.respond(None, Peer(1, os.getuid(), "eve"), b'{"op": "info", "name": "gone"}', [], 0)  # type: ignore[arg-type]
    assert info.value.reply == {"ok": False, "error": "no image `gone` in your store"}
    assert info.value.record["verdict"] == "refused"
