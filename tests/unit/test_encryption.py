"""Encrypted SIF images without privileges: the key message (spec section 9),
the RSA-OAEP key wrap, the gocryptfs configuration sifbox accepts, and the
images that lie about where their encrypted partition or key message is.

Hostile cases first: a truncated or padded key message, a wrong key, offsets
outside the file, a gocryptfs.conf that asks for more than gocryptfs's own
defaults (scrypt cost, FIDO2), an outer SquashFS without its parts.
"""

from __future__ import annotations

import base64
import io
import json
import os

import pytest

from sifbox.formats.sif import constants as c
from sifbox.formats.sif import crypt, edit, layout
from sifbox.formats.sif.image import SifImage
from sifbox.runtime.sandbox import crypt as sandbox_crypt
from sifbox.security import cryptkey
from sifbox.util.errors import SifboxError, UsageError

#: What `gocryptfs -init -deterministic-names -plaintextnames` (gocryptfs 2.3) writes.
CONF = {
    "Creator": "gocryptfs 2.3",
    "EncryptedKey": "nPKucNoYXZfahz9m2gVesRor4ltAVL8SJNUi0iwtS5Cf2Ie+jXp+aPnlVQiFg0fO1wd2Y49yV51budO6YXj7cQ==",
    "ScryptObject": {"Salt": "aOXk63Eb5LKWricREfRxhxTPjPJxhzmp3UvpKorpG9U=", "N": 65536, "R": 8, "P": 1,
                     "KeyLen": 32},
    "Version": 2,
    "FeatureFlags": ["HKDF", "GCMIV128", "PlaintextNames"],
}


@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    d = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = d / "key.pem", d / "pub.pem"
    # PKCS#1 both, as Apptainer's cryptkey writes and reads them
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    return str(priv), str(pub)


# --- the PEM MESSAGE framing -----------------------------------------------------------------


def test_pem_message_is_go_pem_encode_of_asn1_octet_string() -> None:
    ct = bytes(range(256))
    out = crypt.dump_pem_message(ct)
    lines = out.decode().splitlines()
    assert lines[0] == "-----BEGIN MESSAGE-----" and lines[-1] == "-----END MESSAGE-----"
    assert all(len(line) == 64 for line in lines[1:-2]) and out.endswith(b"\n")
    der = base64.b64decode("".join(lines[1:-1]))
    assert der[:4] == b"\x04\x82\x01\x00" and der[4:] == ct  # OCTET STRING, long-form length 256
    assert crypt.parse_pem_message(out) == ct
    assert crypt.parse_pem_message(crypt.dump_pem_message(b"x" * 5)) == b"x" * 5  # short form


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "not a PEM MESSAGE"),
        (b"-----BEGIN MESSAGE-----\nBIIBAC37", "truncated: no END"),
        (b"-----BEGIN MESSAGE-----\n!!!!\n-----END MESSAGE-----\n", "bad base64"),
        (b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x30\x03abc") + b"\n-----END MESSAGE-----\n",
         "not an ASN.1 OCTET STRING"),
        (b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x04\x05abc") + b"\n-----END MESSAGE-----\n",
         "truncated"),
        (b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x04\x02abcd") + b"\n-----END MESSAGE-----\n",
         "bytes after"),
        (b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x04\x81\x03abc") + b"\n-----END MESSAGE-----\n",
         "bad ASN.1 length"),  # not DER: the long form of a short length
        (b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x04\x89" + b"\xff" * 9) + b"\n-----END MESSAGE-----\n",
         "bad ASN.1 length"),
        (b"-----BEGIN MESSAGE-----\n" + base64.b64encode(b"\x04\x00") + b"\n-----END MESSAGE-----\n", "empty"),
        (b"x" * (crypt.MAX_MESSAGE + 1), "more than"),
    ],
)
def test_damaged_key_messages_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(crypt.CryptoMessageError, match=reason):
        crypt.parse_pem_message(data)


def test_a_truncated_real_message_is_refused(rsa_pair: tuple[str, str]) -> None:
    msg = cryptkey.wrap(rsa_pair[1], bytearray(b"0123456789abcdef0123456789abcdef"), verb="build", what="x")
    lines = msg.splitlines(keepends=True)
    cut = b"".join(lines[:2] + lines[-1:])  # a body line lost
    with pytest.raises(crypt.CryptoMessageError):
        crypt.parse_pem_message(cut)
    with pytest.raises(cryptkey.EncryptionKeyError, match="truncated|damaged"):
        cryptkey.unwrap(rsa_pair[0], cut, verb="run", what="`x.sif`")


# --- the RSA-OAEP key wrap -------------------------------------------------------------------


