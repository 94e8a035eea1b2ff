"""signNverify.rst and key_commands.rst: PGP keys (newpair, list, import, export, remove),
signing and verifying (the whole image, --sif-id, --group-id), PEM keys (DSSE) and X.509
certificates.

The keyrings are the user's own in @ws@/home (HOME), kept from test to test in order: the key
`key newpair` makes (at the guide's prompts, on a terminal) signs the images of later tests;
its passphrase is `guide`. my_container.sif is a copy of @my_container@, lolcow.sif of
@lolcow@. Key-server commands (key push/search/pull, [REMOTE] verification) and OCSP need
servers on the internet, and are skipped. The guide's listings and messages are older than
Apptainer's present ones in places (`key list` now prints `U:`/`F:`/`L:` lines, `verify` ends
with `Verified signature(s) from image ...` instead of `Container verified: ...`): the cases
check what both say (the user ID, the fingerprint, the objects, the exit status).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import (
    C,
    check,
    console,
    contains,
    lacks,
    new_dir,
    regex,
    remove_dir,
)
from tests.e2e.userguide import guide

pytestmark = pytest.mark.integration

SV = "signNverify.rst"
KC = "key_commands.rst"
HOME = {"HOME": "@ws@/home"}
JOE = "Joe User (demo) <myuser@example.com>"
PINKIE = "Pinkie Pie (Eternal chaos comes with chocolate rain!) <balloons@example.com>"
OBJECTS = (contains("Objects verified:"), regex(r"(?m)^ID\s+\|GROUP\s+\|LINK\s+\|TYPE$"),
           regex(r"(?m)^1\s+\|1\s+\|NONE\s+\|Def\.FILE$"), regex(r"(?m)^\d+\s+\|1\s+\|NONE\s+\|FS$"))  # fmt: skip


def fingerprint(sb) -> str:  # type: ignore[no-untyped-def]
    """The fingerprint of Joe User's key (`key list` of test_key_list wrote it down)."""
    return Path(sb.subst("@ws@/joe.fpr")).read_text().strip()


def sign(sb, name: str, *argv: str) -> None:  # type: ignore[no-untyped-def]
    """`sign ARGV` on a terminal, answering the passphrase prompt as the guide does."""
    res = console(sb, ["sign", *argv], [("expect", "Enter key passphrase :"), ("send", "guide"),
                                        ("expect", "Signature created and applied to")],
                  timeout=60, env=HOME)  # fmt: skip
    check(sb, C(name), res)


def test_newpair(request, sb, ws) -> None:
    """Generating and managing PGP keys: `key newpair` asks for a name, an email address, a
    comment and a passphrase, and makes the key pair."""
    res = console(sb, ["key", "newpair"], [
        ("expect", "Enter your name (e.g., John Doe) :"), ("send", "Joe User"),
        ("expect", "Enter your email address (e.g., john.doe@example.com) :"), ("send", "myuser@example.com"),
        ("expect", "Enter optional comment (e.g., development keys) :"), ("send", "demo"),
        ("expect", "Enter a passphrase :"), ("send", "guide"),
        ("expect", "Retype your passphrase :"), ("send", "guide"),
        ("expect", "Generating Entity and OpenPGP Key Pair... done"),
    ], timeout=300, env=HOME)  # fmt: skip
    check(sb, C(f"{SV}:Generating and managing PGP keys[key newpair]"), res)


def test_key_list(request, sb, ws) -> None:
    """`key list` shows the key: its user ID, fingerprint and length (4096 bits)."""
    res = guide.run(request, sb, C(f"{SV}:Generating and managing PGP keys[key list]", "key", "list", env=HOME,
                                   out=(regex(r"(?m)^Public key listing \(@ws@/home/\.sifbox/keys/pgp-public\):$"),
                                        contains(JOE), regex(r"(?m)\b[0-9A-F]{40}$"), regex(r"(?m)\b4096$"))))  # fmt: skip
    fpr = re.search(r"(?m)\b([0-9A-F]{40})$", res.stdout)
    assert fpr is not None
    Path(sb.subst("@ws@/joe.fpr")).write_text(fpr[1])


def test_remote_list(request, sb, ws) -> None:
    """`remote list` shows the key server that `key push` would use."""
    guide.run(request, sb, C(f"{SV}:Generating and managing PGP keys[remote list]", "remote", "list", env=HOME,
                             out=contains("Keyservers")))  # fmt: skip


@pytest.mark.skip(reason=f"{SV}:Generating and managing PGP keys / Searching for keys: `key push`, "
                         "`key search` and `key pull` talk to keys.openpgp.org")  # fmt: skip
