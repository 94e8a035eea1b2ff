"""The admission store daemon's main loop: start-up, connections, limits.

Started as root, `serve` opens its directories and binds its socket without following
anyone's links (`store_setup`), becomes the store user, and accepts connections. Every
local user can connect, so what one connection may cost is bounded:

* at most `store max clients` connections are served at once, and at most `store max
  clients per user` of one user, so that one user cannot starve the others; a connection
  past a limit is answered at once (`"busy": true`, the client tries again a little later)
  and closed, without a thread;
* callers without a user name (ids of a user namespace's range, say) are turned away at
  once: each of them would otherwise count as a user of its own;
* a client has `store client timeout` seconds to send its request, and as long again to
  read the reply;
* its soft limit on open files is raised to what these limits need (the systemd unit sets
  `LimitNOFILE=`); where the hard limit is lower, fewer connections are served at once,
  so that clients cannot use up the daemon's descriptors;
* running out of descriptors (EMFILE, ENFILE) or memory on accept all the same makes the
  daemon wait and try again, never exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import socket
import threading
from collections.abc import Callable

from sifbox.security.store import Peer, Settings, Store
from sifbox.security.store_audit import AuditLog
from sifbox.security.store_protocol import encode_reply
from sifbox.security.store_setup import (
    MAX_SOCKET_PATH,
    Account,
    StartError,
    bind_socket,
    check_private,
    drop_privileges,
    open_audit_log,
    open_dir,
    raise_descriptor_limit,
)

#: Descriptors one connection may hold at once (its socket, the image, the copy, the
#: checks' files and pipes), and those of the daemon itself.
FDS_PER_CLIENT = 16
FDS_BASE = 64
#: Back-off after a failed accept, first and longest, in seconds.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
#: Errors of accept(2) that say "not now", not "never".
_TRANSIENT = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def clients_within(nofile: int, wanted: int) -> int:
    """How many of `wanted` connections fit in `nofile` open files (one at least)."""
    return max(1, min(wanted, (nofile - FDS_BASE) // FDS_PER_CLIENT))


class Gate:
    """Counts the connections being served, in all and per uid."""

    def __init__(self, total: int, per_user: int, *, service: str = "the image store",
                 directive: str = "store max clients per user") -> None:  # fmt: skip
        self.total = total
        self.per_user = per_user
        self.service = service  # as a refusal names it
        self.directive = directive  # the sifbox.conf directive of `per_user`
        self.active: dict[int, int] = {}
        self.count = 0
        self.lock = threading.Lock()

    def enter(self, uid: int) -> str | None:
        """None if a connection of `uid` may be served now (it is counted), else why not."""
        with self.lock:
            if self.count >= self.total:
                return f"{self.service} is busy ({self.total} connections at once at most)"
            if self.active.get(uid, 0) >= self.per_user:
                return (f"{self.service} is busy: you have {self.per_user} requests running "
                        f"(`{self.directive}`)")  # fmt: skip
            self.active[uid] = self.active.get(uid, 0) + 1
            self.count += 1
            return None

    def serve(self, conn: socket.socket, peer: Peer, handle: Callable[[socket.socket, Peer], None]) -> str | None:
        """`handle(conn, peer)` in a thread of its own, counted while it runs; or, when the
        connection can't be served now, why not (the caller answers and closes `conn`)."""
        why = self.enter(peer.uid) if peer.name is not None else f"uid {peer.uid} has no user name"
        if why is not None:
            return why

        def counted() -> None:
            try:
                handle(conn, peer)
            finally:
                self.leave(peer.uid)

        try:
            threading.Thread(target=counted, daemon=True).start()
        except RuntimeError:
            self.leave(peer.uid)
            return f"{self.service} is busy (no thread available)"
        return None

    def leave(self, uid: int) -> None:
        with self.lock:
            self.count -= 1
            left = self.active[uid] - 1
            if left:
                self.active[uid] = left
            else:
                del self.active[uid]


