"""sifbox.formats.hkp: keyserver URIs, key selectors, the machine-readable index and
Apptainer's `key search` table (tabwriter alignment), with hostile answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sifbox.formats import hkp


def when(t: int) -> str:
    return f"T{t}"


@pytest.mark.parametrize(("uri", "base"), [
    ("hkp://keys.example.org", "http://keys.example.org:11371"),
    ("hkp://keys.example.org:80", "http://keys.example.org:80"),
    ("hkps://keys.example.org", "https://keys.example.org"),
    ("https://keys.example.org/", "https://keys.example.org"),
    ("http://127.0.0.1:8000/base/", "http://127.0.0.1:8000/base"),
    ("hkp://[::1]", "http://[::1]:11371"),
])  # fmt: skip
def test_normalize_uri(uri: str, base: str) -> None:
    assert hkp.normalize_uri(uri).base == base


@pytest.mark.parametrize("uri", ["ftp://x", "keys.example.org", "hkp://", "http://u:p@host", "http://h/?q=1",
                                 "http://h:99999", "http://h:x", "hkp://a b"])  # fmt: skip
def test_normalize_uri_refuses(uri: str) -> None:
    with pytest.raises(hkp.HkpError):
        hkp.normalize_uri(uri)


def test_same_keyserver() -> None:
    assert hkp.same_keyserver("hkp://h", "http://h:11371")
    assert hkp.same_keyserver("hkps://H", "https://h/")
    assert not hkp.same_keyserver("hkp://h", "https://h")
    assert not hkp.same_keyserver("junk", "junk")


def test_key_selector() -> None:
    fpr = "BB7BD8D175854F4FFC62CD7272133BC62CDC12D0"
    assert hkp.key_selector(fpr.lower()) == fpr
    assert hkp.key_selector("0x" + fpr[-16:]) == fpr[-16:]
    assert hkp.key_selector("BB7B D8D1 7585 4F4F FC62  CD72 7213 3BC6 2CDC 12D0") == fpr
    for bad in ("", "0x", "XYZ", fpr[:-1], fpr + "0", "12345678", "Z" * 40):
        if bad == "12345678":
            assert hkp.key_selector(bad) == bad
            with pytest.raises(hkp.HkpError):
                hkp.key_selector(bad, (16, 40))
            continue
        with pytest.raises(hkp.HkpError):
            hkp.key_selector(bad)


def test_search_term() -> None:
    assert hkp.search_term("2CDC12D0") == "0x2CDC12D0"
    assert hkp.search_term("2cdc12d0") == "2cdc12d0"  # as Apptainer: upper case only
    assert hkp.search_term("joe@example.org") == "joe@example.org"


INDEX = """info:1:2
pub:BB7BD8D175854F4FFC62CD7272133BC62CDC12D0:1:4096:1700000000::
uid:Joe User (demo) <joe@example.org>:1700000000::
uid:Joe%3A%20Second <j2@example.org>:::
pub:0123456789ABCDEF0123456789ABCDEF01234567:22:256:1700000001:1800000000:r
"""


def test_format_short() -> None:
    index = hkp.parse_index(INDEX)
    assert index.declared == 2 and len(index.keys) == 2
    assert hkp.format_index(index, False, when) == (
        "KEY ID    BITS  NAME/EMAIL\n"
        "2CDC12D0  4096  Joe User (demo) <joe@example.org>\n"
        "                Joe: Second <j2@example.org>\n"
        "\n"
        "01234567  256  \n"
    )


def test_format_long() -> None:
    out = hkp.format_index(hkp.parse_index(INDEX), True, when)
    assert out.splitlines() == [
        "FINGERPRINT                               ALGORITHM  BITS  CREATION DATE  EXPIRATION DATE  STATUS     NAME/EMAIL",
        "BB7BD8D175854F4FFC62CD7272133BC62CDC12D0  RSA        4096  T1700000000                     [enabled]  Joe User (demo) <joe@example.org>",
        "                                                                                                      Joe: Second <j2@example.org>",
        "",
        "0123456789ABCDEF0123456789ABCDEF01234567  unknown  256  T1700000001  T1800000000  [revoked]  ",
    ]


def test_hostile_index() -> None:
    # control characters never reach the terminal; a uid before any pub is ignored
    index = hkp.parse_index("uid:orphan:::\npub:AB:1:1:x::\nuid:evil%1b[2Jname\x07:::\n")
    assert index.keys[0].uids == ["evil\ufffd[2Jname\ufffd"]
    assert "\x1b" not in hkp.format_index(index, True, when)
    with pytest.raises(hkp.HkpError):
        hkp.parse_index("info:1:lots\n")
    with pytest.raises(hkp.HkpError):
        hkp.format_index(hkp.parse_index("pub:AB:rsa:1:::\n"), True, when)
    many = "".join(f"pub:{i:040X}:1:1:::\nuid:u{i}:::\n" for i in range(hkp.MAX_KEYS + 5))
    index = hkp.parse_index(many)
    assert len(index.keys) == hkp.MAX_KEYS and index.dropped == 5
    index = hkp.parse_index("pub:AB:1:1:::\n" + "uid:x:::\n" * 1000)
    assert len(index.keys[0].uids) == hkp.MAX_UIDS
    assert len(hkp.parse_index("pub:" + "A" * 100000 + ":1:1\n").keys[0].keyid) == hkp.MAX_FIELD


@given(st.text(max_size=400))
def test_any_index(text: str) -> None:
    try:
        index = hkp.parse_index(text)
        hkp.format_index(index, False, when)
        hkp.format_index(index, True, when)
    except hkp.HkpError:
        pass


def test_tabwrite_blocks() -> None:
    # a row with fewer cells ends a column block, as in Go's text/tabwriter
    assert hkp.tabwrite([["a", "b", "c"], ["aaaa", "b", "c"], [""], ["a", "bbb", "c"]]) == (
        "a     b  c\naaaa  b  c\n\na  bbb  c\n")
