"""The mount service's wire protocol (pure: no system calls).

One request per connection to the service's Unix socket, as the admission store's
(`sifbox.security.store_protocol`): the client sends one JSON object in one message and
reads one JSON reply line, up to the end of the stream::

    {"op": "mount"}     the image's open descriptor attached (SCM_RIGHTS), read-only
                        -> {"ok": true, "path": PATH, "dev": DEV, "digest": "sha256:..."}
    {"op": "list"}      -> {"ok": true, "mounts": [{"digest", "path", "image", "users",
                            "in_use", "idle"}, ...]}  (root: every mount; a user: their own)
    {"op": "ping"}      -> {"ok": true, "pid": PID}

    {"ok": false, "error": WHY, "hint": ..., "busy": true when turned away for now}

Who asks is what the kernel says (`SO_PEERCRED`); which image, what the descriptor is:
never a path or a name of the request.

A launch asks, so its side (`encode_request`, `parse_reply`) imports neither `json` nor
`re`: they would cost every launch several milliseconds; the reply is read by the C scanner
`json` itself uses.
"""

from __future__ import annotations

#: Longest request accepted, in bytes (a request holds one short word).
MAX_REQUEST = 4096
#: Longest reply a client reads (a `list` of many mounts included).
MAX_REPLY = 4 << 20
OPS = ("mount", "list", "ping")


class ProtocolError(Exception):
    """A request the service does not take; `reason` goes into the reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_request(data: bytes) -> str:
    """The operation asked for in `data` (one message as received)."""
    from sifbox.util.messages import request_object, shown

    try:
        req = request_object(data, MAX_REQUEST)
    except ValueError as err:
        raise ProtocolError(str(err)) from None
    op = req.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown request `{shown(op, 40)}`")
    assert isinstance(op, str)
    return op


def encode_request(op: str) -> bytes:
    if op not in OPS:
        raise ValueError(op)
    return b'{"op": "' + op.encode() + b'"}'


def encode_reply(reply: dict[str, object]) -> bytes:
    """A reply as sent: one JSON line."""
    import json

    return (json.dumps(reply) + "\n").encode()


def parse_reply(data: bytes) -> dict[str, object]:
    """The reply in `data` (one JSON object, blanks around it); ProtocolError if it is none."""
    from sifbox.util import cjson

    try:
        reply = cjson.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("the mount service gave no answer") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("the mount service gave no answer")
    return reply
