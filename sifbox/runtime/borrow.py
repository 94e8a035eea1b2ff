"""A launch that joins a node holder (sifbox.runtime.nodemount) takes the image's
descriptor from the holder instead of opening the image again: on NFS or GPFS every open
and close of the image is a request to the file server, which 64 ranks of a node would
each send; a stat is absorbed by the client's attribute cache.

`borrow(path, uid)` stats the path, finds the holder of `uid` for that file (the state
keys begin with its device, inode, size and modification time), and copies the holder's
descriptor with pidfd_getfd (allowed as ptrace-attaching is: the same user, no Yama
restriction; any failure and the launch opens the image as before). The copy is used only
if it is the very file at the path (those fields and the change time, a regular file not
deleted, open by the name the path resolves to now: the site's path limits judge that name)
and the user may read the path; the launch then parses and admits it exactly as a file it
opened, so a file renamed over the path meanwhile is simply not the one it runs.
The copy shares the holder's file offset: it is only ever read with pread.

While the first launch of a node starts the holder, the others wait for it (PREFIX.start,
locked by the starter until its holder runs), then borrow instead of each opening the
image in the meantime.
"""

from __future__ import annotations

import fcntl
import os

from sifbox.runtime.nodemount import (
    STATE,
    Unshared,
    helper_alive,
    holder_alive,
    load,
    node_tag,
    open_state_dir,
    state_dirs,
)
from sifbox.util import filestat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def borrower(launch: Any, spec: Any, cfg: Any, uid: int, log: Any) -> Callable[[str], int | None] | None:
    """How a launch (launcher.Launch, its ContainerSpec and sifbox.conf) that will join a
    node holder gets its image: `borrow`, said at -v; None where it won't join one."""
    options = launch.options
    if (launch.instance is not None or (options is not None and not options.share) or spec.fakeroot
            or spec.writable or spec.overlays or not cfg.get_bool("share image mounts")):  # fmt: skip
        return None
    wait = not cfg.get_bool("mount service")  # its launches ask it first, not a holder

    def borrowed(path: str) -> int | None:
        fd, why = borrow(path, uid, wait=wait)
        if log:
            log("image %s: %s", path, "the node holder's descriptor of it" if fd is not None
                else f"opened here ({why})")  # fmt: skip
        return fd

    return borrowed


def borrow(path: str, uid: int, *, wait: bool = True) -> tuple[int | None, str]:
    """The image file at `path` as a node holder of `uid` already holds it open: a copy of
    the holder's descriptor (pidfd_getfd), so that a launch joining that holder opens
    nothing on the file server (on NFS or GPFS every open and close is a request; a
    stat is absorbed by the client's attribute cache). None, and why, when there is no
    such holder or any check fails: the caller then opens `path` itself.

    The copy is used only if the file it refers to is the file at `path` now (device,
    inode, size, modification and change times of a stat that follows links as an open
    would), a regular file still in a directory, and one `uid` may read. The caller
    admits and parses it as it would a file it opened: a file renamed over `path` since
    the stat is simply not the one this launch runs. The copy shares the holder's file
    offset: it is read with pread only (sifbox.util.preadfile). With `wait`, a launch that
    finds no holder waits for one that another launch is starting (`_wait_for_start`)."""
    tag = node_tag()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and (uid != os.getuid() or not os.path.isdir(xdg) or os.stat(xdg).st_uid != uid):
        xdg = None
    for where in state_dirs(uid, xdg):
        try:
            dir_fd = open_state_dir(where, uid, create=False)
        except Unshared:
            continue
        try:
            found = _resolve(path, dir_fd, tag)
            if isinstance(found, str):
                return None, found
            st, resolved = found
            prefix = "-".join(f"{n:x}" for n in (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)) + "-"
            fd = _borrow_in(dir_fd, prefix, tag, uid, st, resolved)
            if fd is not None:
                return fd, ""
            if not wait:
                return None, "no holder holds it"
            if not _wait_for_start(dir_fd, where, f"{prefix}{tag}.start"):
                return None, "no holder holds it: this launch starts it"
            fd = _borrow_in(dir_fd, prefix, tag, uid, st, resolved)  # once another launch has started it
            if fd is not None:
                return fd, ""
        except OSError as err:
            return None, err.strerror or str(err)
        finally:
            os.close(dir_fd)
        break  # the directory the launch uses (the first one that is there)
    return None, "no holder holds it"


