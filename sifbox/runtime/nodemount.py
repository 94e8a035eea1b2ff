"""One image mount per user, image and node, that every launch joins.

The first launch of a user for an image on a node starts a holder: a detached process
that keeps a user+mount namespace (a mount namespace for root) with the image mounted
(squashfuse_ll for users, kernel SquashFS on a loop device for root). Later launches
find it and join it (`sandbox.join.enter_holder`), then unshare a mount namespace of
their own for their binds and overlays, as without it. So 64 ranks on a node share one
mount, one FUSE server and one page cache of the image.

State, per user, in a directory only that user may use (0700, owned, never a link):
`$XDG_RUNTIME_DIR/sifbox`, else `/run/sifbox` for root, else `/tmp/sifbox-UID`:

    KEY.lock    flock'ed (exclusive) while a launch looks for, or starts, the holder
    KEY.refs    flock'ed shared by every container using the holder, for its lifetime:
                the holder ends once it gets it exclusively for the idle timeout
    KEY.state   the holder: pid, start time, image, its mount and the descriptor of
                the image it holds (versioned; one `name value` a line, not JSON: the
                json module costs some 8 ms of every launch to import)
    KEY.log     the holder's stderr

KEY is the image's identity: device, inode, size and modification time of the opened
(and admitted) file, and the offset and size of its SquashFS partition; and the node's (a
checksum of its host name), since the directory may be shared between nodes (/tmp or
XDG_RUNTIME_DIR on a shared file system): each node has its own holder, and `list` and
`prune` only look at the holders of their node. A
launch joins a holder only if it is that user's process (pid + start time, its uid,
named `sifbox-holder`), if the file it holds is the very file this launch opened and
admitted, and if the mount it joins is the holder's mount of it (its device). Any
doubt, or any failure, and the launch mounts the image itself (the per-process path),
as it does with `--no-share` or `share image mounts = no`.
"""

from __future__ import annotations

import errno
import fcntl
import os

from sifbox.util import filestat
from sifbox.util.errors import SifboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

VERSION = 1
PROCESS_NAME = "sifbox-holder"
DEFAULT_IDLE = 60


class Unshared(Exception):
    """The image can't be shared this time; the reason says why (shown at -v)."""


