"""Every expected verification outcome of the SIF corpus (README section 3.1).

OpenPGP checks run gpgv (Debian `gpgv`); DSSE checks use `cryptography`.
"""

from __future__ import annotations

import io
import shutil

import pytest

from sifbox.formats.sif.image import SifImage
from sifbox.security import dsse, pgp
from sifbox.security import verify as v
from sifbox.security.integrity import IntegrityError, SignatureNotFound, SignatureNotValid
from tests.unit.sifcorpus import CORPUS

IMAGES = CORPUS / "images"

KEYS = CORPUS / "keys"
FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"

needs_gpg = pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("gpgv")), reason="gnupg/gpgv not installed")


@pytest.fixture(scope="module")
def keyring() -> bytes:
    if not shutil.which("gpg"):
        pytest.skip("gnupg not installed")
    secret = pgp.dearmor((KEYS / "private.asc").read_bytes())
    with pgp.GnuPG(secret=secret) as g:
        return g.export_public()


def pub(name: str):  # type: ignore[no-untyped-def]
    return dsse.load_public_key((KEYS / f"{name}-public.pem").read_bytes())


def run(image: str, keys: v.KeyMaterial, **kw: object) -> list[v.Result]:
    img = SifImage.load(io.BytesIO((IMAGES / image).read_bytes()))
    return v.verify_image(img, keys, **kw)  # type: ignore[arg-type]


def ids(results: list[v.Result]) -> list[list[int]]:
    return [[d.id for d in r.verified] for r in results]


def fails(image: str, keys: v.KeyMaterial, **kw: object) -> IntegrityError:
    with pytest.raises(IntegrityError) as info:
        run(image, keys, **kw)
    return info.value


UNSIGNED = ["one-object-time.sif", "one-object-generic-json.sif", "one-object-crypt-message.sif",
            "one-object-sbom.sif", "one-object-oci-root-index.sif", "one-object-oci-blob.sif",
            "one-group.sif", "two-groups.sif"]  # fmt: skip
LEGACY_IMAGES = ["one-group-signed-legacy.sif", "one-group-signed-legacy-group.sif", "one-group-signed-legacy-all.sif",
                 "two-groups-signed-legacy.sif", "two-groups-signed-legacy-group.sif", "two-groups-signed-legacy-all.sif"]  # fmt: skip


@pytest.mark.parametrize("image", ["empty.sif", "empty-id.sif", "empty-launch-script.sif"])
@pytest.mark.parametrize("legacy", [False, True])
def test_empty_images(image: str, legacy: bool) -> None:
    keys = v.KeyMaterial(b"", [pub("ed25519")])
    assert str(fails(image, keys, legacy=legacy)) == "no groups found"
    assert str(fails(image, keys, groups=[1], legacy=legacy)) == "no objects in image"


@pytest.mark.parametrize("image", UNSIGNED)
@pytest.mark.parametrize("legacy", [False, True])
def test_unsigned_images(image: str, legacy: bool) -> None:
    err = fails(image, v.KeyMaterial(b"", [pub("ed25519")]), legacy=legacy)
    assert isinstance(err, SignatureNotFound) and err.is_group
    assert str(err) == "signature not found for object group 1"


@needs_gpg
def test_one_group_pgp(keyring: bytes) -> None:
    [r] = run("one-group-signed-pgp.sif", v.KeyMaterial(keyring))
    assert ids([r]) == [[1, 2]] and r.fingerprint == FPR and r.error is None
    assert ids(run("one-group-signed-pgp.sif", v.KeyMaterial(keyring), objects=[1])) == [[1]]


@needs_gpg
def test_one_group_pgp_empty_keyring() -> None:
    err = fails("one-group-signed-pgp.sif", v.KeyMaterial(b""))
    assert isinstance(err, SignatureNotValid) and err.object_id == 3
    assert "unknown entity" in str(err)


def test_one_group_pgp_only_dsse_keys() -> None:
    err = fails("one-group-signed-pgp.sif", v.KeyMaterial(None, [pub("ed25519")]))
    assert str(err) == "key material not provided for PGP clear-sign signature"


@needs_gpg
def test_signed_object_not_found(keyring: bytes) -> None:
    from sifbox.security.integrity import parse_metadata

    img = SifImage.load(io.BytesIO((IMAGES / "one-group-signed-pgp.sif").read_bytes()))
    data = img.read(img.get(3))
    md = parse_metadata(pgp.verify_clearsigned(data, keyring).plaintext)
    with pytest.raises(IntegrityError, match="object 2: signed object not found"):
        from sifbox.security.integrity import check_metadata

        check_metadata(img, md, 1, [img.get(1)], subset=False)


@needs_gpg
def test_two_groups_pgp(keyring: bytes) -> None:
    rs = run("two-groups-signed-pgp.sif", v.KeyMaterial(keyring))
    assert ids(rs) == [[1, 2], [3]] and [r.signature.id for r in rs] == [4, 5]


