"""The SIF image format: read, create and modify SIF files byte-compatibly
with the reference tools (spec: shared/spec/sif-format.md)."""

from sifbox.formats.sif.constants import (
    DataType,
    FormatType,
    FsType,
    HashType,
    MessageType,
    PartType,
    SbomFormat,
)
from sifbox.formats.sif.image import ObjectNotFound, SifError, SifImage
from sifbox.formats.sif.layout import Descriptor, Header

__all__ = [
    "DataType",
    "Descriptor",
    "FormatType",
    "FsType",
    "HashType",
    "Header",
    "MessageType",
    "ObjectNotFound",
    "PartType",
    "SbomFormat",
    "SifError",
    "SifImage",
]
