"""The mount service's mounts (`sifbox.runtime.mountsvc`), in the host's mount namespace.

A closed set of four operations, all on paths under the service's own root-owned
directory: make that directory a private mount (nothing mounted below it propagates to
other mount namespaces: a user's copy of it is made when the user's container unshares,
never pushed into running ones), mount the SquashFS at an offset of an image read-only,
nosuid, nodev (kernel SquashFS on an auto-clearing loop device), bind that mount
read-only, nosuid, nodev elsewhere, and detach a mount.
"""

from __future__ import annotations

import errno
import os

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.rootfs import set_flags

_LOCKED = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


def make_private(path: str) -> bool:
    """Bind the directory `path` on itself (unless it is a mount point already) and make
    it a private mount; whether it was bound here."""
    bound = not is_mount_point(path)
    if bound:
        sc.mount(path, path, None, sc.MS_BIND)
    sc.mount(None, path, None, sc.MS_PRIVATE)
    return bound


def is_mount_point(path: str) -> bool:
    """Whether a mount of this namespace is at `path` (a bind of a directory of the same file
    system included, which device numbers can't tell)."""
    with open("/proc/self/mountinfo", "rb") as f:
        points = {line.split(b" ", 5)[4] for line in f.read().splitlines() if line.count(b" ") >= 5}
    encoded = os.fsencode(path).replace(b"\\", b"\\134").replace(b" ", b"\\040").replace(b"\n", b"\\012")
    return encoded.replace(b"\t", b"\\011") in points


def mount_squashfs(fd: int, offset: int, size: int, target: str) -> str:
    """Mount the SquashFS at `offset` (`size` bytes) of the open file `fd` on `target`,
    read-only, nosuid, nodev; the loop device's name. The device clears itself once the
    last mount of it is gone."""
    dev, loop_fd = sc.attach_loop(fd, offset, size)
    try:
        sc.mount(dev, target, "squashfs", sc.MS_RDONLY | sc.MS_NODEV | sc.MS_NOSUID)
    finally:
        os.close(loop_fd)
    return dev


def bind_locked(source: str, target: str) -> None:
    """Bind the mount at `source` on `target`, read-only, nosuid, nodev."""
    sc.mount(source, target, None, sc.MS_BIND)
    try:
        set_flags(target, _LOCKED)
    except BaseException:
        sc.umount(target, sc.MNT_DETACH)
        raise


def detach(target: str) -> bool:
    """Detach the mount at `target`; False if nothing is mounted there."""
    try:
        sc.umount(target, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ENOENT):
            return False
        raise
    return True