@pytest.mark.parametrize("names", [["ed25519"], ["rsa"], ["ed25519", "rsa"]])
def test_one_group_dsse(names: list[str]) -> None:
    keys = [pub(n) for n in names]
    [r] = run("one-group-signed-dsse.sif", v.KeyMaterial(None, keys))
    assert ids([r]) == [[1, 2]]
    assert [dsse.keyid(k) for k in r.keys] == [dsse.keyid(k) for k in keys]


def test_one_group_dsse_wrong_key() -> None:
    err = fails("one-group-signed-dsse.sif", v.KeyMaterial(None, [pub("ecdsa")]))
    assert isinstance(err, SignatureNotValid) and err.object_id == 3


def test_one_group_dsse_only_pgp_keyring() -> None:
    err = fails("one-group-signed-dsse.sif", v.KeyMaterial(b""))
    assert str(err) == "key material not provided for DSSE envelope signature"


def test_two_groups_dsse() -> None:
    assert ids(run("two-groups-signed-dsse.sif", v.KeyMaterial(None, [pub("rsa")]))) == [[1, 2], [3]]


@pytest.mark.parametrize("image", ["one-group-signed-pgp.sif", "two-groups-signed-pgp.sif",
                                   "one-group-signed-dsse.sif", "two-groups-signed-dsse.sif"])  # fmt: skip
def test_current_signatures_ignored_in_legacy_mode(image: str) -> None:
    err = fails(image, v.KeyMaterial(b"", [pub("ed25519")]), legacy=True)
    assert isinstance(err, SignatureNotFound)


@pytest.mark.parametrize("image", LEGACY_IMAGES)
def test_legacy_images_default_mode(image: str) -> None:
    err = fails(image, v.KeyMaterial(b""))
    assert isinstance(err, SignatureNotFound) and str(err) == "signature not found for object group 1"


@needs_gpg
def test_one_group_legacy(keyring: bytes) -> None:
    k = v.KeyMaterial(keyring)
    assert isinstance(fails("one-group-signed-legacy.sif", k, legacy=True, groups=[1]), SignatureNotFound)
    assert ids(run("one-group-signed-legacy.sif", k, legacy=True, objects=[2])) == [[2]]
    err = fails("one-group-signed-legacy.sif", k, legacy=True, objects=[1])
    assert str(err) == "signature not found for object 1"


@needs_gpg
def test_one_group_legacy_group(keyring: bytes) -> None:
    [r] = run("one-group-signed-legacy-group.sif", v.KeyMaterial(keyring), legacy=True, groups=[1])
    assert ids([r]) == [[1, 2]] and r.fingerprint == FPR
    err = fails("one-group-signed-legacy-group.sif", v.KeyMaterial(b""), legacy=True, groups=[1])
    assert isinstance(err, SignatureNotValid) and err.object_id == 3 and "unknown entity" in str(err)


@needs_gpg
def test_one_group_legacy_all(keyring: bytes) -> None:
    k = v.KeyMaterial(keyring)
    assert ids(run("one-group-signed-legacy-all.sif", k, legacy=True, objects=[1])) == [[1]]
    assert ids(run("one-group-signed-legacy-all.sif", k, legacy_all=True)) == [[1], [2]]
    assert isinstance(fails("one-group-signed-legacy-all.sif", k, legacy=True, groups=[1]), SignatureNotFound)


@needs_gpg
def test_two_groups_legacy(keyring: bytes) -> None:
    k = v.KeyMaterial(keyring)
    assert ids(run("two-groups-signed-legacy.sif", k, legacy=True, objects=[2])) == [[2]]
    for kw in ({"objects": [1]}, {"objects": [3]}, {"groups": [1]}, {"groups": [2]}, {}):
        assert isinstance(fails("two-groups-signed-legacy.sif", k, legacy=True, **kw), SignatureNotFound)


@needs_gpg
def test_two_groups_legacy_group(keyring: bytes) -> None:
    k = v.KeyMaterial(keyring)
    assert ids(run("two-groups-signed-legacy-group.sif", k, legacy=True, groups=[1])) == [[1, 2]]
    err = fails("two-groups-signed-legacy-group.sif", k, legacy=True)
    assert str(err) == "signature not found for object group 2"


@needs_gpg
def test_two_groups_legacy_all(keyring: bytes) -> None:
    k = v.KeyMaterial(keyring)
    assert ids(run("two-groups-signed-legacy-all.sif", k, legacy=True, objects=[1])) == [[1]]
    assert ids(run("two-groups-signed-legacy-all.sif", k, legacy=True, objects=[2])) == [[2]]
    err = fails("two-groups-signed-legacy-all.sif", k, legacy_all=True)
    assert str(err) == "signature not found for object 3"


def test_signed_by_uses_descriptors_only() -> None:
    img = SifImage.load(io.BytesIO((IMAGES / "two-groups-signed-pgp.sif").read_bytes()))
    every, anyone = v.signed_by(img)
    assert every == anyone == {FPR}
    img = SifImage.load(io.BytesIO((IMAGES / "two-groups-signed-dsse.sif").read_bytes()))
    assert v.signed_by(img) == (set(), set())
