"""Write a file whole or not at all: a temporary file beside it, then a rename."""

from __future__ import annotations

import os


class Replacing:
    """`with Replacing(path) as tmp:` write `tmp` (created empty, with `mode`); on a normal
    exit it is renamed over `path`, on any error (or signal) it is removed."""

    __slots__ = ("path", "tmp")

    def __init__(self, path: str | os.PathLike[str], mode: int = 0o600) -> None:
        self.path = os.fspath(path)
        self.tmp = os.path.join(os.path.dirname(self.path) or ".",
                                f".{os.path.basename(self.path)}.{os.getpid()}.tmp")  # fmt: skip
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # not narrowed by the umask
        finally:
            os.close(fd)

    def __enter__(self) -> str:
        return self.tmp

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            try:
                os.replace(self.tmp, self.path)
                return
            except BaseException:
                self._remove()
                raise
        self._remove()

    def _remove(self) -> None:
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def write_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically; the file has `mode` from its first byte.

    A crash or a signal leaves either the old file or the new one, and no temporary
    file (it is removed on any error)."""
    with Replacing(path, mode) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
