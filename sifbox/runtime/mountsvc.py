"""The mount service (`sifbox mounts serve`): one kernel mount per node of each admitted image.

A root daemon (never setuid) on a Unix socket (`mount service socket`, default
/run/sifbox-mount/mount.sock; protocol in `mountsvc_protocol`). A launch (with `mount
service = yes`) sends it the descriptor of its image, the one the site's policy admitted
for it. The service mounts the image only if:

* the descriptor is open for reading (never `O_PATH`: that proves no right to read) and is
  a regular file;
* it is a file of the admission store (`store path`/USER/NAME.sif, whoever's): the file the
  descriptor refers to is, this very moment, the one of that name (device and inode), never
  a path the client names;
* its content is what the store admitted: its SHA-256 is the `stored_digest` of the
  store's admission record (an image swapped or changed after admission is refused);
* the site's policy (sifbox.conf's limits, the ECL) allows it, judged on that descriptor;
* it is a SIF whose root file system is a SquashFS partition (read from the descriptor).

It then mounts that partition (kernel SquashFS on an auto-clearing loop device at the
partition's offset) read-only, nosuid, nodev once, under DIR/.images/DIGEST, and binds it
for the caller at DIR/UID/DIGEST (DIR is the socket's directory: root's, 0711; DIR/UID is
root's, 0700, with a POSIX ACL that lets UID alone through). The caller's launch makes its
user+mount namespace, where the kernel locks those flags, and binds that tree as the
container's image: every container of every user shares one mount and one page cache.

Reference counting: each launch takes a shared lock of DIR/UID/DIGEST.refs (root's, 0644)
for its container's lifetime, as a node holder's launches do. The service unmounts an image
no request asked for in `mount service idle timeout` seconds once nobody holds such a lock;
a container that still runs keeps the superblock (the kernel counts its bind), and the
auto-clearing loop device goes with the last mount. On SIGTERM it detaches every mount it
made. It starts no helper process.

Connections are bounded as the store's (`store_server.Gate`): at most `mount service max
clients` at once, `... per user` of one user, callers without a user name turned away,
10 seconds to send a request, one descriptor at most.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import threading
import time
from typing import Any

from sifbox.runtime.mountsvc_protocol import MAX_REQUEST, ProtocolError, encode_reply, parse_request
from sifbox.util import flocks
from sifbox.util.errors import SifboxError, describe_os_error

CLIENT_TIMEOUT = 10.0
IMAGES = ".images"
#: Largest admission record read.
MAX_RECORD = 1 << 20
CHUNK = 1 << 20


class ServiceError(SifboxError):
    reference = "mount-service-error"


class Refused(Exception):
    """A request the service turns down: the reason (and a hint) go to the client."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.hint = reason, hint


class Settings:
    def __init__(self, cfg: Any, conf_path: str | None) -> None:
        from sifbox.security import policy

        self.cfg, self.conf_path = cfg, conf_path
        self.socket = str(cfg.get_str("mount service socket"))
        self.dir = os.path.dirname(self.socket)
        self.idle = max(0, cfg.get_int("mount service idle timeout"))
        self.max_clients = max(1, cfg.get_int("mount service max clients"))
        self.max_clients_per_user = max(1, cfg.get_int("mount service max clients per user"))
        self.store = os.path.realpath(policy.store_root(cfg))


class Held:
    """One image mounted by the service: where, its device, which users have a bind."""

    __slots__ = ("dev", "digest", "image", "key", "last", "path", "users")

    def __init__(self, key: str, digest: str, path: str, dev: int, image: str) -> None:
        self.key, self.digest, self.path, self.dev, self.image = key, digest, path, dev, image
        self.users: set[int] = set()
        self.last = time.monotonic()


