"""OpenPGP for SIF signatures: clear-sign framing (pure) and GnuPG (the crypto).

The framing follows spec 7.3 exactly (no armor checksum, no trailing
newline). Signatures are made by `gpg --detach-sign --textmode` and checked
by `gpgv`, each run in a throw-away GNUPGHOME seeded from sifbox's binary
keyrings (the format Apptainer keeps in `pgp-public`/`pgp-secret`), so the
user's own ~/.gnupg is never read or changed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import tempfile

from sifbox.util.errors import SifboxError

BEGIN_MESSAGE = b"-----BEGIN PGP SIGNED MESSAGE-----"
BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
END_SIGNATURE = b"-----END PGP SIGNATURE-----"
#: OpenPGP hash algorithm IDs: armor name, SIF hash type (0: none).
HASH_ALGOS = {2: ("SHA1", 0), 8: ("SHA256", 1), 9: ("SHA384", 2), 10: ("SHA512", 3), 11: ("SHA224", 0)}
#: Hashes a SIF verifier accepts in a PGP signature.
ACCEPTED_HASHES = {8, 9, 10, 11}


#: Seconds one gpg run may take (key generation included).
GPG_TIMEOUT = 600


class PgpError(Exception):
    pass


# -- clear-sign framing ------------------------------------------------------------------
def canonical_text(text: bytes) -> bytes:
    """What a text signature signs: trailing blanks dropped, CR LF line ends, no final one."""
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"\r\n".join(line.rstrip(b" \t\r") for line in lines)


def encode_clearsign(text: bytes, signature_packet: bytes, hash_name: str = "SHA256") -> bytes:
    """Frame `text` and a binary signature packet as a clear-signed message."""
    lines = []
    for line in text.split(b"\n"):
        line = line.rstrip(b" \t\r")
        lines.append(b"- " + line if line.startswith(b"-") else line)
    return b"".join([
        BEGIN_MESSAGE, b"\nHash: ", hash_name.encode(), b"\n\n",
        b"\n".join(lines), b"\n",
        armor_signature(signature_packet),
    ])  # fmt: skip


def armor_signature(packets: bytes, checksum: bool = False) -> bytes:
    """The armored signature block: base64 at 64 columns, the CRC-24 line if `checksum`, and
    no newline after the END line."""
    b64 = base64.b64encode(packets)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    if checksum:
        lines.append(b"=" + base64.b64encode(crc24(packets).to_bytes(3, "big")))
    return b"".join([BEGIN_SIGNATURE, b"\n\n", b"\n".join(lines), b"\n", END_SIGNATURE])


def crc24(data: bytes) -> int:
    """The armor checksum (RFC 4880 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor_for_gnupg(message: bytes) -> bytes:
    """`message` with its signature block armored anew, checksum line included, the signed
    text before it unchanged (`message` itself when it is not clear-signed).

    GnuPG 2.2 drops the last bytes of a base64 block that ends without padding when no
    checksum line follows (https://dev.gnupg.org/T7071): gpgv then finds no signature in a
    valid one. SIF signatures carry no checksum line (spec 7.3), and one packet length in
    three ends without padding."""
    cs = decode_clearsign(message)
    if cs is None:
        return message
    return message[: cs.armor_start] + armor_signature(cs.signature, checksum=True)


class ClearSigned:
    __slots__ = ("armor_start", "plaintext", "signature")

    def __init__(self, plaintext: bytes, signature: bytes, armor_start: int = 0):
        self.plaintext = plaintext
        self.signature = signature
        #: offset in the message of the BEGIN PGP SIGNATURE line
        self.armor_start = armor_start


def decode_clearsign(data: bytes) -> ClearSigned | None:
    """Split a clear-signed message into plaintext and signature packet bytes,
    or None when `data` is not one. (The plaintext here serves to recognise
    legacy signatures; what is trusted is what gpgv verified.)"""
    lines = data.split(b"\n")
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].rstrip(b"\r \t") != BEGIN_MESSAGE:
        return None
    i += 1
    while i < len(lines) and lines[i].strip():  # armor headers (Hash: ...)
        i += 1
    i += 1
    text = []
    while i < len(lines) and lines[i].rstrip(b"\r \t") != BEGIN_SIGNATURE:
        line = lines[i].rstrip(b"\r")
        text.append(line[2:] if line.startswith(b"- ") else line)
        i += 1
    if i >= len(lines):
        return None
    armor_start = sum(len(line) + 1 for line in lines[:i])
    i += 1
    while i < len(lines) and lines[i].strip() and b":" in lines[i]:
        i += 1
    b64 = []
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        if line.startswith(b"=") or line == END_SIGNATURE:
            break
        b64.append(line)
    try:
        sig = base64.b64decode(b"".join(b64), validate=True)
    except ValueError:
        return None
    return ClearSigned(b"\n".join(text), sig, armor_start)


