"""Capability names and what root's payload keeps."""

import pytest

from sifbox.runtime import caps
from sifbox.util.errors import UsageError


def test_parse_names() -> None:
    assert caps.parse("CAP_NET_RAW,sys_admin") == {13, 21}
    assert caps.parse("") == set()
    assert caps.parse("all") == set(range(len(caps.NAMES)))
    with pytest.raises(UsageError, match="unknown capability"):
        caps.parse("CAP_FLY")


def test_kept() -> None:
    assert caps.kept(keep_privs=False, no_privs=False, add=set(), drop=set()) == set()
    assert caps.kept(keep_privs=False, no_privs=False, add={13}, drop=set()) == {13}
    every = set(range(len(caps.NAMES)))
    assert caps.kept(keep_privs=True, no_privs=False, add=set(), drop={21}) == every - {21}
    assert caps.kept(keep_privs=True, no_privs=True, add={13}, drop=set()) == set()
