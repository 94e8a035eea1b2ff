"""Writing SIF images: create, add, delete, set primary partition, set metadata.

The operations follow the reference semantics of spec section 5 so that the
bytes written equal those of the reference tools. Each operation checks
everything it can before the first byte is written; then it writes object
data first and the descriptor table and header last, so an interrupted
operation leaves the previous table in force.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import time as _time
import uuid
from collections.abc import Callable, Iterable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

from sifbox.formats.sif import constants as c
from sifbox.formats.sif.image import CHUNK, ObjectNotFound, SifError, SifImage, file_size
from sifbox.formats.sif.layout import (
    Descriptor,
    Header,
    dump_header,
    fits_int64,
    pad_extra,
    parse_descriptor,
)

_OCI_TYPES = (c.DataType.OCI_BLOB, c.DataType.OCI_ROOT_INDEX)
#: Largest alignment accepted (1 GiB); alignment <= 0 means none.
MAX_ALIGNMENT = 1 << 30


@dataclasses.dataclass
class ObjectInput:
    """A new data object: its bytes and how to describe it.

    `data` is bytes or a readable binary file object (read to its end, or
    `size` bytes when given). `group_id` 0 means no group. `link` is the raw
    link value: use `link_object()` / `link_group()`. `alignment` None means
    the default (4096 for partitions, none otherwise). `extra` None means
    the type's default metadata (computed digest for OCI objects, zeros
    otherwise). `time` None means the operation's time.
    """

    data_type: int
    data: bytes | BinaryIO = b""
    size: int | None = None
    group_id: int = 1
    link: int = 0
    alignment: int | None = None
    name: bytes = b""
    extra: bytes | None = None
    time: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.name, str):  # accept text for convenience
            self.name = self.name.encode("utf-8")
        if len(self.name) > c.NAME_SIZE:
            raise SifError(f"object name is {len(self.name)} bytes, at most {c.NAME_SIZE} fit")
        if not -(2**31) <= self.data_type < 2**31:
            raise SifError(f"invalid data type {self.data_type}")
        if self.time is not None:
            check_time(self.time)
        if self.alignment is not None and self.alignment > MAX_ALIGNMENT:
            raise SifError(f"alignment {self.alignment} is larger than {MAX_ALIGNMENT}")
        if self.size is not None and self.size < 0:
            raise SifError(f"invalid object size {self.size}")
        if not 0 <= self.group_id <= c.MAX_GROUP:
            raise SifError(f"invalid group ID {self.group_id}")
        if not 0 <= self.link <= 0xFFFFFFFF:
            raise SifError(f"invalid link {self.link}")
        if self.extra is not None:
            try:
                self.extra = pad_extra(self.extra)
            except ValueError as err:
                raise SifError(str(err)) from None
        if self.data_type == c.DataType.PARTITION and self.extra is not None:
            _, _, arch = Descriptor(extra=self.extra).partition()
            if arch not in c.ARCH_NAMES:
                raise SifError("unknown architecture in partition metadata")

    @property
    def effective_alignment(self) -> int:
        if self.alignment is not None:
            return self.alignment
        return c.PARTITION_ALIGNMENT if self.data_type == c.DataType.PARTITION else 0

    @property
    def is_primary_partition(self) -> bool:
        return (
            self.data_type == c.DataType.PARTITION
            and self.extra is not None
            and Descriptor(extra=self.extra).partition()[1] == c.PartType.PRIMSYS
        )


def link_object(object_id: int) -> int:
    if not 0 < object_id <= 0xFFFFFFFF:
        raise SifError(f"invalid object ID {object_id}")
    return object_id


def link_group(group_id: int) -> int:
    if not 0 < group_id <= c.MAX_GROUP:
        raise SifError(f"invalid group ID {group_id}")
    return group_id | c.GROUP_MASK


def check_time(t: int) -> int:
    if not fits_int64(t):
        raise SifError(f"time {t} does not fit in a SIF time field")
    return t


def now() -> int:
    """Current time, or SOURCE_DATE_EPOCH when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return check_time(int(epoch))
        except (ValueError, SifError):
            raise SifError(f"SOURCE_DATE_EPOCH `{epoch}` is not a valid Unix time") from None
    return int(_time.time())


def _op_time(header: Header, t: int | None, deterministic: bool) -> int:
    if t is not None:
        return check_time(t)
    if deterministic or header.deterministic:
        return c.ZERO_TIME
    return now()


def _align(n: int, alignment: int) -> int:
    if alignment <= 0:
        return n
    return (n + alignment - 1) // alignment * alignment