def signature_hash_algo(packet: bytes) -> int:
    """The hash algorithm ID of a v4 signature packet (0 when unknown)."""
    if not packet or not packet[0] & 0x80:
        return 0
    if packet[0] & 0x40:  # new format
        first = packet[1] if len(packet) > 1 else 0
        start = 2 if first < 192 else 3 if first < 224 else 6
    else:
        start = 1 + {0: 1, 1: 2, 2: 4}.get(packet[0] & 3, 0)
    body = packet[start:]
    if len(body) < 4 or body[0] != 4:
        return 0
    return body[3]


# -- GnuPG -----------------------------------------------------------------------------
def gpg_path(name: str = "gpg") -> str:
    found = shutil.which(name)
    if not found:
        raise SifboxError(
            f"can't use OpenPGP keys: `{name}` is not installed",
            hint="install the Debian package `gnupg` (gpg, gpgv)",
        )
    return found


def _scratch_base() -> str | None:
    # gpg-agent's socket path must stay short: prefer /tmp when TMPDIR is deep.
    for var in ("SIFBOX_TMPDIR", "TMPDIR"):
        d = os.environ.get(var)
        if d and len(d) < 60 and os.path.isdir(d):
            return d
    return "/tmp"


class GnuPG:
    """gpg in a temporary home seeded with binary keyrings; use as a context manager."""

    def __init__(self, public: bytes = b"", secret: bytes = b""):
        from sifbox.runtime.sandbox import syscalls

        # gpg starts gpg-agent as a daemon: orphaned, it becomes our child (not PID 1's, which
        # may never reap it), and close() reaps it.
        syscalls.set_child_subreaper()
        self.home = tempfile.mkdtemp(prefix="sifbox-gpg-", dir=_scratch_base())
        self.agent = False
        with open(os.path.join(self.home, "pubring.gpg"), "wb") as f:
            f.write(public)
        with open(os.path.join(self.home, "gpg.conf"), "w") as f:
            f.write("no-greeting\nno-permission-warning\n")
        if secret:
            try:
                self.run(["--import"], input=secret, what="import the secret keyring")
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> GnuPG:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.agent:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"],
                               capture_output=True, timeout=30, check=False)  # fmt: skip
            _reap_agents()
        shutil.rmtree(self.home, ignore_errors=True)

    def run(self, args: list[str], input: bytes | None = None, what: str = "run gpg",
            check: bool = True, output: bool = False) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """gpg `args`; with `check`, an exit status other than 0 raises PgpError, and so does
        empty output with `output` (what gpg exports is written to disk: nothing is no key)."""
        argv = [gpg_path(), "--homedir", self.home, "--batch", "--no-tty", "--yes",
                "--pinentry-mode", "loopback", *args]  # fmt: skip
        if any(a in args for a in ("--import", "--detach-sign", "--quick-gen-key", "--export-secret-keys")):
            self.agent = True
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, check=False,
                                  env=_gpg_env(self.home), timeout=GPG_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise PgpError(f"can't {what}: gpg did not finish in {GPG_TIMEOUT} seconds") from None
        if check and proc.returncode != 0:
            raise PgpError(f"can't {what}: {_gpg_reason(proc.stderr)}")
        if check and output and not proc.stdout:
            raise PgpError(f"can't {what}: gpg exited 0 without writing it")
        return proc

    def export_public(self, fingerprints: list[str] | None = None, armor: bool = False) -> bytes:
        """The public keys `fingerprints` (all: every key, maybe none)."""
        args = ["--armor", "--export"] if armor else ["--export"]
        return self.run([*args, *(fingerprints or [])], what="export public keys", output=bool(fingerprints)).stdout

    def sign_detached_text(self, data: bytes, fingerprint: str, passphrase: str = "",
                           when: int | None = None) -> bytes:  # fmt: skip
        path = os.path.join(self.home, "message")
        with open(path, "wb") as f:
            f.write(data)
        args = ["--passphrase-fd", "0", "--local-user", fingerprint, "--detach-sign", "--textmode",
                "--digest-algo", "SHA256", "--output", "-"]  # fmt: skip
        if when is not None:
            args[:0] = ["--faked-system-time", f"{when}!"]
        for _attempt in range(3):
            proc = self.run([*args, path], input=passphrase.encode() + b"\n", check=False)
            if proc.returncode != 0:
                reason = _gpg_reason(proc.stderr)
                if "passphrase" in reason.lower() or "bad passphrase" in proc.stderr.decode(errors="replace").lower():
                    raise BadPassphrase(reason)
                raise PgpError(f"gpg failed: {reason}")
            # An OpenPGP signature packet (tag 2, old or new format); gpg may exit 0
            # without one when its agent did not answer in time: try again.
            if proc.stdout[:1] and proc.stdout[0] in (0x88, 0x89, 0x8A, 0xC2):
                return proc.stdout
        raise PgpError("gpg exited 0 three times without a signature (did its gpg-agent start?)")

    def is_protected(self, fingerprint: str) -> bool:
        """Whether the secret key needs a passphrase (it does not sign with an empty one)."""
        try:
            self.sign_detached_text(b"", fingerprint, "")
        except BadPassphrase:
            return True
        return False

    def change_passphrase(self, fingerprint: str, old: str | None, new: str) -> None:
        """Protect the secret key with `new` (`old`: its passphrase, None if it has none); the
        passphrases go to gpg on a pipe, never on its command line."""
        answers = ("" if old is None else old + "\n") + new + "\n"
        proc = self.run(["--command-fd", "0", "--passwd", fingerprint], input=answers.encode(), check=False)
        err = proc.stderr.decode("utf-8", "replace")
        if "Bad passphrase" in err:
            raise BadPassphrase("the old passphrase is wrong")
        if proc.returncode != 0 or "error changing" in err:
            raise PgpError(f"can't change the passphrase: {_gpg_reason(proc.stderr)}")

    def export_secret(self, fingerprint: str, passphrase: str) -> bytes:
        """The secret key, as protected now, in OpenPGP's binary form."""
        return self.run(["--passphrase-fd", "0", "--export-secret-keys", fingerprint], output=True,
                        input=passphrase.encode() + b"\n", what="export the secret key").stdout  # fmt: skip


