"""Start-up of the admission store daemon: its directories, its socket, its privileges.

The daemon starts as root (to create its directories and, where they are root's, bind its
socket) and drops to `store user` before it reads a single request. While it is root, no
path operation may be led by another user's entries: the store user owns the store, the
audit log's directory and (usually) the socket's directory, and could otherwise turn a
`chown` of its own log into a `chown` of `/etc/shadow`. So, as root:

* every directory is opened component by component from `/` (`openat` with `O_NOFOLLOW`
  and `O_DIRECTORY`); a symbolic link is followed only where root alone could have made it
  (its directory is root's and not writable by group or others), and every directory on the
  way belongs to root or to the store user;
* a directory the daemon creates is made with `mkdirat`, opened without following links,
  and given its owner and mode through that descriptor (`fchown`, `fchmod`);
* the directories the daemon writes (store, audit log, socket) must not be writable by
  group or others;
* nothing is done as root inside a directory the store user owns: files there (the audit
  log, the socket when its directory is the store user's) are opened, created or bound
  after the switch to the store user, relative to the directory's descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from sifbox.util.errors import SifboxError, describe_os_error

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40
#: `sun_path` holds 108 bytes, the final NUL included.
MAX_SOCKET_PATH = 107


class StartError(SifboxError):
    reference = "store-start-error"

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"can't start the image store: {reason}", hint=hint)


class Account:
    """The store user: name, uid, gid, home."""

    __slots__ = ("gid", "home", "name", "uid")

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.name, self.uid, self.gid, self.home = name, uid, gid, home


class Dir:
    """A directory opened safely: its descriptor, its path (for messages), its status."""

    __slots__ = ("created", "fd", "path", "st")

    def __init__(self, fd: int, path: str, created: bool) -> None:
        self.fd = fd
        self.path = path
        self.created = created
        self.st = os.fstat(fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _trusted_link_dir(st: os.stat_result) -> bool:
    """Whether only root can have put a symbolic link into the directory of status `st`."""
    return st.st_uid == 0 and not st.st_mode & 0o022


def open_dir(path: str, trusted: frozenset[int], *, create: bool, owner: Account | None = None,
             mode: int = 0o755) -> Dir:  # fmt: skip
    """Open directory `path` (absolute) without being led astray, see the module docstring.

    Every directory on the way must belong to a uid of `trusted`. Missing components are
    created when `create` is set: the intermediate ones root's, mode 0755; the last one with
    `mode`, and given to `owner` (when the caller is root). Raises StartError."""
    if not path.startswith("/"):
        raise StartError(f"`{path}` is not an absolute path")
    todo = [p for p in path.split("/") if p not in ("", ".")]
    stack = [os.open("/", _DIR_FLAGS)]
    names: list[str] = []
    links = 0
    created = False
    try:
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            parent = stack[-1]
            here = "/" + "/".join([*names, part])
            created = False
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise StartError(f"`{here}` does not exist") from None
                fd = _make(parent, part, here, last=not todo, owner=owner, mode=mode)
                created = True
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise StartError(f"can't open `{here}`: {describe_os_error(err)}") from None
                st = os.stat(part, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise StartError(f"`{here}` is not a directory") from None
                if not _trusted_link_dir(os.fstat(parent)):
                    raise StartError(
                        f"`{here}` is a symbolic link in a directory that other users than "
                        "root can write", hint="use the real path in sifbox.conf") from None  # fmt: skip
                links += 1
                if links > MAX_LINKS:
                    raise StartError(f"too many symbolic links in `{path}`") from None
                target = os.readlink(part, dir_fd=parent)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    names.clear()
                todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            stack.append(fd)
            names.append(part)
            st = os.fstat(fd)
            if st.st_uid not in trusted:
                raise StartError(f"`{here}` belongs to uid {st.st_uid}, neither root nor the store user",
                                 hint="the store's directories must be root's or the store user's")  # fmt: skip
        fd = stack.pop()
        return Dir(fd, "/" + "/".join(names), created)
    except OSError as err:
        raise StartError(f"can't open `{path}`: {describe_os_error(err)}") from None
    finally:
        for fd in stack:
            os.close(fd)


def _make(parent: int, part: str, here: str, *, last: bool, owner: Account | None, mode: int) -> int:
    try:
        os.mkdir(part, 0o700, dir_fd=parent)
    except FileExistsError:
        pass  # made meanwhile: opened, and checked, as any other
    except OSError as err:
        raise StartError(f"can't create `{here}`: {describe_os_error(err)}") from None
    fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
    try:
        if last and owner is not None and os.geteuid() == 0:
            os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode if last else 0o755)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_private(d: Dir, account: Account, *, owners: frozenset[int]) -> None:
    """Refuse directory `d` unless one of `owners` owns it and neither group nor others may
    write it (they could swap the store's files)."""
    if d.st.st_uid not in owners:
        raise StartError(f"`{d.path}` is not owned by `{account.name}`",
                         hint=f"chown {account.name}: {d.path}")  # fmt: skip
    if d.st.st_mode & 0o022:
        raise StartError(f"`{d.path}` is writable by group or others (mode "
                         f"{stat.S_IMODE(d.st.st_mode):04o})",
                         hint=f"chmod go-w {d.path}")  # fmt: skip


def bind_socket(d: Dir, name: str, backlog: int = 128) -> socket.socket:
    """A Unix stream socket bound to `name` in directory `d`, mode 0666 (every user may
    connect), and listening: a client that finds the socket is queued, not refused. A stale
    socket of an earlier run is removed; anything else there is refused."""
    try:
        st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise StartError(f"`{os.path.join(d.path, name)}` exists and is not a socket",
                             hint="remove it, or set `store socket` in sifbox.conf")  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=d.fd)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # bind(2) has no directory descriptor: bind the bare name from inside the directory,
    # with a umask that gives the socket its mode from the start (no chmod by name).
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    old_umask = os.umask(0o111)
    try:
        os.fchdir(d.fd)
        server.bind(name)
        server.listen(backlog)
    except OSError as err:
        server.close()
        raise StartError(f"can't listen on `{os.path.join(d.path, name)}`: "
                         f"{describe_os_error(err)}") from None  # fmt: skip
    finally:
        os.umask(old_umask)
        os.fchdir(here)
        os.close(here)
    return server


def open_audit_log(d: Dir, name: str) -> int:
    """The audit log, opened for appending (created if missing) as the store user: never
    through a symbolic link, and only a regular file."""
    path = os.path.join(d.path, name)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                     | os.O_NOCTTY | os.O_NONBLOCK, 0o640, dir_fd=d.fd)  # fmt: skip
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StartError(f"the audit log `{path}` is a symbolic link",
                             hint="remove it; the store creates its log itself") from None  # fmt: skip
        raise StartError(f"can't open the audit log `{path}`: {describe_os_error(err)}",
                         hint="it must be a file the store user may write: chown it, or remove "
                              "it") from None  # fmt: skip
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StartError(f"the audit log `{path}` is not a regular file")
    return fd


def drop_privileges(account: Account) -> None:
    """Become the store user for good (no supplementary groups, no way back)."""
    os.setgroups([])
    os.setgid(account.gid)
    os.setuid(account.uid)
    with contextlib.suppress(PermissionError):
        os.setuid(0)
        raise StartError("still root after switching to the store user")


def raise_descriptor_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft limit on open files towards `wanted` (never past the hard limit);
    the limits in force afterwards."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
