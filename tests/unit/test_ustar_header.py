"""Pass 2's own tar header writer gives tarfile's bytes (PAX format, no owner names), or
leaves the entry to tarfile when it needs a PAX record."""

from __future__ import annotations

import io
import itertools
import random
import tarfile

import pytest

from sifbox.oci.layers import TarWriter, ustar_header


def _tarfile(name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, link: str,
             major: int, minor: int) -> bytes:  # fmt: skip
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.uid, t.gid, t.uname, t.gname = kind, mode, uid, gid, "", ""
    t.size, t.mtime, t.linkname, t.devmajor, t.devminor = size, mtime, link, major, minor
    return t.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


KINDS = [tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
         tarfile.FIFOTYPE]  # fmt: skip
NAMES = ["a", "usr/bin/", "x" * 99, "y" * 100, "dir/" + "z" * 95, "sp ace/~!$'\"", "\x7f\x01ctl"]
NUMBERS = [0, 1, 0o7777, 0o7777777, 0o77777777777]


@pytest.mark.parametrize(("kind", "name"), list(itertools.product(KINDS, NAMES)))
def test_same_bytes_as_tarfile(kind: bytes, name: str) -> None:
    rng = random.Random(f"{kind!r}{name}")
    for _ in range(20):
        mode, uid, gid = rng.choice([0o644, 0o4755, 0o7777, 0]), rng.choice(NUMBERS[:4]), rng.choice(NUMBERS[:4])
        size, mtime = rng.choice(NUMBERS), rng.choice(NUMBERS)
        link = rng.choice(["", "target", "../" * 33 + "x", "l" * 100])
        major, minor = rng.choice([0, 1, 0o7777777]), rng.choice([0, 3, 0o7777777])
        args = (name, kind, mode, uid, gid, size, mtime, link, major, minor)
        if kind == tarfile.DIRTYPE and len(name) == 100:  # "/" added: 101 bytes, a PAX path
            assert ustar_header(*args) is None
            continue
        assert ustar_header(*args) == _tarfile(*args), args


@pytest.mark.parametrize("change", [
    {"name": "n" * 101}, {"name": "é"}, {"link": "l" * 101}, {"link": "ü"}, {"uid": 0o10000000}, {"gid": -1},
    {"size": 0o100000000000}, {"mtime": 0o100000000000}, {"kind": tarfile.GNUTYPE_SPARSE}, {"kind": b"Z"},
    {"kind": tarfile.CHRTYPE, "major": 0o10000000}, {"name": "d" * 100, "kind": tarfile.DIRTYPE},
])  # fmt: skip
def test_needs_pax_is_left_to_tarfile(change: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "f", "kind": tarfile.REGTYPE, "mode": 0o644, "uid": 0, "gid": 0, "size": 0,
                               "mtime": 0, "link": "", "major": 0, "minor": 0, **change}  # fmt: skip
    assert ustar_header(*args.values()) is None  # type: ignore[arg-type]


def test_writer_round_trips_through_tarfile() -> None:
    """What TarWriter writes (fast headers, and tarfile's for the rest) reads back as written."""
    buf = io.BytesIO()
    w = TarWriter(buf)
    src = tarfile.TarInfo("x")
    src.mode, src.uid, src.gid, src.mtime = 0o4755, 1234, 5678, 1_700_000_000
    w.header(src, "bin/tool", type_=tarfile.REGTYPE, size=3, linkname="")
    w.data(b"abc", 3)
    long = "d/" + "é" * 80
    w.header(src, long, type_=tarfile.REGTYPE, size=0, linkname="")
    src.pax_headers = {"SCHILY.xattr.user.k": "v", "comment": "dropped"}
    w.header(src, "xattr", type_=tarfile.REGTYPE, size=0, linkname="")
    w.close()
    buf.seek(0)
    with tarfile.open(fileobj=buf, mode="r:") as tf:
        got = tf.getmembers()
        assert [m.name for m in got] == ["bin/tool", long, "xattr"]
        assert (got[0].mode, got[0].uid, got[0].gid, got[0].mtime, got[0].size) == (0o4755, 1234, 5678, 1_700_000_000, 3)
        assert tf.extractfile(got[0]).read() == b"abc"  # type: ignore[union-attr]
        assert got[2].pax_headers == {"SCHILY.xattr.user.k": "v"}
