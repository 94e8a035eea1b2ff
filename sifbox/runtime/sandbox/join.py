"""Join a running container (an instance): its namespaces and its root.

The calling process (single-threaded) opens the holder's /proc/PID/ns/* files
and its root, joins the namespaces it does not share already (the user
namespace first, so that it may join the others; the mount namespace last)
and chroots into the holder's root.
"""

from __future__ import annotations

import os

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import LaunchError
from sifbox.util.errors import describe_os_error

#: Join order: user first (it grants the rights to join the others), mnt last.
ORDER = (("user", sc.CLONE_NEWUSER), ("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS),
         ("net", sc.CLONE_NEWNET), ("pid", sc.CLONE_NEWPID), ("mnt", sc.CLONE_NEWNS))  # fmt: skip


def enter(pid: int, name: str) -> list[str]:
    """Join the namespaces and root of process `pid` (instance `name`).
    Returns the kinds of namespace joined (user, ipc, uts, net, pid, mnt)."""
    what = f"can't join instance `{name}`"
    fds: list[tuple[str, int, int]] = []
    root_fd = -1
    try:
        try:
            for ns, flag in ORDER:
                theirs = os.stat(f"/proc/{pid}/ns/{ns}")
                ours = os.stat(f"/proc/self/ns/{ns}")
                if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                    fds.append((ns, flag, os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)))
            root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise LaunchError(f"{what}: can't open its namespaces: {describe_os_error(err)}",
                              hint="it may have just stopped; `sifbox instance list` shows it") from None  # fmt: skip
        joined: list[str] = []
        for ns, flag, fd in fds:
            try:
                sc.setns(fd, flag)
            except OSError as err:
                raise LaunchError(f"{what}: can't join its {ns} namespace: {describe_os_error(err)}") from None
            joined.append(ns)
        try:
            os.fchdir(root_fd)
            os.chroot(".")
        except OSError as err:
            raise LaunchError(f"{what}: can't enter its root: {describe_os_error(err)}") from None
    finally:
        for _, _, fd in fds:
            os.close(fd)
        if root_fd >= 0:
            os.close(root_fd)
    return joined


def enter_holder(pidfd: int, *, userns: bool) -> None:
    """Join the mount namespace (and, with `userns`, first the user namespace) of the
    node mount holder that `pidfd` (a pidfd: that very process, never a reused pid)
    refers to; the caller then unshares a mount namespace of its own
    (`namespaces.enter` with no user namespace)."""
    flags = sc.CLONE_NEWNS | (sc.CLONE_NEWUSER if userns else 0)
    try:
        sc.setns(pidfd, flags)
    except OSError as err:
        raise LaunchError(f"can't join the node mount holder: {describe_os_error(err)}") from None


def open_mounted(path: str, dev: int) -> int:
    """An O_PATH descriptor of the directory `path` of this mount namespace, which must
    be the root of a mount of device `dev` (the held image), not merely a directory
    of that name. Raises OSError otherwise."""
    import errno

    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        here = os.fstat(fd)
        parent = os.stat(os.path.dirname(path))
        if here.st_dev != dev or parent.st_dev == dev:
            raise OSError(errno.ESTALE, "not the held image's mount", path)
    except BaseException:
        os.close(fd)
        raise
    return fd
