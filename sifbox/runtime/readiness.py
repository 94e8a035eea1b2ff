"""The messages a container's processes send their launcher on a socket pair with
SO_PASSCRED ("watcher", "ready", "ip ...", "exit N"), each with its sender's pid as the
receiver sees it (SCM_CREDENTIALS, translated by the kernel across PID namespaces).

A module of its own: `sifbox oci run` waits for "ready" and needs nothing else of the
instance holder's (sifbox.runtime.holder), whose import would cost every run.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any
else:  # the C module: `socket` imports enum and selectors
    import _socket as socket

from sifbox.util.errors import ExitStatus


def _sender(anc: list[tuple[int, int, bytes]]) -> int:
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(raw) >= 12:
            return int(struct.unpack("iII", raw[:12])[0])
    return 0


def message(sock: Any) -> tuple[bytes, int]:
    """The first message on `sock` and its sender's pid (0: none, or the peer is gone)."""
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
            return bytes(data), _sender(anc)
        except InterruptedError:
            continue


def wait_ready(sock: Any, seen: dict[str, Any]) -> tuple[int | None, int]:
    """(holder pid, 0) once the holder says it is ready; (None, status) if
    the instance ended first. The watcher's pid goes into `seen`, and the
    addresses of its networks (`ip`)."""
    status = int(ExitStatus.CANNOT_LAUNCH)
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(12))
        except InterruptedError:
            continue
        if not data:
            return None, status
        pid = _sender(anc)
        if data == b"ready" and pid > 0:
            return pid, 0
        if data == b"watcher" and pid > 0:
            seen["watcher"] = pid
        if data.startswith(b"ip "):
            seen["ip"] = data[3:].decode("ascii", "replace")
        if data.startswith(b"exit "):
            try:
                status = int(data[5:])
            except ValueError:
                pass