class Service:
    def __init__(self, s: Settings, log: Any) -> None:
        self.s = s
        self.log = log
        self.lock = threading.Lock()
        self.held: dict[str, Held] = {}
        self.digests: dict[tuple[int, ...], str] = {}
        self.records: dict[tuple[str | int, ...], str] = {}  # admission records read, by their stat
        self.digests_lock = threading.Lock()

    # -- a connection --
    def handle(self, conn: socket.socket, peer: Any) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(CLIENT_TIMEOUT)
            try:
                msg, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST + 1, 2)
            except OSError:
                return
            if not msg:
                return
            try:
                reply = self.respond(peer, msg, fds, flags)
            except Refused as why:
                reply = {"ok": False, "error": why.reason}
                if why.hint:
                    reply["hint"] = why.hint
                self.log(f"sifbox mount service: refused uid {peer.uid} (pid {peer.pid}): {why.reason}")
            with contextlib.suppress(OSError):
                conn.sendall(encode_reply(reply))
        except Exception as err:  # noqa: BLE001 - one connection's fault never ends the service
            self.log(f"sifbox mount service: internal error: {err!r}")
            with contextlib.suppress(OSError):
                conn.sendall(encode_reply({"ok": False, "error": f"internal error of the mount service: {err}"}))
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    def respond(self, peer: Any, msg: bytes, fds: list[int], flags: int) -> dict[str, Any]:
        try:
            op = parse_request(msg)
        except ProtocolError as err:
            raise Refused(err.reason) from None
        if flags & socket.MSG_CTRUNC or len(fds) > (1 if op == "mount" else 0):
            raise Refused("too many descriptors sent (a mount request carries one image)")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "list":
            return {"ok": True, "mounts": self.listing(peer.uid)}
        if not fds:
            raise Refused("no image descriptor received")
        return self.mount(peer, fds[0])

    # -- mount --
    def mount(self, peer: Any, fd: int) -> dict[str, Any]:
        from sifbox.image.source import ImageKind, locate
        from sifbox.security.admission import AdmissionError, Gate

        mode = fcntl.fcntl(fd, fcntl.F_GETFL)
        if mode & os.O_PATH or mode & os.O_ACCMODE == os.O_WRONLY:
            raise Refused("the image's descriptor is not open for reading")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        path, user, name = self._in_store(fd, st)
        digest = self._digest(fd, st)
        if digest != self._admitted_digest(user, name):
            raise Refused(f"`{path}` changed since the admission store admitted it (its digest is not the admitted one)",
                          hint="admit it again: `sifbox store cp`")  # fmt: skip
        gate = Gate.from_config(self.s.cfg, self.s.conf_path, user=peer.name, verb="mount")
        if gate.active:
            try:
                gate.admit(fd, kind="sif", image=path)
            except AdmissionError as err:
                raise Refused(err.message, err.hint) from None
        # Read where it is from the very descriptor (the client's, never opened again: on a
        # file server every open is a request), with pread: the file offset the client shares
        # with it plays no part.
        try:
            source = locate(fd, path, verb="mount")
        except SifboxError as err:
            raise Refused(err.message.split(": ", 1)[-1]) from None
        if source.kind != ImageKind.SIF or source.encryption is not None or source.oci is not None:
            raise Refused("the service mounts SIF images with a SquashFS root file system only")
        return self._mounted(peer.uid, digest, path, fd, source.offset, source.size)

    def _in_store(self, fd: int, st: os.stat_result) -> tuple[str, str, str]:
        """(path, user, name) of the admission store's file that `fd` is; Refused if none."""
        from sifbox.security.store_protocol import NAME_RE, valid_user_name

        refused = Refused("not an image of the admission store",
                          hint="`sifbox store cp IMAGE` admits it; then run the store's copy "
                               "(`sifbox store ls` shows its path)")  # fmt: skip
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            raise refused from None
        root = self.s.store.rstrip("/") + "/"
        if not path.startswith(root):
            raise refused
        parts = path[len(root) :].split("/")
        if len(parts) != 2 or not parts[1].endswith(".sif"):
            raise refused
        user, name = parts[0], parts[1][:-4]
        if not (valid_user_name(user) and NAME_RE.fullmatch(name)):
            raise refused
        try:
            there = os.lstat(path)
        except OSError:
            raise refused from None
        if not stat.S_ISREG(there.st_mode) or (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
            raise refused
        return path, user, name

    def _admitted_digest(self, user: str, name: str) -> str:
        """The digest of the store's admission record of USER/NAME, read again only when the
        record's file is another or changed (inode, size, modification and change times:
        the store replaces a record by renaming a new file over it)."""
        record = os.path.join(self.s.store, ".meta", user, name + ".json")
        refused = Refused("the admission store has no record of this image")
        try:
            seen = os.lstat(record)
        except OSError:
            raise refused from None
        key = (record, seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns)
        with self.digests_lock:
            known = self.records.get(key)
        if known is not None:
            return known
        try:
            rfd = os.open(record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                st = os.fstat(rfd)
                doc = json.loads(os.read(rfd, MAX_RECORD))
            finally:
                os.close(rfd)
            digest = doc["stored_digest"]
            if not isinstance(digest, str):
                raise TypeError(digest)
        except (OSError, ValueError, KeyError, TypeError):
            raise refused from None
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == key[1:]:
            with self.digests_lock:
                if len(self.records) > 4096:
                    self.records.clear()
                self.records[key] = digest
        return digest

    def _digest(self, fd: int, st: os.stat_result) -> str:
        """SHA-256 of the file open at `fd` (kept while it is unchanged: same inode, size,
        modification and change times)."""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self.digests_lock:
            known = self.digests.get(key)
        if known is not None:
            return known
        h = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, CHUNK, offset):
            h.update(chunk)
            offset += len(chunk)
        digest = "sha256:" + h.hexdigest()
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != key[2:]:
            raise Refused("the image changed while it was being checked")
        with self.digests_lock:
            if len(self.digests) > 4096:
                self.digests.clear()
            self.digests[key] = digest
        return digest

    def _mounted(self, uid: int, digest: str, image: str, fd: int, offset: int, size: int) -> dict[str, Any]:
        from sifbox.runtime.sandbox import servicemount

        key = digest.removeprefix("sha256:")[:40]
        with self.lock:
            held = self.held.get(key)
            if held is not None and not _is_mount_of(held.path, held.dev):
                self._drop(held)
                held = None
            try:
                if held is None:
                    target = os.path.join(self.s.dir, IMAGES, key)
                    _mkdir(target, 0o700)
                    try:
                        self._mount_own_open(fd, offset, size, target)
                    except OSError:
                        _rmdir(target)
                        raise
                    held = Held(key, digest, target, os.stat(target).st_dev, image)
                    self.held[key] = held
                    self.log(f"sifbox mount service: mounted {image} ({digest}) at {target}")
                mine = os.path.join(self._user_dir(uid), key)
                if uid not in held.users or not _is_mount_of(mine, held.dev):
                    _mkdir(mine, 0o700)
                    servicemount.bind_locked(held.path, mine)
                    held.users.add(uid)
                refs = self._refs(uid, key)
                os.close(os.open(refs, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            except OSError as err:
                raise Refused(f"can't mount `{image}`: {describe_os_error(err)}") from None
            held.last = time.monotonic()
            return {"ok": True, "path": mine, "dev": held.dev, "digest": digest, "refs": refs}

    @staticmethod
    def _mount_own_open(fd: int, offset: int, size: int, target: str) -> None:
        """Mount the image of the client's descriptor `fd` through an open file of the
        service's own: the loop device keeps the file it is given for as long as the mount
        lives, and reads with that file's credentials (a file server's, Kerberos's): never
        with those of a user whose ticket expires."""
        from sifbox.runtime.sandbox import servicemount

        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            a, b = os.fstat(fd), os.fstat(own)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                raise OSError(errno.ESTALE, "the image changed while it was being checked")
            servicemount.mount_squashfs(own, offset, size, target)
        finally:
            os.close(own)

    def _user_dir(self, uid: int) -> str:
        from sifbox.security.store import acl_bytes

        path = os.path.join(self.s.dir, str(uid))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.fstat(dfd)
            if dst.st_uid != 0 or dst.st_mode & 0o077:
                os.fchown(dfd, 0, 0)
                os.fchmod(dfd, 0o700)
            if uid != 0:
                os.setxattr(dfd, "system.posix_acl_access", acl_bytes(7, uid, 1))
        finally:
            os.close(dfd)
        return path

    # -- idle mounts, listing, stop --
    def reap_idle(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            for held in list(self.held.values()):
                if now - held.last >= self.s.idle and not self._in_use(held):
                    self.log(f"sifbox mount service: unmounted idle {held.image} ({held.digest})")
                    self._drop(held)

    def _in_use(self, held: Held) -> bool:
        return any(flocks.held(self._refs(uid, held.key)) for uid in held.users)

    def _refs(self, uid: int, key: str) -> str:
        return os.path.join(self.s.dir, str(uid), key + ".refs")

    def _drop(self, held: Held) -> None:
        from sifbox.runtime.sandbox import servicemount

        for uid in sorted(held.users):
            mine = os.path.join(self.s.dir, str(uid), held.key)
            with contextlib.suppress(OSError):
                servicemount.detach(mine)
            _rmdir(mine)
            with contextlib.suppress(OSError):
                os.unlink(self._refs(uid, held.key))
        with contextlib.suppress(OSError):
            servicemount.detach(held.path)
        _rmdir(held.path)
        self.held.pop(held.key, None)

    def listing(self, uid: int) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        with self.lock:
            for held in self.held.values():
                if uid != 0 and uid not in held.users:
                    continue
                rows.append({"digest": held.digest, "image": held.image, "dev": held.dev,
                             "path": os.path.join(self.s.dir, str(uid), held.key) if uid else held.path,
                             "users": sorted(held.users) if uid == 0 else [uid],
                             "in_use": self._in_use(held), "idle": round(now - held.last, 1)})  # fmt: skip
        return rows

    def stop_all(self) -> None:
        with self.lock:
            for held in list(self.held.values()):
                self._drop(held)
            for entry in os.listdir(self.s.dir):
                if entry.isdigit():
                    _rmdir(os.path.join(self.s.dir, entry))

    def clean_leftovers(self) -> None:
        """Detach what a killed service left mounted under its directory."""
        from sifbox.runtime.sandbox import servicemount

        for entry in os.listdir(self.s.dir):
            top = os.path.join(self.s.dir, entry)
            if not os.path.isdir(top) or os.path.islink(top):
                continue
            for key in os.listdir(top):
                where = os.path.join(top, key)
                with contextlib.suppress(OSError):
                    servicemount.detach(where)
                _rmdir(where)


def _mkdir(path: str, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise OSError(errno.EEXIST, "exists and is not root's directory", path) from None


def _rmdir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _is_mount_of(path: str, dev: int) -> bool:
    try:
        return os.stat(path).st_dev == dev and os.stat(os.path.dirname(path)).st_dev != dev
    except OSError:
        return False



# --- the daemon ----------------------------------------------------------------------------------


def serve(cfg: Any, conf_path: str | None, *, log: Any = print) -> int:
    """Run the service until SIGTERM or SIGINT."""
    import signal

    from sifbox.runtime.sandbox import servicemount
    from sifbox.security.store_server import Gate, clients_within
    from sifbox.security.store_setup import (
        MAX_SOCKET_PATH,
        StartError,
        bind_socket,
        open_dir,
        raise_descriptor_limit,
    )

    s = Settings(cfg, conf_path)
    if os.geteuid() != 0:
        raise ServiceError("can't start the mount service: it runs as root (it mounts images)",
                           hint="run `sifbox mounts serve` as root, or `systemctl start sifbox-mount`")  # fmt: skip
    if len(os.fsencode(s.socket)) > MAX_SOCKET_PATH:
        raise ServiceError(f"can't start the mount service: the socket path `{s.socket}` is longer than "
                           f"{MAX_SOCKET_PATH} bytes")  # fmt: skip
    try:
        top = open_dir(s.dir, frozenset({0}), create=True, mode=0o711)
        try:
            if top.st.st_uid != 0 or top.st.st_mode & 0o022:
                raise StartError(f"`{top.path}` must be root's and writable by root alone")
            if top.path != s.dir:
                raise StartError(f"`{s.dir}` leads elsewhere (`{top.path}`)", hint="use the real path in sifbox.conf")
            os.fchmod(top.fd, 0o711)
            _mkdir(os.path.join(s.dir, IMAGES), 0o700)
            # Whether the directory's bind is the service's (made now, or by a killed run of
            # it: the marker says so), to undo on stop; a mount the site made there stays.
            marker = os.path.join(s.dir, ".bound")
            bound = servicemount.make_private(s.dir) or os.path.exists(marker)
            if bound:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            service = Service(s, log)
            service.clean_leftovers()
            limits = raise_descriptor_limit(64 + 8 * s.max_clients)
            server = bind_socket(top, os.path.basename(s.socket))
        finally:
            top.close()
    except StartError as err:
        raise ServiceError(err.message.replace("the image store", "the mount service"), hint=err.hint) from None
    except OSError as err:
        raise ServiceError(f"can't start the mount service: {describe_os_error(err)}") from None
    os.chdir("/")
    stopping = threading.Event()

    def stop(_sig: int, _frame: object) -> None:
        stopping.set()
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reaper = threading.Thread(target=_reap_loop, args=(service, stopping), daemon=True)
    reaper.start()
    clients = clients_within(limits[0], s.max_clients)
    gate = Gate(clients, min(clients, s.max_clients_per_user), service="the mount service",
                directive="mount service max clients per user")  # fmt: skip
    log(f"sifbox mount service: serving images of {s.store} on {s.socket}")
    try:
        _accept_loop(server, service, gate, stopping, log)
    finally:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(s.socket)
        service.stop_all()
        if bound:
            with contextlib.suppress(OSError):
                servicemount.detach(s.dir)
                os.unlink(marker)
    log("sifbox mount service: stopped")
    return 0


def _reap_loop(service: Service, stopping: threading.Event) -> None:
    period = min(5.0, max(0.2, service.s.idle / 4))
    while not stopping.wait(period):
        try:
            service.reap_idle()
        except Exception as err:  # noqa: BLE001 - the next round tries again
            service.log(f"sifbox mount service: can't unmount idle images: {err!r}")


def _accept_loop(server: socket.socket, service: Service, gate: Any, stopping: threading.Event, log: Any) -> None:
    from sifbox.security.store import Peer

    backoff = 0.0
    while not stopping.is_set():
        try:
            conn, _ = server.accept()
        except OSError as err:
            if stopping.is_set() or err.errno in (errno.EBADF, errno.EINVAL):
                break
            if err.errno in (errno.EINTR, errno.ECONNABORTED, errno.EPROTO):
                continue
            backoff = min(1.0, backoff * 2 or 0.05)  # out of descriptors or memory: wait, serve again
            stopping.wait(backoff)
            continue
        backoff = 0.0
        try:
            peer = Peer.of(conn)
        except OSError:
            conn.close()
            continue
        why = gate.serve(conn, peer, service.handle)
        if why is None:
            continue
        with contextlib.suppress(OSError):
            conn.send(encode_reply({"ok": False, "error": why, "busy": peer.name is not None}), socket.MSG_DONTWAIT)
            conn.recv(MAX_REQUEST, socket.MSG_DONTWAIT)  # a request read is no reset that loses the reply
        conn.close()

