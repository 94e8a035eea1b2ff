"""`sifbox config fakeroot --add|--remove|--enable|--disable USER`: a user's entries in
/etc/subuid and /etc/subgid, the ranges `--fakeroot` maps (through newuidmap/newgidmap).

As Apptainer's: `--add` gives the user a range of 65536 IDs in both files (the first free one
from the top of the ID space down; nothing when the user has one), `--remove` deletes it,
`--disable` puts a `!` before the line (newuidmap, and sifbox, then ignore it: `--fakeroot`
maps root alone), `--enable` takes it away. The other lines stay as they are. Each file is
replaced atomically (a temporary file renamed over it), under a lock on its directory.
"""

from __future__ import annotations

import os

from sifbox.runtime import idmap
from sifbox.util.errors import SifboxError

FILES = ("/etc/subuid", "/etc/subgid")
OPS = ("add", "remove", "enable", "disable")


def _uid_of(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def configure(user: str, op: str, files: tuple[str, ...] = FILES) -> None:
    """Apply `op` (one of OPS) to `user`'s fakeroot entry in each of `files`."""
    import fcntl

    from sifbox.util import trusted
    from sifbox.util.atomic import write_file

    uid = _uid_of(user)
    if uid is None:
        raise SifboxError(f"can't {op} the fakeroot mapping of `{user}`: no such user")
    for path in files:
        directory = os.path.dirname(path) or "."
        lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path, "rb") as f:
                    reason = trusted.untrusted_reason(f.fileno())
                    if reason is not None:
                        raise SifboxError(f"can't edit `{path}`: {reason}", hint=trusted.HINT)
                    mode = os.fstat(f.fileno()).st_mode & 0o777
                    text = f.read(16 << 20).decode("utf-8", "surrogateescape")
            except FileNotFoundError:
                text, mode = "", 0o644
            new = idmap.edit_subids(text, op, uid, _uid_of, path, user)
            if new != text:
                write_file(path, new.encode("utf-8", "surrogateescape"), mode)
        except OSError as err:
            raise SifboxError(f"can't edit `{path}`: {err.strerror}") from None
        finally:
            os.close(lock)
