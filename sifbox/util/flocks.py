"""Shared `flock` locks as reference counts: a process that uses a thing keeps a shared lock
of its file; whoever may end the thing checks that no one does."""

from __future__ import annotations

import fcntl
import os


def held(path: str, dir_fd: int | None = None) -> bool:
    """Whether another process holds a lock of the file at `path` (relative to `dir_fd`): an
    exclusive lock can't be taken now. A missing file is held by no one; one that can't be
    opened counts as held (whoever asks must not end what it may count)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
