"""Pure parts of signing: clear-sign framing, keyring packets, gpg listings, certificates."""

from __future__ import annotations

import base64
import datetime
import io

import pytest

from sifbox.security import keys, pgp
from sifbox.security.integrity import IntegrityError, legacy_digest, parse_digest


def test_canonical_text() -> None:
    assert pgp.canonical_text(b"a  \nb\t\n") == b"a\r\nb"
    assert pgp.canonical_text(b'{"x":1}') == b'{"x":1}'


def test_clearsign_round_trip_with_dash_escaping() -> None:
    data = pgp.encode_clearsign(b"-----BEGIN X\nplain", b"\xc2\x00sig")
    assert b"\n- -----BEGIN X\nplain\n" in data and not data.endswith(b"\n")
    cs = pgp.decode_clearsign(data)
    assert cs is not None and cs.plaintext == b"-----BEGIN X\nplain" and cs.signature == b"\xc2\x00sig"


def test_clearsign_with_checksum_line() -> None:
    data = (b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSIFHASH:\nab\n-----BEGIN PGP SIGNATURE-----\n\n"
            b"wsBc\n=aIKA\n-----END PGP SIGNATURE-----")  # fmt: skip
    cs = pgp.decode_clearsign(data)
    assert cs is not None and cs.plaintext == b"SIFHASH:\nab" and cs.signature == b"\xc2\xc0\x5c"


def test_crc24_matches_legacy_checksum_lines() -> None:
    from sifbox.formats.sif.image import SifImage
    from tests.unit.sifcorpus import IMAGES

    img = SifImage.load(io.BytesIO((IMAGES / "one-group-signed-legacy.sif").read_bytes()))
    raw = next(img.read(d) for d in img.objects() if d.data_type == 0x4005)
    cs = pgp.decode_clearsign(raw)
    assert cs is not None and b"\n=" in raw
    assert pgp.armor_signature(cs.signature, checksum=True) == raw[cs.armor_start :]


def test_armor_for_gnupg_adds_the_checksum_and_keeps_the_text() -> None:
    packet = bytes([0xC2, 4]) + b"\x04\x01\x01\x08"  # 6 bytes: base64 without padding
    data = pgp.encode_clearsign(b"- dash\ntext", packet)
    fixed = pgp.armor_for_gnupg(data)
    cs = pgp.decode_clearsign(data)
    assert cs is not None and fixed[: cs.armor_start] == data[: cs.armor_start]
    b64, crc = base64.b64encode(packet), base64.b64encode(pgp.crc24(packet).to_bytes(3, "big"))
    assert fixed[cs.armor_start :] == b"-----BEGIN PGP SIGNATURE-----\n\n" + b64 + b"\n=" + crc + b"\n-----END PGP SIGNATURE-----"
    fixed_cs = pgp.decode_clearsign(fixed)
    assert fixed_cs is not None and (fixed_cs.plaintext, fixed_cs.signature) == (cs.plaintext, cs.signature)
    assert pgp.armor_for_gnupg(fixed) == fixed
    assert pgp.armor_for_gnupg(b"not signed") == b"not signed"


@pytest.mark.parametrize("data", [b"", b"{}", b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nx\n"])
def test_not_clearsigned(data: bytes) -> None:
    assert pgp.decode_clearsign(data) is None


def test_signature_hash_algo() -> None:
    assert pgp.signature_hash_algo(bytes([0xC2, 10, 4, 1, 1, 8]) + bytes(6)) == 8
    assert pgp.signature_hash_algo(bytes([0x89, 0, 10, 4, 1, 1, 10]) + bytes(6)) == 10
    assert pgp.signature_hash_algo(b"") == 0


def test_split_keys_drops_trust_packets() -> None:
    pub = bytes([0xC6, 3]) + b"key"
    uid = bytes([0xCD, 2]) + b"id"
    trust = bytes([0xB0, 1, 0])  # old format, tag 12
    pub2 = bytes([0x99, 0, 2]) + b"k2"  # old format tag 6, 2-byte length
    assert pgp.split_keys(pub + uid + trust + pub2) == [pub + uid, pub2]
    with pytest.raises(pgp.PgpError):
        pgp.split_packets(b"\x01garbage")
    with pytest.raises(pgp.PgpError):
        pgp.split_packets(bytes([0xC6, 10]) + b"short")


def test_primary_keys_whatever_the_packet_header() -> None:
    new = bytes([0xC6, 3]) + b"key" + bytes([0xCD, 2]) + b"id"
    old = bytes([0x99, 0, 3]) + b"key" + bytes([0xB4, 2]) + b"id"  # old format, 2-byte length
    assert pgp.primary_keys(new) == pgp.primary_keys(old) == {b"key"}
    assert pgp.primary_keys(new + bytes([0xC6, 2]) + b"k2") == {b"key", b"k2"}
    assert pgp.primary_keys(b"\x01garbage") == set() and pgp.primary_keys(b"") == set()


def test_dearmor() -> None:
    armored = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\nxsA=\n=AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n"
    assert pgp.dearmor(armored) == b"\xc6\xc0"
    assert pgp.dearmor(b"\xc6\x00") == b"\xc6\x00"


def test_parse_colons() -> None:
    text = ("pub:-:2048:1:A20C27EE7FF7BA84:1588023536:::-:::scESC::::::23::0:\n"
            "fpr:::::::::12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84:\n"
            "uid:-::::1588023536::X::Unit Test <unit@test.com>::::::::::0:\n"
            "sub:-:2048:1:F769336C2045BCE3:1588023536::::::e::::::23:\n"
            "fpr:::::::::A1E9320AAEDA37D08F579882F769336C2045BCE3:\n")  # fmt: skip
    [k] = keys.parse_colons(text)
    assert (k.fingerprint, k.uids, k.bits, k.created, k.secret) == (
        "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84", ["Unit Test <unit@test.com>"], 2048, 1588023536, False)
    assert keys.format_key(0, k).splitlines()[0] == "0) U: Unit Test <unit@test.com>"


def test_digests() -> None:
    assert parse_digest("sha256:" + "ab" * 32) == ("sha256", bytes([0xAB]) * 32)
    for bad in ("sha256:ab", "md5:" + "00" * 16, "sha256:" + "AB" * 32, 5, "nocolon"):
        with pytest.raises(IntegrityError):
            parse_digest(bad)
    name, raw = legacy_digest(b"SIFHASH:\n" + b"00" * 48 + b"\n", 2)
    assert name == "sha384" and raw == bytes(48)
    with pytest.raises(IntegrityError, match="hash algorithm unsupported"):
        legacy_digest(b"SIFHASH:\n" + b"00" * 32, 4)


def _cert(subject: str, issuer_key, subject_key, issuer: str, ca: bool, eku=None):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def test_certificate_chain() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from sifbox.security.x509 import check_chain

    root_k, inter_k, leaf_k, other_k = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert("root", root_k, root_k, "root", True)
    inter = _cert("inter", root_k, inter_k, "root", True)
    leaf = _cert("leaf", inter_k, leaf_k, "inter", False, [ExtendedKeyUsageOID.CODE_SIGNING])
    check_chain(leaf, [inter], [root])
    with pytest.raises(ValueError, match="unknown authority"):
        check_chain(leaf, [], [root])
    other_root = _cert("root", other_k, other_k, "root", True)
    with pytest.raises(ValueError, match="unknown authority"):
        check_chain(leaf, [inter], [other_root])
    server = _cert("srv", inter_k, leaf_k, "inter", False, [ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(ValueError, match="code signing"):
        check_chain(server, [inter], [root])