def _resolve(path: str, dir_fd: int, tag: str) -> tuple[os.stat_result, str] | str:
    """The file at `path` (a stat without its access time: util.filestat) and the name it
    resolves to, from one O_PATH descriptor (no open reaches a file server); a string says
    why not. The node's launches of one path walk it one at a time (a lock in the state
    directory, keyed by the path and the node `tag`): a walk checks each directory's permissions, which is a
    request to the file server once its attributes have expired, from every process that
    walks then; the ranks of a job starting together would each send one."""
    import stat as st_
    import zlib

    name = f"{zlib.crc32(os.fsencode(os.path.abspath(path))):08x}-{tag}.{WALK}"
    lock = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError as err:
            return err.strerror or str(err)
    finally:
        os.close(lock)
    try:
        st = filestat.fstat(pfd)
        resolved = os.readlink(f"/proc/self/fd/{pfd}")
        if not (st_.S_ISREG(st.st_mode) and os.access(f"/proc/self/fd/{pfd}", os.R_OK)):
            return "not a readable regular file"
    finally:
        os.close(pfd)
    return st, resolved


#: The suffix of the lock files of `_resolve`, removed by `sifbox mounts prune`.
WALK = "walk"


def _borrow_in(dir_fd: int, prefix: str, tag: str, uid: int, st: os.stat_result, resolved: str) -> int | None:
    suffix = f"-{tag}.{STATE}"
    for name in os.listdir(dir_fd):
        if name.startswith(prefix) and name.endswith(suffix):
            key = name[: -len(STATE) - 1]
            doc = load(dir_fd, key)
            if doc is not None:
                fd = _borrow_from(doc, key, uid, st, resolved)
                if fd is not None:
                    return fd
    return None


#: The start lock this launch holds (`borrow`): (descriptor, path), released once its
#: holder runs (`release_start`).
_starting: list[tuple[int, str]] = []

#: How long a launch waits for another launch of the node to start the holder of its image.
START_WAIT = 30.0


def _wait_for_start(dir_fd: int, where: str, name: str) -> bool:
    """Whether another launch was starting the holder of the image (PREFIX.start locked),
    waited for; if none was, this launch takes that lock (True: it starts the holder, and
    the node's other launches wait for it, so that they don't each open the image)."""
    import time

    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        _starting.append((fd, os.path.join(where, name)))
        return False
    try:
        deadline = time.monotonic() + START_WAIT
        pause = 0.002
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(pause)
                pause = min(0.05, pause * 1.5)
    finally:
        os.close(fd)
    return True


def release_start() -> None:
    """Let the node's other launches of the image look again: its holder runs (or this
    launch mounts it alone)."""
    while _starting:
        fd, path = _starting.pop()
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def _borrow_from(doc: dict[str, Any], key: str, uid: int, st: os.stat_result, resolved: str) -> int | None:
    """A copy of the image descriptor of holder `doc`, if it is that very file (`st`),
    open by the name the launch's path resolved to (`resolved`)."""
    import stat as st_

    from sifbox.runtime.sandbox import syscalls

    if doc.get("key") != key or doc.get("uid") != uid:
        return None
    try:
        pidfd = os.pidfd_open(int(doc["pid"]))
    except (KeyError, TypeError, ValueError, OSError):
        return None
    try:
        # Checked after the pidfd was opened: the process it refers to is this one.
        if not (holder_alive(doc, uid) and helper_alive(doc, uid)):
            return None
        fd = syscalls.pidfd_getfd(pidfd, int(doc["fd"]))
    except (OSError, KeyError, TypeError, ValueError):
        return None  # EPERM (Yama ptrace_scope, another user), ESRCH (it ended), EBADF
    finally:
        os.close(pidfd)
    try:
        got = filestat.fstat(fd)
        same = (got.st_dev, got.st_ino, got.st_size, got.st_mtime_ns, got.st_ctime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # fmt: skip
        # And by the same name: the site's path limits judge the name the descriptor was
        # opened by (another hard link of the file may lie outside them).
        if (same and st_.S_ISREG(got.st_mode) and got.st_nlink > 0
                and os.readlink(f"/proc/self/fd/{fd}") == resolved):  # fmt: skip
            return fd
    except OSError:
        pass
    os.close(fd)
    return None
