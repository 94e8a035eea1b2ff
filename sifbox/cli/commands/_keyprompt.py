"""Passphrase and key choice prompts shared by `key` and `sign`."""

from __future__ import annotations

import os
import sys

from sifbox.util.errors import SifboxError

#: Environment variable that supplies a key passphrase to non-interactive runs.
PASSPHRASE_ENV = "SIFBOX_KEY_PASSPHRASE"


def interactive() -> bool:
    return sys.stdin.isatty()


def passphrase(prompt: str, what: str, confirm: bool = False) -> str:
    """A passphrase from $SIFBOX_KEY_PASSPHRASE, else asked on the terminal."""
    if PASSPHRASE_ENV in os.environ:
        return os.environ[PASSPHRASE_ENV]
    if not interactive():
        raise SifboxError(
            f"can't {what}: the key needs a passphrase and there is no terminal to ask for it",
            hint=f"set {PASSPHRASE_ENV} for non-interactive use",
        )
    import getpass

    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Retype your passphrase : ") != first:
        raise SifboxError(f"can't {what}: the passphrases do not match")
    return first


def choose(count: int, prompt: str, what: str, hint: str) -> int:
    if count == 1:
        return 0
    if not interactive():
        raise SifboxError(f"can't {what}: there are {count} keys to choose from", hint=hint)
    while True:
        answer = input(prompt).strip()
        if answer.isdigit() and int(answer) < count:
            return int(answer)
        sys.stdout.write(f"Enter a number from 0 to {count - 1}\n")
