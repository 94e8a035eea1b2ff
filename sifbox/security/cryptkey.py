"""The keys of encrypted images: where they come from, and the RSA-OAEP key wrap.

A key is a passphrase (`--passphrase`, asked on the terminal, or
SIFBOX_ENCRYPTION_PASSPHRASE then the APPTAINER_/SINGULARITY_ names) or an
RSA PEM key pair (`--pem-path`, or SIFBOX_ENCRYPTION_PEM_PATH then the
APPTAINER_/SINGULARITY_ names): the public key to build, the private key to
run. With a PEM key the file system's secret is random, and stored in the
image encrypted with RSA-OAEP (SHA-256, no label) as Apptainer stores it
(sifbox.formats.sif.crypt frames it). The RSA work is the `cryptography`
package's.

Secrets are kept in bytearrays, handed to helpers through pipes (never on a
command line nor in a file) and zeroed once handed over (`wipe`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, MutableMapping

from sifbox.util.errors import SifboxError, UsageError

PASSPHRASE_VARS = ("SIFBOX_ENCRYPTION_PASSPHRASE", "APPTAINER_ENCRYPTION_PASSPHRASE",
                   "SINGULARITY_ENCRYPTION_PASSPHRASE")  # fmt: skip
PEM_VARS = ("SIFBOX_ENCRYPTION_PEM_PATH", "APPTAINER_ENCRYPTION_PEM_PATH", "SINGULARITY_ENCRYPTION_PEM_PATH")
MAX_PASSPHRASE = 4096
MAX_PEM = 64 * 1024


class EncryptionKeyError(SifboxError):
    """A key that can't be read or used."""

    reference = "encryption-key"


class Key:
    """A passphrase (bytearray) or the path of a PEM key file."""

    __slots__ = ("passphrase", "pem_path")

    def __init__(self, passphrase: bytearray | None = None, pem_path: str | None = None) -> None:
        self.passphrase, self.pem_path = passphrase, pem_path

    def wipe(self) -> None:
        if self.passphrase is not None:
            wipe(self.passphrase)
            self.passphrase = None


def wipe(secret: bytearray) -> None:
    """Overwrite `secret` with zeros (the bytes a bytearray owns, not any copy)."""
    secret[:] = bytes(len(secret))


def from_options(*, ask: bool, pem_path: str | None, env: Mapping[str, str], verb: str, what: str,
                 prompt: Callable[[str], str] | None = None, confirm: bool = False) -> Key | None:  # fmt: skip
    """The key given by the options (`ask`: --passphrase; `pem_path`: --pem-path),
    else by the environment; None when none is given."""
    if ask and pem_path:
        raise UsageError(f"can't {verb} {what}: --passphrase and --pem-path are two keys; give one")
    if pem_path:
        return Key(pem_path=pem_path)
    if ask:
        return Key(passphrase=_ask(prompt, verb, what, confirm))
    for var in PASSPHRASE_VARS:
        if env.get(var):
            return Key(passphrase=check_passphrase(bytearray(env[var].encode()), verb, what))
    for var in PEM_VARS:
        if env.get(var):
            return Key(pem_path=env[var])
    return None


def forget_environment(env: MutableMapping[str, str]) -> None:
    """Drop the passphrase variables once read: the helpers sifbox starts (gocryptfs,
    squashfuse, mksquashfs) inherit its environment, and none needs them."""
    for var in PASSPHRASE_VARS:
        env.pop(var, None)


def _ask(prompt: Callable[[str], str] | None, verb: str, what: str, confirm: bool) -> bytearray:
    if prompt is None:
        import getpass

        prompt = getpass.getpass
    try:
        first = prompt("Enter encryption passphrase: ")
        if confirm and prompt("Retype encryption passphrase: ") != first:
            raise UsageError(f"can't {verb} {what}: the passphrases do not match")
    except (EOFError, OSError):
        raise UsageError(f"can't {verb} {what}: no passphrase was entered",
                         hint="on no terminal, set SIFBOX_ENCRYPTION_PASSPHRASE") from None  # fmt: skip
    return check_passphrase(bytearray(first.encode()), verb, what)