def test_wrap_unwrap_round_trip_pkcs1_and_spki(rsa_pair: tuple[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    priv, pub = rsa_pair
    secret = bytearray(b"6f1ed002ab5595859014ebf0951522d9")
    msg = cryptkey.wrap(pub, secret, verb="build", what="x")
    assert cryptkey.unwrap(priv, msg, verb="run", what="x") == secret
    # a SubjectPublicKeyInfo public key, and the private key itself, work to build too
    with open(priv, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    spki = tmp_path / "spki.pem"
    spki.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    for path in (str(spki), priv):
        assert cryptkey.unwrap(priv, cryptkey.wrap(path, secret, verb="build", what="x"), verb="run",
                               what="x") == secret


def test_wrong_key_and_public_key_are_one_line_errors(rsa_pair: tuple[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, pub = rsa_pair
    msg = cryptkey.wrap(pub, bytearray(b"s" * 32), verb="build", what="x")
    other = tmp_path / "other.pem"
    other.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(cryptkey.EncryptionKeyError, match="does not decrypt its key message") as err:
        cryptkey.unwrap(str(other), msg, verb="run", what="`x.sif`")
    assert "\n" not in err.value.message
    with pytest.raises(cryptkey.EncryptionKeyError, match="not a PEM private key"):
        cryptkey.unwrap(pub, msg, verb="run", what="`x.sif`")
    with pytest.raises(cryptkey.EncryptionKeyError, match="can't read"):
        cryptkey.unwrap(str(tmp_path / "missing.pem"), msg, verb="run", what="`x.sif`")
    notkey = tmp_path / "not.pem"
    notkey.write_text("hello\n")
    with pytest.raises(cryptkey.EncryptionKeyError, match="not an RSA PEM key"):
        cryptkey.wrap(str(notkey), bytearray(b"s"), verb="build", what="x")


def test_passphrase_sources_and_checks() -> None:
    env = {"APPTAINER_ENCRYPTION_PASSPHRASE": "from-apptainer", "SINGULARITY_ENCRYPTION_PASSPHRASE": "no"}
    key = cryptkey.from_options(ask=False, pem_path=None, env=env, verb="run", what="x")
    assert key is not None and key.passphrase == bytearray(b"from-apptainer")
    env["SIFBOX_ENCRYPTION_PASSPHRASE"] = "from-sifbox"
    key = cryptkey.from_options(ask=False, pem_path=None, env=env, verb="run", what="x")
    assert key is not None and key.passphrase == bytearray(b"from-sifbox")
    held = key.passphrase
    key.wipe()
    assert held == bytearray(len(held)) and key.passphrase is None  # zeroed in place
    assert cryptkey.from_options(ask=False, pem_path=None, env={}, verb="run", what="x") is None
    key = cryptkey.from_options(ask=False, pem_path="k.pem", env=env, verb="run", what="x")
    assert key is not None and key.pem_path == "k.pem" and key.passphrase is None
    asked = cryptkey.from_options(ask=True, pem_path=None, env={}, verb="run", what="x", prompt=lambda _: "typed")
    assert asked is not None and asked.passphrase == bytearray(b"typed")
    for bad in ("two\nlines", "nul\0"):
        with pytest.raises(UsageError, match="one line"):
            cryptkey.from_options(ask=False, pem_path=None, env={"SIFBOX_ENCRYPTION_PASSPHRASE": bad}, verb="run",
                                  what="x")
    with pytest.raises(UsageError, match="one line"):
        cryptkey.check_passphrase(bytearray(), "run", "x")
    with pytest.raises(UsageError, match="do not match"):
        answers = iter(["a", "b"])
        cryptkey.from_options(ask=True, pem_path=None, env={}, verb="build", what="x", confirm=True,
                              prompt=lambda _: next(answers))
    with pytest.raises(UsageError, match="give one"):
        cryptkey.from_options(ask=True, pem_path="k.pem", env={}, verb="run", what="x")


def test_key_pipe_holds_the_lines_and_nothing_else() -> None:
    secret = bytearray(b"pw")
    fd = cryptkey.key_pipe(secret, times=2)
    try:
        assert os.read(fd, 100) == b"pw\npw\n" and os.read(fd, 100) == b""
    finally:
        os.close(fd)
    assert secret == bytearray(b"pw")  # the caller wipes its own
    assert len(cryptkey.new_secret()) == 32 and bytes(cryptkey.new_secret()).isalnum()


# --- the key message of an image, and images that lie -----------------------------------------


def _image(fstype: int, *, message: bytes | None = b"msg", link: int | None = None,
           fmt: tuple[int, int] = (c.FormatType.PEM, c.MessageType.RSA_OAEP)) -> bytes:  # fmt: skip
    buf = io.BytesIO()
    objects = [edit.ObjectInput(c.DataType.DEFFILE, b"Bootstrap: scratch\n"),
               edit.ObjectInput(c.DataType.PARTITION, b"hsqs" + bytes(4092),
                                extra=layout.partition_extra(fstype, c.PartType.PRIMSYS, "amd64"))]  # fmt: skip
    if message is not None:
        objects.append(edit.ObjectInput(c.DataType.CRYPTO_MESSAGE, message, link=edit.link_object(link or 2),
                                        extra=layout.crypto_message_extra(*fmt)))  # fmt: skip
    edit.create(buf, objects, deterministic=True)
    return buf.getvalue()


def test_key_message_is_the_pem_message_linked_to_the_partition() -> None:
    img = SifImage.from_bytes(_image(c.FsType.GOCRYPTFS_SQUASHFS))
    part = img.primary_partition()
    assert part is not None and crypt.encryption_of(part) == "gocryptfs"
    found = crypt.key_message(img, part)
    assert found is not None and img.read(found) == b"msg"
    assert crypt.key_message(SifImage.from_bytes(_image(c.FsType.GOCRYPTFS_SQUASHFS, link=1)), part) is None
    pgp = SifImage.from_bytes(_image(c.FsType.GOCRYPTFS_SQUASHFS, fmt=(c.FormatType.OPENPGP, 0x100)))
    assert crypt.key_message(pgp, part) is None
    luks = SifImage.from_bytes(_image(c.FsType.ENCRYPTED_SQUASHFS, message=None)).primary_partition()
    assert luks is not None and crypt.encryption_of(luks) == "luks"
    plain = SifImage.from_bytes(_image(c.FsType.SQUASHFS, message=None)).primary_partition()
    assert plain is not None and crypt.encryption_of(plain) is None


def _patch_descriptor(data: bytes, object_id: int, **changes: int) -> bytes:
    img = SifImage.from_bytes(data)
    d = img.get(object_id).replace(**changes)
    at = img.header.descriptors_offset + (object_id - 1) * c.DESCRIPTOR_SIZE
    return data[:at] + layout.dump_descriptor(d) + data[at + c.DESCRIPTOR_SIZE :]


def test_open_image_refuses_encrypted_partition_or_message_outside_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sifbox.image.source import open_image

    good = _image(c.FsType.GOCRYPTFS_SQUASHFS)
    path = tmp_path / "e.sif"
    path.write_bytes(good)
    # the outer SquashFS's superblock is checked, as an unencrypted image's
    with pytest.raises(SifboxError, match="damaged"):
        open_image(str(path))
    cases = {"partition": _patch_descriptor(good, 2, offset=len(good) + 4096),
             "message": _patch_descriptor(good, 3, size=1 << 40)}  # fmt: skip
    for name, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(SifboxError, match="outside the file") as err:
            open_image(str(path))
        assert "\n" not in err.value.message, name
    path.write_bytes(_image(c.FsType.ENCRYPTED_SQUASHFS, message=None))
    src = open_image(str(path))  # LUKS2: no SquashFS to check; refused later, at run time
    try:
        assert src.encryption == "luks" and src.key_message is None
    finally:
        src.close()


# --- the gocryptfs configuration and the outer SquashFS -----------------------------------------


def test_gocryptfs_conf_of_gocryptfs_is_accepted() -> None:
    sandbox_crypt.check_conf(json.dumps(CONF).encode())


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"ScryptObject": {**CONF["ScryptObject"], "N": 1 << 28}}, "scrypt N=268435456"),  # type: ignore[dict-item]
        ({"ScryptObject": {**CONF["ScryptObject"], "R": True}}, "bad scrypt"),  # type: ignore[dict-item]
        ({"ScryptObject": "x"}, "no scrypt"),
        ({"FeatureFlags": ["HKDF", "FIDO2"]}, "feature FIDO2"),
        ({"FeatureFlags": "HKDF"}, "no list of feature flags"),
        ({"Version": 1}, "version 1"),
        ({"EncryptedKey": ""}, "no encrypted key"),
    ],
)
def test_hostile_gocryptfs_conf_is_refused(change: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        sandbox_crypt.check_conf(json.dumps({**CONF, **change}).encode())


def test_gocryptfs_conf_that_is_not_json_or_too_big_is_refused() -> None:
    for data, reason in ((b"\xff", "not JSON"), (b"[]", "not a JSON object"),
                         (b" " * (sandbox_crypt.MAX_CONF + 1), "more than")):  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            sandbox_crypt.check_conf(data)


def test_outer_squashfs_must_hold_one_inner_image_and_the_conf() -> None:
    assert sandbox_crypt.find_inner(["gocryptfs.conf", "squashfs-1234"]) == "squashfs-1234"
    for names, reason in ((["gocryptfs.conf"], "no encrypted SquashFS"),
                          (["gocryptfs.conf", "squashfs-1", "squashfs-2"], "2 encrypted"),
                          (["squashfs-1"], "no gocryptfs.conf"),
                          (["gocryptfs.conf", "squashfs-"], "no encrypted SquashFS")):  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            sandbox_crypt.find_inner(names)
    assert crypt.is_inner_name("squashfs-0123") and not crypt.is_inner_name("squashfs-") \
        and not crypt.is_inner_name("x/squashfs-1")


def test_allow_container_encrypted_no_is_decided_before_the_key() -> None:
    from sifbox.security.admission import AdmissionError, Gate
    from sifbox.security.policy import Limits

    gate = Gate(Limits((), frozenset(), frozenset(), frozenset({"sif", "squashfs", "extfs", "dir"})), None, None, "run")
    assert not gate.allows_encrypted()
    with pytest.raises(AdmissionError, match="allow container encrypted = no"):
        gate.refuse_encrypted("e.sif")
    assert Gate(None, None, None, "run").allows_encrypted()
