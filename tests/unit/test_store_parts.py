"""Pure parts of the admission store: ACL encoding, image names, the client's errors."""

from __future__ import annotations

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