class BadPassphrase(PgpError):
    pass


def _reap_agents(wait: float = 5.0) -> None:
    """Reap the gpg-agents that became this process's children (it is their subreaper) once
    they have been told to end; give up on one that outlives `wait` seconds."""
    import time

    me = str(os.getpid())
    deadline = time.monotonic() + wait
    while True:
        agents = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            name, rest = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :].split()
            if name == "gpg-agent" and len(rest) > 1 and rest[1] == me:
                agents.append(int(entry))
        if not agents:
            return
        for pid in agents:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _gpg_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPG")}
    env.update(GNUPGHOME=home, LC_ALL="C", LANGUAGE="C")
    return env


def _gpg_reason(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()]
    lines = [ln.removeprefix("gpg: ").removeprefix("gpgv: ") for ln in lines if ln and "WARNING: running with faked" not in ln]
    return lines[-1] if lines else "gpg failed"


class PgpVerified:
    __slots__ = ("fingerprint", "hash_algo", "plaintext", "primary", "user")

    def __init__(self, fingerprint: str, primary: str, hash_algo: int, user: str, plaintext: bytes):
        self.fingerprint = fingerprint
        self.primary = primary
        self.hash_algo = hash_algo
        self.user = user
        self.plaintext = plaintext


def verify_clearsigned(message: bytes, keyring: bytes) -> PgpVerified:
    """Check a clear-signed message with gpgv against a binary keyring.

    Returns the verified plaintext (as gpgv wrote it) and who signed, or
    raises PgpError with the reason."""
    gpgv = gpg_path("gpgv")
    with tempfile.TemporaryDirectory(prefix="sifbox-gpgv-", dir=_scratch_base()) as tmp:
        ring = os.path.join(tmp, "keyring.gpg")
        msg = os.path.join(tmp, "message.asc")
        out = os.path.join(tmp, "plaintext")
        with open(ring, "wb") as f:
            f.write(keyring)
        with open(msg, "wb") as f:
            f.write(armor_for_gnupg(message))
        proc = subprocess.run(
            [gpgv, "--homedir", tmp, "--status-fd", "1", "--keyring", ring, "--output", out, msg],
            capture_output=True, check=False, env=_gpg_env(tmp), timeout=120,
        )  # fmt: skip
        status = proc.stdout.decode("utf-8", "replace").splitlines()
        valid = [ln.split() for ln in status if ln.startswith("[GNUPG:] VALIDSIG ")]
        if proc.returncode != 0 or len(valid) != 1:
            raise PgpError(_verify_reason(status, proc.stderr))
        fields = valid[0]
        user = next((status_text(ln.split(" ", 3)[3]) for ln in status
                     if ln.startswith("[GNUPG:] GOODSIG ") and ln.count(" ") >= 3), "")  # fmt: skip
        with open(out, "rb") as fp:
            plaintext = fp.read()
    primary = fields[11] if len(fields) > 11 else fields[2]
    return PgpVerified(fields[2], primary.upper(), int(fields[9]), user, plaintext)


