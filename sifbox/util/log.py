"""Logging on stderr, with sifbox's levels.

Levels: ERROR, WARNING, INFO (default), VERBOSE=15, DEBUG, TRACE=5.
The level is `INFO - 5*(verbose) ...` set once by the CLI; helper processes
receive it through SIFBOX_MESSAGELEVEL.
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE = 15
TRACE = 5
SILENT = logging.CRITICAL + 10

logging.addLevelName(VERBOSE, "VERBOSE")
logging.addLevelName(TRACE, "TRACE")

log = logging.getLogger("sifbox")


class _Formatter(logging.Formatter):
    def __init__(self, color: bool, debug: bool):
        super().__init__()
        self.color = color
        self.debug = debug

    _COLORS = {
        logging.ERROR: "\033[31m",
        logging.WARNING: "\033[33m",
        logging.INFO: "\033[34m",
    }

    def format(self, record: logging.LogRecord) -> str:
        tag = record.levelname
        if self.color and record.levelno in self._COLORS:
            tag = f"{self._COLORS[record.levelno]}{tag}\033[0m"
        prefix = f"{tag:<8} "
        if self.debug:
            prefix += f"[U={os.getuid()},P={os.getpid()}] "
        return prefix + record.getMessage()


def setup(level: int, *, color: bool) -> None:
    """Configure the `sifbox` logger for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(color=color, debug=level <= logging.DEBUG))
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
