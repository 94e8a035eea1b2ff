"""The user's keys: OpenPGP keyrings in ~/.sifbox/keys, PEM keys for DSSE.

The keyrings are binary OpenPGP files named as Apptainer names them
(`pgp-public`, `pgp-secret`), so a user can copy theirs over from
~/.apptainer/keys or ~/.singularity/sypgp. GnuPG does the OpenPGP work in a
throw-away home; sifbox only splits keyrings into keys and writes files
atomically.
"""

from __future__ import annotations

import os
import time

from sifbox.security import pgp
from sifbox.util.errors import SifboxError

PUBLIC = "pgp-public"
SECRET = "pgp-secret"
#: Keyring of keys trusted for every user (and used by the ECL).
GLOBAL_KEYRING = "/etc/sifbox/global-pgp-public"


#: Variables naming the keyring directory, first set wins (Apptainer reads APPTAINER_KEYSDIR).
KEYSDIR_VARS = ("SIFBOX_KEYSDIR", "APPTAINER_KEYSDIR", "SINGULARITY_KEYSDIR")


def keys_dir() -> str:
    """The local keyring directory: $SIFBOX_KEYSDIR, else $APPTAINER_KEYSDIR (then
    $SINGULARITY_KEYSDIR), else the `keys` directory of the configuration directory
    ($SIFBOX_CONFIGDIR, $APPTAINER_CONFIGDIR, else ~/.sifbox)."""
    for var in KEYSDIR_VARS:
        d = os.environ.get(var)
        if d:
            return d
    from sifbox.util.paths import config_dir

    return os.path.join(config_dir(), "keys")


class KeyInfo:
    """One OpenPGP key as listed by GnuPG."""

    __slots__ = ("algo", "bits", "created", "fingerprint", "secret", "uids")

    def __init__(self, fingerprint: str, uids: list[str], created: int, bits: int, algo: int, secret: bool):
        self.fingerprint = fingerprint
        self.uids = uids
        self.created = created
        self.bits = bits
        self.algo = algo
        self.secret = secret

    @property
    def name(self) -> str:
        return self.uids[0] if self.uids else ""

    def as_dict(self) -> dict[str, object]:
        return {"fingerprint": self.fingerprint, "uids": self.uids, "created": self.created,
                "bits": self.bits, "secret": self.secret}  # fmt: skip


def _unescape(text: str) -> str:
    import re

    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _number(field: str) -> int:
    return int(field) if field.isascii() and field.isdigit() else 0


def parse_colons(text: str) -> list[KeyInfo]:
    """Keys from `gpg --with-colons` output (pub/sec, fpr, uid records)."""
    keys: list[KeyInfo] = []
    want_fpr = False
    for line in text.splitlines():
        f = line.split(":")
        f += [""] * (12 - len(f))  # records are at least 12 fields long; a short one reads as empty
        if f[0] in ("pub", "sec"):
            keys.append(KeyInfo("", [], _number(f[5]), _number(f[2]), _number(f[3]), f[0] == "sec"))
            want_fpr = True
        elif f[0] == "fpr" and keys and want_fpr:
            keys[-1].fingerprint = f[9].upper()
            want_fpr = False
        elif f[0] in ("sub", "ssb"):
            want_fpr = False
        elif f[0] == "uid" and keys:
            keys[-1].uids.append(_unescape(f[9]))
    return keys


def describe(data: bytes) -> list[KeyInfo]:
    """The keys in a keyring or key file, in order, without importing anything."""
    if not data:
        return []
    with pgp.GnuPG() as g:
        proc = g.run(["--with-colons", "--fixed-list-mode", "--import-options", "show-only", "--import"],
                     input=data, what="read the keys", check=False)  # fmt: skip
    keys = parse_colons(proc.stdout.decode("utf-8", "replace"))
    if not keys and proc.returncode != 0:
        raise pgp.PgpError(f"can't read the keys: {pgp._gpg_reason(proc.stderr)}")
    return keys


def format_time(t: int) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(t))
    except (OverflowError, OSError, ValueError):  # a time no calendar date holds
        return str(t)


def format_key(i: int, k: KeyInfo) -> str:
    """A key as Apptainer's `key list` shows it."""
    out = [f"{i}) U: {uid}" for uid in k.uids] or [f"{i}) U: "]
    out += [f"   C: {format_time(k.created)}", f"   F: {k.fingerprint}", f"   L: {k.bits}", "   --------"]
    return "\n".join(out) + "\n"