def status_text(field: str) -> str:
    """A free-text field of a GnuPG status line (a user ID), %XX escapes decoded (DETAILS:
    "percent-escaped", used for control characters and `%` itself)."""
    if "%" not in field:
        return field
    import re

    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                 field.encode("utf-8", "replace"))  # fmt: skip
    text = raw.decode("utf-8", "replace")
    # what it decodes to is shown on a terminal: no control characters
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def _verify_reason(status: list[str], stderr: bytes) -> str:
    for ln in status:
        parts = ln.split()
        if len(parts) > 1 and parts[1] == "ERRSIG":
            if len(parts) > 7 and parts[7] == "9":
                return f"signature made by unknown entity (key ID {parts[2]})"
            return f"signature could not be checked (key ID {parts[2]})"
        if len(parts) > 1 and parts[1] == "BADSIG":
            return "invalid signature (the signed data or the signature was changed)"
        if len(parts) > 1 and parts[1] == "NODATA":
            return "no OpenPGP signature found"
    return _gpg_reason(stderr)


# -- keyring packets ---------------------------------------------------------------------
def split_packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, whole packet bytes) for each packet of a binary OpenPGP stream."""
    out = []
    i = 0
    while i < len(data):
        ctb = data[i]
        if not ctb & 0x80:
            raise PgpError(f"not a binary OpenPGP keyring (bad packet header at byte {i})")
        if ctb & 0x40:
            tag = ctb & 0x3F
            if i + 1 >= len(data):
                raise PgpError("truncated OpenPGP packet")
            o = data[i + 1]
            if o < 192:
                hl, n = 2, o
            elif o < 224:
                if i + 2 >= len(data):
                    raise PgpError("truncated OpenPGP packet")
                hl, n = 3, ((o - 192) << 8) + data[i + 2] + 192
            elif o == 255:
                hl, n = 6, int.from_bytes(data[i + 2 : i + 6], "big")
            else:
                raise PgpError("partial-length packets are not valid in a keyring")
        else:
            tag = (ctb >> 2) & 0x0F
            lt = ctb & 3
            if lt == 3:
                raise PgpError("indeterminate-length packets are not valid in a keyring")
            size = (1, 2, 4)[lt]
            hl, n = 1 + size, int.from_bytes(data[i + 1 : i + 1 + size], "big")
        end = i + hl + n
        if end > len(data):
            raise PgpError("truncated OpenPGP packet")
        out.append((tag, data[i:end]))
        i = end
    return out


def primary_keys(ring: bytes) -> set[bytes]:
    """The primary key packets of a binary keyring, each without its header (so whichever
    header framed it); empty when `ring` does not parse."""
    try:
        packets = split_packets(ring)
    except PgpError:
        return set()
    out = set()
    for tag, pkt in packets:
        if tag in (5, 6):
            if pkt[0] & 0x40:
                start = 2 if pkt[1] < 192 else 3 if pkt[1] < 224 else 6
            else:
                start = 1 + (1, 2, 4)[pkt[0] & 3]
            out.add(pkt[start:])
    return out


def split_keys(data: bytes) -> list[bytes]:
    """Split a keyring into transferable keys (each starts with a primary key packet)."""
    keys: list[bytearray] = []
    for tag, pkt in split_packets(data):
        if tag in (5, 6):
            keys.append(bytearray(pkt))
        elif tag == 12:  # ring trust packets are local to GnuPG
            continue
        elif keys:
            keys[-1] += pkt
    return [bytes(k) for k in keys]


def dearmor(data: bytes) -> bytes:
    """Binary packets of an armored key block (or `data` itself if binary)."""
    text = data.lstrip()
    if not text.startswith(b"-----BEGIN PGP"):
        return data
    lines = text.split(b"\n")
    i = 1
    while i < len(lines) and lines[i].strip() and b":" in lines[i]:
        i += 1
    b64 = []
    for line in lines[i:]:
        line = line.strip()
        if not line:
            continue
        if line.startswith((b"=", b"-----END")):
            break
        b64.append(line)
    try:
        return base64.b64decode(b"".join(b64), validate=True)
    except ValueError:
        raise PgpError("the armored key block is damaged (bad base64)") from None
