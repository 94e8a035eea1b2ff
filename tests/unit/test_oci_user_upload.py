"""Pure parts of OCI USER resolution (`--oci` mode) and of registry uploads."""

from __future__ import annotations

import pytest

from sifbox.oci.upload import _range_end, _repo_ok
from sifbox.runtime.ocimode import home_env, parse_user
from sifbox.util.errors import UsageError

PASSWD = "root:x:0:0::/root:/bin/sh\nalice:x:1234:5678::/home/alice:/bin/sh\nbroken:x:notanumber:1::/:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\n"


@pytest.mark.parametrize(("user", "want"), [
    ("alice", (1234, 5678)), ("1234", (1234, 5678)), ("4321", (4321, 0)), ("alice:staff", (1234, 50)),
    ("alice:77", (1234, 77)), ("9:9", (9, 9)), (" alice ", (1234, 5678)),
])  # fmt: skip
def test_parse_user(user: str, want: tuple[int, int]) -> None:
    assert parse_user(user, PASSWD, GROUP) == want


@pytest.mark.parametrize(("user", "message"), [
    ("bob", "no user `bob`"), ("alice:wheel", "no group `wheel`"), ("broken", "no user `broken`"),
    ("4294967296", "out of range"), (":0", "no user"), ("１２", "no user"),
])  # fmt: skip
def test_parse_user_refuses(user: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_user(user, PASSWD, GROUP)


def test_range_header() -> None:
    assert _range_end("0-65535") == 65535 and _range_end("bytes=0-9") == 9
    assert _range_end(None) is None and _range_end("5-9") is None and _range_end("0-" + "9" * 30) is None


def test_mount_source_names() -> None:
    assert _repo_ok("alice/app") and _repo_ok("a.b-c/d_e")
    assert not _repo_ok("../x") and not _repo_ok("A/b") and not _repo_ok("a//b") and not _repo_ok("a&mount=x")


@pytest.mark.parametrize(("oci", "custom", "image_user", "root", "want"), [
    ({"User": "alice"}, None, True, False, {}),  # the container's init takes alice's passwd home
    ({"User": "alice"}, None, False, True, {}),  # --fakeroot: root's passwd home
    ({"User": "root"}, None, False, False, {"HOME": "/home/me"}),  # USER root, run as the caller
    ({"User": "alice"}, "/work", True, False, {"HOME": "/work"}),
    ({"User": "  "}, None, False, False, {"HOME": "/home/me"}),
    ({"User": 7}, None, False, False, {"HOME": "/home/me"}),  # a hostile config: not a string
    ({}, None, False, False, {"HOME": "/home/me"}),
])  # fmt: skip
def test_home_env(oci: dict[str, object], custom: str | None, image_user: bool, root: bool,
                  want: dict[str, str]) -> None:  # fmt: skip
    assert home_env(oci, custom, "/home/me", image_user=image_user, root=root) == want
