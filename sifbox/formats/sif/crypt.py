"""Encrypted SIF images (spec section 9): the key message and the partition kinds.

Pure: no system call, no cryptography. The RSA-OAEP step itself is
sifbox.security.cryptkey's (with the `cryptography` package); this module
frames its output as Apptainer and SingularityCE store it:

* the root file system partition is fstype 5 (LUKS2-wrapped SquashFS, root
  only) or 6 (Apptainer's gocryptfs SquashFS, usable without root);
* with a PEM key, the file system's secret is RSA-OAEP encrypted and stored as
  a CryptoMessage object (format PEM, message RSA-OAEP) linked to the
  partition: a PEM block of type `MESSAGE` whose body is the DER encoding of
  an ASN.1 OCTET STRING holding the ciphertext (Go's `asn1.Marshal([]byte)`).

An fstype-6 partition is an outer SquashFS holding `gocryptfs.conf` and one
file named `squashfs-*`: the inner SquashFS, encrypted by gocryptfs
(`-plaintextnames`, so the name is the same in the clear).
"""

from __future__ import annotations

import binascii

from sifbox.formats.sif import constants as c

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.sif.image import SifImage
    from sifbox.formats.sif.layout import Descriptor

ENCRYPTED_FS = {c.FsType.ENCRYPTED_SQUASHFS: "luks", c.FsType.GOCRYPTFS_SQUASHFS: "gocryptfs"}
#: The inner SquashFS's name starts with this in the outer SquashFS (Apptainer
#: looks for it there); the rest is free.
INNER_PREFIX = "squashfs-"
CONF_NAME = "gocryptfs.conf"
#: A key message larger than this is not one (a 16384-bit key gives ~2.8 KiB).
MAX_MESSAGE = 64 * 1024
_BEGIN = b"-----BEGIN MESSAGE-----"
_END = b"-----END MESSAGE-----"


class CryptoMessageError(ValueError):
    """The key message is not a well-formed PEM MESSAGE block."""


def dump_pem_message(ciphertext: bytes) -> bytes:
    """The PEM `MESSAGE` block of `ciphertext` as Go's pem.Encode writes it
    (64-column base64 lines, final newline)."""
    import base64  # (here: base64 imports re, which a launch otherwise never needs)

    body = base64.b64encode(_der_octet_string(ciphertext))
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([_BEGIN, *lines, _END]) + b"\n"


def parse_pem_message(data: bytes) -> bytes:
    """The ciphertext of a PEM `MESSAGE` block; CryptoMessageError if it is not one."""
    if len(data) > MAX_MESSAGE:
        raise CryptoMessageError(f"the key message is {len(data)} bytes, more than {MAX_MESSAGE}")
    start = data.find(_BEGIN)
    if start < 0:
        raise CryptoMessageError("the key message is not a PEM MESSAGE block")
    end = data.find(_END, start)
    if end < 0:
        raise CryptoMessageError("the key message is truncated: no END line")
    lines = data[start + len(_BEGIN) : end].split(b"\n")
    body = b"".join(line.strip() for line in lines if b":" not in line)  # PEM headers: none are used
    import base64

    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise CryptoMessageError("the key message is damaged: bad base64") from None
    return _parse_der_octet_string(der)


def _der_octet_string(value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([0x04, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(size)]) + size + value


def _parse_der_octet_string(der: bytes) -> bytes:
    if len(der) < 2 or der[0] != 0x04:
        raise CryptoMessageError("the key message is damaged: not an ASN.1 OCTET STRING")
    first = der[1]
    if first < 0x80:
        length, head = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            raise CryptoMessageError("the key message is damaged: bad ASN.1 length")
        length = int.from_bytes(der[2 : 2 + count], "big")
        head = 2 + count
        if length < 0x80 or der[2] == 0:  # DER: the shortest form only
            raise CryptoMessageError("the key message is damaged: bad ASN.1 length")
    if len(der) != head + length:
        raise CryptoMessageError("the key message is truncated" if len(der) < head + length
                                 else "the key message is damaged: bytes after the ciphertext")  # fmt: skip
    if length == 0:
        raise CryptoMessageError("the key message is empty")
    return der[head:]


def encryption_of(part: Descriptor) -> str | None:
    """"luks", "gocryptfs", or None for a partition that is not encrypted."""
    return ENCRYPTED_FS.get(part.partition()[0])


def key_message(img: SifImage, part: Descriptor) -> Descriptor | None:
    """The CryptoMessage (PEM, RSA-OAEP) linked to partition `part`, the first
    in table order, as Apptainer's and SingularityCE's readers take it."""
    for d in img.objects():
        if d.data_type != c.DataType.CRYPTO_MESSAGE or d.linked_id != (part.id, False):
            continue
        if d.crypto_message() == (c.FormatType.PEM, c.MessageType.RSA_OAEP):
            return d
    return None


def is_inner_name(name: str) -> bool:
    """A name the inner SquashFS may have in the outer one: `squashfs-` and
    more, one path component."""
    return name.startswith(INNER_PREFIX) and len(name) > len(INNER_PREFIX) and "/" not in name and "\0" not in name
