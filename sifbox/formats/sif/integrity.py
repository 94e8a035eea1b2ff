"""The byte streams that SIF signatures digest (spec section 7.1).

A signature covers the header stream (61 bytes: launch script, magic,
version, image ID) and, per object, a 557-byte descriptor stream that uses
the object's ID *relative to its group* and leaves out what may change
without breaking a signature (absolute ID, group, offset, padding,
modification time).
"""

from __future__ import annotations

import struct

from sifbox.formats.sif.layout import Descriptor, Header

_DESCRIPTOR_STREAM = struct.Struct("<iBIIqqqq128s384s")
assert _DESCRIPTOR_STREAM.size == 557


def header_stream(h: Header) -> bytes:
    return h.launch_script + h.magic + h.version + h.image_id


def descriptor_stream(d: Descriptor, relative_id: int) -> bytes:
    return _DESCRIPTOR_STREAM.pack(
        d.data_type,
        1 if d.used else 0,
        relative_id,
        d.raw_link,
        d.size,
        d.created_at,
        d.uid,
        d.gid,
        d.raw_name,
        d.extra,
    )
