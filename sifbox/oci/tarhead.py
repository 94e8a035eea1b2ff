"""Tar headers read fast, with exactly the results of `tarfile`.

Pass 1 reads every header of every layer: tens of thousands of ustar blocks, most behind a PAX
extended header. `tarfile` spends most of its time there in generic code (two checksums per
block, one call per number field, a regular expression per PAX record). `FastTarInfo` is the
`tarinfo` class a `TarFile` is opened with: its `fromtarfile` reads the common headers itself,
an ustar block of a built-in type with octal numbers and a good checksum, alone or after one
PAX extended header ('x') whose records are well formed, UTF-8, and canonical numbers.

Anything else about an entry (GNU long names and sparse files, global headers, 'hdrcharset',
base-256 or negative numbers, a bad or signed checksum, an unknown type, a short or all-zero
block, a PAX record tarfile would reject or read another way) hands the entry back to
`tarfile`: the blocks read so far are replayed to `TarInfo.fromtarfile`, which then reads the
rest of the entry as it always does. `TarFile.next` (skipping data, the end of the archive, its
errors) is tarfile's own either way, so a layer is read the same, and refused the same.
"""

from __future__ import annotations

import struct
import tarfile
from typing import Any

BLOCK = tarfile.BLOCKSIZE
_SIMPLE = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE,
                     tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE))  # fmt: skip
_DATA = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))  # their data follows
#: A PAX extended header larger than this is left to tarfile (it reads it the same way).
MAX_PAX = 64 * 1024
_PAX_INT = ("size", "uid", "gid")
_PAX_NAMES = {"path": "name", "linkpath": "linkname", "uname": "uname", "gname": "gname"}


class _Unusual(Exception):
    """An entry the fast reader leaves to tarfile."""


_FIELDS = struct.Struct("100s8s8s8s12s12s8s1s100s8x32s32s8s8s155s12x")


def _fields(buf: bytes) -> tuple[Any, ...]:
    """The fields of the ustar block `buf` (numbers parsed), when `TarInfo.frombuf` reads it
    the common way: octal numbers (tarfile reads a field up to its first NUL; `int` here
    accepts less than tarfile's `str.strip` + `int`, never more, and the rest is unusual)."""
    if len(buf) != BLOCK:
        raise _Unusual
    (name, mode, uid, gid, size, mtime, chksum, type_, linkname, uname, gname, devmajor, devminor,
     prefix) = _FIELDS.unpack(buf)  # fmt: skip
    try:
        numbers = (int(mode.partition(b"\0")[0] or b"0", 8), int(uid.partition(b"\0")[0] or b"0", 8),
                   int(gid.partition(b"\0")[0] or b"0", 8), int(size.partition(b"\0")[0] or b"0", 8),
                   int(mtime.partition(b"\0")[0] or b"0", 8), int(devmajor.partition(b"\0")[0] or b"0", 8),
                   int(devminor.partition(b"\0")[0] or b"0", 8))  # fmt: skip
        checksum = int(chksum.partition(b"\0")[0] or b"0", 8)
    except ValueError:  # (base-256, spaces only, ...)
        raise _Unusual from None
    if min(numbers) < 0 or sum(buf) - sum(chksum) + 256 != checksum:
        raise _Unusual  # (a bad checksum, a signed one, all zeros: the end of the archive)
    if type_ not in _SIMPLE and type_ != tarfile.XHDTYPE:
        raise _Unusual
    return (name, *numbers, checksum, type_, linkname, uname, gname, prefix)


def _ustar(cls: type[FastTarInfo], fields: tuple[Any, ...], encoding: str, errors: str) -> FastTarInfo:
    """The entry of a ustar block's `_fields`, as `TarInfo.frombuf` makes it."""
    name, mode, uid, gid, size, mtime, devmajor, devminor, chksum, type_, linkname, uname, gname, prefix = fields
    obj = cls()
    obj.mode, obj.uid, obj.gid, obj.size, obj.mtime = mode, uid, gid, size, mtime
    obj.devmajor, obj.devminor, obj.chksum = devmajor, devminor, chksum
    obj.linkname = linkname.partition(b"\0")[0].decode(encoding, errors)
    obj.uname = uname.partition(b"\0")[0].decode(encoding, errors)
    obj.gname = gname.partition(b"\0")[0].decode(encoding, errors)
    text = name.partition(b"\0")[0].decode(encoding, errors)
    if type_ == tarfile.AREGTYPE and text.endswith("/"):
        type_ = tarfile.DIRTYPE
    obj.type = type_
    if type_ == tarfile.DIRTYPE:
        text = text.rstrip("/")
    if prefix[0]:
        text = prefix.partition(b"\0")[0].decode(encoding, errors) + "/" + text
        if type_ == tarfile.DIRTYPE:
            text = text.rstrip("/")
    obj.name = text
    return obj


