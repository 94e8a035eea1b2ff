"""Open SIF files safely: checked, locked, written atomically.

Readers take a shared lock and writers an exclusive one (non-blocking
`flock`), so a sifbox command never reads an image that another sifbox
command is writing. New images are written to a temporary file beside the
target and renamed over it only when complete; in-place changes (add,
delete, set primary) write object data before the descriptor table and
fsync, as the reference tools update images in place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, TypeVar

    T = TypeVar("T")

from sifbox.formats.sif.image import SifError, SifImage
from sifbox.util.errors import ImageBusyError, SifboxError, describe_os_error


def _open(path: str, flags: int, verb: str) -> int:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOCTTY)
    except IsADirectoryError:
        raise SifboxError(f"can't {verb} `{path}`: is a directory, not a SIF image") from None
    except FileNotFoundError:
        raise SifboxError(f"can't {verb} `{path}`: no such file") from None
    except OSError as err:
        raise SifboxError(f"can't {verb} `{path}`: {describe_os_error(err)}") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise SifboxError(f"can't {verb} `{path}`: is a directory, not a SIF image")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SifboxError(f"can't {verb} `{path}`: not a regular file")
    return fd


def _lock(fd: int, exclusive: bool, path: str, verb: str) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            busy = "being modified" if not exclusive else "in use"
            raise ImageBusyError(
                f"can't {verb} `{path}`: the image is {busy} by another process",
                hint="wait for the other sifbox command to finish, then try again",
            ) from None
        raise SifboxError(f"can't {verb} `{path}`: {describe_os_error(err)}") from None


@contextlib.contextmanager
def open_sif(path: str, *, verb: str, write: bool = False) -> Iterator[SifImage]:
    """Load the SIF image at `path`, locked for reading or writing.

    Errors name the file and the verb: "can't <verb> `path`: <reason>".
    """
    fd = _open(path, os.O_RDWR if write else os.O_RDONLY, verb)
    _lock(fd, write, path, verb)
    with os.fdopen(fd, "r+b" if write else "rb", buffering=0) as fp:
        try:
            img = SifImage.load(fp)
        except SifError as err:
            raise SifboxError(f"can't {verb} `{path}`: {err}") from err
        except OSError as err:
            raise SifboxError(f"can't {verb} `{path}`: {describe_os_error(err)}") from err
        yield img


def write_atomically(path: str, write: Callable[[BinaryIO], T], *, verb: str, mode: int = 0o666) -> T:
    """Write a new file at `path` through a temporary file and rename; its mode is `mode`
    narrowed by the umask (0o777 for an image, which Apptainer makes executable: `./app.sif`).

    Nothing is left at `path` (nor beside it) unless `write` completes.
    """
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise SifboxError(f"can't {verb} `{path}`: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise SifboxError(f"can't {verb} `{path}`: {describe_os_error(err)}") from err
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, mode & ~umask)
        with os.fdopen(fd, "w+b") as fp:
            result = write(fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.rename(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, SifError):
            raise SifboxError(f"can't {verb} `{path}`: {err}") from err
        if isinstance(err, OSError):
            raise SifboxError(f"can't {verb} `{path}`: {describe_os_error(err)}") from err
        raise
    return result
