"""The mount service's wire protocol (sifbox.runtime.mountsvc_protocol) and its shipped unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sifbox.runtime import mountsvc_protocol as proto

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize("op", proto.OPS)
def test_requests_round_trip(op: str) -> None:
    assert proto.parse_request(proto.encode_request(op)) == op


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "malformed request"),
    (b"\xff\xfe garbage", "malformed request"),
    (b"[1, 2]", "malformed request"),
    (b'"mount"', "malformed request"),
    (b"[" * 100000 + b"]" * 100000, "request too large"),
    (b"[" * 2000 + b"]" * 2000, "malformed request"),  # deep, small: RecursionError is no crash
    (b'{"op": "umount"}', "unknown request `umount`"),
    (b'{"op": {"x": 1}}', "unknown request `<dict>`"),
    (b'{"op": "mount\\n\\u001b[31m"}', "unknown request `mount\\n\\x1b[31m`"),
    (b'{"op": "' + b"a" * 100 + b'"}', "unknown request `" + "a" * 37 + "...`"),
    (b"{" + b" " * proto.MAX_REQUEST + b"}", "request too large"),
])  # fmt: skip
def test_hostile_requests_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(proto.ProtocolError) as err:
        proto.parse_request(data)
    assert err.value.reason.split(" (")[0] == reason


def test_the_request_names_no_path() -> None:
    """Fields other than `op` are ignored: what to mount is the descriptor, never a path."""
    assert proto.parse_request(json.dumps({"op": "mount", "path": "/etc/shadow", "uid": 0}).encode()) == "mount"


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"error": "x"}', b'{"ok": "yes"}'])
def test_bad_replies_are_no_answer(data: bytes) -> None:
    with pytest.raises(proto.ProtocolError, match="gave no answer"):
        proto.parse_reply(data)


def test_replies_round_trip() -> None:
    reply = {"ok": True, "path": "/run/sifbox-mount/1000/ab", "dev": 1793}
    assert proto.parse_reply(proto.encode_reply(reply)) == reply


def test_the_unit_keeps_the_host_mount_namespace() -> None:
    """Its mounts are for every user: no systemd option that gives it a mount namespace."""
    unit = (REPO / "sifbox/data/sifbox-mount.service").read_text()
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if line and not line.startswith(("#", "["))]
    for option in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateDevices", "ReadWritePaths",
                   "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "MountFlags",
                   "PrivateMounts", "RootDirectory", "User", "DynamicUser"):  # fmt: skip
        assert option not in settings, option
    assert "ExecStart=/usr/local/bin/sifbox mounts serve" in unit
    assert "ExecStopPost=/bin/sh /usr/local/libexec/sifbox/sifbox-mount.sh" in unit


@pytest.mark.parametrize("data", [b'{"ok": true} junk', b'{"ok": NaN}', b'{"ok": true, "n": Infinity}', b"  ",
                                  b'{"ok": true, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"])  # fmt: skip
def test_the_launch_side_reader_is_strict(data: bytes) -> None:
    """The launch reads replies with the C scanner alone (no `json`, no `re` to import)."""
    with pytest.raises(proto.ProtocolError, match="gave no answer"):
        proto.parse_reply(data)


def test_the_launch_side_imports_no_json() -> None:
    import subprocess
    import sys

    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from sifbox.runtime import mountsvc_protocol as p; "
            "p.parse_reply(b'{\"ok\": true}'); p.encode_request('mount'); "
            "print(sorted(m for m in ('json', 're', 'socket') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout  # fmt: skip
    assert out.strip() == "[]"