def serve(cfg, *, log=print) -> int:  # type: ignore[no-untyped-def]
    """Run the daemon until SIGTERM or SIGINT."""
    import signal

    s = Settings(cfg)
    assert s.socket is not None and s.audit is not None and s.user is not None
    try:
        pw = pwd.getpwnam(s.user)
    except KeyError:
        raise StartError(f"no user `{s.user}`",
                         hint="create it (scripts/install.sh does: useradd --system sifbox-store) "
                              "or set `store user` in sifbox.conf") from None  # fmt: skip
    account = Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    if account.uid == 0:
        raise StartError(f"`store user` is `{s.user}`, root: the store parses images users "
                         "send, it must not do so as root", hint="set `store user = sifbox-store`")  # fmt: skip
    is_root = os.geteuid() == 0
    if not is_root and os.geteuid() != account.uid:
        raise StartError(f"run it as root or as `{s.user}`")
    if len(os.fsencode(s.socket)) > MAX_SOCKET_PATH:
        raise StartError(f"the socket path `{s.socket}` is longer than {MAX_SOCKET_PATH} bytes")
    trusted = frozenset({0, account.uid})
    mine = frozenset({account.uid})
    sock_dir, sock_name = os.path.split(s.socket)
    log_dir, log_name = os.path.split(s.audit)
    # The store's directory is only checked here (the store user works in it by path); the
    # log's and the socket's stay open: their files are made relative to them.
    dirs = []
    try:
        root = open_dir(s.root, trusted, create=True, owner=account, mode=0o711)
        dirs.append(root)
        check_private(root, account, owners=mine)
        root.close()
        logd = open_dir(log_dir, trusted, create=True, owner=account, mode=0o750)
        dirs.append(logd)
        check_private(logd, account, owners=mine)
        sockd = open_dir(sock_dir, trusted, create=True, owner=account, mode=0o755)
        dirs.append(sockd)
        check_private(sockd, account, owners=trusted)
        limits = raise_descriptor_limit(FDS_BASE + FDS_PER_CLIENT * s.max_clients)
        server = None
        if sockd.st.st_uid == 0:
            server = bind_socket(sockd, sock_name)  # root's directory: nobody else can swap it
        if is_root:
            drop_privileges(account)
        if server is None:
            server = bind_socket(sockd, sock_name)  # the store user's directory: as the store user
        audit_fd = open_audit_log(logd, log_name)
    except BaseException:
        for d in dirs:
            d.close()
        raise
    os.chdir("/")
    os.environ["HOME"] = account.home
    os.umask(0o077)
    max_clients = clients_within(limits[0], s.max_clients)
    if max_clients < s.max_clients:
        log(f"sifbox store: warning: {limits[0]} open files at most: serving {max_clients} "
            f"connections at once, not `store max clients = {s.max_clients}` (it needs "
            f"{FDS_BASE + FDS_PER_CLIENT * s.max_clients}: raise LimitNOFILE=)")  # fmt: skip
    audit = AuditLog(logd.fd, log_name, audit_fd, log)
    store = Store(s, audit, log)
    store.clean_stale()
    stopping = threading.Event()

    def stop(_sig, _frame):  # type: ignore[no-untyped-def]
        stopping.set()
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"sifbox store: serving {s.root} on {s.socket} as {s.user}")
    gate = Gate(max_clients, min(max_clients, s.max_clients_per_user))
    _accept_loop(server, store, gate, stopping, log)
    with contextlib.suppress(OSError):
        os.unlink(sock_name, dir_fd=sockd.fd)
    log("sifbox store: stopped")
    return 0


def _accept_loop(server: socket.socket, store: Store, gate: Gate, stopping: threading.Event,
                 log) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    backoff = 0.0
    while not stopping.is_set():
        try:
            conn, _ = server.accept()
        except OSError as err:
            if stopping.is_set() or err.errno == errno.EBADF:
                break
            if err.errno in (errno.EINTR, errno.ECONNABORTED, errno.EPROTO):
                continue
            # Out of descriptors or memory (or anything else): wait, then serve again.
            if not backoff:
                log(f"sifbox store: can't accept connections for now: {os.strerror(err.errno or 0)}; "
                    "waiting")  # fmt: skip
            backoff = min(BACKOFF_MAX, backoff * 2 or BACKOFF_FIRST)
            stopping.wait(backoff)
            continue
        if backoff:
            log("sifbox store: accepting connections again")
            backoff = 0.0
        try:
            _admit_connection(conn, store, gate)
        except Exception as err:  # noqa: BLE001 - one connection's fault never ends the daemon
            log(f"sifbox store: internal error: {err!r}")
            conn.close()


def _admit_connection(conn: socket.socket, store: Store, gate: Gate) -> None:
    """Hand `conn` to a thread of its own, or turn it away at once (with a reason)."""
    try:
        peer = Peer.of(conn)
    except OSError:
        conn.close()
        return
    why = gate.serve(conn, peer, store.handle)
    if why is None:
        return
    busy = peer.name is not None
    store.audit({"op": "connect", "by": peer.name, "by_uid": peer.uid, "pid": peer.pid,
                 "verdict": "refused", "reason": why})  # fmt: skip
    with contextlib.suppress(OSError):
        conn.send(encode_reply({"ok": False, "error": why, "busy": busy}), socket.MSG_DONTWAIT)
    conn.close()

