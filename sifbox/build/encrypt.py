"""`build --encrypt`: the root file system as Apptainer's gocryptfs-encrypted SquashFS.

As Apptainer lays it out (SIF fstype 6), for root and users alike:

1. `gocryptfs -init -deterministic-names -plaintextnames` an empty cipher
   directory, with the passphrase (or, with a PEM key, a random secret of 32
   hex digits) on its stdin;
2. mksquashfs the root into `squashfs-<digits>` on the plain side of a
   gocryptfs mount (sifbox.runtime.sandbox.crypt.seal: a mount namespace of
   its own, nothing decrypted on disk), so the cipher directory receives it encrypted;
3. mksquashfs `squashfs-<digits>` and `gocryptfs.conf` of the cipher
   directory into the outer SquashFS: the SIF's partition.

With a PEM key, the secret is also returned wrapped with RSA-OAEP
(sifbox.security.cryptkey.wrap) for the SIF's CryptoMessage object.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile

from sifbox.build.assemble import BuildError, SquashOptions, make_squashfs
from sifbox.util.errors import describe_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.security.cryptkey import Key


def gocryptfs_squashfs(root: str, out: str, squash: SquashOptions, key: Key, work: str) -> bytes | None:
    """Write the outer SquashFS of `root` to `out`; return the key message (PEM key) or None."""
    from sifbox.runtime.sandbox import crypt
    from sifbox.security import cryptkey
    from sifbox.util.paths import which

    tool = which("gocryptfs")
    if tool is None:
        raise BuildError("can't build an encrypted image: gocryptfs is not installed",
                         hint="install the Debian package `gocryptfs`")  # fmt: skip
    if key.pem_path:
        secret = cryptkey.new_secret()
        message: bytes | None = cryptkey.wrap(key.pem_path, secret, verb="build", what="an encrypted image")
    else:
        assert key.passphrase is not None
        secret, message = bytearray(key.passphrase), None
    try:
        top = tempfile.mkdtemp(prefix="gocryptfs-", dir=work)
        cipher, plain = os.path.join(top, "cipher"), os.path.join(top, "plain")
        os.mkdir(cipher, 0o700)
        os.mkdir(plain, 0o700)
        # A PEM key's secret is 128 random bits: scrypt's cost (2^16, ~0.2 s at every start)
        # protects nothing there, so it is gocryptfs's least; a passphrase keeps the default.
        _init(tool, cipher, cryptkey.key_pipe(secret, times=2), scrypt_n=10 if key.pem_path else None)
        name = f"squashfs-{secrets.randbelow(10**10):010d}"
        key_fd = cryptkey.key_pipe(secret)
        try:
            crypt.seal(tool, cipher, plain, key_fd, squash.argv(root, os.path.join(plain, name)),
                       os.path.join(top, "seal.log"))  # fmt: skip
        finally:
            os.close(key_fd)
    finally:
        cryptkey.wipe(secret)
    make_squashfs(os.path.join(cipher, name), out, squash, more=(os.path.join(cipher, crypt.CONF_NAME),))
    return message


def _init(tool: str, cipher: str, key_fd: int, scrypt_n: int | None) -> None:
    argv = [tool, "-init", "-q", "-deterministic-names", "-plaintextnames",
            *(["-scryptn", str(scrypt_n)] if scrypt_n else []), "--", cipher]  # fmt: skip
    try:
        proc = subprocess.run(argv, stdin=key_fd, capture_output=True, check=False)
    except OSError as err:
        raise BuildError(f"can't run `{tool}`: {describe_os_error(err)}") from None
    finally:
        os.close(key_fd)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BuildError(f"can't encrypt the image: gocryptfs -init failed: {detail[-1] if detail else proc.returncode}",
                         hint="the fault originates from gocryptfs")  # fmt: skip
