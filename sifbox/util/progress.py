"""Step lines for long work (pull, conversion), or one bar of the bytes read on a terminal."""

from __future__ import annotations


class Progress:
    """Step lines; on a terminal (at the default verbosity) each step that reads a blob
    shows a bar of the bytes read instead. `-q` shows neither."""

    def __init__(self, log) -> None:  # type: ignore[no-untyped-def]
        import logging
        import sys

        self.log = log
        self.out = sys.stderr
        self.tty = self.out.isatty() and log.getEffectiveLevel() == logging.INFO
        self.label = ""
        self.total: int | None = None
        self.done_bytes = 0
        self.shown = 0.0
        self.active = False

    def step(self, message: str, size: int | None = None) -> None:
        self._end_line()
        if not self.tty:
            self.log.info("%s", message)
            return
        self.label, self.total, self.done_bytes = message, size, 0
        self.active = True
        self._draw(force=True)

    def warn(self, message: str) -> None:
        self._end_line()
        self.log.warning("%s", message)

    def advance(self, n: int) -> None:
        if self.active:
            self.done_bytes += n
            self._draw()

    def done(self) -> None:
        self._end_line()

    def _draw(self, force: bool = False) -> None:
        import time

        now = time.monotonic()
        if not force and now - self.shown < 0.1:
            return
        self.shown = now
        mb = self.done_bytes / (1 << 20)
        if self.total:
            frac = min(1.0, self.done_bytes / self.total)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {frac:4.0%} {mb:.0f}/{self.total / (1 << 20):.0f} MB"
        else:
            text = f"{self.label} {mb:.0f} MB" if self.done_bytes else self.label
        self.out.write(f"\r\033[K{text}")
        self.out.flush()

    def _end_line(self) -> None:
        if self.active:
            self._draw(force=True)
            self.out.write("\n")
            self.out.flush()
            self.active = False
