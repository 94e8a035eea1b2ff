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


def test_the_bounding_set_is_emptied_up_to_the_kernels_last_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every capability of the kernel but those kept is dropped from the bounding set, and the
    first that doesn't exist (EINVAL) ends it: those above don't either (no call more each)."""
    import errno

    from sifbox.runtime.sandbox import syscalls as sc

    last = 40  # as /proc/sys/kernel/cap_last_cap on Linux 5.9 and later
    dropped: list[int] = []

    def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
        assert option == sc.PR_CAPBSET_DROP
        dropped.append(arg2)
        if arg2 > last:
            raise OSError(errno.EINVAL, "Invalid argument")

    capset: list[object] = []
    monkeypatch.setattr(sc, "prctl", prctl)
    monkeypatch.setattr(sc, "_capget", lambda: ("hdr", [sc._CapData(1, 2, 3), sc._CapData(4, 5, 6)]))
    monkeypatch.setattr(sc._Libc, "capset", lambda hdr, data: capset.append([d.inheritable for d in data]) or 0)
    monkeypatch.setattr(sc._ctypes, "byref", lambda x: x)
    sc.drop_all_capabilities(frozenset({0, 1, 21}))
    assert dropped == [c for c in range(last + 2) if c not in (0, 1, 21)]
    assert capset == [[0, 0]]
