"""Key commands as Apptainer job scripts use them, as root and as the unprivileged user: the
keyring directory from APPTAINER_KEYSDIR / SIFBOX_KEYSDIR / --keysdir, `key export FINGERPRINT
FILE`, and `verify` naming the signer by the whole user ID (`Name (comment) <email>`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.images import env_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("gpg"), reason="gnupg is not installed")]  # fmt: skip
FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"  # the corpus key: "Unit Test <unit@test.com>"


@pytest.fixture
def scratch() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sifbox-keys-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sb(run_as, as_who, sifbox_cli, scratch: Path):  # type: ignore[no-untyped-def]
    home = scratch / "home"
    run_as(as_who, ["mkdir", "-m", "700", str(home)], check=True)

    def run(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
        # runuser resets HOME: set it on the command line
        return run_as(as_who, ["env", f"HOME={home}", sifbox_cli, *map(str, args)], env=env_for(as_who, **env))

    run.home = home  # type: ignore[attr-defined]
    return run


def test_keysdir_from_the_environment_and_the_flag(sb, run_as, as_who, scratch: Path, sif_corpus: Path) -> None:  # type: ignore[no-untyped-def]
    apptainer_dir, sifbox_dir, flag_dir = scratch / "apptainer-keys", scratch / "sifbox-keys", scratch / "flag-keys"
    key = sif_corpus / "keys" / "private.asc"
    p = sb("key", "import", key, APPTAINER_KEYSDIR=str(apptainer_dir))
    assert p.returncode == 0, p.stderr
    assert (apptainer_dir / "pgp-public").stat().st_size > 0 and (apptainer_dir / "pgp-secret").is_file()
    assert not (sb.home / ".sifbox").exists()
    p = sb("key", "list", APPTAINER_KEYSDIR=str(apptainer_dir))
    assert p.returncode == 0 and f"F: {FPR}" in p.stdout and str(apptainer_dir / "pgp-public") in p.stdout
    # SIFBOX_KEYSDIR comes first; --keysdir/-d (after the subcommand) before both
    p = sb("key", "list", APPTAINER_KEYSDIR=str(apptainer_dir), SIFBOX_KEYSDIR=str(sifbox_dir))
    assert p.returncode == 0 and FPR not in p.stdout, p.stdout
    p = sb("key", "import", "-d", flag_dir, key, APPTAINER_KEYSDIR=str(apptainer_dir))
    assert p.returncode == 0 and (flag_dir / "pgp-public").is_file(), p.stderr
    p = sb("key", "list", "--keysdir", flag_dir)
    assert p.returncode == 0 and f"F: {FPR}" in p.stdout
    # sign and verify use it too
    img = scratch / "img.sif"
    run_as(as_who, ["install", "-m", "644", str(sif_corpus / "images" / "one-group.sif"), str(img)], check=True)
    p = sb("sign", img, APPTAINER_KEYSDIR=str(apptainer_dir))
    assert p.returncode == 0, p.stderr
    p = sb("verify", img, APPTAINER_KEYSDIR=str(apptainer_dir))
    assert p.returncode == 0 and f"[LOCAL]   Fingerprint: {FPR}" in p.stdout, p.stderr
    assert sb("verify", img).returncode == 255  # the default keyring is empty


def test_export_fingerprint_file(sb, scratch: Path, sif_corpus: Path) -> None:  # type: ignore[no-untyped-def]
    keys = str(scratch / "keys")
    assert sb("key", "import", sif_corpus / "keys" / "private.asc", SIFBOX_KEYSDIR=keys).returncode == 0
    pub = scratch / "pub.asc"
    p = sb("key", "export", "--armor", FPR, pub, SIFBOX_KEYSDIR=keys)
    assert p.returncode == 0, p.stderr
    assert f"Key with fingerprint {FPR} successfully exported to file: {pub}" in p.stdout
    assert pub.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    sec = scratch / "sec.asc"
    p = sb("key", "export", "-s", "-a", FPR[-8:].lower(), sec, SIFBOX_KEYSDIR=keys)  # a short key ID too
    assert p.returncode == 0, p.stderr
    assert sec.read_text().startswith("-----BEGIN PGP PRIVATE KEY BLOCK-----")
    assert oct(sec.stat().st_mode & 0o777) == "0o600"
    # Apptainer's form: FILE alone (one key: no question)
    only = scratch / "only.gpg"
    p = sb("key", "export", only, SIFBOX_KEYSDIR=keys)
    assert p.returncode == 0 and only.stat().st_size > 0, p.stderr
    # errors: one line, the file not written
    bad = scratch / "bad.asc"
    p = sb("key", "export", "DEADBEEF", bad, SIFBOX_KEYSDIR=keys)
    assert p.returncode == 255 and not bad.exists()
    assert p.stderr.splitlines()[0] == (f"sifbox: error: can't export to `{bad}`: no key with fingerprint "
                                        "`DEADBEEF` in the public keys")  # fmt: skip
    p = sb("key", "export", FPR, bad, "extra", SIFBOX_KEYSDIR=keys)
    assert p.returncode == 125 and not bad.exists() and "expected FILE or FINGERPRINT FILE" in p.stderr


def test_verify_names_the_whole_user_id(sb, run_as, as_who, scratch: Path, sif_corpus: Path) -> None:  # type: ignore[no-untyped-def]
    keys = str(scratch / "keys")
    assert sb("key", "import", sif_corpus / "keys" / "private.asc", SIFBOX_KEYSDIR=keys).returncode == 0
    signed = sif_corpus / "images" / "one-group-signed-pgp.sif"
    p = sb("verify", signed, SIFBOX_KEYSDIR=keys)
    assert p.returncode == 0, p.stderr
    assert "[LOCAL]   Signing entity: Unit Test <unit@test.com>\n" in p.stdout
    p = sb("verify", "--json", signed, SIFBOX_KEYSDIR=keys)
    assert p.returncode == 0, p.stderr
    names = {e["Signer"]["Name"] for e in json.loads(p.stdout)["SignerKeys"]}
    assert names == {"Unit Test <unit@test.com>"}
    # a key with a comment: `Name (comment) <email>`
    other = str(scratch / "other")
    p = sb("key", "newpair", "-N", "Jane Doe", "-C", "test key", "-E", "jane@example.org", "-P", "", "-b", "1024",
           SIFBOX_KEYSDIR=other)  # fmt: skip
    assert p.returncode == 0, p.stderr
    img = scratch / "img.sif"
    run_as(as_who, ["install", "-m", "644", str(sif_corpus / "images" / "one-group.sif"), str(img)], check=True)
    assert sb("sign", img, SIFBOX_KEYSDIR=other).returncode == 0
    p = sb("verify", img, SIFBOX_KEYSDIR=other)
    assert p.returncode == 0 and "Signing entity: Jane Doe (test key) <jane@example.org>\n" in p.stdout, p.stdout
    p = sb("verify", "-j", img, SIFBOX_KEYSDIR=other)
    assert json.loads(p.stdout)["SignerKeys"][0]["Signer"]["Name"] == "Jane Doe (test key) <jane@example.org>"



FAULTY_GPG = """#!/bin/bash
# gpg that exits 0 having lost what it made ($SIFBOX_TEST_GPG_FAULT says what and how)
case "$SIFBOX_TEST_GPG_FAULT $* " in
empty*" --detach-sign "*) {gpg} "$@" >/dev/null ;;
truncated*" --detach-sign "*) {gpg} "$@" >"$GNUPGHOME/sig" && head -c 120 "$GNUPGHOME/sig" ;;
other-text*" --detach-sign "*) printf other >"$GNUPGHOME/other" && {gpg} "${{@:1:$#-1}}" "$GNUPGHOME/other" ;;
no-export*" --export "*) {gpg} "$@" >/dev/null ;;
*) exec {gpg} "$@" ;;
esac
exit 0
"""


@pytest.fixture
def faulty_gpg_path(as_who, scratch: Path) -> str:  # type: ignore[no-untyped-def]
    """A PATH whose gpg is FAULTY_GPG."""
    bindir = scratch / "bin"
    bindir.mkdir(mode=0o755)
    (bindir / "gpg").write_text(FAULTY_GPG.format(gpg=shutil.which("gpg")))
    (bindir / "gpg").chmod(0o755)
    return f"{bindir}:{env_for(as_who)['PATH']}"


def test_sign_refuses_what_gpg_did_not_sign(sb, run_as, as_who, scratch: Path, sif_corpus: Path,  # type: ignore[no-untyped-def]
                                            faulty_gpg_path: str) -> None:  # fmt: skip
    """gpg exits 0 with no signature, a truncated one, or one of other text (an agent that died,
    a full pipe): sign fails with one line and leaves the image as it was."""
    keys = str(scratch / "keys")
    assert sb("key", "import", sif_corpus / "keys" / "private.asc", SIFBOX_KEYSDIR=keys).returncode == 0
    img = scratch / "img.sif"
    run_as(as_who, ["install", "-m", "644", str(sif_corpus / "images" / "one-group.sif"), str(img)], check=True)
    before = img.read_bytes()
    reasons = {"empty": "gpg exited 0 three times without a signature",
               "truncated": "the signature gpg made does not verify: ",
               "other-text": "the signature gpg made does not verify: invalid signature"}  # fmt: skip
    for fault, reason in reasons.items():
        p = sb("sign", img, SIFBOX_KEYSDIR=keys, PATH=faulty_gpg_path, SIFBOX_TEST_GPG_FAULT=fault)
        assert p.returncode == 255, (fault, p.stderr)
        assert p.stderr.splitlines()[-1].startswith(f"sifbox: error: can't sign `{img}`: {reason}"), (fault, p.stderr)
        assert "Traceback" not in p.stderr and img.read_bytes() == before
    p = sb("sign", img, SIFBOX_KEYSDIR=keys, PATH=faulty_gpg_path, SIFBOX_TEST_GPG_FAULT="none")
    assert p.returncode == 0, p.stderr
    assert sb("verify", img, SIFBOX_KEYSDIR=keys).returncode == 0


def test_key_import_keeps_the_keyring_when_gpg_exports_nothing(sb, scratch: Path, sif_corpus: Path,  # type: ignore[no-untyped-def]
                                                                faulty_gpg_path: str) -> None:  # fmt: skip
    keys = scratch / "keys"
    pub = scratch / "pub.asc"
    assert sb("key", "import", sif_corpus / "keys" / "private.asc", SIFBOX_KEYSDIR=str(keys)).returncode == 0
    assert sb("key", "export", "--armor", FPR, pub, SIFBOX_KEYSDIR=str(keys)).returncode == 0
    ring = (keys / "pgp-public").read_bytes()
    p = sb("key", "import", pub, SIFBOX_KEYSDIR=str(keys), PATH=faulty_gpg_path, SIFBOX_TEST_GPG_FAULT="no-export")
    assert p.returncode == 255 and "gpg's merged keyring lacks keys the keyring had" in p.stderr, p.stderr
    assert (keys / "pgp-public").read_bytes() == ring
