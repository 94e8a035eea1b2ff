"""The admission store's audit log: one JSON line per decision, appended and synced.

Every request gets a line (admitted, removed, listed, shown, refused, error), a connection
turned away gets one too. Fields: `time`; `op`; `by` and `by_uid` (who asked, from
`SO_PEERCRED`), `pid` (the caller's process then); `user` and `uid` (whose images, when
root acts for another user); `name`; `verdict` and `reason`; for `cp` also `digest`,
`size`, `checks` and `client_source` (the path the client *says* the image came from:
not checked, not checkable).

Requests that change nothing are cheap to send, and each line is synced to disk: so that
a user cannot fill the log's file system, lines other than `admitted` and `removed` are
rate limited per caller (a burst, then one per second); the next line that passes says
how many were left out (`suppressed`), and the daemon's own log says when it starts.

The log is opened once and reopened when it was rotated (renamed or removed) — as the
store user, relative to its directory's descriptor, never through a symbolic link.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from sifbox.security.store_protocol import shown
from sifbox.util.errors import describe_os_error

#: Lines a caller may cause at once, and per second after that.
BURST = 60
PER_SECOND = 1.0
#: Verdicts that are always written (they change the store).
ALWAYS = ("admitted", "removed")


class Bucket:
    """A token bucket: `take()` is True while the caller has lines left."""

    __slots__ = ("last", "suppressed", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(BURST)
        self.last = now
        self.suppressed = 0

    def take(self, now: float) -> bool:
        self.tokens = min(float(BURST), self.tokens + (now - self.last) * PER_SECOND)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class AuditLog:
    """Append records to the log `name` in the directory open as `dir_fd` (or, with
    `dir_fd=None`, to nothing but the daemon's log: for tests of the store's logic)."""

    def __init__(self, dir_fd: int | None, name: str, fd: int | None,
                 log: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.dir_fd = dir_fd
        self.name = name
        self.fd = fd
        self.log = log
        self.clock = clock
        self.lock = threading.Lock()
        self.buckets: dict[object, Bucket] = {}
        self.records: list[dict] = []  # type: ignore[type-arg]  # kept when there is no file

    def write(self, record: dict) -> None:  # type: ignore[type-arg]
        who = record.get("by_uid")
        key = who if isinstance(who, int) and record.get("by") is not None else "unknown"
        with self.lock:
            now = self.clock()
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = Bucket(now)
            if record.get("verdict") not in ALWAYS and not bucket.take(now):
                if bucket.suppressed == 0:
                    self.log(f"sifbox store: too many requests from uid {key}: audit lines left "
                             "out until it slows down")  # fmt: skip
                bucket.suppressed += 1
                return
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
            if bucket.suppressed:
                record["suppressed"] = bucket.suppressed
                bucket.suppressed = 0
            self.log(_text(record))
            line = (json.dumps(record) + "\n").encode()
            if self.dir_fd is None:
                self.records.append(record)
                return
            try:
                self._reopen_if_rotated()
                assert self.fd is not None
                os.write(self.fd, line)
                os.fsync(self.fd)
            except OSError as err:
                # The decision stands; the line goes to the daemon's log (the journal).
                self.log(f"sifbox store: can't write the audit log: {describe_os_error(err)}: "
                         f"{line.decode().strip()}")  # fmt: skip

    def _reopen_if_rotated(self) -> None:
        assert self.dir_fd is not None
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if self.fd is not None and st is not None:
            mine = os.fstat(self.fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return
        fd = os.open(self.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, 0o640, dir_fd=self.dir_fd)  # fmt: skip
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(22, "the audit log is not a regular file")
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd


def _text(record: dict) -> str:  # type: ignore[type-arg]
    """The daemon's log line of an audit record: every field a client chose made printable,
    so that no request can write a line of its own into the journal."""
    who = shown(record["by"], 64) if record.get("by") is not None else f"uid {record.get('by_uid', '?')}"
    user = record.get("user")
    target = f"{shown(user, 64)}/" if user is not None and user != record.get("by") else ""
    name = record.get("name")
    what = f" {target}{shown(name)}" if name else (f" {target[:-1]}" if target else "")
    reason = f": {shown(record['reason'], 300)}" if record.get("reason") else ""
    return f"sifbox store: {shown(record.get('op', '?'), 20)} by {who}{what}: {record.get('verdict')}{reason}"
