"""Keys, sign and verify with the installed CLI, as root and as the unprivileged user;
and the execution control list refusing a tampered image at `sifbox exec`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.images import ActionImages, action_images, env_for  # noqa: F401

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("gpg"), reason="gnupg is not installed")]  # fmt: skip
FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"


@pytest.fixture
def scratch():  # type: ignore[no-untyped-def]
    """Like conftest's scratch (0777 under /tmp), under a prefix of its own: the leak guard
    of the action tests kills new processes that name a scratch path, and the test suites of
    several work trees may run at once on one machine."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sifbox-signing-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _home(run_as, who, base: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    home = base / name
    run_as(who, ["mkdir", "-m", "700", str(home)], check=True)
    return home


def _sifbox(run_as, who, cli: str, home: Path, *args: object, **env: str):  # type: ignore[no-untyped-def]
    # runuser resets HOME: set it on the command line.
    return run_as(who, ["env", f"HOME={home}", cli, *map(str, args)], env=env_for(who, **env))


def _copy_for(run_as, who, src: Path, dst: Path) -> Path:  # type: ignore[no-untyped-def]
    run_as(who, ["install", "-m", "644", str(src), str(dst)], check=True)
    return dst


@pytest.mark.slow
def test_newpair_sign_verify_export_import(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    home = _home(run_as, as_who, scratch, "home")
    p = _sifbox(run_as, as_who, sifbox_cli, home, "key", "newpair", "-N", "Jane Doe", "-E", "jane@example.org",
                "-C", "test key", "-P", "", "-b", "2048")  # fmt: skip
    assert p.returncode == 0, p.stderr
    fpr = p.stdout.split("Key fingerprint: ")[1].split()[0]
    keys = home / ".sifbox" / "keys"
    assert (keys / "pgp-public").stat().st_size > 0 and oct((keys / "pgp-secret").stat().st_mode & 0o777) == "0o600"
    p = _sifbox(run_as, as_who, sifbox_cli, home, "key", "list")
    assert p.returncode == 0 and "0) U: Jane Doe (test key) <jane@example.org>" in p.stdout and f"F: {fpr}" in p.stdout

    img = _copy_for(run_as, as_who, sif_corpus / "images" / "two-groups.sif", scratch / "img.sif")
    p = _sifbox(run_as, as_who, sifbox_cli, home, "sign", img)
    assert p.returncode == 0, p.stderr
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", img)
    assert p.returncode == 0, p.stderr
    assert "[LOCAL]   Signing entity: Jane Doe" in p.stdout and f"Fingerprint: {fpr}" in p.stdout
    assert p.stdout.count("Objects verified:") == 2

    # Export the public key (armored), import it in another home, verify there.
    pub = scratch / "jane.asc"
    p = _sifbox(run_as, as_who, sifbox_cli, home, "key", "export", "--armor", pub)
    assert p.returncode == 0, p.stderr
    assert pub.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    other = _home(run_as, as_who, scratch, "other")
    assert _sifbox(run_as, as_who, sifbox_cli, other, "verify", img).returncode == 255
    p = _sifbox(run_as, as_who, sifbox_cli, other, "key", "import", pub)
    assert p.returncode == 0 and fpr in p.stdout, p.stderr
    p = _sifbox(run_as, as_who, sifbox_cli, other, "verify", "--json", img)
    assert p.returncode == 0 and '"DataCheck": true' in p.stdout, p.stderr

    # Secret key round trip: export, import elsewhere, sign there.
    sec = scratch / "jane-secret.gpg"
    assert _sifbox(run_as, as_who, sifbox_cli, home, "key", "export", "--secret", sec).returncode == 0
    third = _home(run_as, as_who, scratch, "third")
    assert _sifbox(run_as, as_who, sifbox_cli, third, "key", "import", sec).returncode == 0
    img2 = _copy_for(run_as, as_who, sif_corpus / "images" / "one-group.sif", scratch / "img2.sif")
    p = _sifbox(run_as, as_who, sifbox_cli, third, "sign", img2)
    assert p.returncode == 0, p.stderr
    assert _sifbox(run_as, as_who, sifbox_cli, home, "verify", img2).returncode == 0

    # Remove: the key is gone, verification fails.
    assert _sifbox(run_as, as_who, sifbox_cli, other, "key", "remove", fpr).returncode == 0
    p = _sifbox(run_as, as_who, sifbox_cli, other, "verify", img)
    assert p.returncode == 255 and "unknown entity" in p.stderr


def test_verify_with_gpg_exported_key(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    gnupg = _home(run_as, as_who, scratch, "gnupg")
    gpg = ["env", f"GNUPGHOME={gnupg}", "gpg", "--batch"]
    run_as(as_who, [*gpg, "--import", str(sif_corpus / "keys" / "private.asc")], check=True)
    exported = scratch / "exported.gpg"
    run_as(as_who, [*gpg, "--output", str(exported), "--export", FPR], check=True)
    run_as(as_who, ["env", f"GNUPGHOME={gnupg}", "gpgconf", "--kill", "all"])
    home = _home(run_as, as_who, scratch, "home")
    assert _sifbox(run_as, as_who, sifbox_cli, home, "key", "import", exported).returncode == 0
    for image in ("one-group-signed-pgp.sif", "two-groups-signed-pgp.sif"):
        p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", sif_corpus / "images" / image)
        assert p.returncode == 0, p.stderr
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", "--legacy-insecure",
                sif_corpus / "images" / "one-group-signed-legacy.sif")  # fmt: skip
    assert p.returncode == 0 and "2   |1       |NONE    |FS" in p.stdout


def test_wrong_passphrase_changes_nothing(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    home = _home(run_as, as_who, scratch, "home")
    assert _sifbox(run_as, as_who, sifbox_cli, home, "key", "newpair", "-N", "P", "-P", "right", "-b", "1024").returncode == 0
    img = _copy_for(run_as, as_who, sif_corpus / "images" / "one-group.sif", scratch / "img.sif")
    before = img.read_bytes()
    p = _sifbox(run_as, as_who, sifbox_cli, home, "sign", img, SIFBOX_KEY_PASSPHRASE="wrong")
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 255 and last.startswith("sifbox: error: can't sign") and "wrong passphrase" in last
    assert "Traceback" not in p.stderr and img.read_bytes() == before
    p = _sifbox(run_as, as_who, sifbox_cli, home, "sign", img, SIFBOX_KEY_PASSPHRASE="right")
    assert p.returncode == 0, p.stderr


def test_dsse_sign_and_verify(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    home = _home(run_as, as_who, scratch, "home")
    key = home / "k.pem"
    assert _sifbox(run_as, as_who, sifbox_cli, home, "key", "newpair", "--pem", "ecdsa", "-o", key).returncode == 0
    img = _copy_for(run_as, as_who, sif_corpus / "images" / "two-groups.sif", scratch / "img.sif")
    assert _sifbox(run_as, as_who, sifbox_cli, home, "sign", "--key", key, "--group-id", 2, img).returncode == 0
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", "--key", f"{key}.pub", "--group-id", 2, img)
    assert p.returncode == 0 and "3   |2       |NONE    |FS" in p.stdout, p.stderr
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", "--key", f"{key}.pub", img)
    assert p.returncode == 255 and "signature not found for object group 1" in p.stderr
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", "--key", sif_corpus / "keys" / "ed25519-public.pem",
                "--group-id", 2, img)  # fmt: skip
    assert p.returncode == 255 and "signature object 4 not valid" in p.stderr


@pytest.mark.slow
def test_ecl_refuses_tampered_image_at_exec(run_as, as_who, sifbox_cli, scratch, sif_corpus,  # type: ignore[no-untyped-def]
                                            action_images: ActionImages) -> None:  # noqa: F811
    conf = scratch / "etc"
    conf.mkdir()
    (conf / "sifbox.conf").write_text("")
    images = scratch / "images"
    images.mkdir(mode=0o755)
    img = images / "app.sif"
    for argv in (["sif", "new", img], ["sif", "add", "--datatype", "4", "--partfs", "1", "--parttype", "2",
                                       "--partarch", "2", "--groupid", "1", img, action_images.sqfs]):
        subprocess.run([sifbox_cli, *map(str, argv)], check=True, capture_output=True)
    # Sign as root with the corpus key; its public key is the site's global keyring.
    home = _home(run_as, None, scratch, "roothome")
    root_env = env_for(_root(), HOME=str(home))
    for argv in (["key", "import", str(sif_corpus / "keys" / "private.asc")], ["sign", str(img)]):
        p = subprocess.run([sifbox_cli, *argv], env=root_env, capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stderr
    shutil.copyfile(home / ".sifbox" / "keys" / "pgp-public", conf / "global-pgp-public")
    (conf / "ecl.toml").write_text(
        f'activated = true\n[[execgroup]]\ntagname = "site"\nmode = "whitelist"\n'
        f'dirpath = "{images}"\nkeyfp = ["{FPR}"]\n'
    )
    for p in (img, conf / "ecl.toml", conf / "global-pgp-public", conf / "sifbox.conf"):
        p.chmod(0o644)
    env = env_for(as_who, SIFBOX_CONFIG_FILE=str(conf / "sifbox.conf"))
    p = run_as(as_who, [sifbox_cli, "exec", str(img), "true"], env=env)
    assert p.returncode == 0, p.stderr
    p = run_as(as_who, [sifbox_cli, "ecl", "check", str(img)], env=env)
    assert p.returncode == 0 and "decision: allowed" in p.stdout

    # Flip one byte of the root file system: refused before anything is mounted.
    from sifbox.formats.sif.image import SifImage

    with open(img, "r+b") as f:
        part = SifImage.load(f).primary_partition()
        assert part is not None
        pos = part.offset + part.size - 10
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
    p = run_as(as_who, [sifbox_cli, "exec", str(img), "true"], env=env)
    assert p.returncode == 126, p.stderr
    assert p.stderr.startswith(f"sifbox: error: can't exec `{img}`: the execution control list refuses it: "
                               "unable to verify image: data object integrity compromised")  # fmt: skip
    p = run_as(as_who, [sifbox_cli, "ecl", "check", str(img)], env=env)
    assert p.returncode == 1 and "decision: refused" in p.stdout

    # An unsigned image elsewhere is in no execgroup.
    elsewhere = scratch / "unsigned.sif"
    shutil.copyfile(action_images.sif, elsewhere)
    elsewhere.chmod(0o644)
    p = run_as(as_who, [sifbox_cli, "exec", str(elsewhere), "true"], env=env)
    assert p.returncode == 126 and "not part of any execgroup" in p.stderr


def _root():  # type: ignore[no-untyped-def]
    from tests.integration.images import user_named

    return user_named("root")


def _write_chain(d: Path) -> None:
    """root CA -> intermediate CA -> code-signing leaf, as PEM files in `d`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(cn, issuer_cn, key, issuer_key, ca):  # type: ignore[no-untyped-def]
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if not ca:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    rk, ik, lk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    (d / "root.pem").write_bytes(cert("Root", "Root", rk, rk, True))
    (d / "inter.pem").write_bytes(cert("Inter", "Root", ik, rk, True))
    (d / "leaf.pem").write_bytes(cert("Leaf", "Inter", lk, ik, False))
    (d / "leaf.key").write_bytes(lk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))  # fmt: skip
    for f in d.iterdir():
        f.chmod(0o644)


def test_verify_with_certificate_chain(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    certs = scratch / "certs"
    certs.mkdir(mode=0o755)
    _write_chain(certs)
    home = _home(run_as, as_who, scratch, "home")
    img = _copy_for(run_as, as_who, sif_corpus / "images" / "one-group.sif", scratch / "img.sif")
    assert _sifbox(run_as, as_who, sifbox_cli, home, "sign", "--key", certs / "leaf.key", img).returncode == 0
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", "--certificate", certs / "leaf.pem",
                "--certificate-intermediates", certs / "inter.pem", "--certificate-roots", certs / "root.pem", img)
    assert p.returncode == 0, p.stderr
    p = _sifbox(run_as, as_who, sifbox_cli, home, "verify", "--certificate", certs / "leaf.pem",
                "--certificate-roots", certs / "root.pem", img)  # fmt: skip
    assert p.returncode == 255 and "certificate signed by unknown authority" in p.stderr


def test_malformed_ecl_is_a_usage_error(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    conf = scratch / "etc"
    conf.mkdir(mode=0o755)
    (conf / "sifbox.conf").write_text("")
    (conf / "ecl.toml").write_text('activated = true\n[[execgroup]]\nmode = "greylist"\n')
    for f in conf.iterdir():
        f.chmod(0o644)
    env = env_for(as_who, SIFBOX_CONFIG_FILE=str(conf / "sifbox.conf"))
    img = _copy_for(run_as, as_who, sif_corpus / "images" / "one-group.sif", scratch / "img.sif")
    p = run_as(as_who, [sifbox_cli, "exec", str(img), "true"], env=env)
    assert p.returncode == 125, p.stderr
    assert p.stderr.startswith(f"sifbox: error: can't read ECL configuration `{conf}/ecl.toml:2`: ")
    assert "Traceback" not in p.stderr
    p = run_as(as_who, [sifbox_cli, "ecl", "check", str(img)], env=env)
    assert p.returncode == 125 and "ecl.toml:2" in p.stderr


def _gpg_agents() -> set[int]:
    """The pids of gpg-agent processes on the machine, running or zombie."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "gpg-agent":
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def test_gpg_agents_are_reaped(run_as, as_who, sifbox_cli, scratch, sif_corpus) -> None:  # type: ignore[no-untyped-def]
    """gpg starts its agent as a daemon; sifbox stops it and reaps it itself (this machine's
    PID 1 does not reap orphans): after key and sign commands, no agent of theirs is left, not
    even as a zombie."""
    before = _gpg_agents()
    home = _home(run_as, as_who, scratch, "home")
    assert _sifbox(run_as, as_who, sifbox_cli, home, "key", "newpair", "-N", "A", "-P", "pw", "-b", "1024").returncode == 0
    img = _copy_for(run_as, as_who, sif_corpus / "images" / "one-group.sif", scratch / "img.sif")
    p = _sifbox(run_as, as_who, sifbox_cli, home, "sign", img, SIFBOX_KEY_PASSPHRASE="pw")
    assert p.returncode == 0, p.stderr
    left = _gpg_agents() - before
    assert not left, f"gpg-agent processes left behind: {sorted(left)}"
