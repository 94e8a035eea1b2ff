"""Signing reproduces the corpus: DSSE byte for byte; OpenPGP with GnuPG's own
packet layout (same image, same signed metadata, same framing; GnuPG orders
its signature subpackets differently from the Go library), checked by gpgv
and by two implementations independent of GnuPG: PGPy at the corpus signing
time, and Sequoia's sqv (which refuses signatures older than the key's 2022
self-signatures, so it checks one made later). Metadata documents equal the
integrity goldens."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from sifbox.formats.sif.image import SifImage
from sifbox.security import dsse, pgp, sign
from sifbox.security import verify as v
from sifbox.security.integrity import image_metadata
from tests.unit.sifcorpus import CORPUS

IMAGES, KEYS, GOLDEN = CORPUS / "images", CORPUS / "keys", CORPUS / "golden" / "integrity"
FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"
SIGNING_TIME = 1593475316  # 2020-06-30 00:01:56 UTC
UNPADDED_TIME = 1700000086  # one-group signed then: a 309-byte packet, base64 without `=` padding

needs_gpg = pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("gpgv")), reason="gnupg/gpgv not installed")


def load(name: str) -> tuple[io.BytesIO, SifImage]:
    fp = io.BytesIO((IMAGES / name).read_bytes())
    return fp, SifImage.load(fp)


def priv(name: str):  # type: ignore[no-untyped-def]
    return dsse.load_private_key((KEYS / f"{name}-private.pem").read_bytes())


@pytest.mark.parametrize("golden,objects", [("SHA256", [1, 2]), ("Object1", [1]), ("Object2", [2])])
def test_metadata_matches_golden(golden: str, objects: list[int]) -> None:
    _, img = load("one-group.sif")
    md = image_metadata(img, [img.get(i) for i in objects])
    assert md + b"\n" == (GOLDEN / "TestGetImageMetadata" / f"{golden}.golden").read_bytes()


@pytest.mark.parametrize("golden,keys", [("ED25519", ["ed25519"]), ("RSA_SHA256", ["rsa"]), ("Multi", ["rsa", "rsa"])])
def test_dsse_encoder_goldens(golden: str, keys: list[str]) -> None:
    msg = b'{"One":1,"Two":2}\n'
    sigs = [(dsse.keyid(k.public_key()), dsse.sign_message(dsse.pae(dsse.PAYLOAD_TYPE, msg), k))
            for k in map(priv, keys)]  # fmt: skip
    assert dsse.encode_envelope(msg, sigs) == (GOLDEN / "Test_dsseEncoder_signMessage" / f"{golden}.golden").read_bytes()


@pytest.mark.parametrize("name", ["one-group", "two-groups"])
def test_dsse_signing_is_byte_identical(name: str) -> None:
    fp, img = load(f"{name}.sif")
    sign.sign_image(img, sign.dsse_signer([priv("ed25519"), priv("rsa")]), sync=False)
    assert fp.getvalue() == (IMAGES / f"{name}-signed-dsse.sif").read_bytes()


def test_keyids() -> None:
    assert dsse.keyid(priv("ed25519").public_key()) == "SHA256:x6l8ZblpSSXGaPMCzySedWg88BwIFcz8jlPb6el0mFs"
    assert dsse.keyid(priv("rsa").public_key()) == "SHA256:BhCwr7qZulYcOMSl2Jt2DuYHxHNnN6th4NdMqR/PGa4"
    assert dsse.keyid(priv("ecdsa").public_key()) == "SHA256:13cNV0A11AxgIQYCvlDmJlRi0CjRtjnYF47RzrMhlaU"


def test_ecdsa_dsse_round_trip() -> None:
    fp, img = load("one-group.sif")
    sign.sign_image(img, sign.dsse_signer([priv("ecdsa")]), sync=False)
    img = SifImage.load(io.BytesIO(fp.getvalue()))
    ecdsa_pub = priv("ecdsa").public_key()
    assert [d.id for d in v.verify_image(img, v.KeyMaterial(None, [ecdsa_pub]))[0].verified] == [1, 2]


def test_clearsign_framing_of_corpus() -> None:
    _, img = load("one-group-signed-pgp.sif")
    data = img.read(img.get(3))
    cs = pgp.decode_clearsign(data)
    assert cs is not None
    assert pgp.encode_clearsign(cs.plaintext, cs.signature) == data
    assert pgp.signature_hash_algo(cs.signature) == 8


def _signed_with_gpg(name: str, when: int) -> bytes:
    secret = pgp.dearmor((KEYS / "private.asc").read_bytes())
    fp, img = load(f"{name}.sif")
    with pgp.GnuPG(secret=secret) as g:
        sign.sign_image(img, sign.pgp_signer(g, FPR, when=when), sync=False)
    return fp.getvalue()


@needs_gpg
@pytest.mark.parametrize("name", ["one-group", "two-groups"])
def test_pgp_signing_matches_corpus_layout(name: str) -> None:
    ours = SifImage.load(io.BytesIO(_signed_with_gpg(name, SIGNING_TIME)))
    ref = SifImage.load(io.BytesIO((IMAGES / f"{name}-signed-pgp.sif").read_bytes()))
    assert ours.header == ref.header
    assert [d.replace(size=0, size_with_padding=0) for d in ours.objects()] == \
        [d.replace(size=0, size_with_padding=0) for d in ref.objects()]  # fmt: skip
    for a, b in zip(ours.objects(), ref.objects()):
        da, db = ours.read(a), ref.read(b)
        if a.data_type != 0x4005:
            assert da == db
            continue
        ca, cb = pgp.decode_clearsign(da), pgp.decode_clearsign(db)
        assert ca and cb and ca.plaintext == cb.plaintext  # the same signed metadata
        assert da.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n")
        assert da.endswith(b"\n-----END PGP SIGNATURE-----") and b"\n=" not in da
    with pgp.GnuPG(secret=pgp.dearmor((KEYS / "private.asc").read_bytes())) as g:
        ring = g.export_public()
    results = v.verify_image(ours, v.KeyMaterial(ring))
    assert all(r.fingerprint == FPR for r in results)


@needs_gpg
@pytest.mark.skipif(not shutil.which("sqv"), reason="sqv (Debian package sqv) not installed")
def test_pgp_signature_verifies_with_sequoia(tmp_path: Path) -> None:
    # The corpus key's self-signatures date from 2022, and Sequoia refuses
    # signatures made before a key's binding: sign at a later time here.
    data = _signed_with_gpg("two-groups", 1700000000)
    img = SifImage.load(io.BytesIO(data))
    with pgp.GnuPG(secret=pgp.dearmor((KEYS / "private.asc").read_bytes())) as g:
        (tmp_path / "ring.gpg").write_bytes(g.export_public())
    for sig in (img.get(4), img.get(5)):
        raw = img.read(sig)
        text = raw.split(b"\n")[3]
        start = raw.index(b"-----BEGIN PGP SIGNATURE-----")
        (tmp_path / "msg").write_bytes(text)
        (tmp_path / "sig.asc").write_bytes(raw[start:] + b"\n")
        ok = subprocess.run(["sqv", "--keyring", tmp_path / "ring.gpg", tmp_path / "sig.asc", tmp_path / "msg"],
                            capture_output=True, text=True, check=False)  # fmt: skip
        assert ok.returncode == 0 and ok.stdout.strip() == FPR, ok.stderr
        (tmp_path / "msg").write_bytes(text.replace(b"sha256:", b"sha256:0", 1)[:-1])
        bad = subprocess.run(["sqv", "--keyring", tmp_path / "ring.gpg", tmp_path / "sig.asc", tmp_path / "msg"],
                             capture_output=True, check=False)  # fmt: skip
        assert bad.returncode != 0


@needs_gpg
def test_pgp_signature_whose_base64_has_no_padding_verifies() -> None:
    """A SIF signature has no armor checksum line; GnuPG 2.2 then drops the end of a base64
    block that has no padding (a packet length divisible by 3: an RSA signature one bit shorter
    now and then, some key sizes always) and gpgv found no signature in a valid one."""
    data = _signed_with_gpg("one-group", UNPADDED_TIME)
    img = SifImage.load(io.BytesIO(data))
    raw = img.read(img.get(3))
    cs = pgp.decode_clearsign(raw)
    assert cs is not None and len(cs.signature) % 3 == 0
    assert b"\n=" not in raw  # as Apptainer writes it
    with pgp.GnuPG(secret=pgp.dearmor((KEYS / "private.asc").read_bytes())) as g:
        ring = g.export_public()
    assert [r.fingerprint for r in v.verify_image(img, v.KeyMaterial(ring))] == [FPR]
    # the signed text is what gpgv checks, not the armor sifbox writes for it
    tampered = raw.replace(b"sha256:", b"sha256:0", 1)
    with pytest.raises(pgp.PgpError, match="invalid signature"):
        pgp.verify_clearsigned(tampered, ring)


@needs_gpg
@pytest.mark.parametrize("name", ["one-group", "two-groups"])
def test_pgp_signature_at_corpus_time_verifies_with_pgpy(name: str) -> None:
    """PGPy (pure Python OpenPGP, independent of GnuPG) accepts what GnuPG signed at the
    corpus signing time, and refuses it when the signed metadata changes."""
    import base64
    import warnings

    pgpy = pytest.importorskip("pgpy")
    warnings.simplefilter("ignore")
    key, _ = pgpy.PGPKey.from_file(str(KEYS / "private.asc"))
    img = SifImage.load(io.BytesIO(_signed_with_gpg(name, SIGNING_TIME)))
    for sig in img.objects():
        if sig.data_type != 0x4005:
            continue
        raw = img.read(sig).decode()
        text = raw.split("\n")[3]
        armored = raw[raw.index("-----BEGIN PGP SIGNATURE-----"):]
        packet = base64.b64decode(armored.split("\n\n", 1)[1].split("\n-----END")[0].replace("\n", ""))
        # PGPy wants the armor checksum line that current SIF signatures leave out.
        crc = "=" + base64.b64encode(pgp.crc24(packet).to_bytes(3, "big")).decode()
        signature = pgpy.PGPSignature.from_blob(armored.replace("\n-----END", f"\n{crc}\n-----END") + "\n")
        assert signature.signer_fingerprint.replace(" ", "") == FPR
        assert signature.created.timestamp() == SIGNING_TIME
        assert key.pubkey.verify(text, signature)
        assert not key.pubkey.verify(text.replace("sha256:", "sha256:0", 1), signature)


def test_sign_selection() -> None:
    _, img = load("two-groups.sif")
    assert [(g, [d.id for d in o]) for g, o in sign.plan(img)] == [(1, [1, 2]), (2, [3])]
    assert [(g, [d.id for d in o]) for g, o in sign.plan(img, groups=[2])] == [(2, [3])]
    assert [(g, [d.id for d in o]) for g, o in sign.plan(img, objects=[2, 3])] == [(1, [2]), (2, [3])]
    with pytest.raises(Exception, match="group 7 not found"):
        sign.plan(img, groups=[7])
    _, empty = load("empty.sif")
    with pytest.raises(Exception, match="no objects in image"):
        sign.plan(empty)


def test_object_signature_verifies_as_subset() -> None:
    fp, img = load("two-groups.sif")
    sign.sign_image(img, sign.dsse_signer([priv("ed25519")]), objects=[1], sync=False)
    img = SifImage.load(io.BytesIO(fp.getvalue()))
    keys = v.KeyMaterial(None, [priv("ed25519").public_key()])
    assert [d.id for d in v.verify_image(img, keys, objects=[1])[0].verified] == [1]
    with pytest.raises(Exception, match="object 2: object not signed"):
        v.verify_image(img, keys, groups=[1])