class Keyring:
    """The keyrings in one directory."""

    def __init__(self, directory: str | None = None):
        self.dir = directory or keys_dir()

    @property
    def public_path(self) -> str:
        return os.path.join(self.dir, PUBLIC)

    @property
    def secret_path(self) -> str:
        return os.path.join(self.dir, SECRET)

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""
        except OSError as err:
            raise SifboxError(f"can't read keyring `{path}`: {err.strerror}") from None

    def public(self) -> bytes:
        return self._read(self.public_path)

    def secret(self) -> bytes:
        return self._read(self.secret_path)

    def _write(self, path: str, data: bytes, mode: int) -> None:
        from sifbox.util.atomic import write_file

        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            write_file(path, data, mode)
        except OSError as err:
            raise SifboxError(f"can't write keyring `{path}`: {err.strerror}") from None

    def ensure(self) -> None:
        """Create the directory (0700) and both keyrings, empty (0600), where they are missing,
        as Apptainer's key commands do; existing files are left as they are."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            for path in (self.public_path, self.secret_path):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                except FileExistsError:
                    continue
                os.close(fd)
        except OSError as err:
            where = err.filename or self.dir
            raise SifboxError(f"can't create keyring `{where}`: {err.strerror}",
                              hint="set SIFBOX_KEYSDIR (or --keysdir) to a directory of your own") from None

    def list_public(self) -> list[KeyInfo]:
        return describe(self.public())

    def list_secret(self) -> list[KeyInfo]:
        return [k for k in describe(self.secret()) if k.secret]

    def secret_blocks(self) -> list[tuple[KeyInfo, bytes]]:
        """Each secret key of the secret keyring with its own packets."""
        blocks = pgp.split_keys(self.secret())
        out = []
        for block in blocks:
            info = [k for k in describe(block) if k.secret]
            if info:
                out.append((info[0], block))
        return out

    # -- changes ---------------------------------------------------------------------
    def add_public(self, data: bytes) -> list[KeyInfo]:
        """Merge public keys into the public keyring (GnuPG merges duplicates)."""
        old = self.public()
        with pgp.GnuPG(public=old) as g:
            g.run(["--import"], input=data, what="import the public key(s)")
            merged = g.export_public()
        if not merged or not pgp.primary_keys(old) <= pgp.primary_keys(merged):
            raise pgp.PgpError("can't import the public key(s): gpg's merged keyring lacks keys the keyring had")
        self._write(self.public_path, merged, 0o644)
        return describe(data)

    def add_secret(self, data: bytes) -> list[KeyInfo]:
        """Add secret keys (binary packets) and their public keys."""
        new = [k for k in describe(data) if k.secret]
        if not new:
            raise pgp.PgpError("no secret key found")
        have = {k.fingerprint for k, _ in self.secret_blocks()}
        keep = [b for b in pgp.split_keys(data) if not ({k.fingerprint for k in describe(b)} & have)]
        with pgp.GnuPG(secret=data) as g:
            public = g.export_public([k.fingerprint for k in new])
        self._write(self.secret_path, self.secret() + b"".join(keep), 0o600)
        self.add_public(public)
        return new

    def remove(self, fingerprint: str, secret: bool = False) -> bool:
        fingerprint = fingerprint.upper()
        found = False
        keep = []
        for block in pgp.split_keys(self.public()):
            if any(k.fingerprint == fingerprint for k in describe(block)):
                found = True
            else:
                keep.append(block)
        if found:
            self._write(self.public_path, b"".join(keep), 0o644)
        if secret:
            blocks = self.secret_blocks()
            rest = [b for k, b in blocks if k.fingerprint != fingerprint]
            if len(rest) != len(blocks):
                found = True
                self._write(self.secret_path, b"".join(rest), 0o600)
        return found

    def newpair(self, uid: str, passphrase: str, bits: int = 4096) -> KeyInfo:
        with pgp.GnuPG() as g:
            g.run(["--passphrase", passphrase, "--quick-gen-key", uid, f"rsa{bits}", "sign,cert", "never"],
                  what="generate the key pair")  # fmt: skip
            info = parse_colons(g.run(["--with-colons", "--fixed-list-mode", "--list-keys"]).stdout.decode())[0]
            g.run(["--passphrase", passphrase, "--quick-add-key", info.fingerprint, f"rsa{bits}", "encr", "never"],
                  what="generate the encryption subkey")  # fmt: skip
            secret = g.run(["--passphrase", passphrase, "--export-secret-keys", info.fingerprint],
                           what="export the new secret key", output=True).stdout  # fmt: skip
            public = g.export_public([info.fingerprint])
        self._write(self.secret_path, self.secret() + secret, 0o600)
        self.add_public(public)
        return info


class GlobalKeyring(Keyring):
    """The site's public keyring, `global-pgp-public` beside sifbox.conf (`key --global`, as
    Apptainer's): public keys only, 0644, changed by root only; the ECL and the admission
    store trust it."""

    def __init__(self, path: str):
        super().__init__(os.path.dirname(path))
        self.path = path

    @property
    def public_path(self) -> str:
        return self.path

    @property
    def secret_path(self) -> str:
        raise SifboxError("can't use the global keyring's private keys: it holds public keys only")

    def secret(self) -> bytes:
        return b""

    def _write(self, path: str, data: bytes, mode: int) -> None:
        from sifbox.util.atomic import write_file

        if os.geteuid() != 0:
            raise SifboxError(f"can't change the global keyring `{path}`: not root user",
                              hint="leave out --global to change your own keyring")  # fmt: skip
        try:
            write_file(path, data, 0o644)
        except OSError as err:
            raise SifboxError(f"can't write keyring `{path}`: {err.strerror}") from None

    def ensure(self) -> None:
        """Nothing to create: a missing global keyring is an empty one."""


def global_keyring_path(sifbox_conf: str | None = None) -> str:
    from sifbox.config.sysconf import DEFAULT_PATH, ENV_VAR

    conf = sifbox_conf or os.environ.get(ENV_VAR) or DEFAULT_PATH
    return os.path.join(os.path.dirname(os.path.abspath(conf)), "global-pgp-public")


def verification_keyring(directory: str | None = None) -> bytes:
    """The user's public keyring followed by the global one (binary keyrings concatenate)."""
    ring = Keyring(directory).public()
    try:
        with open(GLOBAL_KEYRING, "rb") as f:
            ring += f.read()
    except OSError:
        pass
    return ring