class Joinable:
    """A holder found (or started) for this launch: `pidfd` to join, the mount to bind
    (`mount` in its namespace, of device `dev`), and `refs`, the descriptor whose shared
    lock keeps it from ending while this container runs."""

    __slots__ = ("dev", "mount", "pid", "pidfd", "refs", "started")

    def __init__(self, pid: int, pidfd: int, mount: str, dev: int, refs: int, started: bool) -> None:
        self.pid, self.pidfd, self.mount, self.dev, self.refs, self.started = pid, pidfd, mount, dev, refs, started

    def close_pidfd(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


# --- where, and who -------------------------------------------------------------------------------


def state_dirs(uid: int, xdg: str | None = None) -> list[str]:
    """The state directories of `uid`, the preferred one first."""
    found = []
    if xdg and os.path.isabs(xdg):
        found.append(os.path.join(xdg, "sifbox"))
    if uid == 0:
        found.append("/run/sifbox")
    else:
        found.append(f"/run/user/{uid}/sifbox")
    found.append(f"/tmp/sifbox-{uid}")
    return list(dict.fromkeys(found))


def open_state_dir(path: str, uid: int, *, create: bool) -> int:
    """A descriptor of the state directory `path`, made 0700 if missing (`create`); it
    must be a directory (never a link) that `uid` owns and no one else may use."""
    if create:
        parent = os.path.dirname(path)
        try:
            pst = os.stat(parent)
        except OSError as err:
            raise Unshared(f"`{parent}`: {err.strerror}") from None
        # /tmp and /run are the system's; a parent the user owns (XDG_RUNTIME_DIR) is theirs.
        if not (pst.st_uid in (0, uid)):
            raise Unshared(f"`{parent}` belongs to uid {pst.st_uid}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise Unshared(f"can't make `{path}`: {err.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise Unshared(f"can't open `{path}`: {err.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != uid or st.st_mode & 0o077:
        os.close(fd)
        raise Unshared(f"`{path}` is not a private directory of uid {uid} (owner {st.st_uid}, mode "
                       f"{st.st_mode & 0o7777:o})")  # fmt: skip
    return fd


def _usable_dir(uid: int) -> tuple[str, int]:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            if os.stat(xdg).st_uid != uid:
                xdg = None
        except OSError:
            xdg = None
    reasons = []
    for path in state_dirs(uid, xdg):
        if path.startswith("/run/user/") and not os.path.isdir(os.path.dirname(path)):
            continue
        try:
            return path, open_state_dir(path, uid, create=True)
        except Unshared as err:
            reasons.append(str(err))
    raise Unshared("no state directory: " + "; ".join(reasons))


def node_tag() -> str:
    """This node's part of a key: a checksum of its host name."""
    import zlib

    return f"n{zlib.crc32(os.uname().nodename.encode('utf-8', 'surrogateescape')):08x}"


def identity(fd: int, offset: int, size: int) -> str:
    """The key of the SquashFS at `offset` (`size` bytes) of the open file `fd`, on this node."""
    st = filestat.fstat(fd)
    image = "-".join(f"{n:x}" for n in (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, offset, size))
    return f"{image}-{node_tag()}"


def of_this_node(key: str, tag: str) -> bool:
    """Whether KEY is one of this node's (`tag`), or of a version without node (6 fields)."""
    parts = key.split("-")
    return parts[-1] == tag or (len(parts) == 6 and not parts[-1].startswith("n"))


def _lock(dir_fd: int, name: str, how: int = fcntl.LOCK_EX) -> int:
    """Open and flock `name` of the state directory; the file locked is the one the
    directory names (`prune` may unlink it meanwhile: then the new one is locked)."""
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, how)
            try:
                now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            here = os.fstat(fd)
            if now is not None and (now.st_dev, now.st_ino) == (here.st_dev, here.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _proc(pid: int) -> tuple[str, int, int] | None:
    """(name, start time, real uid) of a live process; None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode(errors="replace")
    except OSError:
        return None
    close = stat.rindex(")")
    fields = stat[close + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
    return stat[stat.index("(") + 1 : close], int(fields[19]), uid


_INTS = ("version", "pid", "starttime", "dev", "fd", "uid")
_TEXTS = ("key", "mount", "image")
STATE = "state"  # the state file's suffix


def load(dir_fd: int, key: str) -> dict[str, Any] | None:
    """The state of KEY's holder; None if missing, malformed or of another version."""
    try:
        fd = os.open(f"{key}.{STATE}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        text = os.read(fd, 1 << 16).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)
    doc: dict[str, Any] = {}
    try:
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in _INTS:
                doc[name] = int(value)
            elif name in _TEXTS:
                doc[name] = value
            elif name == "helper":
                pid, start = (int(n) for n in value.split())
                doc[name] = [pid, start] if pid else None
    except ValueError:
        return None
    if doc.get("version") != VERSION or any(n not in doc for n in (*_INTS, *_TEXTS, "helper")):
        return None
    return doc


def _write(dir_fd: int, key: str, doc: dict[str, Any]) -> None:
    helper = doc.get("helper") or (0, 0)
    lines = [f"{n} {int(doc[n])}" for n in _INTS] + [f"{n} {doc[n]}" for n in _TEXTS]
    text = "\n".join([*lines, f"helper {int(helper[0])} {int(helper[1])}"]) + "\n"
    if any("\n" in str(doc[n]) for n in _TEXTS):
        raise Unshared("a path holds a newline")
    tmp = f".{key}.{STATE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)
    os.rename(tmp, f"{key}.{STATE}", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def holder_alive(doc: dict[str, Any], uid: int) -> bool:
    """`doc` names a holder that still runs: same pid and start time, `uid`'s, named as one."""
    try:
        pid, start = int(doc["pid"]), int(doc["starttime"])
    except (KeyError, TypeError, ValueError):
        return False
    seen = _proc(pid)
    return seen is not None and seen == (PROCESS_NAME, start, uid)


def helper_alive(doc: dict[str, Any], uid: int) -> bool:
    helper = doc.get("helper")
    if not helper:
        return True  # a kernel mount: nothing serves it
    try:
        pid, start = int(helper[0]), int(helper[1])
    except (TypeError, ValueError, IndexError):
        return False
    seen = _proc(pid)
    return seen is not None and seen[1:] == (start, uid)


def _verify(doc: dict[str, Any], key: str, uid: int, image_fd: int) -> int | None:
    """A pidfd of the holder `doc` names, if it is one to join (see the module's doc)."""
    if doc.get("key") != key or doc.get("uid") != uid:
        return None
    try:
        pid = int(doc["pid"])
        pidfd = os.pidfd_open(pid)
    except (KeyError, TypeError, ValueError, OSError):
        return None
    ok = False
    try:
        # Checked after the pidfd was opened: the process it refers to is this one.
        if holder_alive(doc, uid) and helper_alive(doc, uid):
            held = filestat.stat(f"/proc/{pid}/fd/{int(doc['fd'])}")
            mine = filestat.fstat(image_fd)
            ok = (held.st_dev, held.st_ino) == (mine.st_dev, mine.st_ino)
    except (OSError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        os.close(pidfd)
        return None
    return pidfd


def _stop(doc: dict[str, Any], uid: int) -> None:
    """Ask a holder that can't be joined (its FUSE server died) to end."""
    if holder_alive(doc, uid):
        try:
            os.kill(int(doc["pid"]), 15)
        except OSError:
            pass


# --- a launch ---------------------------------------------------------------------------------------


def acquire(image: Any, *, uid: int, gid: int, userns: bool, squashfuse: str | None, slave: bool,
            idle: int, fuse_threads: Callable[[], bool] | None = None) -> Joinable:  # fmt: skip
    """The holder of `image` (a RootImage: the admitted descriptor, offset, size) for this
    user, started if there is none; its refs lock taken. Raises Unshared. `fuse_threads`:
    whether a holder started serves with squashfuse_ll's multithreaded server (asked only
    then: the answer probes the binary)."""
    path, dir_fd = _usable_dir(uid)
    try:
        key = identity(image.fd, image.offset, image.size)
        lock = _lock(dir_fd, f"{key}.lock")
        try:
            doc = load(dir_fd, key)
            pidfd = _verify(doc, key, uid, image.fd) if doc is not None else None
            started = False
            if pidfd is None:
                if doc is not None:
                    _stop(doc, uid)
                _unlink(dir_fd, f"{key}.{STATE}")
                from sifbox.runtime import holder

                doc = holder.start_node_mount(image, dir_fd=dir_fd, key=key, uid=uid, gid=gid, userns=userns,
                                              squashfuse=squashfuse, slave=slave, idle=idle,
                                              fuse_threads=fuse_threads is not None and fuse_threads())  # fmt: skip
                doc.update(version=VERSION, key=key, uid=uid, image=image.path)
                _write(dir_fd, key, doc)
                started = True
                pidfd = _verify(doc, key, uid, image.fd)
                if pidfd is None:
                    raise Unshared("the holder it started can't be joined")
            refs = os.open(f"{key}.refs", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=dir_fd)  # fmt: skip
            fcntl.flock(refs, fcntl.LOCK_SH)
            # The holder's idle clock: a container shorter than its look period would
            # otherwise go unseen (`last_join`). Not worth failing the join over.
            try:
                os.utime(refs)
            except OSError:
                pass
        finally:
            os.close(lock)
    except OSError as err:
        raise Unshared(f"in `{path}`: {err.strerror or err}") from None
    except SifboxError as err:
        raise Unshared(err.message) from None
    finally:
        os.close(dir_fd)
    assert doc is not None
    return Joinable(int(doc["pid"]), pidfd, str(doc["mount"]), int(doc["dev"]), refs, started)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


# --- the holder's own side ----------------------------------------------------------------------------


def idle_now(dir_fd: int, key: str) -> int | None:
    """In the holder: the exclusive lock of KEY.lock if no container uses the holder
    (KEY.refs free), else None. The caller removes its state, then unlocks."""
    lock = _lock(dir_fd, f"{key}.lock")
    try:
        refs = os.open(f"{key}.refs", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(refs, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            os.close(lock)
            return None
        finally:
            os.close(refs)
    except BaseException:
        os.close(lock)
        raise
    return lock


def last_join(dir_fd: int, key: str) -> int:
    """When a container last joined the holder of KEY (KEY.refs' modification time, ns; 0
    if unknown): the holder looks every quarter of its idle timeout, and a container that
    came and went between two looks still counts as use."""
    try:
        return os.stat(f"{key}.refs", dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns
    except OSError:
        return 0


def forget(dir_fd: int, key: str, pid: int) -> None:
    """Remove KEY.state if it still names holder `pid` (the caller holds KEY.lock)."""
    doc = load(dir_fd, key)
    if doc is not None and doc.get("pid") == pid:
        _unlink(dir_fd, f"{key}.{STATE}")


#: How long a launch asks the mount service again while it turns requests away as busy, in
#: seconds: it serves a few requests of a user at once (`mount service max clients per user`),
#: and the ranks of a node ask together, each for some milliseconds.
SERVICE_BUSY_WAIT = 10.0


class ServiceBusy(Unshared):
    """The mount service turned the request away for now (too many requests at once)."""


class ServiceMount:
    """The mount service's mount of the image (`sifbox.runtime.mountsvc`): `path` in the
    host's mount namespace, the root of a mount of device `dev`; `refs`, the descriptor
    whose shared lock keeps the service from unmounting it while this container runs."""

    __slots__ = ("dev", "path", "refs")

    def __init__(self, path: str, dev: int, refs: int) -> None:
        self.path, self.dev, self.refs = path, dev, refs


def ask_service(sock_path: str, op: str, fd: int | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """One request to the mount service; its reply. Raises Unshared if it can't be asked.
    (`_socket`, not `socket`: the module costs a launch some milliseconds to import.)"""
    import _socket
    import struct

    from sifbox.runtime import mountsvc_protocol as proto

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    chunks, total = [], 0
    try:
        s.settimeout(timeout)
        s.connect(sock_path)
        data = proto.encode_request(op)
        rights = [] if fd is None else [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("i", fd))]
        try:
            sent = s.sendmsg([data], rights)
        except (BrokenPipeError, ConnectionResetError):
            sent = -1  # it closed before it read the request (turned away): its reply may be there
        if sent not in (-1, len(data)):
            raise OSError(0, "the request was cut")
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                total += len(chunk)
                if total > proto.MAX_REPLY:
                    break
        except ConnectionResetError:
            if not chunks and sent != -1:
                raise
        if not chunks and sent == -1:
            raise ServiceBusy("the mount service closed the connection before it took the request")
    except OSError as err:
        raise Unshared(f"no mount service at `{sock_path}`: {os.strerror(err.errno) if err.errno else err}") from None
    finally:
        s.close()
    try:
        return proto.parse_reply(b"".join(chunks))
    except proto.ProtocolError as err:
        raise Unshared(err.reason) from None


def _ask_while_busy(sock_path: str, fd: int, wait: float = SERVICE_BUSY_WAIT) -> dict[str, Any]:
    """The service's reply to a mount request, asked again (for up to `wait` seconds, with
    growing pauses) while it turns the request away as busy: with a fallback at once, the
    ranks it turned away would each mount the image again (a node holder: a second page
    cache of it)."""
    import time

    deadline = time.monotonic() + wait
    pause = 0.002 * (1 + os.getpid() % 8)  # not all at once again
    while True:
        try:
            reply = ask_service(sock_path, "mount", fd)
        except ServiceBusy:
            reply = None
        if reply is not None and (reply.get("ok") or reply.get("busy") is not True):
            return reply
        if time.monotonic() + pause > deadline:
            if reply is None:
                raise ServiceBusy(f"the mount service was busy for {wait:g} s")
            return reply
        time.sleep(pause)
        pause = min(0.2, pause * 2)


def _from_service(p: Any) -> ServiceMount | None:
    """The mount service's mount of the image, if `mount service = yes` and it serves it."""
    if not p.cfg.get_bool("mount service") or p.opened is None:
        return None
    source = p.opened.source
    if source.kind != "sif" or source.oci is not None or source.encryption is not None:
        reason = "it is not a SIF image"
    else:
        try:
            reply = _ask_while_busy(p.cfg.get_str("mount service socket"), p.image.fd)
        except Unshared as err:
            reason = str(err)
        else:
            fields = (reply.get("path"), reply.get("dev"), reply.get("refs"))
            if reply.get("ok") and isinstance(fields[0], str) and isinstance(fields[1], int) and isinstance(fields[2], str):
                try:
                    refs = os.open(fields[2], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                    try:
                        fcntl.flock(refs, fcntl.LOCK_SH)
                    except OSError:
                        os.close(refs)
                        raise
                except OSError as err:
                    reason = f"can't hold its mount: {err.strerror}"
                else:
                    if p.log:
                        p.log("image %s: joining the mount service's mount of it", p.image.path)
                    return ServiceMount(fields[0], fields[1], refs)
            else:
                reason = str(reply.get("error", "refused"))
    if p.log:
        p.log("image %s: not from the mount service: %s", p.image.path, reason)
    return None


def enter(p: Any) -> int | None:
    """Enter the container's namespaces, by way of the shared mount `p.share` (a holder's,
    or the service's); an O_PATH descriptor of that mount, or None: mount the image here."""
    from sifbox.runtime.sandbox import join, namespaces

    if isinstance(p.share, ServiceMount):
        namespaces.enter(p.ns, image=p.spec.image)
        try:
            return join.open_mounted(p.share.path, p.share.dev)
        except OSError as err:
            if p.log:
                p.log("image %s: the mount service's mount is gone (%s): mounting it here", p.image.path,
                      os.strerror(err.errno or 0))  # fmt: skip
            return None
    from sifbox.runtime.sandbox.ops import LaunchError

    try:
        join.enter_holder(p.share.pidfd, userns=p.userns)  # all or nothing: a pidfd's setns
    except LaunchError as err:
        # It ended since it was found (pruned, killed): this container mounts the image itself.
        p.share.close_pidfd()
        if p.log:
            p.log("image %s mounted for this container alone: %s", p.image.path, err.message)
        namespaces.enter(p.ns, image=p.spec.image)
        return None
    p.share.close_pidfd()
    namespaces.enter(p.ns._replace(user=False), image=p.spec.image)
    try:
        return join.open_mounted(p.share.mount, p.share.dev)
    except OSError:
        return None  # mounted here instead


def for_launch(p: Any, *, instance: str | None) -> Joinable | ServiceMount | None:
    """The shared mount a prepared launch (`launcher.Prepared`) joins: the mount service's
    (`mount service = yes`), else its holder; or None: it mounts the image itself (sharing
    is off, or doesn't apply, or failed: said at -v)."""
    if _why_not(p, instance, service=True) is None:
        served = _from_service(p)
        if served is not None:
            return served
    reason = _why_not(p, instance)
    if reason is None:
        try:
            idle = int(os.environ.get("SIFBOX_SHARE_IDLE_TIMEOUT", "") or p.cfg.get_int("share image idle timeout"))
        except ValueError:
            idle = DEFAULT_IDLE
        try:
            found = acquire(p.image, uid=p.host.uid, gid=p.host.gid, userns=p.userns, squashfuse=p.squashfuse,
                            slave=p.site.mount_slave, idle=max(0, idle),
                            fuse_threads=lambda: squashfuse_threads(p, shared=True, say=False))  # fmt: skip
        except Unshared as err:
            reason = f"can't share its mount: {err}"
        else:
            if p.log:
                p.log("image %s: %s node mount holder (pid %d)", p.image.path,
                      "started the" if found.started else "joining the", found.pid)  # fmt: skip
                if found.started:
                    squashfuse_threads(p, shared=True)  # said once: the probe is cached
            return found
    if p.log and reason:
        p.log("image %s mounted for this container alone: %s", p.image.path, reason)
    return None


def squashfuse_threads(p: Any, *, shared: bool, say: bool = True) -> bool:
    """Whether the squashfuse_ll of a prepared launch serves its mount (a node holder's:
    `shared`) with the multithreaded server (`squashfuse threads` of sifbox.conf, the
    binary's capability); said at -v (if `say`)."""
    if not p.squashfuse:
        return False
    from sifbox.image.squashfuse import probe
    from sifbox.runtime.mountpath import fuse_threads

    setting = str(os.environ.get("SIFBOX_SQUASHFUSE_THREADS") or p.cfg.get("squashfuse threads")).lower()
    threads, why = fuse_threads(setting, probe(p.squashfuse).multithreaded, shared=shared)
    if p.log and say:
        p.log("squashfuse_ll %s: %s", "multithreaded" if threads else "single-threaded", why)
    return threads


def _why_not(p: Any, instance: str | None, *, service: bool = False) -> str | None:
    """Why the launch mounts the image itself, not a holder's (`service`: the mount
    service's, whose mount is the host's, and asked for unless `mount service = no`)."""
    from sifbox.runtime.mountpath import share_refusal

    kind = p.image.kind if p.image is not None else ""
    return share_refusal(kind=kind, no_share=p.options is not None and not p.options.share,
                         share_conf=p.cfg.get_bool("share image mounts"),
                         instance=p.joining is not None or p.fixed is not None, service=service,
                         fakeroot=p.ns.maps is not None or p.ns.inside is not None,
                         root_userns=p.userns != (not p.host.is_root), mount_slave=p.site.mount_slave)  # fmt: skip


# --- sifbox mounts list|prune ---------------------------------------------------------------------------


def _in_use(dir_fd: int, key: str) -> bool:
    from sifbox.util import flocks

    return flocks.held(f"{key}.refs", dir_fd)


def _own_dirs(uid: int) -> list[tuple[str, int]]:
    """The existing state directories of `uid` (their descriptors: close them)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR") if uid == os.getuid() else None
    found = []
    for path in state_dirs(uid, xdg):
        try:
            found.append((path, open_state_dir(path, uid, create=False)))
        except Unshared:
            continue
    return found


def _pid_depth(pid: int | str) -> int:
    """How many PID namespaces `pid` is in, seen from /proc's (0: unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode(errors="replace")
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("NSpid:")), "")
    return len(line.split()) - 1


def holder_pids(uid: int | None) -> dict[int, int]:
    """pid -> uid of every live holder process (of `uid` only, unless None) of this PID
    namespace: not those of a container's or a node's of its own (a node of a test cluster,
    a container running Slurm), which their own `prune` looks after."""
    found = {}
    depth = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            seen = _proc(int(entry))
            if seen is not None and seen[0] == PROCESS_NAME and (uid is None or seen[2] == uid):
                depth = depth or _pid_depth("self")
                if _pid_depth(entry) == depth:
                    found[int(entry)] = seen[2]
    return found


def listing(uid: int) -> list[dict[str, Any]]:
    """The holders of `uid`: their state, with `state` running|stale and `in_use`;
    holders whose state is gone are listed with `state` unreachable."""
    rows: list[dict[str, Any]] = []
    known = set()
    tag = node_tag()
    for path, dir_fd in _own_dirs(uid):
        try:
            for name in sorted(os.listdir(dir_fd)):
                if not name.endswith(f".{STATE}") or name.startswith("."):
                    continue
                key = name[: -len(STATE) - 1]
                if not of_this_node(key, tag):
                    continue  # another node's, in a shared directory
                doc = load(dir_fd, key)
                if doc is None:
                    continue
                alive = holder_alive(doc, uid) and helper_alive(doc, uid)
                known.add(doc.get("pid"))
                rows.append({"pid": doc.get("pid"), "uid": uid, "image": doc.get("image", ""), "key": key,
                             "state": "running" if alive else "stale", "in_use": alive and _in_use(dir_fd, key),
                             "dir": path, "mount": doc.get("mount", "")})  # fmt: skip
        finally:
            os.close(dir_fd)
    for pid in sorted(holder_pids(uid)):
        if pid not in known:
            rows.append({"pid": pid, "uid": uid, "image": "", "key": "", "state": "unreachable", "in_use": None,
                         "dir": "", "mount": ""})  # fmt: skip
    return rows


def prune(uid: int, *, force: bool = False, wait: float = 5.0) -> list[dict[str, Any]]:
    """Stop the holders of `uid` that no container uses (every one with `force`), and
    those whose state is gone; remove stale state. Returns what was stopped or removed."""
    import time

    done: list[dict[str, Any]] = []
    stopping: list[int] = []
    known = set()
    tag = node_tag()
    for path, dir_fd in _own_dirs(uid):
        try:
            keys = {n.rsplit(".", 1)[0] for n in os.listdir(dir_fd) if not n.startswith(".") and "." in n}
            keys = {key for key in keys if of_this_node(key, tag)}  # not another node's (a shared directory)
            for key in sorted(keys):
                lock = _lock(dir_fd, f"{key}.lock")
                try:
                    doc = load(dir_fd, key)
                    alive = doc is not None and holder_alive(doc, uid)
                    if alive:
                        assert doc is not None
                        known.add(doc["pid"])
                        if not force and _in_use(dir_fd, key):
                            continue
                        os.kill(int(doc["pid"]), 15)
                        stopping.append(int(doc["pid"]))
                    if doc is not None:
                        done.append({"pid": doc.get("pid"), "image": doc.get("image", ""),
                                     "state": "stopped" if alive else "stale"})  # fmt: skip
                    for suffix in (STATE, "refs", "log", "start", "lock"):  # the lock last: waiters retry
                        _unlink(dir_fd, f"{key}.{suffix}")
                finally:
                    os.close(lock)
            for name in os.listdir(dir_fd):  # borrow's locks of path walks (waiters just walk)
                if name.endswith(f"-{tag}.walk"):
                    _unlink(dir_fd, name)
        finally:
            os.close(dir_fd)
    for pid in holder_pids(uid):
        if pid not in known and (force or not _holder_in_use(pid, uid)):
            os.kill(pid, 15)
            stopping.append(pid)
            done.append({"pid": pid, "image": "", "state": "stopped"})
    deadline = time.monotonic() + wait
    for pid in stopping:
        while _proc(pid) is not None:
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.01)
    return done


def _holder_in_use(pid: int, uid: int) -> bool:
    """Whether a holder whose state is gone, or not yet written, is used: its own refs file
    (its stderr is DIR/KEY.log) is locked. A holder a launch is starting has no state yet
    (another job's launch, while an epilog prunes): that launch holds KEY.lock until it has
    written the state and taken its refs, so the refs are looked at under that lock."""
    try:
        log = os.readlink(f"/proc/{pid}/fd/2")
        dir_fd = os.open(os.path.dirname(log), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        key = os.path.basename(log).removesuffix(".log")
        if os.fstat(dir_fd).st_uid != uid:
            return False
        try:
            lock = os.open(f"{key}.lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return _in_use(dir_fd, key)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a launch starting it
            return _in_use(dir_fd, key)
        finally:
            os.close(lock)
    finally:
        os.close(dir_fd)
