"""The two fixed-size SIF structures: the global header and a descriptor.

Both are packed little-endian; several int64 fields of a descriptor sit at
odd offsets (spec sections 2 and 3). `parse_*` turns bytes into frozen
records, `dump_*` turns records back into the exact bytes.
"""

from __future__ import annotations

import _struct as struct  # the C module: `struct` is a file looked for on sys.path at every launch
from sifbox.util.records import record as namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    import uuid as _uuid
    from typing import Any

from sifbox.formats.sif import constants as c

_HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")
_DESCRIPTOR = struct.Struct("<iBIIIqqqqqqq128s384s")
_PARTITION = struct.Struct("<ii3s")
_SIGNATURE = struct.Struct("<i256s")
_CRYPTO = struct.Struct("<ii")
_SBOM = struct.Struct("<i")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

assert _HEADER.size == c.HEADER_SIZE
assert _DESCRIPTOR.size == c.DESCRIPTOR_SIZE


if TYPE_CHECKING:
    from typing import NamedTuple

    class _HeaderFields(NamedTuple):
        launch_script: bytes = b""
        magic: bytes = c.MAGIC
        version: bytes = c.VERSION
        arch: bytes = c.ARCH_UNKNOWN
        image_id: bytes = bytes(16)
        created_at: int = c.ZERO_TIME
        modified_at: int = c.ZERO_TIME
        descriptors_free: int = 0
        descriptors_total: int = 0
        descriptors_offset: int = c.DESCRIPTORS_OFFSET
        descriptors_size: int = 0
        data_offset: int = c.DESCRIPTORS_OFFSET
        data_size: int = 0

    class _DescriptorFields(NamedTuple):
        data_type: int = 0
        used: bool = False
        id: int = 0
        raw_group: int = 0
        raw_link: int = 0
        offset: int = 0
        size: int = 0
        size_with_padding: int = 0
        created_at: int = 0
        modified_at: int = 0
        uid: int = 0
        gid: int = 0
        raw_name: bytes = bytes(c.NAME_SIZE)
        extra: bytes = bytes(c.EXTRA_SIZE)

# Plain namedtuples at run time: `typing` and `dataclasses` cost milliseconds
# of start-up on every `sifbox` run.
_HeaderFields = namedtuple(  # type: ignore[misc]
    "_HeaderFields",
    "launch_script magic version arch image_id created_at modified_at descriptors_free "
    "descriptors_total descriptors_offset descriptors_size data_offset data_size",
    defaults=(
        b"", c.MAGIC, c.VERSION, c.ARCH_UNKNOWN, bytes(16), c.ZERO_TIME, c.ZERO_TIME,
        0, 0, c.DESCRIPTORS_OFFSET, 0, c.DESCRIPTORS_OFFSET, 0,
    ),
)  # fmt: skip


class Header(_HeaderFields):
    """The 128-byte global header (an immutable record; `replace` makes a changed copy)."""

    __slots__ = ()

    def replace(self, **changes: Any) -> Header:
        return self._replace(**changes)

    @property
    def launch_script_text(self) -> str:
        return self.launch_script.rstrip(b"\0").decode("utf-8", "replace")

    @property
    def version_text(self) -> str:
        return self.version.split(b"\0", 1)[0].decode("ascii", "replace")

    @property
    def arch_name(self) -> str:
        """Go architecture name of the primary partition, or "unknown"."""
        return c.ARCH_NAMES.get(self.arch, "unknown")

    @property
    def uuid(self) -> _uuid.UUID:
        import uuid

        return uuid.UUID(bytes=self.image_id)

    @property
    def deterministic(self) -> bool:
        """Zero ID and unset times: later changes keep times unset (spec 2.2)."""
        return (
            self.image_id == bytes(16)
            and self.created_at == c.ZERO_TIME
            and self.modified_at == c.ZERO_TIME
        )


def parse_header(buf: bytes) -> Header:
    """Parse the first 128 bytes of `buf` (the caller checks the length)."""
    f = _HEADER.unpack_from(buf)
    return Header(*f)


def dump_header(h: Header) -> bytes:
    return _HEADER.pack(
        h.launch_script,
        h.magic,
        h.version,
        h.arch,
        h.image_id,
        h.created_at,
        h.modified_at,
        h.descriptors_free,
        h.descriptors_total,
        h.descriptors_offset,
        h.descriptors_size,
        h.data_offset,
        h.data_size,
    )


_DescriptorFields = namedtuple(  # type: ignore[misc]
    "_DescriptorFields",
    "data_type used id raw_group raw_link offset size size_with_padding created_at "
    "modified_at uid gid raw_name extra",
    defaults=(0, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(c.NAME_SIZE), bytes(c.EXTRA_SIZE)),
)


