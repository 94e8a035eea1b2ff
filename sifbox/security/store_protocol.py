"""The admission store's wire protocol: what a request may hold (pure, no system calls).

One request per connection to the store's Unix socket. The client sends one JSON object
in one message (for `cp`, with the image's open descriptor as `SCM_RIGHTS`) and reads one
JSON reply up to the end of the stream::

    {"op": "cp", "name": NAME, "source": PATH}      one descriptor attached
    {"op": "ls"}                                    {"op": "ls", "user": USER} (root)
    {"op": "info", "name": NAME}                    ... "user": USER (root)
    {"op": "rm", "name": NAME}                      ... "user": USER (root)

    {"ok": true, ...}  or  {"ok": false, "error": WHY, "hint": ..., "checks": [...],
                            "busy": true when the store turned the connection away}

Who asks is what the kernel says (`SO_PEERCRED`), never a field of the request. `source`
is the image's path as the client gives it: the daemon cannot check it, and records it as
`client_source` so that nobody takes it for a fact.

Everything here is bounded: the request's size, the lengths of the strings that end up
in replies and in the audit log, and JSON nesting (a `RecursionError` is a malformed
request, not a fault of the daemon).
"""

from __future__ import annotations

import json
import re

from sifbox.util.messages import request_object, shown

#: Longest request accepted, in bytes.
MAX_REQUEST = 64 * 1024
#: Longest `source` kept (the rest is cut, and the cut marked).
MAX_SOURCE = 4096
#: Image names: no `/`, no leading `.` (so no `..`, no hidden or temporary files).
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}")
NAME_HINT = "names use letters, digits and . _ + -, at most 100 characters"
OPS = ("cp", "ls", "info", "rm")
#: Requests that name an image.
NAMED_OPS = ("cp", "info", "rm")


class ProtocolError(Exception):
    """A request the store does not take: `reason` for the reply and the audit log."""

    def __init__(self, reason: str, *, op: str = "?", name: str | None = None,
                 hint: str | None = None) -> None:  # fmt: skip
        super().__init__(reason)
        self.reason = reason
        self.op = op
        self.name = name
        self.hint = hint


class Request:
    """A well-formed request: `op` one of OPS; `name` valid for NAMED_OPS (else None);
    `user` the other user root asks about (None: the caller); `client_source` as sent."""

    __slots__ = ("client_source", "name", "op", "user")

    def __init__(self, op: str, name: str | None, user: str | None, client_source: str) -> None:
        self.op = op
        self.name = name
        self.user = user
        self.client_source = client_source

    def __repr__(self) -> str:
        return f"Request({self.op!r}, {self.name!r}, user={self.user!r})"


def parse_request(data: bytes) -> Request:
    """The request in `data` (one message as received); ProtocolError if it is not one."""
    try:
        req = request_object(data, MAX_REQUEST)
    except ValueError as err:
        raise ProtocolError(str(err)) from None
    op = req.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown request `{shown(op, 40)}`", op=shown(op, 40))
    user = req.get("user")
    if user is not None and not isinstance(user, str):
        raise ProtocolError("malformed request: `user` is not a string", op=op)
    name = req.get("name")
    if op in NAMED_OPS:
        if not (isinstance(name, str) and NAME_RE.fullmatch(name)):
            raise ProtocolError(f"`{shown(name)}` is not a valid image name", op=op,
                                name=shown(name), hint=NAME_HINT)  # fmt: skip
    else:
        name = None
    source = req.get("source", "")
    if not isinstance(source, str):
        source = f"<{type(source).__name__}>"
    if len(source) > MAX_SOURCE:
        source = source[:MAX_SOURCE] + "...(cut)"
    return Request(op, name, user, source)


def encode_reply(reply: dict) -> bytes:  # type: ignore[type-arg]
    """A reply as sent: one JSON line."""
    return (json.dumps(reply) + "\n").encode()


def valid_user_name(name: str) -> bool:
    """Whether `name` (from the user database) is safe as a directory of the store: one
    printable path component, not hidden (`.meta` holds the admission records)."""
    return 0 < len(name) <= 255 and "/" not in name and not name.startswith(".") and name.isprintable()
