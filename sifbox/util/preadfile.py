"""A read-only file object over a descriptor that reads with pread(2): its own position,
never the descriptor's shared file offset.

A descriptor received from another process (the mount service's client), or inherited by
concurrent processes, shares one file offset with them: seek-then-read through it races
with whatever they do with theirs, and a hostile sender could move the offset between the
two calls. Reading with pread at a position kept here takes the offset out of it. Nothing
is duplicated or closed: on a FUSE or NFS file server every close of a copy is a request.
"""

from __future__ import annotations

import io
import os

from sifbox.util import filestat


class PreadFile(io.RawIOBase):
    """`open(fd, "rb")` without the shared offset; closing it leaves `fd` open."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = filestat.fstat(self._fd).st_size + offset  # no access time: no request
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            chunk = os.pread(self._fd, len(view) - done, self._pos + done)
            if not chunk:
                break
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        self._pos += done
        return done


def reader(fd: int) -> io.BufferedReader:
    """A buffered binary file over `fd` read with pread (see the module); closing it
    leaves `fd` open."""
    return io.BufferedReader(PreadFile(fd))
