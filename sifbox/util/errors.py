"""The one error type of sifbox, and the documented exit statuses.

Errors are raised deep with a complete message and rendered once, by the CLI
boundary (`sifbox.cli.main`), as::

    sifbox: error: can't <verb> <object>: <reason>
    hint: <what to try>
"""

from __future__ import annotations

from sifbox.util import messages

class ExitStatus:
    """Exit statuses of sifbox's own failures.

    A container payload's exit status passes through unchanged; these values
    are chosen so that a job script can tell a sifbox failure from an
    application failure (they follow the shell/`env` convention).
    """

    OK = 0
    #: generic sifbox failure (bad image, I/O error, failed tool, ...)
    FAILURE = 255
    #: the command line or the configuration is wrong
    USAGE = 125
    #: the container could not be launched
    CANNOT_LAUNCH = 126
    #: the command to run was not found inside the container
    NOT_FOUND = 127
    #: interrupted by SIGINT (128 + 2)
    INTERRUPTED = 130


class SifboxError(Exception):
    """An error a user can act on.

    `message` is the full one-line message without the `sifbox: error:`
    prefix, normally of the form "can't <verb> <object>: <reason>".
    """

    reference = "sifbox-error"
    exit_status: int = ExitStatus.FAILURE

    def __init__(self, message: str, *, hint: str | None = None, exit_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_status is not None:
            self.exit_status = exit_status

    def __str__(self) -> str:
        return self.message


class UsageError(SifboxError):
    """The command line was wrong."""

    reference = "usage-error"
    exit_status = ExitStatus.USAGE


class NotAvailableError(SifboxError):
    """A command or feature that this version of sifbox does not provide."""

    reference = "not-available"
    exit_status = ExitStatus.USAGE


class ImageFormatError(SifboxError):
    """An image file is malformed, truncated or of an unsupported version."""

    reference = "image-format"


class ImageBusyError(SifboxError):
    """Another process holds the image (it is being written)."""

    reference = "image-busy"


def report(err: SifboxError) -> int:
    """Write `err` to stderr as the one-line error (and hint) and return its exit
    status: for the places that end a process without reaching the CLI's boundary
    (a container's supervisor, a forked child)."""
    import sys

    sys.stderr.write(messages.error_text(err.message, err.hint))
    sys.stderr.flush()
    return int(err.exit_status)


def describe_os_error(err: OSError) -> str:
    """Return a short reason for an OSError, without the Python decoration."""
    reason = err.strerror or str(err)
    return reason[:1].lower() + reason[1:] if reason else "unknown error"


def os_fault(err: OSError, what: str) -> SifboxError:
    """An OSError that no step turned into a message (a full disk, a permission no check
    foresaw, a path changed under us) as one error: `can't <what>: <reason>: `<path>``,
    with a hint for the common causes."""
    import errno
    import os

    reason = describe_os_error(err)
    if err.filename is not None:
        reason += f": `{os.fsdecode(err.filename)}`"
    full = "free some space there, or point SIFBOX_TMPDIR/SIFBOX_CACHEDIR elsewhere"
    denied = "check the permissions of that path (was it made by another user, such as root?)"
    race = "a path changed while sifbox was using it: run the command again"
    hints = {errno.ENOSPC: full, errno.EDQUOT: full, errno.EACCES: denied, errno.EPERM: denied,
             errno.EINVAL: race, errno.ENOENT: race, errno.ELOOP: race}  # fmt: skip
    return SifboxError(f"can't {what}: {reason}", hint=hints.get(err.errno or 0))