def test_keyserver() -> None:
    pass


def test_sign_verify(request, sb, ws) -> None:
    """Signing and validating your own containers: `sign my_container.sif` (with the key's
    passphrase), then `verify my_container.sif` with the local public key; `sif list` shows the
    signature object."""
    guide.as_user(sb, ["cp", "@my_container@", "@ws@/my_container.sif"])
    sign(sb, f"{SV}:Signing and validating your own containers[sign]", "@ws@/my_container.sif")
    fpr = fingerprint(sb)
    guide.run(request, sb, C(f"{SV}:Signing and validating your own containers[verify]", "verify",
                             "@ws@/my_container.sif", env=HOME,
                             out=(contains(f"[LOCAL]   Signing entity: {JOE}"),
                                  contains(f"[LOCAL]   Fingerprint: {fpr}"), *OBJECTS)))  # fmt: skip
    check(sb, C(f"{SV}:Advanced Signing - SIF IDs and Groups[sif list]",
                out=(regex(r"(?m)^ID\s+\|GROUP\s+\|LINK\s+\|SIF POSITION \(start-end\)\s+\|TYPE$"),
                     regex(r"(?m)^1\s+\|1\s+\|NONE\s+\|\d+-\d+\s+\|Def\.FILE$"),
                     regex(r"(?m)^\d+\s+\|1\s+\|NONE\s+\|\d+-\d+\s+\|FS \(Squashfs/\*System/amd64\)$"),
                     regex(r"(?m)^\d+\s+\|NONE\s+\|1\s+\(G\)\s+\|\d+-\d+\s+\|Signature \(SHA-256\)$"))),
          sb.run(["sif", "list", "@ws@/my_container.sif"]))  # fmt: skip


def test_sif_id(request, sb, ws) -> None:
    """Advanced Signing: `sign --sif-id 1` signs the definition file only; `verify --sif-id 1`
    verifies it; a plain `verify` fails (object 2 is not signed)."""
    guide.as_user(sb, ["cp", "@my_container@", "@ws@/sifid.sif"])
    sign(
        sb,
        f"{SV}:Advanced Signing - SIF IDs and Groups[sign --sif-id 1]",
        "--sif-id",
        "1",
        "@ws@/sifid.sif",
    )
    guide.run(request, sb, C(f"{SV}:Advanced Signing - SIF IDs and Groups[verify --sif-id 1]", "verify", "--sif-id",
                             "1", "@ws@/sifid.sif", env=HOME,
                             out=(contains(f"[LOCAL]   Signing entity: {JOE}"), OBJECTS[2], lacks("|FS"))))  # fmt: skip
    check(sb, C(f"{SV}:Advanced Signing - SIF IDs and Groups[verify]", exit=255,
                out=contains("Error encountered during signature verification: object 2: object not signed")),
          sb.run(["verify", "@ws@/sifid.sif"], env=HOME))  # fmt: skip


def test_group_id(request, sb, ws) -> None:
    """Advanced Signing: `sign --group-id 1` signs every object of group 1; `verify --group-id 1`
    and a plain `verify` both verify the whole image. (On an image of its own: an earlier
    --sif-id signature of group 1 would fail the group's verification, in sif's verifier too.)"""
    guide.as_user(sb, ["cp", "@my_container@", "@ws@/group.sif"])
    sign(
        sb,
        f"{SV}:Advanced Signing - SIF IDs and Groups[sign --group-id 1]",
        "--group-id",
        "1",
        "@ws@/group.sif",
    )
    for argv in (["verify", "--group-id", "1", "@ws@/group.sif"], ["verify", "@ws@/group.sif"]):
        guide.run(request, sb, C(f"{SV}:Advanced Signing - SIF IDs and Groups[{' '.join(argv[:-1])}]", *argv,
                                 env=HOME, out=(contains(f"[LOCAL]   Signing entity: {JOE}"), *OBJECTS)))  # fmt: skip


# --- key_commands.rst ---------------------------------------------------------------------------


def test_key_list_secret(request, sb, ws) -> None:
    guide.run(request, sb, C(f"{KC}:Key import command[key list --secret]", "key", "list", "--secret", env=HOME,
                             out=(regex(r"(?m)^Private key listing \(@ws@/home/\.sifbox/keys/pgp-secret\):$"),
                                  contains(JOE))))  # fmt: skip


