"""ecl.toml parsing (errors with file:line) and the run/refuse decision."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sifbox.security import ecl, pgp
from tests.unit.sifcorpus import CORPUS

FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"
OTHER = "5994BE54C31CF1B5E1994F987C52CF6D055F072B"
needs_gpg = pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("gpgv")), reason="gnupg/gpgv not installed")


def test_parse_example() -> None:
    cfg = ecl.parse(
        'activated = true\n\n[[execgroup]]\n  tagname = "group1"\n  mode = "whitestrict"\n'
        f'  dirpath = "/var/cache/containers"\n  keyfp = ["{FPR}", "{OTHER.lower()}"]\n'
        '\n[[execgroup]]\n  tagname = "group2"\n  mode = "whitelist"\n  dirpath = ""\n  keyfp = []\n',
        "/etc/sifbox/ecl.toml",
    )
    assert cfg.activated and not cfg.legacy
    assert [(g.tagname, g.mode, g.dirpath, g.line) for g in cfg.groups] == [
        ("group1", "whitestrict", "/var/cache/containers", 3), ("group2", "whitelist", "", 9)]
    assert cfg.groups[0].keyfp == [FPR, OTHER]


@pytest.mark.parametrize("text,where,reason", [
    ("activated = tru\n", "ecl.toml:1", "Invalid value"),
    ("activated = true\nfoo = 1\n", "ecl.toml:2", "unknown setting `foo`"),
    ("activated = 1\n", "ecl.toml:1", "`activated` must be true or false"),
    ('[[execgroup]]\ntagname = "a"\nmode = "greylist"\n', "ecl.toml:1", "mode must be one of"),
    ('[[execgroup]]\nmode = "whitelist"\ndirpath = "/a"\n[[execgroup]]\nmode = "blacklist"\ndirpath = "/a"\n',
     "ecl.toml:4", "a specific dirpath can only appear in one execgroup"),
    ('[[execgroup]]\nmode = "whitelist"\nkeyfp = ["ABCD"]\n', "ecl.toml:1", "40 chars hex fingerprint"),
    ('[[execgroup]]\nmode = "whitelist"\ndirpath = "relative/dir"\n', "ecl.toml:1", "absolute, clean path"),
    ('[[execgroup]]\nmode = "whitelist"\ncolour = "red"\n', "ecl.toml:1", "unknown execgroup setting"),
])  # fmt: skip
def test_parse_errors_name_file_and_line(text: str, where: str, reason: str) -> None:
    with pytest.raises(ecl.EclError) as info:
        ecl.parse(text, "ecl.toml")
    assert info.value.message.startswith(f"can't read ECL configuration `{where}`:")
    assert reason in info.value.message


def test_missing_or_inactive(tmp_path: Path) -> None:
    img = tmp_path / "x.sif"
    img.write_bytes(b"x")
    assert ecl.check_image(str(img), config=str(tmp_path / "none.toml")).allowed
    (tmp_path / "ecl.toml").write_text("activated = false\n")
    d = ecl.check_image(str(img), config=str(tmp_path / "ecl.toml"))
    assert d.allowed and "not activated" in d.reason


def _cfg(mode: str, dirpath: str, keyfp: list[str], legacy: bool = False) -> ecl.EclConfig:
    return ecl.EclConfig("ecl.toml", True, legacy, [ecl.ExecGroup("g", mode, dirpath, keyfp, 1)])


@pytest.fixture(scope="module")
def ring() -> bytes:
    if not shutil.which("gpg"):
        pytest.skip("gnupg not installed")
    with pgp.GnuPG(secret=pgp.dearmor((CORPUS / "keys" / "private.asc").read_bytes())) as g:
        return g.export_public()


def _copy(tmp_path: Path, name: str) -> str:
    dst = tmp_path / name
    shutil.copyfile(CORPUS / "images" / name, dst)
    return str(dst)


@needs_gpg
@pytest.mark.parametrize("mode,keys,image,allowed,reason", [
    ("whitelist", [FPR], "one-group-signed-pgp.sif", True, "signed by an authorized entity"),
    ("whitelist", [OTHER, FPR], "two-groups-signed-pgp.sif", True, "signed by an authorized entity"),
    ("whitelist", [OTHER], "one-group-signed-pgp.sif", False, "image not signed by required entities"),
    ("whitestrict", [FPR], "one-group-signed-pgp.sif", True, "signed by all authorized entities"),
    ("whitestrict", [FPR, OTHER], "one-group-signed-pgp.sif", False, "image not signed by required entities"),
    ("blacklist", [FPR], "one-group-signed-pgp.sif", False, "image signed by a forbidden entity"),
    ("blacklist", [OTHER], "one-group-signed-pgp.sif", True, "not signed by a forbidden entity"),
    ("whitelist", [FPR], "one-group.sif", False, "unable to verify image: signature not found for object group 1"),
    ("whitelist", [FPR], "one-group-signed-dsse.sif", False, "key material not provided"),
])  # fmt: skip
def test_decisions(tmp_path: Path, ring: bytes, mode: str, keys: list[str], image: str, allowed: bool,
                   reason: str) -> None:  # fmt: skip
    path = _copy(tmp_path, image)
    d = ecl.check_image(path, config=_cfg(mode, str(tmp_path), keys), keyring=ring)
    assert d.allowed is allowed and reason in d.reason, d.explain()


@needs_gpg
def test_signature_that_does_not_verify_is_not_a_signer(tmp_path: Path) -> None:
    path = _copy(tmp_path, "one-group-signed-pgp.sif")
    d = ecl.check_image(path, config=_cfg("whitelist", str(tmp_path), [FPR]), keyring=b"")
    assert not d.allowed and d.unvalidated == {FPR}
    assert "signature does not verify" in d.explain()


@needs_gpg
def test_tampered_image_is_refused(tmp_path: Path, ring: bytes) -> None:
    path = _copy(tmp_path, "one-group-signed-pgp.sif")
    with open(path, "r+b") as f:
        f.seek(36864 + 100)
        b = f.read(1)
        f.seek(36864 + 100)
        f.write(bytes([b[0] ^ 1]))
    d = ecl.check_image(path, config=_cfg("whitelist", str(tmp_path), [FPR]), keyring=ring)
    assert not d.allowed and "data object integrity compromised: 2" in d.reason


@needs_gpg
def test_legacy_mode_checks_primary_partition(tmp_path: Path, ring: bytes) -> None:
    path = _copy(tmp_path, "one-group-signed-legacy.sif")
    assert ecl.check_image(path, config=_cfg("whitelist", str(tmp_path), [FPR], legacy=True), keyring=ring).allowed
    assert not ecl.check_image(path, config=_cfg("whitelist", str(tmp_path), [FPR]), keyring=ring).allowed


def test_directory_matching(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a2").mkdir()
    img = tmp_path / "a2" / "x.sif"
    img.write_bytes(b"not a sif")
    cfg = _cfg("whitelist", str(tmp_path / "a"), [FPR])
    d = ecl.check_image(str(img), config=cfg)
    assert not d.allowed and "not part of any execgroup" in d.reason
    link = tmp_path / "a" / "link.sif"
    link.symlink_to(img)
    assert not ecl.check_image(str(link), config=cfg).allowed  # the file opened is in a2
    cfg.groups.append(ecl.ExecGroup("any", "whitelist", "", [FPR], 2))
    d = ecl.check_image(str(img), config=cfg)
    # An activated ECL admits signed SIF images only: any other file is refused.
    assert not d.allowed and "only signed SIF images" in d.reason and d.group.tagname == "any"
