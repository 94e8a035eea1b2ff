"""What the installed squashfuse_ll can do: whether it has the multithreaded server.

squashfuse_ll keeps its name and command line whether or not it was built with
the multithreaded low-level server (squashfuse's configure `--enable-multithreading`,
on by default in 0.5; Debian 13 ships 0.5.2 built so, Debian 12's 0.1.105 is
single-threaded). A multithreaded build runs libfuse's `fuse_session_loop_mt` unless
given `-s`; a single-threaded one ignores `-s`. Its help text can't tell them apart
(both print libfuse's "-s  disable multi-threaded operation"), nor can `--version`
(Debian 12's prints `squashfuse 0.1.104`): the binary's dynamic string table can, since
only a multithreaded build imports `fuse_session_loop_mt` (`_31`, `_32`... by libfuse
version).

The probe reads the ELF headers and that table (a few KiB, some 50 us: less than reading
a cache file would cost), once per process and binary, keyed by the binary's stat.
"""

from __future__ import annotations

import os

from sifbox.formats import elf

#: The libfuse entry point a multithreaded server imports.
MT_SYMBOL = "fuse_session_loop_mt"


class Capabilities:
    """`multithreaded`: True/False, or None when the binary can't be read as a dynamic
    ELF executable (a wrapper script, a static build); `reason` says how it was found."""

    __slots__ = ("binary", "multithreaded", "reason")

    def __init__(self, binary: str, multithreaded: bool | None, reason: str) -> None:
        self.binary, self.multithreaded, self.reason = binary, multithreaded, reason

    def __repr__(self) -> str:
        return f"Capabilities({self.binary!r}, {self.multithreaded!r}, {self.reason!r})"


_probed: dict[tuple[str, int, int, int, int, int], Capabilities] = {}


def probe(binary: str) -> Capabilities:
    """The capabilities of the squashfuse_ll at `binary` (cached while its stat is the same)."""
    try:
        st = os.stat(binary)
    except OSError as err:
        return Capabilities(binary, None, f"can't stat it: {err.strerror}")
    key = (binary, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    found = _probed.get(key)
    if found is None:
        found = _probed[key] = _probe(binary)
    return found


def _probe(binary: str) -> Capabilities:
    try:
        fd = os.open(binary, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        return Capabilities(binary, None, f"can't read it: {err.strerror}")
    try:
        names = elf.dynamic_strings(lambda offset, size: os.pread(fd, size, offset))
    except OSError as err:
        return Capabilities(binary, None, f"can't read it: {err.strerror}")
    finally:
        os.close(fd)
    if names is None:
        return Capabilities(binary, None, "not a dynamically linked ELF executable")
    if any(name.startswith(MT_SYMBOL) for name in names):
        return Capabilities(binary, True, f"it imports {MT_SYMBOL}")
    return Capabilities(binary, False, f"built without the multithreaded server (no {MT_SYMBOL})")


def version(binary: str) -> str | None:
    """The first line of `binary --version` (for `sifbox doctor`; not run by launches)."""
    import subprocess

    try:
        proc = subprocess.run([binary, "--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                              check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    # squashfuse prints `squashfuse 0.1.104 (c) 2012 Dave Vasilevsky` (on stderr) next to
    # libfuse's help text.
    for line in (proc.stderr + proc.stdout).decode(errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "squashfuse" and words[1][:1].isdigit():
            return " ".join(words[:2])
    return None
