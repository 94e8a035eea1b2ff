"""Fuzz target: requests to the admission store daemon (`sifbox.security.store_protocol.
parse_request`, and `sifbox.security.store.Store.handle` around it).

    python fuzz/fuzz_store.py -max_total_time=60

One input is the bytes a client sends on the store's socket. `parse_request` decodes them: a
`ProtocolError` is a clean rejection, a request must hold what the daemon relies on (a known
operation, a valid name for the operations that take one, a bounded `source`). Then the
daemon's request path runs on one end of a Unix socket pair, as root and as an ordinary user
would reach it, with a store root that does not exist and no descriptor passed (no image
is admitted): the request is decoded and dispatched (`ls`, `info`, `rm`, `cp`, unknown
operations, another user's name), and the answer read back. The daemon must answer every
request with one JSON object (no bytes at all: no answer) and write one audit record; an
`internal error` answer (an exception that `handle` caught as the daemon's own fault) or an
exception out of `handle` is a crash.
"""

from __future__ import annotations

import itertools
import json
import socket
from types import SimpleNamespace

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.security import store_protocol as protocol
    from sifbox.security.store import Peer, Store
    from sifbox.security.store_audit import AuditLog

#: A store root that does not exist and that nobody can make (procfs takes no directories):
#: without a descriptor no request writes anything, and nothing is left behind.
ROOT = "/proc/self/sifbox-fuzz-store"
#: What `Store` reads of sifbox.conf, for a store under a temporary directory.
SETTINGS = SimpleNamespace(
    root=ROOT, client_timeout=5, max_images=10, max_size=1 << 20, max_total=1 << 20,
    require_signature=False, signers=set(), sbom=False, sbom_max_bytes=1 << 20,
    sbom_max_files=100, vuln_db=None, threshold=None, scanner=None, confdir=ROOT,
)  # fmt: skip
FAULTS: list[str] = []
_TICKS = itertools.count(0, 3600)  # an hour between lines: the rate limit never drops one
AUDIT = AuditLog(None, "audit.log", None, lambda line: None, clock=lambda: float(next(_TICKS)))
STORE = Store(SETTINGS, AUDIT, FAULTS.append)  # type: ignore[arg-type]
#: Root (who may name another user) and an ordinary user.
PEERS = (Peer(1, 0, "root"), Peer(2, 65534, "nobody"))


def _parse(data: bytes) -> None:
    try:
        req = protocol.parse_request(data)
    except protocol.ProtocolError:
        return
    if req.op not in protocol.OPS:
        raise AssertionError(f"operation {req.op!r}")
    named = req.op in protocol.NAMED_OPS
    if named and not (isinstance(req.name, str) and protocol.NAME_RE.fullmatch(req.name)):
        raise AssertionError(f"name {req.name!r}")
    if len(req.client_source) > protocol.MAX_SOURCE + len("...(cut)"):
        raise AssertionError(f"source of {len(req.client_source)} characters")
    if req.user is not None and not isinstance(req.user, str):
        raise AssertionError(f"user {req.user!r}")


def _handle(data: bytes, peer: Peer) -> None:
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        FAULTS.clear()
        AUDIT.records.clear()
        STORE.handle(server, peer)
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    finally:
        client.close()
        server.close()
    if len(AUDIT.records) != 1:
        raise AssertionError(f"{len(AUDIT.records)} audit records for one request")
    if not data:  # no request: logged, and the connection closed without a word
        if answer or AUDIT.records[0].get("reason") != "the client sent no request":
            raise AssertionError(f"answer {answer[:200]!r} to no request")
        return
    reply = json.loads(answer)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise AssertionError(f"answer {answer[:200]!r}")
    if FAULTS or "internal error" in str(reply.get("error", "")):
        raise AssertionError(f"the daemon failed on its own: {FAULTS or reply}")


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    data = data[: protocol.MAX_REQUEST + 1]  # what the daemon reads of one message at most
    _parse(data)
    for peer in PEERS:
        _handle(data, peer)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
