"""Files a root-run sifbox trusts: configuration, the ECL, the site's keyring.

Root reads them to decide what containers may do, so a file that another
user owns or may write would let that user decide for root. Checked on the
descriptor that is then read (no race with a rename), only when sifbox runs
as root: for everyone else these files only ever restrict themselves.
"""

from __future__ import annotations

import os

from sifbox.util.paths import in_user_namespace


def untrusted_reason(fd: int) -> str | None:
    """Why root must not trust the file open at `fd` (None: it may)."""
    if os.geteuid() != 0 or in_user_namespace():
        return None  # root of a user namespace (a fakeroot build) is a user outside it
    st = os.fstat(fd)
    if st.st_uid != 0:
        return f"it is owned by uid {st.st_uid}, not by root"
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0):
        return f"it is writable by other users (mode {st.st_mode & 0o7777:04o})"
    return None


HINT = "as root, sifbox reads only files owned by root and writable by no one else: `chown root:root FILE; chmod go-w FILE`"

