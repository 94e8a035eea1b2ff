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


def shown(value: object, width: int = 40) -> str:
    """`value` as it may appear in a reply or a log line: printable, clipped."""
    text = value if isinstance(value, str) else f"<{type(value).__name__}>"
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: width + 1])
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_request(data: bytes) -> str:
    """The operation asked for in `data` (one message as received)."""
    import json

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
    if op not in OPS:
        raise ValueError(op)
    return b'{"op": "' + op.encode() + b'"}'


def encode_reply(reply: dict[str, object]) -> bytes:
    """A reply as sent: one JSON line."""
    import json

    return (json.dumps(reply) + "\n").encode()


class _Strict:
    """What the C JSON scanner asks of its decoder: no hooks, plain numbers, no NaN."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(name)


def parse_reply(data: bytes) -> dict[str, object]:
    """The reply in `data` (one JSON object, blanks around it); ProtocolError if it is none."""
    import _json

    try:
        text = data.decode("utf-8").strip()
        reply, end = _json.make_scanner(_Strict())(text, 0)  # type: ignore[arg-type]
    except (ValueError, RecursionError, StopIteration):
        raise ProtocolError("the mount service gave no answer") from None
    if end != len(text) or not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("the mount service gave no answer")
    return reply