def check_passphrase(raw: bytearray, verb: str, what: str) -> bytearray:
    """gocryptfs reads one line: no newline, no NUL, not empty."""
    if not raw or b"\n" in raw or b"\r" in raw or b"\0" in raw or len(raw) > MAX_PASSPHRASE:
        wipe(raw)
        raise UsageError(f"can't {verb} {what}: a passphrase is one line of 1 to {MAX_PASSPHRASE} bytes")
    return raw


def new_secret() -> bytearray:
    """A random secret for a PEM-keyed gocryptfs image: 32 hex digits, as
    Apptainer's (a line gocryptfs can read)."""
    return bytearray(secrets.token_hex(16).encode())


def _read_pem(path: str, verb: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM + 1)
    except OSError as err:
        raise EncryptionKeyError(f"can't {verb} {what}: can't read the PEM key `{path}`: {err.strerror}") from None
    if len(data) > MAX_PEM:
        raise EncryptionKeyError(f"can't {verb} {what}: `{path}` is not a PEM key (over {MAX_PEM} bytes)")
    return data


def wrap(pem_path: str, secret: bytearray, *, verb: str, what: str) -> bytes:
    """The CryptoMessage data for `secret`: RSA-OAEP with the public key of `pem_path`
    (a public key, PKCS#1 or SubjectPublicKeyInfo, or a private key), PEM-framed."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from sifbox.formats.sif.crypt import dump_pem_message

    data = _read_pem(pem_path, verb, what)
    key: object
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise EncryptionKeyError(f"can't {verb} {what}: `{pem_path}` is not an RSA PEM key",
                            hint="make a key pair with `openssl genrsa -out key.pem 4096` and "
                            "`openssl rsa -in key.pem -RSAPublicKey_out -out pub.pem`") from None  # fmt: skip
    if not isinstance(key, rsa.RSAPublicKey):
        raise EncryptionKeyError(f"can't {verb} {what}: `{pem_path}` is not an RSA key")
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        return dump_pem_message(key.encrypt(bytes(secret), oaep))
    except ValueError as err:
        raise EncryptionKeyError(f"can't {verb} {what}: the RSA key is too small: {err}") from None


def unwrap(pem_path: str, message: bytes, *, verb: str, what: str) -> bytearray:
    """The secret of an image's key message, with the private key `pem_path`."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from sifbox.formats.sif.crypt import CryptoMessageError, parse_pem_message

    try:
        ciphertext = parse_pem_message(message)
    except CryptoMessageError as err:
        raise EncryptionKeyError(f"can't {verb} {what}: {err}") from None
    data = _read_pem(pem_path, verb, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise EncryptionKeyError(f"can't {verb} {what}: the PEM key `{pem_path}` is protected by a passphrase",
                        hint="as Apptainer, sifbox reads unencrypted PEM private keys only") from None  # fmt: skip
    except ValueError:
        raise EncryptionKeyError(f"can't {verb} {what}: `{pem_path}` is not a PEM private key",
                        hint="running an image built with --pem-path takes the private key of the pair") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EncryptionKeyError(f"can't {verb} {what}: `{pem_path}` is not an RSA key")
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        return bytearray(key.decrypt(ciphertext, oaep))
    except ValueError:
        raise EncryptionKeyError(f"can't {verb} {what}: the PEM key `{pem_path}` does not decrypt its key message",
                        hint="give the private key of the pair the image was built with") from None  # fmt: skip


def key_pipe(secret: bytearray, times: int = 1) -> int:
    """The read end of a pipe holding `secret` and a newline, `times` times (what
    gocryptfs reads on its stdin); close-on-exec. The secret is not wiped here."""
    line = bytearray(secret) + b"\n"
    r, w = os.pipe()
    try:
        for _ in range(times):
            view = memoryview(line)
            while view:
                view = view[os.write(w, view) :]
    finally:
        os.close(w)
        wipe(line)
    return r