class Descriptor(_DescriptorFields):
    """One 585-byte descriptor slot (an immutable record).

    `raw_group` and `raw_link` hold the stored values, mask bits included;
    use `group_id` and `linked_id` to read them.
    """

    __slots__ = ()

    def replace(self, **changes: Any) -> Descriptor:
        return self._replace(**changes)

    # -- identity and relations -------------------------------------------
    @property
    def group_id(self) -> int:
        """Group of the object; 0 means no group."""
        return self.raw_group & ~c.GROUP_MASK & 0xFFFFFFFF

    @property
    def linked_id(self) -> tuple[int, bool]:
        """(target, is_group): the linked object or group; target 0 = no link."""
        is_group = (self.raw_link & c.GROUP_MASK) == c.GROUP_MASK
        return self.raw_link & ~c.GROUP_MASK & 0xFFFFFFFF, is_group

    @property
    def name(self) -> str:
        return self.raw_name.rstrip(b"\0").decode("utf-8", "replace")

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def type_name(self) -> str:
        return c.display(c.DATA_TYPE_NAMES, self.data_type)

    # -- type-specific metadata (extra) ------------------------------------
    def partition(self) -> tuple[int, int, bytes]:
        """(filesystem type, partition type, 3-byte arch code)."""
        fs, part, arch = _PARTITION.unpack_from(self.extra)
        return fs, part, arch

    @property
    def is_primary_partition(self) -> bool:
        return (
            self.used
            and self.data_type == c.DataType.PARTITION
            and self.partition()[1] == c.PartType.PRIMSYS
        )

    def signature(self) -> tuple[int, bytes]:
        """(hash type, 20-byte fingerprint; all zero when there is none)."""
        hash_type, entity = _SIGNATURE.unpack_from(self.extra)
        return hash_type, entity[:20]

    def crypto_message(self) -> tuple[int, int]:
        """(format type, message type)."""
        fmt, msg = _CRYPTO.unpack_from(self.extra)
        return fmt, msg

    def sbom_format(self) -> int:
        return int(_SBOM.unpack_from(self.extra)[0])

    def oci_digest(self) -> str:
        """The digest text stored by OCI blob / root index objects."""
        return self.extra.split(b"\0", 1)[0].decode("ascii", "replace")


def parse_descriptor(buf: bytes, offset: int = 0) -> Descriptor:
    f = _DESCRIPTOR.unpack_from(buf, offset)
    return Descriptor(f[0], f[1] != 0, *f[2:])


def dump_descriptor(d: Descriptor) -> bytes:
    return _DESCRIPTOR.pack(
        d.data_type,
        1 if d.used else 0,
        d.id,
        d.raw_group,
        d.raw_link,
        d.offset,
        d.size,
        d.size_with_padding,
        d.created_at,
        d.modified_at,
        d.uid,
        d.gid,
        d.raw_name,
        d.extra,
    )


# -- extra builders ----------------------------------------------------------
def pad_extra(data: bytes) -> bytes:
    if len(data) > c.EXTRA_SIZE:
        raise ValueError(f"metadata is {len(data)} bytes, at most {c.EXTRA_SIZE} fit")
    return data.ljust(c.EXTRA_SIZE, b"\0")


def partition_extra(fs: int, part: int, arch: str) -> bytes:
    code = c.ARCH_CODES.get(arch)
    if code is None:
        raise ValueError(f"unknown architecture `{arch}`")
    return pad_extra(_PARTITION.pack(fs, part, code))


def signature_extra(hash_type: int, fingerprint: bytes) -> bytes:
    if len(fingerprint) > 256:
        raise ValueError("signing entity is longer than 256 bytes")
    return pad_extra(_SIGNATURE.pack(hash_type, fingerprint))


def crypto_message_extra(fmt: int, msg: int) -> bytes:
    return pad_extra(_CRYPTO.pack(fmt, msg))


def sbom_extra(fmt: int) -> bytes:
    return pad_extra(_SBOM.pack(fmt))


def oci_digest_extra(digest: str) -> bytes:
    return pad_extra(digest.encode("ascii"))


def fits_int64(*values: int) -> bool:
    return all(_INT64_MIN <= v <= _INT64_MAX for v in values)


def wrap_int64(v: int) -> int:
    """Two's-complement wrap, as Go's int64 arithmetic does."""
    v &= 0xFFFFFFFFFFFFFFFF
    return v - 2**64 if v >= 2**63 else v
