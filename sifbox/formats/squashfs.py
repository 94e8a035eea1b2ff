"""The SquashFS 4.0 superblock: enough to recognise an image and check it fits.

Layout (little-endian, 96 bytes): magic `hsqs`, inode count, modification
time, block size, fragment count, compressor id, block log, flags, id
count, major 4, minor 0, root inode, bytes used, then table offsets.
"""

from __future__ import annotations

import _struct as struct  # the C module: `struct` is a file looked for on sys.path at every launch

MAGIC = b"hsqs"
SUPERBLOCK = struct.Struct("<4sIIIIHHHHHHQQ")
SUPERBLOCK_SIZE = 96
COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


class SquashfsError(ValueError):
    pass


def probe(buf: bytes) -> bool:
    """True when `buf` starts with a SquashFS (little-endian) magic."""
    return buf[:4] == MAGIC


def parse_superblock(buf: bytes) -> dict[str, int | str]:
    if len(buf) < SUPERBLOCK_SIZE:
        raise SquashfsError("truncated SquashFS superblock")
    (magic, inodes, mtime, block_size, fragments, compressor, block_log, flags, ids,
     major, minor, root, bytes_used) = SUPERBLOCK.unpack_from(buf)  # fmt: skip
    if magic != MAGIC:
        raise SquashfsError("no SquashFS magic")
    if major != 4:
        raise SquashfsError(f"unsupported SquashFS version {major}.{minor}")
    if block_size != 1 << block_log or not 4096 <= block_size <= 1 << 20:
        raise SquashfsError(f"invalid SquashFS block size {block_size}")
    return {
        "inodes": inodes,
        "block_size": block_size,
        "compressor": COMPRESSORS.get(compressor, f"unknown ({compressor})"),
        "bytes_used": bytes_used,
        "mtime": mtime,
    }
