"""How sifbox's own messages look on stderr: sifbox's format (the default) or Apptainer's.

    sifbox:     sifbox: error: can't ...        apptainer:  FATAL:   can't ...
                hint: use --force ...                       INFO:    use --force ...
                WARNING  the image is ...                   WARNING: the image is ...
                INFO     Creating SIF file...               INFO:    Creating SIF file...

The format comes from `SIFBOX_MESSAGE_FORMAT` (`sifbox` or `apptainer`), which the CLI sets
from `message format` in sifbox.conf when the environment does not; helper processes inherit
it. This module is imported on every error, so it stays small (no `logging`).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_VAR = "SIFBOX_MESSAGE_FORMAT"
SIFBOX = "sifbox"
APPTAINER = "apptainer"
FORMATS = (SIFBOX, APPTAINER)

#: Apptainer's level names (sylog), by Python logging level.
_APPTAINER_LEVELS = {50: "FATAL", 40: "ERROR", 30: "WARNING", 20: "INFO", 15: "VERBOSE", 10: "DEBUG",
                     5: "DEBUG"}  # fmt: skip
_RED, _YELLOW, _BLUE, _RESET = "\033[31m", "\033[33m", "\033[34m", "\033[0m"
_COLORS = {50: _RED, 40: _RED, 30: _YELLOW, 20: _BLUE}


def current(environ: Mapping[str, str] | None = None) -> str:
    """The message format in force: `apptainer` or `sifbox` (also for an unknown value,
    which the CLI refuses before anything is printed)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    return value if value in FORMATS else SIFBOX


def parse(value: str) -> str | None:
    """The format `value` names (any case, blanks ignored), or None."""
    value = value.strip().lower()
    return value if value in FORMATS else None


def prefix(levelno: int, levelname: str, *, fmt: str, color: bool = False) -> str:
    """The tag in front of a log line of level `levelno`, with its separating blank(s)."""
    if fmt == APPTAINER:
        name = _APPTAINER_LEVELS.get(levelno, levelname)
        tag = f"{name}:"
        if color and levelno in _COLORS:
            return f"{_COLORS[levelno]}{tag:<8}{_RESET} "
        return f"{tag:<8} "
    tag = levelname
    if color and levelno in _COLORS:
        tag = f"{_COLORS[levelno]}{tag}{_RESET}"
        return f"{tag}{' ' * max(1, 9 - len(levelname))}"
    return f"{tag:<8} "


def error_text(
    message: str, hint: str | None = None, *, fmt: str | None = None, color: bool = False
) -> str:
    """The lines that report a failure: `sifbox: error: ...` (and `hint: ...`), or
    Apptainer's `FATAL:   ...` (and the hint as an `INFO:` line)."""
    fmt = fmt or current()
    if fmt == APPTAINER:
        text = prefix(50, "FATAL", fmt=fmt, color=color) + message + "\n"
        if hint:
            text += prefix(20, "INFO", fmt=fmt, color=color) + hint + "\n"
        return text
    text = f"sifbox: error: {message}\n"
    if hint:
        text += f"hint: {hint}\n"
    return text


def step_text(message: str, *, fmt: str | None = None, color: bool = False) -> str:
    """A progress line of a long task (build steps): `==> ...`, or `INFO:    ...`."""
    if (fmt or current()) == APPTAINER:
        return prefix(20, "INFO", fmt=APPTAINER, color=color) + message + "\n"
    return f"==> {message}\n"


def shown(value: object, width: int = 100) -> str:
    """`value` as it may appear in a reply or a log line of a daemon: a string, printable
    (escapes for the rest), clipped to `width`."""
    text = value if isinstance(value, str) else f"<{type(value).__name__}>"
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: width + 1])
    return text if len(text) <= width else text[: width - 3] + "..."


def request_object(data: bytes, limit: int) -> dict[str, object]:
    """One JSON request of a sifbox socket (a daemon's input, a client's word): the object
    in `data`; ValueError(reason) if it is over `limit` bytes, not JSON or not an object."""
    import json

    if len(data) > limit:
        raise ValueError(f"request too large (more than {limit} bytes)")
    try:
        req = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ValueError("malformed request") from None
    if not isinstance(req, dict):
        raise ValueError("malformed request")  # noqa: TRY004 - one kind of refusal for the callers
    return req