def _canonical_int(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) < 19


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a PAX extended header, when each is well formed and plain."""
    records: dict[str, str] = {}
    pos = 0
    end = len(data)
    while pos < end and data[pos] != 0:
        sp = data.find(b" ", pos, pos + 21)
        digits = data[pos:sp]
        if sp == -1 or not digits.isdigit():
            raise _Unusual
        length = int(digits)
        last = pos + length - 1
        if length < 5 or pos + length > end or data[last] != 0x0A:
            raise _Unusual
        raw_key, eq, raw_value = data[sp + 1 : last].partition(b"=")
        if not raw_key or not eq:
            raise _Unusual
        try:
            key = raw_key.decode("utf-8")
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unusual from None
        if key == "hdrcharset" or key.startswith("GNU.sparse."):
            raise _Unusual
        if key in _PAX_INT and not _canonical_int(value):
            raise _Unusual
        if key == "mtime":
            whole, _, frac = value.partition(".")
            if not _canonical_int(whole) or (frac and not (frac.isascii() and frac.isdigit())):
                raise _Unusual
        records[key] = value
        pos += length
    return records


class _ReplayFile:
    """A tar stream that first gives back the reads already made, as they were (a short one
    included: the stream had ended), then reads on."""

    def __init__(self, raw: Any, reads: list[tuple[int, bytes]]):
        self._raw = raw
        self._reads = reads

    def read(self, n: int = -1) -> bytes:
        if not self._reads:
            return self._raw.read(n)  # type: ignore[no-any-return]
        asked, got = self._reads[0]
        if n == asked:
            del self._reads[0]
            return got
        raise tarfile.StreamError("a header read again another way")  # (tarfile reads as this module)

    def tell(self) -> int:
        return self._raw.tell() - sum(len(got) for _, got in self._reads)  # type: ignore[no-any-return]

    def seek(self, pos: int) -> None:
        if self._reads:
            raise tarfile.StreamError("seeking while replaying a header")
        self._raw.seek(pos)


class _Replay:
    """The `TarFile` as tarfile's own header code sees it: the same, but its stream replays
    `reads` first."""

    def __init__(self, tf: Any, reads: list[tuple[int, bytes]]):
        object.__setattr__(self, "_tf", tf)
        object.__setattr__(self, "fileobj", _ReplayFile(tf.fileobj, reads))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tf, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tf, name, value)


class FastTarInfo(tarfile.TarInfo):
    """`tarfile.TarInfo`, read from a tar stream by the fast path where it can."""

    @classmethod
    def fromtarfile(cls, tarfile: Any) -> FastTarInfo:
        fo = tarfile.fileobj
        reads: list[tuple[int, bytes]] = []
        try:
            if tarfile.pax_headers:
                raise _Unusual  # global headers apply: tarfile's order of updates
            buf = fo.read(BLOCK)
            reads.append((BLOCK, buf))
            offset = fo.tell() - BLOCK
            fields = _fields(buf)
            if fields[9] == b"x":
                size = fields[4]
                if size > MAX_PAX:
                    raise _Unusual
                blocks = -(-size // BLOCK) * BLOCK
                data = fo.read(blocks)
                reads.append((blocks, data))
                if len(data) != blocks:
                    raise _Unusual
                records = _pax_records(data)
                buf = fo.read(BLOCK)
                reads.append((BLOCK, buf))
                fields = _fields(buf)
                if fields[9] == b"x":
                    raise _Unusual
            else:
                records = None
            obj = _ustar(cls, fields, tarfile.encoding, tarfile.errors)
        except _Unusual:
            again = _Replay(tarfile, reads) if reads else tarfile
            return super().fromtarfile(again)  # type: ignore[arg-type]
        obj.offset = offset
        obj.offset_data = data_at = fo.tell()
        size = obj.size
        if records is not None:
            pax: dict[str, str] = {}
            for key, value in records.items():
                pax[key] = value
                if key in _PAX_NAMES:
                    if key == "path":
                        value = value.rstrip("/")
                    setattr(obj, _PAX_NAMES[key], value)
                elif key in _PAX_INT:
                    setattr(obj, key, int(value))
                elif key == "mtime":
                    obj.mtime = float(value)
            obj.pax_headers = pax
            if "size" in pax:
                size = obj.size
        tarfile.offset = data_at + (-(-size // BLOCK) * BLOCK if obj.type in _DATA else 0)
        return obj
