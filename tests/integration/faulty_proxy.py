"""A TCP proxy on 127.0.0.1 in front of a real registry that can fail chosen requests: cut
the connection part-way through a request's body, or answer a status of its own.

    with FaultyProxy("127.0.0.1:5000", rule) as proxy:
        ...  # talk to proxy.host; proxy.requests lists "METHOD PATH" of every request

`rule(method, path, index)` (index: how many requests of that method came before) returns
None (pass), ("cut", N) (forward the head and N bytes of the body, then drop both sides), or
("status", CODE) (answer CODE without reaching the registry).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Self

Rule = Callable[[str, str, int], tuple[str, int] | None]


class FaultyProxy:
    def __init__(self, upstream: str, rule: Rule) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rule = rule
        self.requests: list[str] = []
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
            action = self.rule(method, path, index)
            if action is not None and action[0] == "status":
                body = b'{"errors":[{"code":"DENIED","message":"injected by the test proxy"}]}'
                conn.sendall(f"HTTP/1.1 {action[1]} Injected\r\nContent-Type: application/json\r\n"
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
                while True:
                    data = up.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