def test_key_import(request, sb, ws, keys) -> None:
    """Key import command: `key import $HOME/pinkie-pie.asc` of a secret key asks for its
    passphrase and a new one for the local keyring, then adds it; `key list -s` shows it last."""
    guide.as_user(sb, ["cp", "@keys@/pinkie-pie.asc", "@ws@/home/pinkie-pie.asc"])
    res = console(sb, ["key", "import", "@ws@/home/pinkie-pie.asc"], [
        ("expect", "Enter your old password :"), ("send", "pinkie"),
        ("expect", "Enter a new password for this key :"), ("send", "guide"),
        ("expect", "Retype your passphrase :"), ("send", "guide"),
        ("expect", "Key with fingerprint @pinkie_fp@ successfully added to the keyring"),
    ], timeout=5, env=HOME)  # fmt: skip
    check(sb, C(f"{KC}:Key import command"), res)
    # The key in the keyring is protected by the new passphrase, no longer by the old one.
    guide.as_user(sb, ["cp", "@lolcow@", "@ws@/home/pinkie.sif"])
    listing = sb.run(["key", "list", "-s"], env=HOME).stdout
    index = re.search(r"(?m)^(\d+)\) U: Pinkie Pie", listing)
    assert index, listing
    for word, status in (("pinkie", 255), ("guide", 0)):
        res = sb.run(["sign", "--keyidx", index[1], "@ws@/home/pinkie.sif"],
                     env={**HOME, "SIFBOX_KEY_PASSPHRASE": word})  # fmt: skip
        assert res.status == status, (word, res)


def test_key_import_listed(request, sb, ws, keys) -> None:
    """After the import, `key list -s` has Pinkie Pie at the bottom."""
    if "Pinkie Pie" not in sb.run(["key", "list", "-s"], env=HOME).stdout:
        res = sb.run(["key", "import", "@ws@/home/pinkie-pie.asc"], env=HOME)  # the prompts aside
        assert res.status == 0, res
    res = guide.run(request, sb, C(f"{KC}:Key import command[key list -s]", "key", "list", "-s", env=HOME,
                                   out=(contains(JOE), contains(PINKIE), contains("@pinkie_fp@"))))  # fmt: skip
    assert res.stdout.index(PINKIE) > res.stdout.index(JOE), "Pinkie Pie is not listed last"


EXPORTS = [
    (["key", "export", "@pinkie_fp@", "@ws@/home/mykey.asc"], "public binary"),
    (["key", "export", "--armor", "@pinkie_fp@", "@ws@/home/mykey.asc"], "-----BEGIN PGP PUBLIC KEY BLOCK-----"),
    (["key", "export", "--armor", "--secret", "@pinkie_fp@", "@ws@/home/mykey.asc"],
     "-----BEGIN PGP PRIVATE KEY BLOCK-----"),
    (["key", "export", "--secret", "@pinkie_fp@", "@ws@/home/mykey.asc"], "secret binary"),
]  # fmt: skip


@pytest.mark.parametrize(
    "argv,want", EXPORTS, ids=[" ".join(a[2:-2]) or "binary" for a, _ in EXPORTS]
)
def test_key_export(request, sb, ws, keys, argv: list[str], want: str) -> None:
    """Key export command: public or secret, binary or ASCII armored, to $HOME/mykey.asc."""
    Path(sb.subst("@ws@/home/mykey.asc")).unlink(missing_ok=True)
    guide.run(
        request,
        sb,
        C(f"{KC}:Key export command[{' '.join(argv[2:-2]) or 'binary'}]", *argv, env=HOME),
    )
    data = Path(sb.subst("@ws@/home/mykey.asc")).read_bytes()
    if want.startswith("-----"):
        assert data.startswith(want.encode()), data[:60]
    else:
        # an OpenPGP packet: tag 6 (public key) or 5 (secret key), old or new format
        tag = (data[0] & 0x3F) if data[0] & 0x40 else (data[0] >> 2) & 0x0F
        assert data[0] & 0x80 and tag == (6 if want == "public binary" else 5), data[:4]


def test_key_remove(request, sb, ws, keys) -> None:
    """Key remove command: `key remove FINGERPRINT` removes the public key, not the private."""
    guide.run(request, sb, C(f"{KC}:Key remove command", "key", "remove", "@pinkie_fp@", env=HOME))
    check(
        sb,
        C(f"{KC}:Key remove command[public]", out=lacks("Pinkie Pie")),
        sb.run(["key", "list"], env=HOME),
    )
    check(
        sb,
        C(f"{KC}:Key remove command[private]", out=contains(PINKIE)),
        sb.run(["key", "list", "-s"], env=HOME),
    )


