"""Encrypted images with gocryptfs (SIF fstype 6), as root and as the test user: built by
`sifbox build --encrypt`, and built by hand the way Apptainer's build does it (gocryptfs
-init, mksquashfs through a gocryptfs mount, the outer SquashFS of the cipher directory,
an RSA-OAEP key message framed by openssl), then run, with the right key, a wrong one and
none; hostile partitions; and nothing left afterwards (gocryptfs and squashfuse reaped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.images import _processes, action_images, env_for, no_leaks, user_named  # noqa: F401

pytestmark = pytest.mark.integration

PASS = "correct horse battery staple"
RUNSCRIPT_OUT = "runscript args: a b"


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("gocryptfs", "mksquashfs", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _helpers() -> set[int]:
    """gocryptfs processes, zombies included (PID 1 here reaps nothing)."""
    return {pid for pid, _state, _parent, comm in _processes() if comm == "gocryptfs"}


@pytest.fixture(autouse=True)
def no_stray_gocryptfs() -> object:
    """No gocryptfs left, not even a zombie (PID 1 reaps nothing here; no_leaks sees live ones)."""
    before = _helpers()
    yield None
    left = _helpers() - before
    assert not left, f"gocryptfs left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def public_dir() -> object:
    """A directory under /tmp the test user can read (pytest's own is root's alone)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sifbox-enc-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(public_dir: Path) -> tuple[Path, Path, Path]:
    d = public_dir
    priv, pub, other = d / "key.pem", d / "pub.pem", d / "other.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(priv), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(priv), "-RSAPublicKey_out", "-out", str(pub)], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True)
    for p in (priv, pub, other):
        p.chmod(0o644)
    return priv, pub, other


def _sifbox(run_as, who, cli, *args: str, cwd: Path, **env: str):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, *args], env=env_for(who, **env), cwd=str(cwd), timeout=240)


