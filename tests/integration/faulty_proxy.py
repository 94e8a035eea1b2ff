"""A TCP proxy on 127.0.0.1 in front of a real registry that can fail chosen requests: cut
the connection part-way through a request's body, or answer a status of its own.

    with FaultyProxy("127.0.0.1:5000", rule) as proxy:
        ...  # talk to proxy.host; proxy.requests lists "METHOD PATH" of every request

`rule(method, path, index)` (index: how many requests of that method came before) returns
None (pass), ("cut", N) (forward the head and N bytes of the body, then drop both sides),
("status", CODE[, HEADERS]) (answer CODE, with the dict HEADERS, without reaching the
registry), or a lie about the registry's answer: ("header", NAME, VALUE) (that header set),
("truncate", N) (N bytes of the body sent, its Content-Length kept, then the connection
dropped), ("flip", N) (byte N of the body altered, its length kept) or ("body", BYTES) (the
body replaced, Content-Length and Docker-Content-Digest made to match: a consistent lie).
`times` holds (time.monotonic(), "METHOD PATH") of every request.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self

Rule = Callable[[str, str, int], tuple[Any, ...] | None]
LIES = ("header", "truncate", "flip", "body")


class FaultyProxy:
    def __init__(self, upstream: str, rule: Rule) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rule = rule
        self.requests: list[str] = []
        self.times: list[tuple[float, str]] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        self.stopping = False

    def __enter__(self) -> Self:
        t = threading.Thread(target=self._serve, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        except OSError:
            pass
        self.sock.close()
        for t in self.threads:
            t.join(timeout=10)

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data or not (head + data)[:1].isalpha():  # closed, or not HTTP (a TLS hello)
                    return
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            kept = [lines[0]]
            for line in lines[1:]:
                name = line.split(":", 1)[0].strip().lower()
                if name == "content-length":
                    length = int(line.split(":", 1)[1])
                if name != "connection":
                    kept.append(line)
            kept.append("Connection: close")
            with self.lock:
                index = self.counts.get(method, 0)
                self.counts[method] = index + 1
                self.requests.append(f"{method} {path}")
                self.times.append((time.monotonic(), f"{method} {path}"))
            action = self.rule(method, path, index)
            if action is not None and action[0] == "status":
                body = b'{"errors":[{"code":"DENIED","message":"injected by the test proxy"}]}'
                extra = "".join(f"{k}: {v}\r\n" for k, v in (action[2] if len(action) > 2 else {}).items())
                conn.sendall(f"HTTP/1.1 {action[1]} Injected\r\nContent-Type: application/json\r\n{extra}"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)  # fmt: skip
                return
            with socket.create_connection(self.upstream, timeout=30) as up:
                up.sendall("\r\n".join(kept).encode("latin-1") + b"\r\n\r\n")
                limit = action[1] if action is not None and action[0] == "cut" else length
                sent = 0
                if rest:
                    up.sendall(rest[:limit])
                    sent = min(len(rest), limit)
                while sent < min(length, limit):
                    data = conn.recv(min(65536, limit - sent))
                    if not data:
                        break
                    up.sendall(data)
                    sent += len(data)
                if action is not None and action[0] == "cut":
                    up.shutdown(socket.SHUT_RDWR)
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                if action is not None and action[0] in LIES:
                    self._lie(up, conn, action)
                    return
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)

    @staticmethod
    def _lie(up: socket.socket, conn: socket.socket, action: tuple[Any, ...]) -> None:
        """The registry's whole answer, altered as `action` says, sent to the client."""
        answer = b""
        while data := up.recv(65536):
            answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")

        def set_header(name: str, value: str) -> None:
            lines[1:] = [ln for ln in lines[1:] if ln.split(":", 1)[0].strip().lower() != name.lower()]
            lines.append(f"{name}: {value}")

        kind = action[0]
        if kind == "header":
            set_header(action[1], action[2])
        elif kind == "flip" and len(body) > action[1]:
            body = body[: action[1]] + bytes([body[action[1]] ^ 0xFF]) + body[action[1] + 1 :]
        elif kind == "body":
            body = action[1]
            set_header("Content-Length", str(len(body)))
            set_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
        elif kind == "truncate":
            body = body[: action[1]]
        conn.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        if kind == "truncate":
            conn.shutdown(socket.SHUT_RDWR)