# -- create ------------------------------------------------------------------
def create(
    fp: BinaryIO,
    objects: Iterable[ObjectInput] = (),
    *,
    launch_script: bytes = b"",
    image_id: bytes | None = None,
    time: int | None = None,
    deterministic: bool = False,
    capacity: int = c.DEFAULT_CAPACITY,
    sync: bool = False,
) -> SifImage:
    """Write a new image into the empty file object `fp` and return it."""
    objects = list(objects)
    if len(launch_script) >= c.LAUNCH_SCRIPT_SIZE:
        raise SifError(f"launch script is {len(launch_script)} bytes, at most 31 fit")
    if not 0 <= capacity <= c.MAX_DESCRIPTORS:
        raise SifError(f"invalid descriptor capacity {capacity}")
    if len(objects) > capacity:
        raise SifError(f"{len(objects)} objects do not fit in {capacity} descriptors")
    if image_id is None:
        image_id = bytes(16) if deterministic else uuid.uuid4().bytes
    if len(image_id) != 16:
        raise SifError("an image ID is 16 bytes")
    if time is None:
        time = c.ZERO_TIME if deterministic else now()
    check_time(time)
    primaries = [o for o in objects if o.is_primary_partition]
    if len(primaries) > 1:
        raise SifError("image already contains a primary partition")
    table = capacity * c.DESCRIPTOR_SIZE
    header = Header(
        launch_script=launch_script,
        image_id=image_id,
        created_at=time,
        modified_at=time,
        descriptors_free=capacity,
        descriptors_total=capacity,
        descriptors_offset=c.DESCRIPTORS_OFFSET,
        descriptors_size=table,
        data_offset=c.DESCRIPTORS_OFFSET + table,
        data_size=0,
    )
    fp.seek(0)
    fp.truncate()
    img = SifImage(fp, header, [bytes(c.DESCRIPTOR_SIZE)] * capacity, 0)
    for obj in objects:
        _place(img, obj, time)
    img._write_table_and_header()
    end = file_size(fp)
    if end < header.data_offset:
        # A table of zero slots is a zero-length write: extend explicitly so
        # that every new image reaches its data offset.
        fp.seek(end)
        fp.write(bytes(header.data_offset - end))
    img.size = file_size(fp)
    _sync(fp, sync)
    return img


# -- add ---------------------------------------------------------------------
def add_object(
    img: SifImage,
    obj: ObjectInput,
    *,
    time: int | None = None,
    deterministic: bool = False,
    sync: bool = False,
) -> Descriptor:
    """Add one object in the first free slot; return its descriptor."""
    check_writable(img)
    if obj.is_primary_partition and img.primary_partition() is not None:
        raise SifError("image already contains a primary partition")
    t = _op_time(img.header, time, deterministic)
    old_size = img.size
    old_header, old_slots = img.header, list(img._slots)
    undo = _Undo(img.fp, old_size)
    try:
        d = _place(img, obj, t, undo)
    except BaseException:
        # Put back the bytes of deleted objects that the new data covered,
        # and drop what was written past the old end.
        undo.restore()
        img.header = old_header
        img._slots[:] = old_slots
        img.descriptors[:] = [parse_descriptor(raw) for raw in old_slots]
        raise
    img.header = img.header.replace(modified_at=t)
    _sync(img.fp, sync)
    img._write_table_and_header()
    img.size = file_size(img.fp)
    _sync(img.fp, sync)
    return d


class _Undo:
    """Remembers file bytes before they are overwritten, to put them back.

    Only bytes below the old end of the file are saved (they belong to
    deleted objects whose space is reused); bytes past it are truncated.
    Large savings spill to a temporary file instead of memory.
    """

    def __init__(self, fp: BinaryIO, old_size: int):
        self.fp = fp
        self.old_size = old_size
        self.start: int | None = None
        self.saved: BinaryIO | None = None

    def before_write(self, pos: int, n: int) -> None:
        end = min(pos + n, self.old_size)
        if pos >= end:
            return
        if self.saved is None:
            import tempfile

            self.start = pos
            self.saved = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # type: ignore[assignment]
        here = self.fp.tell()
        self.fp.seek(pos)
        self.saved.write(self.fp.read(end - pos))  # type: ignore[union-attr]
        self.fp.seek(here)

    def restore(self) -> None:
        if self.saved is not None and self.start is not None:
            self.saved.seek(0)
            self.fp.seek(self.start)
            while buf := self.saved.read(CHUNK):
                self.fp.write(buf)
            self.saved.close()
        if file_size(self.fp) > self.old_size:
            self.fp.truncate(self.old_size)


