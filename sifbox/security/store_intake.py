"""Taking an image in: checks on the received descriptor, then a bounded private copy.

Nothing a client sends is copied before it is known to be worth copying: the descriptor
must be a regular file open for reading, its size (`fstat`) within the store's limits and
within the free space of the store's file system, and its first bytes a SIF image whose
root file system partition is a SquashFS inside the file. Only then is it copied, exactly
the size `fstat` gave and not a byte more, into a temporary file of the store; a file
that grows or shrinks meanwhile is refused. The checks that decide (`sifbox.security.store`)
run on that copy: what is checked is what gets stored.

All reads use `pread`, so the client's file offset (shared with the descriptor) is left
alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable

CHUNK = 1 << 20
#: Free space the store's file system keeps after an admission: this share of its size...
RESERVE_SHARE = 0.05
#: ... but at most this much.
RESERVE_MAX = 8 << 30


class Refused(Exception):
    """An admission step refused the image (the message says why)."""


def check_descriptor(fd: int) -> os.stat_result:
    """The status of a received descriptor, if it is a regular file open for reading."""
    import fcntl

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Refused("not a regular file")
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & getattr(os, "O_PATH", 0o10000000) or flags & os.O_ACCMODE == os.O_WRONLY:
        raise Refused("the image's descriptor is not open for reading")
    return st


class _PreadFile(io.RawIOBase):
    """A read-only file object over `size` bytes of descriptor `fd`, read with pread."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        want = max(0, min(len(buf), self._size - self._pos))
        data = os.pread(self._fd, want, self._pos) if want else b""
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def check_sif(fd: int, size: int) -> None:
    """Refuse, from the descriptor and before any copy, what is not a SIF image with a
    SquashFS root file system inside its `size` bytes."""
    from sifbox.formats import squashfs
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage

    if os.pread(fd, 42, 0)[32:42] != c.MAGIC:
        raise Refused("not a SIF image (the store admits SIF images only)")
    try:
        img = SifImage.load(_PreadFile(fd, size))  # type: ignore[arg-type]
        part = img.primary_partition()
        if part is None:
            parts = [d for d in img.objects() if d.data_type == c.DataType.PARTITION]
            part = next((d for d in parts if d.partition()[1] == c.PartType.SYSTEM), None)
        if part is None:
            raise Refused("the SIF image has no root file system partition")
        fs = part.partition()[0]
        if fs != c.FsType.SQUASHFS:
            raise Refused(f"the root file system is {c.display(c.FS_TYPE_NAMES, fs)}, "
                          "the store admits SquashFS images only")  # fmt: skip
        img.check_bounds(part)
        info = squashfs.parse_superblock(os.pread(fd, squashfs.SUPERBLOCK_SIZE, part.offset))
    except SifError as err:
        raise Refused(f"not a valid SIF image: {err}") from None
    except squashfs.SquashfsError as err:
        raise Refused(f"the root file system is damaged: {err}") from None
    if int(info["bytes_used"]) > part.size:
        raise Refused(f"the root file system is damaged: SquashFS of {info['bytes_used']} bytes "
                      f"in a partition of {part.size}")  # fmt: skip


def check_space(dir_fd: int, size: int) -> None:
    """Refuse an image that would leave the store's file system (nearly) full."""
    vfs = os.fstatvfs(dir_fd)
    free = vfs.f_bavail * vfs.f_frsize
    reserve = min(RESERVE_MAX, int(vfs.f_blocks * vfs.f_frsize * RESERVE_SHARE))
    if size + reserve > free:
        raise Refused(f"not enough space in the store: the image needs {-(-size >> 20)} MiB, "
                      f"{max(0, free - reserve) >> 20} MiB are free for images")  # fmt: skip


def copy_in(src: int, dst: int, size: int, alive: Callable[[], None]) -> str:
    """Copy exactly `size` bytes of `src` to `dst` (synced); their sha256 digest. Refused
    when `src` is not `size` bytes long any more. `alive()` is called every 64 MiB (it
    raises when the client went away)."""
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        chunk = os.pread(src, min(CHUNK, size - pos), pos)
        if not chunk:
            raise Refused("the image shrank while it was being copied")
        h.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        pos += len(chunk)
        if pos % (64 * CHUNK) == 0:
            alive()
    if os.pread(src, 1, size) or os.fstat(src).st_size != size:
        raise Refused("the image changed size while it was being copied")
    os.fsync(dst)
    return "sha256:" + h.hexdigest()
