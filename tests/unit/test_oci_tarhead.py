"""The fast tar header reader of pass 1 gives exactly tarfile's entries, errors and end of
archive, on well-formed and hostile layer tars alike; it leaves any unusual entry to tarfile."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sifbox.oci import layers, tarhead
from sifbox.oci.layers import LayerError

FIELDS = ("name", "type", "size", "mode", "uid", "gid", "mtime", "linkname", "uname", "gname", "devmajor",
          "devminor", "offset", "offset_data", "pax_headers", "chksum", "sparse")  # fmt: skip
BLOCK = tarfile.BLOCKSIZE


def outcome(data: bytes, cls: type[tarfile.TarInfo]) -> list[Any]:
    """Every entry `open_tar` + `iter_members` read from `data` with header class `cls`, then
    the error that ended the read (or None)."""
    out: list[Any] = []
    stream = layers._EndsOnce(io.BufferedReader(io.BytesIO(data)), "t")  # type: ignore[arg-type]
    try:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=cls)  # type: ignore[call-overload]  # noqa: SIM115
        except (tarfile.TarError, ValueError) as err:
            raise LayerError(f"not a tar archive ({err})") from None
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, ValueError) as err:
                raise LayerError(f"corrupt tar data ({err})") from None
            if m is None:
                break
            tf.members = []
            out.append(tuple(getattr(m, f) for f in FIELDS))
        out.append(None)
    except LayerError as err:
        out.append(("error", str(err)))
    return out


def same(data: bytes) -> list[Any]:
    fast = outcome(data, tarhead.FastTarInfo)
    assert repr(fast) == repr(outcome(data, tarfile.TarInfo))  # (repr: a NaN mtime is one too)
    return fast


def member(name: str, fmt: int = tarfile.PAX_FORMAT, data: bytes = b"", **attrs: Any) -> bytes:
    t = tarfile.TarInfo(name)
    t.size = len(data)
    for k, v in attrs.items():
        setattr(t, k, v)
    pad = -len(data) % BLOCK
    return t.tobuf(fmt, "utf-8", "surrogateescape") + data + bytes(pad)


def pax(records: bytes, then: bytes) -> bytes:
    """A PAX extended header of raw `records`, before the ustar block(s) `then`."""
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(records)
    return head.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % BLOCK) + then


def record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


END = bytes(2 * BLOCK)
PLAIN = member("usr/bin/tool", mode=0o755, uid=0, gid=0, mtime=1700000000, data=b"#!/bin/sh\n")


def set_field(block: bytes, start: int, value: bytes) -> bytes:
    """`block` with one field replaced, and its checksum made right again."""
    b = bytearray(block[:start] + value + block[start + len(value) :])
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def test_common_layer_is_read_without_tarfile(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(200):
            t = tarfile.TarInfo(f"usr/lib/p{i}/" + "m" * (i % 150) + ".py")
            t.type = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE][i % 4]
            t.linkname = "" if i % 4 < 2 else "usr/lib/p0/target" + "é" * (i % 3)
            t.size = i * 7 if i % 4 == 0 else 0
            t.mtime = 1700000000.25 if i % 3 else 1700000000
            t.pax_headers = {"SCHILY.xattr.user.k": "v", "atime": "1.5"} if i % 5 == 0 else {}
            tf.addfile(t, io.BytesIO(b"d" * t.size))
    calls = []
    real = tarfile.TarInfo.frombuf.__func__  # type: ignore[attr-defined]

    def counting(cls: type, buf: bytes, *a: Any) -> Any:
        calls.append(buf[156:157])
        return real(cls, buf, *a)

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(counting))
    read = same(buf.getvalue())
    assert len(read) == 201 and read[-1] is None
    calls.clear()
    outcome(buf.getvalue(), tarhead.FastTarInfo)
    assert calls == [b"\0"]  # only the end-of-archive block goes to tarfile


HOSTILE = {
    "empty": b"",
    "one zero block": bytes(BLOCK),
    "short final block": PLAIN + b"\0" * 100,
    "garbage after the end": PLAIN + END + b"garbage" * 100,
    "no end blocks": PLAIN,
    "truncated header": PLAIN[:300],
    "truncated data": PLAIN[: BLOCK + 3],
    "bad checksum": set_field(PLAIN, 0, b"x")[:148] + b"0000000\0" + PLAIN[156:] + END,
    "signed checksum": member("caf\u00e9", tarfile.USTAR_FORMAT) + END,
    "base-256 size": set_field(PLAIN[:BLOCK], 124, b"\x80" + bytes(10) + b"\x0a") + b"x" * BLOCK + END,
    "base-256 huge size": set_field(PLAIN[:BLOCK], 124, b"\xff" * 12) + END,
    "negative octal size": set_field(PLAIN[:BLOCK], 124, b"-0000000001\0") + END,
    "size beyond the stream": set_field(PLAIN[:BLOCK], 124, b"77777777777\0") + b"x" * BLOCK,
    "spaces in a number": set_field(PLAIN[:BLOCK], 100, b" 755   \0") + PLAIN[BLOCK:] + END,
    "digits after a NUL": set_field(PLAIN[:BLOCK], 100, b"755\0 777") + PLAIN[BLOCK:] + END,
    "non-octal number": set_field(PLAIN[:BLOCK], 108, b"0000009\0") + PLAIN[BLOCK:] + END,
    "gnu long name": member("n" * 300, tarfile.GNU_FORMAT, data=b"x") + END,
    "gnu long link": member("l", tarfile.GNU_FORMAT, type=tarfile.SYMTYPE, linkname="t" * 200) + END,
    "ustar prefix": member("d" * 120 + "/f", tarfile.USTAR_FORMAT) + END,
    "ustar prefix of a directory": member("d" * 120 + "/e/", tarfile.USTAR_FORMAT, type=tarfile.DIRTYPE) + END,
    "old directory": set_field(member("olddir/", tarfile.USTAR_FORMAT), 156, b"\0") + END,
    "unknown type": set_field(PLAIN[:BLOCK], 156, b"Z") + PLAIN[BLOCK:] + END,
    "devices": member("dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    + member("dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0)
    + member("fifo", type=tarfile.FIFOTYPE)
    + END,
    "whiteouts": member("etc/.wh.passwd") + member("var/.wh..wh..opq") + END,
    "global header": tarfile.TarInfo.create_pax_global_header({"comment": "x", "uid": "7"}) + PLAIN + END,
    "hdrcharset": pax(record(b"hdrcharset", b"BINARY") + record(b"path", b"\xff\xfe"), PLAIN) + END,
    "non-utf-8 path": pax(record(b"path", b"caf\xe9"), PLAIN) + END,
    "non-utf-8 key": pax(record(b"k\xff", b"v"), PLAIN) + END,
    "pax size bigger": pax(record(b"size", b"10000"), PLAIN) + END,
    "pax size huge": pax(record(b"size", b"1" + b"0" * 30), PLAIN) + END,
    "pax size negative": pax(record(b"size", b"-5"), PLAIN) + END,
    "pax size not a number": pax(record(b"size", b"abc"), PLAIN) + END,
    "pax size with underscore": pax(record(b"size", b"1_0"), PLAIN) + END,
    "pax size with spaces": pax(record(b"size", b" 10 "), PLAIN) + END,
    "pax uid unicode digits": pax(record(b"uid", "\u0661".encode()), PLAIN) + END,
    "pax mtime odd": pax(record(b"mtime", b"1e9") + record(b"atime", b"x"), PLAIN) + END,
    "pax mtime nan": pax(record(b"mtime", b"nan"), PLAIN) + END,
    "pax mtime fraction": pax(record(b"mtime", b"1700000000.123456789"), PLAIN) + END,
    "pax path and link": pax(record(b"path", b"a/b///") + record(b"linkpath", b"../../x"), PLAIN) + END,
    "pax duplicate keys": pax(record(b"path", b"one") + record(b"uid", b"1") + record(b"path", b"two"), PLAIN)
    + END,
    "pax sparse keys": pax(record(b"GNU.sparse.map", b"0,1") + record(b"GNU.sparse.size", b"1"), PLAIN) + END,
    "pax bad length": pax(b"99 path=a\n", PLAIN) + END,
    "pax short length": pax(b"3 a\n", PLAIN) + END,
    "pax no newline": pax(b"9 path=ab", PLAIN) + END,
    "pax no equals": pax(b"8 pathab\n", PLAIN) + END,
    "pax empty key": pax(b"6 =abc\n", PLAIN) + END,
    "pax 21 digits": pax(b"0" * 19 + b"30 path=abcdefghi\n", PLAIN) + END,
    "pax NUL padding": pax(record(b"path", b"p") + b"\0\0\0", PLAIN) + END,
    "pax then pax": pax(record(b"path", b"p"), pax(record(b"uid", b"5"), PLAIN)) + END,
    "pax then gnu long name": pax(record(b"uid", b"5"), member("n" * 200, tarfile.GNU_FORMAT)) + END,
    "pax then nothing": pax(record(b"path", b"p"), b""),
    "pax then zeros": pax(record(b"path", b"p"), END),
    "pax then bad checksum": pax(record(b"path", b"p"), PLAIN[:148] + b"1234567\0" + PLAIN[156:]) + END,
    "pax huge header": pax(record(b"comment", b"c" * 70000), PLAIN) + END,
    "pax header truncated": pax(record(b"comment", b"c" * 2000), PLAIN)[:1500],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_read_as_tarfile_reads_them(name: str) -> None:
    same(HOSTILE[name])


def test_size_beyond_the_stream_is_refused() -> None:
    assert same(HOSTILE["size beyond the stream"])[-1] == ("error", "can't read t: the tar data ends inside a member")
    assert same(pax(record(b"size", b"1" + b"0" * 20), PLAIN))[-1][0] == "error"


# -- generated archives --------------------------------------------------------------------
NAMES = st.sampled_from(["a", "dir/", "usr/bin/x", ".wh.gone", "d/.wh..wh..opq", "n" * 99, "m" * 101,
                         "p" * 130 + "/q", "caf\u00e9", "bad\udcff", "./lead", "/abs", "../up", "sp ace"])  # fmt: skip
TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"])  # fmt: skip
NUMBERS = st.sampled_from([0, 1, 0o755, 65534, 2**21, 2**33, 2**40])


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]))
    t = tarfile.TarInfo(draw(NAMES))
    t.type = draw(TYPES)
    t.uid, t.gid, t.mode = draw(NUMBERS), draw(NUMBERS), draw(st.sampled_from([0o644, 0o7777, 0]))
    t.mtime = draw(st.sampled_from([0, 1700000000, 1700000000.5, 2**34]))
    t.linkname = draw(st.sampled_from(["", "target", "l" * 120, "caf\u00e9"]))
    t.devmajor, t.devminor = draw(st.sampled_from([0, 8, 0o7777777])), draw(st.sampled_from([0, 1]))
    if fmt == tarfile.PAX_FORMAT:
        t.pax_headers = draw(st.dictionaries(st.sampled_from(["SCHILY.xattr.user.a", "atime", "comment", "uid"]),
                                             st.sampled_from(["1", "v", "", "\u00e9"]), max_size=2))  # fmt: skip
    data = draw(st.binary(max_size=700)) if t.type in (tarfile.REGTYPE, tarfile.AREGTYPE, b"Z") else b""
    t.size = len(data)
    try:
        head = t.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:  # a number or name this format cannot hold
        head = tarfile.TarInfo("fallback").tobuf(tarfile.USTAR_FORMAT)
        data = b""
    return head + data + bytes(-len(data) % BLOCK)


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.one_of(entries(), st.sampled_from(list(HOSTILE.values()))), max_size=6))
    data = bytearray(b"".join(parts) + draw(st.sampled_from([b"", bytes(BLOCK), END, END + b"junk", b"\0" * 10])))
    for pos, value in draw(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=3)):
        if pos < len(data):
            data[pos] = value
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut])


@settings(max_examples=400)
@given(archives())
def test_generated_archives_read_as_tarfile_reads_them(data: bytes) -> None:
    same(data)
