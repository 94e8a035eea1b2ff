"""`stat` and `fstat` of an image file that don't ask for its access time.

An NFS or FUSE client marks a file's access time stale whenever it reads pages of it
from the server, and a plain stat(2) asks for every field: the next stat of the image
after a node holder read from it is then a GETATTR sent to the file server, once per
launch, so the requests of a node grow with its rank count. statx(2) without
STATX_ATIME is answered from the client's attribute cache while that is valid, as a
stat of an unread file is. The results are `os.stat_result`s whose access times are 0.
"""

from __future__ import annotations

import _ctypes
import os

AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
#: STATX_BASIC_STATS without STATX_ATIME (0x20)
MASK = 0x7FF & ~0x20


class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "i"


class _Char(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "c"


class _Buffer(_ctypes.Array):  # type: ignore[type-arg]
    _type_ = _Char
    _length_ = 256  # struct statx


class _Lib:
    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]


class _Function(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


_statx = _Function(("statx", _Lib))  # type: ignore[arg-type]


def _call(dir_fd: int, path: bytes, flags: int) -> os.stat_result:
    buf = _Buffer()
    if _statx(dir_fd, path, flags, MASK, buf) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path) or None)
    return _result(bytes(buf.raw))


def _u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "little")


def _u64(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 8], "little")


def _time(b: bytes, at: int) -> tuple[int, int]:
    return int.from_bytes(b[at : at + 8], "little", signed=True), _u32(b, at + 8)


def _result(b: bytes) -> os.stat_result:
    (m_s, m_ns), (c_s, c_ns) = _time(b, 112), _time(b, 96)
    return os.stat_result((
        int.from_bytes(b[28:30], "little"),  # mode
        _u64(b, 32),  # ino
        os.makedev(_u32(b, 136), _u32(b, 140)),  # dev
        _u32(b, 16), _u32(b, 20), _u32(b, 24),  # nlink, uid, gid
        _u64(b, 40),  # size
        0, m_s, c_s,
        0.0, m_s + m_ns * 1e-9, c_s + c_ns * 1e-9,  # as os.stat computes them
        0, m_s * 1_000_000_000 + m_ns, c_s * 1_000_000_000 + c_ns,
        _u32(b, 4), _u64(b, 48),  # blksize, blocks
        os.makedev(_u32(b, 128), _u32(b, 132)),  # rdev
    ))  # fmt: skip


def stat(path: str, *, follow_symlinks: bool = True) -> os.stat_result:
    """os.stat(path), without its access time."""
    return _call(-100, os.fsencode(path), 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW)  # AT_FDCWD


def fstat(fd: int) -> os.stat_result:
    """os.fstat(fd), without its access time."""
    return _call(fd, b"", AT_EMPTY_PATH)