def _place(img: SifImage, obj: ObjectInput, t: int, undo: _Undo | None = None) -> Descriptor:
    """Write the object's data per the placement rules and fill its slot."""
    index = next((i for i, d in enumerate(img.descriptors) if not d.used), None)
    if index is None:
        raise SifError("insufficient descriptor capacity to add data object(s) to image")
    h = img.header
    ends = [d.end for d in img.descriptors if d.used]
    unaligned = max(ends) if ends else h.data_offset
    offset = _align(unaligned, obj.effective_alignment)
    digest = hashlib.sha256() if obj.data_type in _OCI_TYPES and obj.extra is None else None
    size = _copy_in(img.fp, offset, obj, digest, undo)
    d = fill_descriptor(obj, t, digest).replace(
        used=True,
        id=index + 1,
        offset=offset,
        size=size,
        size_with_padding=offset - unaligned + size,
    )
    img._set_slot(index, d)
    changes: dict[str, object] = {
        "descriptors_free": h.descriptors_free - 1,
        "data_size": offset + size - h.data_offset,
    }
    if d.is_primary_partition:
        changes["arch"] = d.partition()[2]
    img.header = h.replace(**changes)
    return d


def fill_descriptor(obj: ObjectInput, t: int, digest: hashlib._Hash | None = None) -> Descriptor:
    """The descriptor of a new object before placement (unused, ID 0, no offset).

    OCI objects without explicit metadata get the digest of their data:
    `digest` if the data was already hashed while copying, else computed
    from in-memory data.
    """
    extra = obj.extra
    if extra is None:
        extra = bytes(c.EXTRA_SIZE)
        if obj.data_type in _OCI_TYPES:
            if digest is None:
                digest = hashlib.sha256(obj.data if isinstance(obj.data, bytes) else b"")
            extra = pad_extra(f"sha256:{digest.hexdigest()}".encode())
    ot = obj.time if obj.time is not None else t
    return Descriptor(
        data_type=obj.data_type,
        raw_group=obj.group_id | c.GROUP_MASK,
        raw_link=obj.link,
        created_at=ot,
        modified_at=ot,
        raw_name=bytes(obj.name).ljust(c.NAME_SIZE, b"\0"),
        extra=extra,
    )


def _copy_in(
    fp: BinaryIO, offset: int, obj: ObjectInput, digest: hashlib._Hash | None, undo: _Undo | None
) -> int:
    if not fits_int64(offset + (obj.size or 0)):
        raise SifError(f"object would end past the largest file offset (offset {offset})")
    fp.seek(offset)
    if isinstance(obj.data, (bytes, bytearray, memoryview)):
        data = bytes(obj.data)
        if obj.size is not None:
            if obj.size > len(data):
                raise SifError(f"input ended {obj.size - len(data)} bytes short of the announced size")
            data = data[: obj.size]
        if undo is not None:
            undo.before_write(offset, len(data))
        fp.seek(offset)
        fp.write(data)
        if digest is not None:
            digest.update(data)
        return len(data)
    remaining = obj.size
    written = 0
    while remaining is None or remaining > 0:
        n = CHUNK if remaining is None else min(CHUNK, remaining)
        buf = obj.data.read(n)
        if not buf:
            break
        if undo is not None:
            undo.before_write(offset + written, len(buf))
        fp.seek(offset + written)
        fp.write(buf)
        if digest is not None:
            digest.update(buf)
        written += len(buf)
        if remaining is not None:
            remaining -= len(buf)
    if remaining:
        raise SifError(f"input ended {remaining} bytes short of the announced size")
    return written


# -- delete ------------------------------------------------------------------
def delete_objects(
    img: SifImage,
    select: Callable[[Descriptor], bool],
    *,
    zero: bool = False,
    compact: bool = False,
    time: int | None = None,
    deterministic: bool = False,
    sync: bool = False,
) -> list[Descriptor]:
    """Delete every used object for which `select` is true."""
    check_writable(img)
    chosen = [(i, d) for i, d in enumerate(img.descriptors) if d.used and select(d)]
    if not chosen:
        raise ObjectNotFound("object not found")
    t = _op_time(img.header, time, deterministic)
    h = img.header
    arch = h.arch
    for i, d in chosen:
        if d.is_primary_partition:
            arch = c.ARCH_UNKNOWN
        img._clear_slot(i)
    changes: dict[str, object] = {
        "descriptors_free": h.descriptors_free + len(chosen),
        "arch": arch,
        "modified_at": t,
    }
    if compact:
        ends = [d.end for d in img.descriptors if d.used]
        changes["data_size"] = max(ends) - h.data_offset if ends else 0
    img.header = h.replace(**changes)
    img._write_table_and_header()
    if zero:
        for _, d in chosen:
            _zero(img.fp, d.offset, d.size)
    if compact:
        img.fp.truncate(img.header.data_offset + img.header.data_size)
    img.size = file_size(img.fp)
    _sync(img.fp, sync)
    return [d for _, d in chosen]


