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
"""

from __future__ import annotations

import json

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


def shown(value: object, width: int = 40) -> str:
    """`value` as it may appear in a reply or a log line: printable, clipped."""
    text = value if isinstance(value, str) else f"<{type(value).__name__}>"
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: width + 1])
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_request(data: bytes) -> str:
    """The operation asked for in `data` (one message as received)."""
    if len(data) > MAX_REQUEST:
        raise ProtocolError(f"request too large (more than {MAX_REQUEST} bytes)")
    try:
        req = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError("malformed request") from None
    if not isinstance(req, dict):
        raise ProtocolError("malformed request")
    op = req.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown request `{shown(op)}`")
    assert isinstance(op, str)
    return op


def encode_request(op: str) -> bytes:
    return json.dumps({"op": op}).encode()


def encode_reply(reply: dict[str, object]) -> bytes:
    """A reply as sent: one JSON line."""
    return (json.dumps(reply) + "\n").encode()


def parse_reply(data: bytes) -> dict[str, object]:
    """The reply in `data`; ProtocolError if it is none."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError("the mount service gave no answer") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("the mount service gave no answer")
    return reply
