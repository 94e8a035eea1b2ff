"""Fuzz target: requests to the admission store daemon (`sifbox.security.store.Store.handle`).

    python fuzz/fuzz_store.py -max_total_time=60

One input is the bytes a client sends on the store's socket (at most the request size the
daemon reads). The daemon's request path runs on one end of a Unix socket pair, with a store
root in a temporary directory and no descriptor passed (no image is admitted): the request
is decoded and dispatched (`ls`, `info`, `rm`, `cp`, unknown operations, another user's
name), and the answer read back. The daemon answers every request with a JSON object; an
`internal error` answer (an exception that `handle` caught as the daemon's own fault) or an
exception out of `handle` is a crash.
"""

from __future__ import annotations

import json
import socket
import tempfile

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.security import store


class _Settings:
    """What `Store` reads of sifbox.conf, for a store under a temporary directory."""

    def __init__(self, root: str):
        self.root = root
        self.audit = f"{root}/audit.log"
        self.max_images = 10
        self.max_size = self.max_total = 1 << 20
        self.require_signature = False
        self.signers: set[str] = set()
        self.sbom = False
        self.vuln_db = self.threshold = self.scanner = None
        self.confdir = root


ROOT = tempfile.mkdtemp(prefix="sifbox-fuzz-store-")
STORE = store.Store(_Settings(ROOT))  # type: ignore[arg-type]
FAULTS: list[str] = []
STORE.log = FAULTS.append


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    data = data[: store.MAX_REQUEST]
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        FAULTS.clear()
        STORE.handle(server)
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    finally:
        client.close()
        server.close()
    reply = json.loads(answer)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise AssertionError(f"answer {answer[:200]!r}")
    if FAULTS or "internal error" in str(reply.get("error", "")):
        raise AssertionError(f"the daemon failed on its own: {FAULTS or reply}")


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