def delete_object(img: SifImage, object_id: int, **kwargs: object) -> Descriptor:
    img.get(object_id)
    return delete_objects(img, lambda d: d.id == object_id, **kwargs)[0]  # type: ignore[arg-type]


def _zero(fp: BinaryIO, offset: int, size: int) -> None:
    fp.seek(offset)
    while size > 0:
        n = min(CHUNK, size)
        fp.write(bytes(n))
        size -= n


# -- set primary partition ---------------------------------------------------
def set_primary(
    img: SifImage,
    object_id: int,
    *,
    time: int | None = None,
    deterministic: bool = False,
    sync: bool = False,
) -> None:
    check_writable(img)
    target = img.get(object_id)
    if target.data_type != c.DataType.PARTITION:
        raise SifError(f"object {object_id} is not a partition")
    _, part, arch = target.partition()
    if part == c.PartType.PRIMSYS:
        return
    if part != c.PartType.SYSTEM:
        raise SifError(f"object {object_id} is not a system partition")
    t = _op_time(img.header, time, deterministic)
    for i, d in enumerate(img.descriptors):
        if d.is_primary_partition:
            extra = d.extra[:4] + c.PartType.SYSTEM.to_bytes(4, "little") + d.extra[8:]
            img._set_slot(i, d.replace(extra=extra, modified_at=t))
    index = img.descriptors.index(target)
    extra = target.extra[:4] + c.PartType.PRIMSYS.to_bytes(4, "little") + target.extra[8:]
    img._set_slot(index, target.replace(extra=extra, modified_at=t))
    img.header = img.header.replace(arch=arch, modified_at=t)
    img._write_table_and_header()
    _sync(img.fp, sync)


# -- set metadata --------------------------------------------------------------
def set_metadata(
    img: SifImage,
    object_id: int,
    extra: bytes,
    *,
    time: int | None = None,
    deterministic: bool = False,
    sync: bool = False,
) -> None:
    check_writable(img)
    target = img.get(object_id)
    try:
        extra = pad_extra(extra)
    except ValueError as err:
        raise SifError(str(err)) from None
    t = _op_time(img.header, time, deterministic)
    index = img.descriptors.index(target)
    img._set_slot(index, target.replace(extra=extra, modified_at=t))
    img.header = img.header.replace(modified_at=t)
    img._write_table_and_header()
    _sync(img.fp, sync)


def set_oci_blob_digest(img: SifImage, object_id: int, digest: str, **kwargs: object) -> None:
    target = img.get(object_id)
    if target.data_type not in _OCI_TYPES:
        raise SifError(f"object {object_id} is not an OCI blob or root index")
    set_metadata(img, object_id, digest.encode("ascii"), **kwargs)  # type: ignore[arg-type]


# -- shared checks -------------------------------------------------------------
def check_writable(img: SifImage) -> None:
    """Refuse to modify an image whose layout does not make sense.

    Reading tolerates what the reference tolerates; writing into a damaged
    layout could scatter data across the file, so it is refused.
    """
    h = img.header
    table_end = h.descriptors_offset + h.descriptors_total * c.DESCRIPTOR_SIZE
    if h.descriptors_offset < c.HEADER_SIZE:
        raise SifError("damaged image: the descriptor table overlaps the header")
    if h.data_offset < table_end or not fits_int64(h.data_offset) or h.data_offset > img.size:
        raise SifError(f"damaged image: invalid data offset {h.data_offset}")
    if h.descriptors_free < 0 or h.descriptors_free > h.descriptors_total:
        raise SifError(f"damaged image: invalid free descriptor count {h.descriptors_free}")
    for d in img.descriptors:
        if d.used and (
            d.offset < h.data_offset
            or d.size < 0
            or (d.size and d.end > img.size)
            # An empty object may lie past the end by its alignment (a zero-length write);
            # new data is placed after it, so farther than any alignment is damage.
            or d.end > img.size + MAX_ALIGNMENT
            or not fits_int64(d.end)
        ):
            raise SifError(f"damaged image: object {d.id} lies outside the data area")


def _sync(fp: BinaryIO, sync: bool) -> None:
    if sync and not isinstance(fp, io.BytesIO):
        fp.flush()
        os.fsync(fp.fileno())


__all__ = [
    "ObjectInput",
    "add_object",
    "create",
    "delete_object",
    "delete_objects",
    "dump_header",
    "link_group",
    "link_object",
    "set_metadata",
    "set_oci_blob_digest",
    "set_primary",
]
