"""Pure parts of the admission store: ACL encoding, image names, the client's errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sifbox.cli.commands.store import StoreError, request
from sifbox.security.store import NAME_RE, acl_bytes


def test_acl_bytes_layout() -> None:
    data = acl_bytes(6, 1001, 4)
    assert struct.unpack_from("<I", data) == (2,)
    entries = [struct.unpack_from("<HHI", data, 4 + 8 * i) for i in range((len(data) - 4) // 8)]
    # Sorted by tag as the kernel requires: owner, named user, group, mask, other.
    assert entries == [(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1001), (0x04, 0, 0xFFFFFFFF),
                       (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]  # fmt: skip


@pytest.mark.parametrize("name", ["app", "App_1.2", "x" * 100, "0", "a+b-c"])
def test_good_names(name: str) -> None:
    assert NAME_RE.fullmatch(name)


@pytest.mark.parametrize("name", ["", ".hidden", "../x", "a/b", "x" * 101, "-rf", "a b", "a\nb", "ab\n"])
def test_bad_names(name: str) -> None:
    assert not NAME_RE.fullmatch(name)


def test_absent_socket_says_how_to_start_the_daemon(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        request(str(tmp_path / "store.sock"), {"op": "ls"}, verb="list the store")
    err = info.value
    assert err.message.startswith("can't list the store: the image store is not running")
    assert err.hint is not None and "systemctl start sifbox-store" in err.hint


# -- the wire protocol ------------------------------------------------------------------------


def test_requests_parse() -> None:
    from sifbox.security.store_protocol import parse_request

    req = parse_request(b'{"op": "cp", "name": "app", "source": "/home/u/app.sif"}')
    assert (req.op, req.name, req.user, req.client_source) == ("cp", "app", None, "/home/u/app.sif")
    req = parse_request(b'{"op": "ls", "user": "alice", "name": "../../ignored"}')
    assert (req.op, req.name, req.user) == ("ls", None, "alice")


@pytest.mark.parametrize("data, reason", [
    (b"\xff", "malformed request"),
    (b"[1]", "malformed request"),
    (b'{"op": "ls", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed request"),
    (b'{"op": "' + b"a" * 70000 + b'"}', "request too large (more than 65536 bytes)"),
    (b'{"op": "mount"}', "unknown request `mount`"),
    (b'{"op": "rm", "name": "a/b"}', "`a/b` is not a valid image name"),
    (b'{"op": "rm", "name": 7}', "`<int>` is not a valid image name"),
    (b'{"op": "info", "name": "x", "user": ["root"]}', "malformed request: `user` is not a string"),
])  # fmt: skip
def test_bad_requests(data: bytes, reason: str) -> None:
    from sifbox.security.store_protocol import ProtocolError, parse_request

    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.reason == reason


def test_what_a_client_writes_is_clipped_and_printable() -> None:
    from sifbox.security.store_protocol import MAX_SOURCE, ProtocolError, parse_request, shown

    assert shown("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert shown("x" * 500) == "x" * 97 + "..."
    req = parse_request(json.dumps({"op": "cp", "name": "a", "source": "s" * 10000}).encode())
    assert req.client_source == "s" * MAX_SOURCE + "...(cut)"
    assert parse_request(b'{"op": "cp", "name": "a", "source": {"x": 1}}').client_source == "<dict>"
    with pytest.raises(ProtocolError) as info:
        parse_request(json.dumps({"op": "cp", "name": "x\nforged line" + "y" * 200}).encode())
    assert "\n" not in info.value.reason and len(info.value.reason) < 140


@pytest.mark.parametrize("name, ok", [("alice", True), ("svc.build@EXAMPLE.ORG", True), ("a$", True),
                                      (".meta", False), ("", False), ("a/b", False), ("a\nb", False),
                                      ("x" * 256, False)])  # fmt: skip
def test_user_names_that_can_be_directories(name: str, ok: bool) -> None:
    from sifbox.security.store_protocol import valid_user_name

    assert valid_user_name(name) is ok


def test_default_limits_are_set() -> None:
    from sifbox.config import schema

    defaults = {d.name: d.default for d in schema.SCHEMA}
    assert defaults["store max size"] == 16384
    assert defaults["store max clients"] == 64 and defaults["store max clients per user"] == 8
    assert defaults["store client timeout"] == 10
    assert defaults["store sbom max size"] == 256 and defaults["store sbom max files"] == 20000
    unit = (Path(__file__).parents[2] / "sifbox/data/sifbox-store.service").read_text()
    assert "\nLimitNOFILE=4096\n" in unit


def test_busy_daemon_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sifbox.cli.commands import store as cli

    replies = [{"ok": False, "busy": True, "error": "busy"}] * 2 + [{"ok": True, "images": []}]
    monkeypatch.setattr(cli, "_exchange", lambda *a, **k: replies.pop(0))
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert cli.request("sock", {"op": "ls"}, verb="list") == {"ok": True, "images": []}
    replies[:] = [{"ok": False, "busy": True, "error": "the image store is busy"}] * 100
    with pytest.raises(StoreError, match="can't list: the image store is busy"):
        cli.request("sock", {"op": "ls"}, verb="list", patience=0)
