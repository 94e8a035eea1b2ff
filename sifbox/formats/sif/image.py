"""Reading SIF images: header, descriptor table, object data.

`SifImage.load(fp)` reads and checks the fixed parts of an image from a
binary file object. Nothing read from the file is trusted: every size,
count and offset is checked against the real file size before it is used,
so a damaged or hostile file gives a `SifError`, never a huge read, a hang
or an unexpected exception.
"""

from __future__ import annotations

import io

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

from sifbox.formats.sif import constants as c
from sifbox.formats.sif.layout import (
    Descriptor,
    Header,
    dump_descriptor,
    dump_header,
    parse_descriptor,
    parse_header,
)
from sifbox.util.errors import ImageFormatError

CHUNK = 1 << 20


class SifError(ImageFormatError):
    """A SIF image is malformed, or an operation on it is not possible.

    The message is the reason only ("object 3 not found"); callers add the
    verb and the file name.
    """

    reference = "sif-error"


class ObjectNotFound(SifError):
    reference = "sif-object-not-found"


def file_size(fp: BinaryIO) -> int:
    pos = fp.tell()
    size = fp.seek(0, io.SEEK_END)
    fp.seek(pos)
    return size


def read_exact(fp: BinaryIO, offset: int, size: int) -> bytes:
    fp.seek(offset)
    buf = fp.read(size)
    if len(buf) != size:
        raise SifError(f"short read at offset {offset}: wanted {size} bytes, got {len(buf)}")
    return buf


def check_version(version: bytes) -> None:
    if version == c.VERSION:
        return
    text = version.split(b"\0", 1)[0].decode("ascii", "replace")
    if version[:2] == b"00":
        raise SifError(
            "incompatible SIF version `00` (a pre-1.0 draft of the format that no current tool reads)"
        )
    raise SifError(f"incompatible SIF version `{text}` (only version 01 exists)")


class SifImage:
    """A loaded SIF image bound to an open binary file object.

    The object keeps the raw bytes of every descriptor slot so that slots an
    operation does not change are written back byte for byte.
    """

    def __init__(self, fp: BinaryIO, header: Header, slots: list[bytes], size: int):
        self.fp = fp
        self.header = header
        self._slots = slots
        self.descriptors: list[Descriptor] = [parse_descriptor(s) for s in slots]
        self.size = size

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(cls, fp: BinaryIO) -> SifImage:
        size = file_size(fp)
        fp.seek(0)
        head = fp.read(c.HEADER_SIZE)
        if len(head) < 42:
            raise SifError(f"not a SIF image: the file is only {size} bytes long")
        if head[32:42] != c.MAGIC:
            raise SifError("not a SIF image: the SIF magic is missing")
        if len(head) < 45:
            raise SifError(f"truncated SIF header: the file is only {size} bytes long")
        check_version(head[42:45])
        if len(head) < c.HEADER_SIZE:
            raise SifError(f"truncated SIF header: the file is only {size} bytes long")
        header = parse_header(head)
        total, offset = header.descriptors_total, header.descriptors_offset
        if total < 0 or total > c.MAX_CAPACITY:
            raise SifError(f"malformed SIF header: invalid descriptor count {total}")
        if total > c.MAX_DESCRIPTORS:
            raise SifError(f"unsupported SIF image: {total} descriptors, sifbox reads at most "
                           f"{c.MAX_DESCRIPTORS}")  # fmt: skip
        if offset < 0:
            raise SifError(f"malformed SIF header: invalid descriptor table offset {offset}")
        table = total * c.DESCRIPTOR_SIZE
        if header.descriptors_size < table:
            raise SifError(
                f"malformed SIF header: a table of {total} descriptors needs {table} bytes, "
                f"the header says {header.descriptors_size}"
            )
        if table and offset + table > size:
            raise SifError(
                f"truncated SIF image: the descriptor table ({total} descriptors at offset "
                f"{offset}) ends past the end of the file ({size} bytes)"
            )
        raw = read_exact(fp, offset, table)
        slots = [raw[i : i + c.DESCRIPTOR_SIZE] for i in range(0, table, c.DESCRIPTOR_SIZE)]
        return cls(fp, header, slots, size)

    @classmethod
    def from_bytes(cls, data: bytes) -> SifImage:
        return cls.load(io.BytesIO(data))

    # -- queries -----------------------------------------------------------
    def objects(self) -> list[Descriptor]:
        """The used descriptors, in table order."""
        return [d for d in self.descriptors if d.used]

    @property
    def has_objects(self) -> bool:
        # The reference decides by the header counts, not by scanning.
        return self.header.descriptors_free != self.header.descriptors_total

    def get(self, object_id: int) -> Descriptor:
        for d in self.descriptors:
            if d.used and d.id == object_id:
                return d
        raise ObjectNotFound(f"object {object_id} not found")

    def find(self, select: Callable[[Descriptor], bool]) -> list[Descriptor]:
        return [d for d in self.descriptors if d.used and select(d)]

    def primary_partition(self) -> Descriptor | None:
        for d in self.descriptors:
            if d.is_primary_partition:
                return d
        return None

    def group(self, group_id: int) -> list[Descriptor]:
        return [d for d in self.descriptors if d.used and d.group_id == group_id]

    def groups(self) -> list[int]:
        return sorted({d.group_id for d in self.descriptors if d.used and d.group_id})

    # -- object data ---------------------------------------------------------
    def check_bounds(self, d: Descriptor) -> None:
        # An empty object may sit past the end of the file: writing zero
        # bytes at its offset does not extend the file (nor does it in Go).
        if d.offset < 0 or d.size < 0 or (d.size and d.offset + d.size > self.size):
            raise SifError(
                f"object {d.id} lies outside the file (offset {d.offset}, size {d.size}, "
                f"file size {self.size})"
            )

    def read(self, d: Descriptor, limit: int | None = None) -> bytes:
        """All bytes of object `d` (at most `limit` bytes, else an error)."""
        self.check_bounds(d)
        if limit is not None and d.size > limit:
            raise SifError(f"object {d.id} is {d.size} bytes, more than the {limit} allowed")
        return read_exact(self.fp, d.offset, d.size)

    def iter_chunks(self, d: Descriptor, chunk: int = CHUNK) -> Iterator[bytes]:
        """The bytes of object `d` in chunks, for large objects."""
        self.check_bounds(d)
        chunk = max(1, chunk)
        remaining, pos = d.size, d.offset
        while remaining:
            n = min(chunk, remaining)
            buf = read_exact(self.fp, pos, n)
            yield buf
            pos += n
            remaining -= n

    def digest(self, d: Descriptor, algorithm: str = "sha256") -> str:
        import hashlib

        h = hashlib.new(algorithm)
        for buf in self.iter_chunks(d):
            h.update(buf)
        return f"{algorithm}:{h.hexdigest()}"

    # -- raw state used by the writer ----------------------------------------
    def slot_bytes(self, index: int) -> bytes:
        return self._slots[index]

    def _set_slot(self, index: int, d: Descriptor) -> None:
        self._slots[index] = dump_descriptor(d)
        self.descriptors[index] = d

    def _clear_slot(self, index: int) -> None:
        self._slots[index] = bytes(c.DESCRIPTOR_SIZE)
        self.descriptors[index] = Descriptor()

    def _write_table_and_header(self) -> None:
        self.fp.seek(self.header.descriptors_offset)
        self.fp.write(b"".join(self._slots))
        self.fp.seek(0)
        self.fp.write(dump_header(self.header))
        self.fp.flush()
