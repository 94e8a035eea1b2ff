"""SIF constants: sizes, magic, data types and their display strings.

Values and display strings follow the SIF specification
(`shared/spec/sif-format.md`, sections 2 and 3).
"""

from __future__ import annotations


MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"
HEADER_SIZE = 128
DESCRIPTOR_SIZE = 585
DESCRIPTORS_OFFSET = 4096
DEFAULT_CAPACITY = 48
LEGACY_DATA_OFFSET = 32768
LAUNCH_SCRIPT_SIZE = 32
NAME_SIZE = 128
EXTRA_SIZE = 384
GROUP_MASK = 0xF0000000
#: `time.Time{}.Unix()` in Go: the "unset" time of deterministic images.
ZERO_TIME = -62135596800
#: The launch script of images built by Apptainer/SingularityCE.
RUN_SINGULARITY = b"#!/usr/bin/env run-singularity\n"
PARTITION_ALIGNMENT = 4096
MAX_CAPACITY = 2**32 - 2
#: The most descriptors sifbox reads or writes (a 38 MB table; images have 48): the format
#: allows MAX_CAPACITY, and a sparse file could declare that many at no cost to its maker
#: while the reader would read and parse terabytes.
MAX_DESCRIPTORS = 1 << 16
MAX_GROUP = 0x0FFFFFFF


class DataType:
    DEFFILE = 0x4001
    ENVVAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


DATA_TYPE_NAMES: dict[int, str] = {
    DataType.DEFFILE: "Def.FILE",
    DataType.ENVVAR: "Env.Vars",
    DataType.LABELS: "JSON.Labels",
    DataType.PARTITION: "FS",
    DataType.SIGNATURE: "Signature",
    DataType.GENERIC_JSON: "JSON.Generic",
    DataType.GENERIC: "Generic/Raw",
    DataType.CRYPTO_MESSAGE: "Cryptographic Message",
    DataType.SBOM: "SBOM",
    DataType.OCI_ROOT_INDEX: "OCI.RootIndex",
    DataType.OCI_BLOB: "OCI.Blob",
}


class FsType:
    SQUASHFS = 1
    EXT3 = 2
    IMMUTABLE_OBJECTS = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5
    GOCRYPTFS_SQUASHFS = 6


FS_TYPE_NAMES: dict[int, str] = {
    FsType.SQUASHFS: "Squashfs",
    FsType.EXT3: "Ext3",
    FsType.IMMUTABLE_OBJECTS: "Archive",
    FsType.RAW: "Raw",
    FsType.ENCRYPTED_SQUASHFS: "Encrypted squashfs",
    FsType.GOCRYPTFS_SQUASHFS: "Gocryptfs squashfs",
}


class PartType:
    SYSTEM = 1
    PRIMSYS = 2
    DATA = 3
    OVERLAY = 4


PART_TYPE_NAMES: dict[int, str] = {
    PartType.SYSTEM: "System",
    PartType.PRIMSYS: "*System",
    PartType.DATA: "Data",
    PartType.OVERLAY: "Overlay",
}


class HashType:
    SHA256 = 1
    SHA384 = 2
    SHA512 = 3
    BLAKE2S = 4
    BLAKE2B = 5


HASH_TYPE_NAMES: dict[int, str] = {
    HashType.SHA256: "SHA-256",
    HashType.SHA384: "SHA-384",
    HashType.SHA512: "SHA-512",
    HashType.BLAKE2S: "BLAKE2s-256",
    HashType.BLAKE2B: "BLAKE2b-256",
}


class FormatType:
    OPENPGP = 1
    PEM = 2


FORMAT_TYPE_NAMES: dict[int, str] = {FormatType.OPENPGP: "OpenPGP", FormatType.PEM: "PEM"}


class MessageType:
    CLEAR_SIGNATURE = 0x100
    RSA_OAEP = 0x200


MESSAGE_TYPE_NAMES: dict[int, str] = {
    MessageType.CLEAR_SIGNATURE: "Clear Signature",
    MessageType.RSA_OAEP: "RSA-OAEP",
}


class SbomFormat:
    CYCLONEDX_JSON = 1
    CYCLONEDX_XML = 2
    GITHUB_JSON = 3
    SPDX_JSON = 4
    SPDX_RDF = 5
    SPDX_TAG_VALUE = 6
    SPDX_YAML = 7
    SYFT_JSON = 8


SBOM_FORMAT_NAMES: dict[int, str] = {
    SbomFormat.CYCLONEDX_JSON: "cyclonedx-json",
    SbomFormat.CYCLONEDX_XML: "cyclonedx-xml",
    SbomFormat.GITHUB_JSON: "github-json",
    SbomFormat.SPDX_JSON: "spdx-json",
    SbomFormat.SPDX_RDF: "spdx-rdf",
    SbomFormat.SPDX_TAG_VALUE: "spdx-tag-value",
    SbomFormat.SPDX_YAML: "spdx-yaml",
    SbomFormat.SYFT_JSON: "syft-json",
}

#: Architecture codes (header bytes 45..47 and partition extra bytes 8..10),
#: by Go architecture name, in the order of siftool's `--partarch` numbers.
ARCH_CODES = {
    "386": b"01\0",
    "amd64": b"02\0",
    "arm": b"03\0",
    "arm64": b"04\0",
    "ppc64": b"05\0",
    "ppc64le": b"06\0",
    "mips": b"07\0",
    "mipsle": b"08\0",
    "mips64": b"09\0",
    "mips64le": b"10\0",
    "s390x": b"11\0",
    "riscv64": b"12\0",
    "loong64": b"13\0",
}
ARCH_NAMES = {code: name for name, code in ARCH_CODES.items()}
ARCH_UNKNOWN = b"00\0"

#: Go architecture names of `platform.machine()` values.
MACHINE_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "386",
    "i686": "386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "mips": "mips",
    "mips64": "mips64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}


def display(names: dict[int, str], value: int, unknown: str = "Unknown") -> str:
    """Display string of an enum value, or `unknown` for values outside the table."""
    return names.get(value, unknown)