def test_build_and_run_with_a_passphrase(run_as, as_who, sifbox_cli, action_images, shared_tmp) -> None:
    out = "enc.sif"
    built = _sifbox(run_as, as_who, sifbox_cli, "-q", "build", "--encrypt", out, str(action_images.sandbox),
                    cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert built.returncode == 0, built.stderr
    listing = _sifbox(run_as, as_who, sifbox_cli, "sif", "list", out, cwd=shared_tmp)
    assert "FS (Gocryptfs squashfs/*System/" in listing.stdout, listing.stdout
    assert "Cryptographic Message" not in listing.stdout  # a passphrase: no key message
    # nothing of the root file system in the clear
    assert b"hello from image" not in (shared_tmp / out).read_bytes()
    run = _sifbox(run_as, as_who, sifbox_cli, "run", out, "a", "b", cwd=shared_tmp, APPTAINER_ENCRYPTION_PASSPHRASE=PASS)
    assert (run.returncode, run.stdout.strip()) == (0, RUNSCRIPT_OUT), run.stderr
    cat = _sifbox(run_as, as_who, sifbox_cli, "exec", out, "cat", "/data/hello.txt", cwd=shared_tmp,
                  SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert (cat.returncode, cat.stdout) == (0, "hello from image\n"), cat.stderr
    wrong = _sifbox(run_as, as_who, sifbox_cli, "exec", out, "true", cwd=shared_tmp,
                    SIFBOX_ENCRYPTION_PASSPHRASE="not it")  # fmt: skip
    assert wrong.returncode == 255, wrong.stderr
    assert wrong.stderr.splitlines()[0].startswith("sifbox: error: can't start a container from")
    assert "does not decrypt it" in wrong.stderr and "Traceback" not in wrong.stderr
    none = _sifbox(run_as, as_who, sifbox_cli, "exec", out, "true", cwd=shared_tmp)
    assert none.returncode == 125 and "is encrypted and no key was given" in none.stderr, none.stderr
    shell = run_as(as_who, [sifbox_cli, "shell", out], env=env_for(as_who, SIFBOX_ENCRYPTION_PASSPHRASE=PASS),
                   cwd=str(shared_tmp), input="echo in-shell\nexit 3\n", timeout=120)  # fmt: skip
    assert shell.returncode == 3 and "in-shell" in shell.stdout, shell.stderr
    inspect = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--json", out, cwd=shared_tmp)
    assert inspect.returncode == 0 and '"labels"' in inspect.stdout, inspect.stderr


def test_pem_key_pair(run_as, as_who, sifbox_cli, action_images, shared_tmp, keys) -> None:
    priv, pub, other = keys
    built = _sifbox(run_as, as_who, sifbox_cli, "-q", "build", "--pem-path", str(pub), "pem.sif",
                    str(action_images.sandbox), cwd=shared_tmp)  # fmt: skip
    assert built.returncode == 0, built.stderr
    listing = _sifbox(run_as, as_who, sifbox_cli, "sif", "list", "pem.sif", cwd=shared_tmp).stdout
    rows = [[field.strip() for field in line.split("|")] for line in listing.splitlines() if "|" in line][1:]
    part = next(r[0] for r in rows if "Gocryptfs squashfs/*System" in r[4])
    msg = next(r for r in rows if r[4] == "Cryptographic Message (PEM/RSA-OAEP)")
    assert msg[2] == part, listing  # linked to the partition, as Apptainer's reader looks it up
    # the key message is what openssl decrypts with RSA-OAEP/SHA-256: 32 hex digits, the gocryptfs password
    message = _dump(run_as, as_who, sifbox_cli, shared_tmp / "pem.sif", int(msg[0]))
    secret = _openssl_unwrap(message, priv)
    assert len(secret) == 32 and all(ch in b"0123456789abcdef" for ch in secret)
    run = _sifbox(run_as, as_who, sifbox_cli, "run", "--pem-path", str(priv), "pem.sif", "a", "b", cwd=shared_tmp)
    assert (run.returncode, run.stdout.strip()) == (0, RUNSCRIPT_OUT), run.stderr
    env_run = _sifbox(run_as, as_who, sifbox_cli, "run", "pem.sif", cwd=shared_tmp,
                      SIFBOX_ENCRYPTION_PEM_PATH=str(priv))  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr
    wrong = _sifbox(run_as, as_who, sifbox_cli, "run", "--pem-path", str(other), "pem.sif", cwd=shared_tmp)
    assert wrong.returncode == 255 and "does not decrypt its key message" in wrong.stderr, wrong.stderr
    public = _sifbox(run_as, as_who, sifbox_cli, "run", "--pem-path", str(pub), "pem.sif", cwd=shared_tmp)
    assert public.returncode == 255 and "not a PEM private key" in public.stderr, public.stderr


def test_site_refuses_encrypted_images(run_as, as_who, sifbox_cli, action_images, shared_tmp) -> None:
    built = _sifbox(run_as, user_named("root"), sifbox_cli, "-q", "build", "--encrypt", "e.sif", str(action_images.sandbox),
                    cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (shared_tmp / "e.sif").chmod(0o644)
    conf = shared_tmp / "sifbox.conf"
    conf.write_text("allow container encrypted = no\n")
    conf.chmod(0o644)
    run = _sifbox(run_as, as_who, sifbox_cli, "-c", str(conf), "run", "e.sif", cwd=shared_tmp,
                  SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert run.returncode == 126 and "allow container encrypted = no" in run.stderr, run.stderr


# --- images laid out by hand, as Apptainer's build lays them out ----------------------------------

APPTAINER_LAYOUT = r"""
import os, subprocess, sys, tempfile
from sifbox.build.assemble import write_sif
from sifbox.formats.sif.constants import FsType

# As Apptainer's packer/gocryptfs.go and assemblers/sif.go: gocryptfs -init -deterministic-names
# -plaintextnames, mksquashfs through the mount into squashfs-<digits>, then the outer
# SquashFS of that file and gocryptfs.conf (gzip, -all-root), fstype 6.
sandbox, out, password, msgfile = sys.argv[1:5]
top = tempfile.mkdtemp(dir=os.getcwd())
cipher, plain = os.path.join(top, "cipher"), os.path.join(top, "plain")
os.mkdir(cipher, 0o700); os.mkdir(plain, 0o700)
line = (password + "\n").encode()
subprocess.run(["gocryptfs", "-init", "-deterministic-names", "-plaintextnames", cipher], input=line * 2,
               check=True, capture_output=True)
subprocess.run(["gocryptfs", "-q", cipher, plain], input=line, check=True)
try:
    subprocess.run(["mksquashfs", sandbox, os.path.join(plain, "squashfs-1234567890"), "-noappend", "-all-root",
                    "-comp", "gzip", "-quiet", "-no-progress"], check=True)
finally:
    subprocess.run(["fusermount3", "-u", plain], check=True)
outer = os.path.join(top, "outer.sqfs")
subprocess.run(["mksquashfs", os.path.join(cipher, "squashfs-1234567890"), os.path.join(cipher, "gocryptfs.conf"),
                outer, "-noappend", "-all-root", "-comp", "gzip", "-quiet", "-no-progress"], check=True)
message = open(msgfile, "rb").read() if msgfile != "-" else None
write_sif(outer, out, "Bootstrap: scratch\n", fstype=FsType.GOCRYPTFS_SQUASHFS, key_message=message)
"""


def _dump(run_as, who, cli, image: Path, object_id: int) -> bytes:  # type: ignore[no-untyped-def]
    proc = run_as(who, [cli, "sif", "dump", str(object_id), str(image)], env=env_for(who), text=False)
    assert proc.returncode == 0, proc.stderr
    return bytes(proc.stdout)


def _openssl_unwrap(message: bytes, priv: Path) -> bytes:
    """RSA-OAEP/SHA-256 decryption of a PEM MESSAGE by openssl alone (no sifbox code)."""
    der = subprocess.run(["openssl", "base64", "-d"], input=b"".join(
        line + b"\n" for line in message.splitlines() if not line.startswith(b"-----")), capture_output=True,
        check=True).stdout  # fmt: skip
    assert der[0] == 0x04  # an ASN.1 OCTET STRING: its body follows its DER length
    body = der[2:] if der[1] < 0x80 else der[2 + (der[1] & 0x7F) :]
    return subprocess.run(["openssl", "pkeyutl", "-decrypt", "-inkey", str(priv), "-pkeyopt",
                           "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt",
                           "rsa_mgf1_md:sha256"], input=body, capture_output=True, check=True).stdout  # fmt: skip


def _openssl_wrap(secret: bytes, pub: Path, out: Path) -> None:
    """A PEM MESSAGE as Go's cryptkey writes it, made by openssl and base64 alone."""
    ct = subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", str(pub), "-pkeyopt",
                         "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt",
                         "rsa_mgf1_md:sha256"], input=secret, capture_output=True, check=True).stdout  # fmt: skip
    assert len(ct) == 256
    der = b"\x04\x82\x01\x00" + ct
    b64 = subprocess.run(["openssl", "base64", "-e"], input=der, capture_output=True, check=True).stdout
    out.write_bytes(b"-----BEGIN MESSAGE-----\n" + b64 + b"-----END MESSAGE-----\n")
    out.chmod(0o644)


@pytest.fixture(scope="module")
def apptainer_made(action_images, keys, public_dir: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Two images laid out by hand as Apptainer's build lays them out: passphrase and PEM."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = public_dir / "apptainer-layout"
    d.mkdir()
    d.chmod(0o755)
    repo = str(Path(__file__).resolve().parents[2])
    secret = b"0123456789abcdef0123456789abcdef"
    _openssl_wrap(secret, keys[1], d / "msg.pem")
    made = []
    for name, password, msg in (("pass.sif", PASS, "-"), ("pem.sif", secret.decode(), str(d / "msg.pem"))):
        proc = subprocess.run([sys.executable, "-c", APPTAINER_LAYOUT, str(action_images.sandbox), str(d / name),
                               password, msg], cwd=str(d), env={**os.environ, "PYTHONPATH": repo},
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        (d / name).chmod(0o644)
        made.append(d / name)
    return made[0], made[1]


def test_images_in_apptainers_layout_run(run_as, as_who, sifbox_cli, apptainer_made, keys, shared_tmp) -> None:
    passphrase_image, pem_image = apptainer_made
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(passphrase_image), "a", "b", cwd=shared_tmp,
                  SINGULARITY_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert (run.returncode, run.stdout.strip()) == (0, RUNSCRIPT_OUT), run.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", "--pem-path", str(keys[0]), str(pem_image), "a", "b", cwd=shared_tmp)
    assert (run.returncode, run.stdout.strip()) == (0, RUNSCRIPT_OUT), run.stderr


HOSTILE = r"""
import json, os, subprocess, sys
from sifbox.build.assemble import write_sif
from sifbox.formats.sif.constants import FsType

kind, out = sys.argv[1:3]
d = os.path.join(os.getcwd(), kind)
os.mkdir(d)
open(os.path.join(d, "squashfs-1"), "wb").write(b"x" * 8192)
conf = {"Version": 2, "EncryptedKey": "AAAA", "FeatureFlags": ["HKDF", "GCMIV128", "PlaintextNames"],
        "ScryptObject": {"Salt": "AAAA", "N": 65536, "R": 8, "P": 1, "KeyLen": 32}}
if kind == "link":      # a gocryptfs.conf that points at a file of the host
    os.symlink("/etc/passwd", os.path.join(d, "gocryptfs.conf"))
elif kind == "scrypt":  # a cost that would stall every launch
    conf["ScryptObject"]["N"] = 1 << 30
elif kind == "missing":
    pass
if kind in ("scrypt",):
    open(os.path.join(d, "gocryptfs.conf"), "w").write(json.dumps(conf))
outer = out + ".sqfs"
subprocess.run(["mksquashfs", d, outer, "-noappend", "-quiet", "-no-progress"], check=True)
write_sif(outer, out, "Bootstrap: scratch\n", fstype=FsType.GOCRYPTFS_SQUASHFS)
"""


@pytest.mark.parametrize("kind, reason", [("link", "gocryptfs.conf is not a regular file"),
                                          ("scrypt", "scrypt N=1073741824"),
                                          ("missing", "no gocryptfs.conf")])  # fmt: skip
def test_hostile_partitions_are_refused(run_as, as_who, sifbox_cli, shared_tmp, kind: str,
                                        reason: str) -> None:  # fmt: skip
    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", HOSTILE, kind, f"{kind}.sif"], cwd=str(shared_tmp),
                          env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (shared_tmp / f"{kind}.sif").chmod(0o644)
    run = _sifbox(run_as, as_who, sifbox_cli, "run", f"{kind}.sif", cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)
    assert run.returncode == 126, run.stderr
    assert reason in run.stderr and "damaged" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_the_passphrase_reaches_no_helper_argv_or_environment(run_as, as_who, sifbox_cli, action_images,
                                                              shared_tmp) -> None:  # fmt: skip
    import time

    from tests.integration.images import descendants, popen_as

    built = _sifbox(run_as, as_who, sifbox_cli, "-q", "build", "--encrypt", "e.sif", str(action_images.sandbox),
                    cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert built.returncode == 0, built.stderr
    proc = popen_as(as_who, [sifbox_cli, "exec", "e.sif", "sleep", "30"], cwd=str(shared_tmp),
                    env=env_for(as_who, SIFBOX_ENCRYPTION_PASSPHRASE=PASS))  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "sleep" not in descendants(proc.pid).values():
            time.sleep(0.05)
        found = descendants(proc.pid)
        assert "gocryptfs" in found.values() and "sleep" in found.values(), found
        secret = PASS.encode()
        # sifbox's own processes keep the environment they were started with (/proc shows
        # it as it was at exec); what they exec must not see it.
        for pid in [p for p, comm in found.items() if comm == "gocryptfs"]:
            # it reads what the image holds: root's runs as nobody, without capabilities
            status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":\t" in line)  # fmt: skip
            uid = status["Uid"].split()[0]
            assert uid == ("65534" if as_who.is_root else str(as_who.uid)), status["Uid"]
            if as_who.is_root:
                assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1", status
        for pid in [p for p, comm in found.items() if comm in ("gocryptfs", "squashfuse_ll", "sleep")]:
            for what in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{what}").read_bytes()
                except OSError:
                    continue
                assert secret not in data, f"the passphrase is in /proc/{pid}/{what} ({found[pid]})"
    finally:
        proc.terminate()  # forwarded to the payload; sifbox then stops and reaps its helpers
        proc.communicate(timeout=30)


def test_sign_and_verify_cover_the_encrypted_partition(run_as, as_who, sifbox_cli, action_images, shared_tmp,
                                                       keys) -> None:  # fmt: skip
    built = _sifbox(run_as, as_who, sifbox_cli, "-q", "build", "--pem-path", str(keys[1]), "s.sif",
                    str(action_images.sandbox), cwd=shared_tmp)  # fmt: skip
    assert built.returncode == 0, built.stderr
    home = shared_tmp / f"home-{as_who.name}"
    home.mkdir()
    if not as_who.is_root:
        os.chown(home, as_who.uid, as_who.gid)
    made = run_as(as_who, [sifbox_cli, "key", "newpair", "--pem", "ecdsa", "-o", str(home / "k")],
                  env=env_for(as_who), cwd=str(shared_tmp))  # fmt: skip
    assert made.returncode == 0, made.stderr
    signed = _sifbox(run_as, as_who, sifbox_cli, "sign", "--key", str(home / "k"), "s.sif", cwd=shared_tmp)
    assert signed.returncode == 0, signed.stderr
    verified = _sifbox(run_as, as_who, sifbox_cli, "verify", "--key", str(home / "k.pub"), "s.sif", cwd=shared_tmp)
    assert verified.returncode == 0 and "Cryptographic Message" in verified.stdout, verified.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", "--pem-path", str(keys[0]), "s.sif", "a", "b", cwd=shared_tmp)
    assert (run.returncode, run.stdout.strip()) == (0, RUNSCRIPT_OUT), run.stderr
    with open(shared_tmp / "s.sif", "r+b") as f:  # one byte of the ciphertext
        f.seek(40000)
        byte = f.read(1)
        f.seek(40000)
        f.write(bytes([byte[0] ^ 1]))
    tampered = _sifbox(run_as, as_who, sifbox_cli, "verify", "--key", str(home / "k.pub"), "s.sif", cwd=shared_tmp)
    assert tampered.returncode == 255 and "integrity compromised" in tampered.stderr, tampered.stderr


def test_inspect_without_the_key(run_as, as_who, sifbox_cli, apptainer_made, shared_tmp) -> None:
    # Apptainer's encrypted images keep the definition and the metadata JSON unencrypted; one
    # without the JSON can't be inspected without its key, and inspect says so.
    proc = _sifbox(run_as, as_who, sifbox_cli, "inspect", str(apptainer_made[0]), cwd=shared_tmp)
    assert proc.returncode == 255, proc.stderr
    assert "is encrypted and holds no inspect-metadata.json" in proc.stderr and "Traceback" not in proc.stderr


LUKS = r"""
import sys
from sifbox.build import assemble
from sifbox.formats.sif.constants import FsType

# A partition marked LUKS2-wrapped SquashFS (SingularityCE's and Apptainer's root builds); its
# bytes are never read, the refusal comes first. write_sif takes SquashFS files: this one passes.
open(sys.argv[1] + ".part", "wb").write(b"LUKS\xba\xbe\x00\x02" + bytes(16 << 10))
assemble._is_squashfs = lambda path: True
assemble.write_sif(sys.argv[1] + ".part", sys.argv[1], "Bootstrap: scratch\n", fstype=FsType.ENCRYPTED_SQUASHFS)
"""


def test_luks_images_are_refused_with_a_hint(run_as, as_who, sifbox_cli, shared_tmp) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", LUKS, "luks.sif"], cwd=str(shared_tmp),
                          env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (shared_tmp / "luks.sif").chmod(0o644)
    listing = _sifbox(run_as, as_who, sifbox_cli, "sif", "list", "luks.sif", cwd=shared_tmp)
    assert "FS (Encrypted squashfs/*System/" in listing.stdout, listing.stdout
    run = _sifbox(run_as, as_who, sifbox_cli, "run", "luks.sif", cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)
    assert run.returncode == 255 and "Traceback" not in run.stderr, run.stderr
    first, hint = run.stderr.splitlines()[:2]
    assert first.startswith("sifbox: error: can't run `luks.sif`: it is encrypted with LUKS2" if not as_who.is_root
                            else "sifbox: error: can't run `luks.sif`: LUKS2-encrypted images are not available")
    assert hint.startswith("hint:") and "gocryptfs" in hint


def test_instance_of_an_encrypted_image(run_as, as_who, sifbox_cli, action_images, shared_tmp) -> None:
    """The key opens the image once, when the instance starts; what joins it needs none."""
    built = _sifbox(run_as, as_who, sifbox_cli, "-q", "build", "--encrypt", "i.sif", str(action_images.sandbox),
                    cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert built.returncode == 0, built.stderr
    name = f"enc{os.getpid()}"
    home = shared_tmp / f"ihome-{as_who.name}"
    home.mkdir()
    if not as_who.is_root:
        os.chown(home, as_who.uid, as_who.gid)
    env = {"HOME": str(home)}  # instance records go to the caller's ~/.sifbox
    try:
        wrong = _sifbox(run_as, as_who, sifbox_cli, "instance", "start", "i.sif", name, cwd=shared_tmp,
                        SIFBOX_ENCRYPTION_PASSPHRASE="nope", **env)  # fmt: skip
        assert wrong.returncode != 0 and "does not decrypt it" in wrong.stderr, wrong.stderr
        started = _sifbox(run_as, as_who, sifbox_cli, "instance", "start", "i.sif", name, cwd=shared_tmp,
                          SIFBOX_ENCRYPTION_PASSPHRASE=PASS, **env)  # fmt: skip
        assert started.returncode == 0, started.stderr
        joined = _sifbox(run_as, as_who, sifbox_cli, "exec", f"instance://{name}", "cat", "/data/hello.txt",
                         cwd=shared_tmp, **env)  # fmt: skip
        assert (joined.returncode, joined.stdout) == (0, "hello from image\n"), joined.stderr
    finally:
        stopped = _sifbox(run_as, as_who, sifbox_cli, "instance", "stop", name, cwd=shared_tmp, **env)
    assert stopped.returncode == 0, stopped.stderr


def test_sbom_says_the_packages_cant_be_read(run_as, as_who, sifbox_cli, action_images, shared_tmp) -> None:
    built = _sifbox(run_as, as_who, sifbox_cli, "-q", "build", "--encrypt", "b.sif", str(action_images.sandbox),
                    cwd=shared_tmp, SIFBOX_ENCRYPTION_PASSPHRASE=PASS)  # fmt: skip
    assert built.returncode == 0, built.stderr
    proc = _sifbox(run_as, as_who, sifbox_cli, "sbom", "b.sif", cwd=shared_tmp)
    assert proc.returncode == 255 and proc.stdout == "", proc.stdout
    assert "it is encrypted, and its packages can't be read without its key" in proc.stderr, proc.stderr