@pytest.mark.skip(reason=f"{SV}:Signing and validating your own containers: after `key remove`, "
                         "`verify` fetches the key from a key server ([REMOTE]): keys.openpgp.org")  # fmt: skip
def test_verify_remote() -> None:
    pass


# --- PEM Key / X.509 Certificate Support --------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Iterator[Path]:
    """An RSA key pair (the guide's $KEYD/rsa-private.pem, rsa-public.pem) and a certificate chain
    for its public key ($CERTD/root.pem, intermediate.pem, leaf.pem, the leaf for code signing),
    made with openssl; readable by every user."""
    base = new_dir("guide-pki")

    def ssl(*argv: str, stdin: str | None = None) -> None:
        subprocess.run(
            ["openssl", *argv], cwd=base, check=True, capture_output=True, input=stdin, text=True
        )

    try:
        ssl("genrsa", "-out", "rsa-private.pem", "2048")
        ssl("rsa", "-in", "rsa-private.pem", "-pubout", "-out", "rsa-public.pem")
        ca = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        (base / "ca.ext").write_text(ca)
        (base / "leaf.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n"
        )
        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.pem", "-days", "2",
            "-subj", "/CN=root", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "intermediate.key", "-out", "intermediate.csr",
            "-subj", "/CN=intermediate")  # fmt: skip
        ssl("x509", "-req", "-in", "intermediate.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
            "-out", "intermediate.pem", "-days", "2", "-extfile", "ca.ext")  # fmt: skip
        ssl("req", "-new", "-key", "rsa-private.pem", "-out", "leaf.csr", "-subj", "/CN=leaf")
        ssl("x509", "-req", "-in", "leaf.csr", "-CA", "intermediate.pem", "-CAkey", "intermediate.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")  # fmt: skip
        for f in base.iterdir():
            f.chmod(0o644)
        yield base
    finally:
        remove_dir(base)


def test_pem(request, sb, pki: Path) -> None:
    """Signing with a PEM key, the DSSE signature in `sif list` and `sif dump`, `verify` without
    the key failing, and Verifying with a PEM key."""
    sb.extra.update({"@KEYD@": str(pki), "@CERTD@": str(pki)})
    guide.as_user(sb, ["cp", "@lolcow@", "lolcow.sif"])
    guide.run(request, sb, C(f"{SV}:Signing with a PEM key", "sign", "--key", "@KEYD@/rsa-private.pem", "lolcow.sif",
                             err=(contains("Signing image with key material from"),
                                  contains("Signature created and applied to image 'lolcow.sif'"))))  # fmt: skip
    listing = sb.run(["sif", "list", "lolcow.sif"])
    sig = re.search(
        r"(?m)^(\d+)\s+\|NONE\s+\|1\s+\(G\)\s+\|\d+-\d+\s+\|Signature \(SHA-256\)$", listing.stdout
    )
    assert sig is not None, listing
    check(sb, C(f"{SV}:Signing with a PEM key[sif dump]", out=regex(r'"payloadType":\s*"application/vnd\.\w+\.sif-metadata\+json"')),
          sb.run(["sif", "dump", sig[1], "lolcow.sif"]))  # fmt: skip
    check(sb, C(f"{SV}:Signing with a PEM key[verify]", exit=255,
                err=contains("key material not provided for DSSE envelope signature")),
          sb.run(["verify", "lolcow.sif"]))  # fmt: skip
    guide.run(request, sb, C(f"{SV}:Verifying with a PEM key", "verify", "--key", "@KEYD@/rsa-public.pem",
                             "lolcow.sif", out=OBJECTS[:3],
                             err=contains("Verified signature(s) from image 'lolcow.sif'")))  # fmt: skip
    guide.run(request, sb, C(f"{SV}:Verifying with an X.509 certificate", "verify", "--certificate",
                             "@CERTD@/leaf.pem", "--certificate-intermediates", "@CERTD@/intermediate.pem",
                             "--certificate-roots", "@CERTD@/root.pem", "lolcow.sif", out=OBJECTS[:3]))  # fmt: skip


@pytest.mark.skip(reason=f"{SV}:OSCP Certificate Revocation Checks: `verify --ocsp-verify` asks the "
                         "certificates' OCSP responders (on the internet); sifbox has no --ocsp-verify yet")  # fmt: skip
def test_ocsp() -> None:
    pass


@pytest.mark.skip(reason=f"{KC}:Global keyring and {SV}'s ECL: the user guide shows no ECL or --global "
                         "example (ecl.toml and the global keyring are the admin guide's)")  # fmt: skip
def test_ecl() -> None:
    pass
