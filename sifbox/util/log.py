"""Logging on stderr, with sifbox's levels.

Levels: ERROR, WARNING, INFO (default), VERBOSE=15, DEBUG, TRACE=5.
The level is `INFO - 5*(verbose) ...` set once by the CLI; helper processes
receive it through SIFBOX_MESSAGELEVEL, and the message format (sifbox's or
Apptainer's, `sifbox.util.messages`) through SIFBOX_MESSAGE_FORMAT.
"""

from __future__ import annotations

import logging
import os
import sys

from sifbox.util import messages

VERBOSE = 15
TRACE = 5
SILENT = logging.CRITICAL + 10

logging.addLevelName(VERBOSE, "VERBOSE")
logging.addLevelName(TRACE, "TRACE")

log = logging.getLogger("sifbox")


class _Formatter(logging.Formatter):
    """`LEVEL    message` (sifbox's format) or `LEVEL:   message` (Apptainer's, see
    `sifbox.util.messages`); at DEBUG each line also names the uid and pid."""

    def __init__(self, color: bool, debug: bool, fmt: str = messages.SIFBOX):
        super().__init__()
        self.color = color
        self.debug = debug
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        prefix = messages.prefix(record.levelno, record.levelname, fmt=self.fmt, color=self.color)
        if self.debug:
            ids = f"[U={os.getuid()},P={os.getpid()}]"
            if self.fmt == messages.APPTAINER and record.levelno <= logging.DEBUG:
                # sylog's debug lines: level, ids and function in fixed columns
                return f"{'DEBUG':<8}{ids:<19}{record.funcName + '()':<30}" + record.getMessage()
            prefix += f"{ids} "
        return prefix + record.getMessage()


def setup(level: int, *, color: bool, fmt: str | None = None) -> None:
    """Configure the `sifbox` logger for this process (`fmt`: the message format, by
    default the one `SIFBOX_MESSAGE_FORMAT` names)."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = fmt or messages.current()
    handler.setFormatter(_Formatter(color=color, debug=level <= logging.DEBUG, fmt=fmt))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    os.environ["SIFBOX_MESSAGELEVEL"] = str(level)


def _level_from_env() -> int:
    try:
        return int(os.environ.get("SIFBOX_MESSAGELEVEL", logging.INFO))
    except ValueError:
        return logging.INFO


# The CLI publishes the level in the environment before any command imports
# this module; helper processes inherit it the same way.
setup(_level_from_env(), color="SIFBOX_NOCOLOR" not in os.environ and sys.stderr.isatty())


def verbose(msg: str, *args: object) -> None:
    log.log(VERBOSE, msg, *args)
