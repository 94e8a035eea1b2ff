"""`key push|pull|search`, `keyserver` and `remote` against a real keyserver on 127.0.0.1.

Debian's `sks` serves HKP for this module (built empty, one server for every test); a hostile
HKP server in this process answers with huge bodies, garbage and the wrong key, over HTTP and
over TLS (HKPS, its certificate trusted through SSL_CERT_FILE). Every test runs as root and as
the unprivileged test user, each with a HOME (keyrings, remote.yaml) and a sifbox.conf
directory (the system remote.yaml) of its own under `shared_tmp`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.integration.keyserver_server import HostileServer, SksServer, self_signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sks() -> Iterator[SksServer]:
    server = SksServer()
    try:
        yield server
    finally:
        server.close()


class Key:
    def __init__(self, fingerprint: str, armored: Path, uid: str):
        self.fingerprint = fingerprint
        self.armored = armored
        self.uid = uid


def make_key(directory: Path, name: str, secret: bool = False) -> Key:
    """An Ed25519 key made by gpg (fast), its public key armored in `directory` (and with
    `secret`, the secret key, without passphrase, in FPR.secret.asc)."""
    home = tempfile.mkdtemp(prefix="sifbox-gpg-", dir="/tmp")
    try:
        env = {**os.environ, "GNUPGHOME": home}
        uid = f"{name} <{name.lower().replace(' ', '.')}@example.org>"
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        out = subprocess.run(["gpg", "--with-colons", "--list-keys"], env=env, check=True, capture_output=True, text=True)
        fpr = next(line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("fpr:"))
        armored = directory / f"{fpr}.asc"
        armored.write_bytes(subprocess.run(["gpg", "--armor", "--export", fpr], env=env, check=True,
                                           capture_output=True).stdout)  # fmt: skip
        armored.chmod(0o644)
        if secret:
            sec = directory / f"{fpr}.secret.asc"
            sec.write_bytes(subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                                            "--armor", "--export-secret-keys", fpr], env=env, check=True,
                                           capture_output=True).stdout)  # fmt: skip
            sec.chmod(0o644)
        return Key(fpr, armored, uid)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", home], check=False)


class Cli:
    """The CLI as `who`, with its own HOME and system configuration directory."""

    def __init__(self, run_as, who: User, cli: str, base: Path):  # type: ignore[no-untyped-def]
        self.run_as, self.who, self.cli = run_as, who, cli
        self.home = base / f"home-{who.name}"
        self.etc = base / f"etc-{who.name}"
        for d in (self.home, self.etc):
            d.mkdir()
            os.chown(d, who.uid, who.gid)
        # runuser sets HOME: the configuration directory (keys, remote.yaml) is named instead
        self.env = {**os.environ, "SIFBOX_CONFIGDIR": str(self.home / ".sifbox"),
                    "SIFBOX_CONFIG_FILE": str(self.etc / "sifbox.conf")}  # fmt: skip
        for var in ("APPTAINER_CONFIGDIR", "SIFBOX_KEYSDIR", "APPTAINER_KEYSDIR", "SIFBOX_URL",
                    "APPTAINER_URL"):  # fmt: skip
            self.env.pop(var, None)

    def __call__(self, *argv: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run_as(self.who, [self.cli, *argv], env={**self.env, **(env or {})}, timeout=120, **kw)  # type: ignore[no-any-return]

    @property
    def public_ring(self) -> Path:
        return self.home / ".sifbox/keys/pgp-public"


@pytest.fixture
def cli(run_as, as_who, sifbox_cli, shared_tmp) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(run_as, as_who, sifbox_cli, shared_tmp)


def one_error(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sifbox: error: can't "), proc.stderr
    assert re.search(pattern, lines[0]), proc.stderr
    assert "Traceback" not in proc.stderr


def test_push_search_pull(cli: Cli, sks: SksServer, shared_tmp: Path) -> None:
    """A key pushed to sks is found by name, email and fingerprint, and pulled into another
    keyring; a second pull adds nothing."""
    key = make_key(shared_tmp, f"Push {cli.who.name}")
    assert cli("key", "import", str(key.armored)).returncode == 0
    proc = cli("key", "push", "--url", sks.url, key.fingerprint)
    assert proc.returncode == 0, proc
    assert proc.stdout == f"public key `{key.fingerprint}' pushed to server successfully\n"

    proc = cli("key", "search", "--url", sks.url, key.uid.split("<")[1].rstrip(">"))
    assert proc.returncode == 0, proc
    assert proc.stdout.startswith("Showing 1 results\n\nKEY ID    BITS  NAME/EMAIL\n"), proc.stdout
    assert f"{key.fingerprint[-8:]}  256   {key.uid}\n" in proc.stdout
    proc = cli("key", "search", "-l", "-u", sks.url, key.fingerprint)
    assert proc.returncode == 0, proc
    assert re.search(r"(?m)^FINGERPRINT\s+ALGORITHM\s+BITS\s+CREATION DATE\s+EXPIRATION DATE\s+STATUS\s+NAME/EMAIL$",
                     proc.stdout), proc.stdout  # fmt: skip
    assert re.search(rf"(?m)^{key.fingerprint}  unknown    256   \d{{4}}-\d\d-\d\d [\d:]+ [+-]\d{{4}} \S+\s+"
                     rf"\[enabled\]  {re.escape(key.uid)}$", proc.stdout), proc.stdout  # fmt: skip

    assert cli("key", "remove", key.fingerprint).returncode == 0
    proc = cli("key", "pull", "--url", sks.url, key.fingerprint)
    assert proc.returncode == 0, proc
    assert proc.stdout == f"1 key(s) added to keyring of trust {cli.public_ring}\n"
    assert key.fingerprint in cli("key", "list").stdout
    proc = cli("key", "pull", "--url", sks.url, key.fingerprint[-16:])
    assert proc.stdout == f"0 key(s) added to keyring of trust {cli.public_ring}\n", proc


def test_global_keyring(cli: Cli, sks: SksServer, shared_tmp: Path) -> None:
    """`key pull|import|list|export|remove --global`: the site's public keyring beside
    sifbox.conf (global-pgp-public, 0644), changed by root only; the user's keyring untouched."""
    key = make_key(shared_tmp, f"Global {cli.who.name}")
    ring = cli.etc / "global-pgp-public"
    assert cli("key", "import", str(key.armored)).returncode == 0
    assert cli("key", "push", "--url", sks.url, key.fingerprint).returncode == 0
    assert cli("key", "remove", key.fingerprint).returncode == 0
    proc = cli("key", "list", "--global")
    assert proc.returncode == 0 and proc.stdout == f"Public key listing ({ring}):\n\n", proc
    if cli.who.uid != 0:
        one_error(cli("key", "pull", "--global", "--url", sks.url, key.fingerprint), "not root user")
        one_error(cli("key", "import", "-g", str(key.armored)), "not root user")
        assert not ring.exists()
        return
    proc = cli("key", "pull", "--global", "--url", sks.url, key.fingerprint)
    assert proc.returncode == 0 and proc.stdout == f"1 key(s) added to keyring of trust {ring}\n", proc
    assert ring.stat().st_mode & 0o777 == 0o644
    assert key.fingerprint in cli("key", "list", "-g").stdout
    assert key.fingerprint not in cli("key", "list").stdout
    out = shared_tmp / "exported.asc"
    assert cli("key", "export", "--global", "-a", key.fingerprint, str(out)).returncode == 0
    assert out.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    one_error(cli("key", "list", "--global", "--secret"), "holds public keys only")
    assert cli("key", "remove", "--global", key.fingerprint).returncode == 0
    assert key.fingerprint not in cli("key", "list", "-g").stdout


def test_missing_key(cli: Cli, sks: SksServer) -> None:
    proc = cli("key", "pull", "--url", sks.url, "0" * 40)
    one_error(proc, r"pull key `0{40}`: no matching key on keyserver `http://127\.0\.0\.1:\d+`")
    one_error(cli("key", "search", "-u", sks.url, "nobody-here@example.invalid"), "no matching keys found")
    one_error(cli("key", "pull", "-u", sks.url, "XYZ"), r"not a key fingerprint")
    one_error(cli("key", "push", "-u", sks.url, "0" * 40), r"no such key in the local public keyring")
    one_error(cli("key", "pull", "-u", "ftp://127.0.0.1", "0" * 40), r"unsupported keyserver protocol scheme")


def test_unreachable(cli: Cli) -> None:
    from tests.integration.registry_server import free_port

    one_error(cli("key", "pull", "-u", f"http://127.0.0.1:{free_port()}", "0" * 40), r"can't reach keyserver")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Key:
    d = tmp_path_factory.mktemp("stranger")
    return make_key(d, "Stranger Danger")


def armor(binary: bytes) -> bytes:
    import base64

    b64 = base64.b64encode(binary)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + lines + b"\n-----END PGP PUBLIC KEY BLOCK-----\n"


def dearmor(armored: bytes) -> bytes:
    from sifbox.security.pgp import dearmor as _dearmor

    return _dearmor(armored)


def test_hostile_answers(cli: Cli, shared_tmp: Path, stranger: Key) -> None:
    """A huge answer, garbage, two keys, the wrong key: one error line each, keyring unchanged."""
    key = make_key(shared_tmp, f"Wanted {cli.who.name}")
    wanted = key.armored.read_bytes()
    answers = {
        "huge": (200, b"x" * (9 << 20)),
        "garbage": (200, b"\x00\xffnot a key\n" * 100),
        "damaged": (200, b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----\n"),
        "wrong": (200, stranger.armored.read_bytes()),
        "two": (200, armor(dearmor(wanted) + dearmor(stranger.armored.read_bytes()))),
        "error": (500, b"boom"),
    }
    expect = {"huge": "too large", "garbage": "not an OpenPGP public key block", "damaged": "not a valid key|holds no key",
              "wrong": f"returned key {stranger.fingerprint}, not the one asked for", "two": "returned 2 keys",
              "error": "answered 500"}  # fmt: skip
    mode = {"which": "huge"}
    server = HostileServer(lambda path: answers[mode["which"]])
    try:
        assert cli("key", "list").returncode == 0
        before = cli.public_ring.read_bytes()
        for which in answers:
            mode["which"] = which
            one_error(cli("key", "pull", "-u", server.url, key.fingerprint), expect[which])
            assert cli.public_ring.read_bytes() == before, which
        mode["which"] = "garbage"
        proc = cli("key", "search", "-u", server.url, "x")
        assert proc.returncode == 0 and proc.stdout == "Showing 0 results\n\nKEY ID  BITS  NAME/EMAIL\n", proc
    finally:
        server.close()


def test_hkps(cli: Cli, shared_tmp: Path) -> None:
    """HKPS: a certificate the client trusts (SSL_CERT_FILE) serves the key; without that trust,
    one error about TLS."""
    key = make_key(shared_tmp, f"Tls {cli.who.name}")
    crt, pem = self_signed(shared_tmp)
    server = HostileServer(lambda path: (200, key.armored.read_bytes()), tls=(crt, pem))
    try:
        url = f"hkps://127.0.0.1:{server.port}"
        proc = cli("key", "pull", "-u", url, key.fingerprint, env={"SSL_CERT_FILE": crt})
        assert proc.returncode == 0, proc
        assert proc.stdout.startswith("1 key(s) added"), proc
        one_error(cli("key", "pull", "-u", url, key.fingerprint, env={"SSL_CERT_FILE": "/dev/null"}), "TLS")
        # a keyserver configured insecure (`keyserver add -i`) is used without checking its certificate
        assert cli("key", "remove", key.fingerprint).returncode == 0
        cli.env.pop("SIFBOX_URL", None)
        if cli.who.is_root:
            assert cli("keyserver", "remove", "https://keys.openpgp.org").returncode != 0  # the only one
        else:
            assert cli("remote", "add", "--no-login", "site", "https://site.example.invalid").returncode == 0
        assert cli("keyserver", "add", "--insecure", url).returncode == 0
        if cli.who.is_root:  # no test reaches the internet
            assert cli("keyserver", "remove", "https://keys.openpgp.org").returncode == 0
        assert url in cli("keyserver", "list").stdout
        proc = cli("key", "pull", key.fingerprint, env={"SSL_CERT_FILE": "/dev/null"})
        assert proc.returncode == 0 and proc.stdout.startswith("1 key(s) added"), proc
    finally:
        server.close()


def test_keyserver_config(cli: Cli, sks: SksServer, shared_tmp: Path) -> None:
    """Without --url, key commands use the default endpoint's keyservers in order: an
    unreachable first one passes the request to the next. Root adds keyservers to the system
    remote.yaml; a user to an endpoint of their own, and is refused a system endpoint's."""
    key = make_key(shared_tmp, f"Conf {cli.who.name}")
    assert cli("key", "import", str(key.armored)).returncode == 0
    assert cli("key", "push", "-u", sks.url, key.fingerprint).returncode == 0
    if cli.who.is_root:
        proc = cli("keyserver", "add", sks.url)
        assert proc.returncode == 0, proc
        assert (cli.etc / "remote.yaml").stat().st_mode & 0o777 == 0o644
        assert cli("keyserver", "remove", "https://keys.openpgp.org").returncode == 0  # no test reaches the internet
        assert cli("keyserver", "add", "http://127.0.0.1:9", "--order", "1").returncode == 0
    else:
        one_error(cli("keyserver", "add", sks.url), "`DefaultRemote` is a system endpoint")
        assert cli("remote", "add", "--no-login", "site", "https://site.example.invalid").returncode == 0
        # an unreachable keyserver first: the next one answers
        assert cli("keyserver", "add", "http://127.0.0.1:9").returncode == 0
        proc = cli("keyserver", "add", sks.url)
        assert proc.returncode == 0, proc
        assert (cli.home / ".sifbox/remote.yaml").stat().st_mode & 0o777 == 0o600
    listing = cli("keyserver", "list")
    assert sks.url in listing.stdout, listing
    assert cli("key", "remove", key.fingerprint).returncode == 0
    proc = cli("key", "pull", key.fingerprint)
    assert proc.returncode == 0 and proc.stdout.startswith("1 key(s) added"), proc
    proc = cli("key", "search", key.fingerprint)
    assert proc.returncode == 0 and key.uid in proc.stdout, proc
    one_error(cli("keyserver", "add", sks.url), "already configured")
    assert cli("keyserver", "remove", sks.url).returncode == 0
    assert sks.url not in cli("keyserver", "list").stdout


def test_verify_fetches_signer_key(cli: Cli, sks: SksServer, shared_tmp: Path, sif_corpus: Path) -> None:
    """verify fetches a signer's key the keyrings lack from the keyserver (--url, or the
    default remote's), shows it [REMOTE] and keeps nothing; --local does not fetch."""
    key = make_key(shared_tmp, f"Signer {cli.who.name}", secret=True)
    (shared_tmp / "signer").mkdir(mode=0o777)
    (shared_tmp / "signer").chmod(0o777)
    signer = Cli(cli.run_as, cli.who, cli.cli, shared_tmp / "signer")
    assert signer("key", "import", str(shared_tmp / f"{key.fingerprint}.secret.asc")).returncode == 0
    img = shared_tmp / f"signed-{cli.who.name}.sif"
    cli.run_as(cli.who, ["install", "-m", "644", str(sif_corpus / "images" / "one-group.sif"), str(img)], check=True)
    proc = signer("sign", str(img), env={"SIFBOX_KEY_PASSPHRASE": ""})
    assert proc.returncode == 0, proc
    assert signer("key", "push", "-u", sks.url, key.fingerprint).returncode == 0

    proc = cli("verify", "--url", sks.url, str(img))
    assert proc.returncode == 0, proc
    assert f"[REMOTE]  Signing entity: {key.uid}" in proc.stdout, proc.stdout
    assert f"[REMOTE]  Fingerprint: {key.fingerprint}" in proc.stdout
    assert "WARNING" not in proc.stderr, proc.stderr
    assert key.fingerprint not in cli("key", "list").stdout
    proc = cli("verify", "--json", str(img), env={"SIFBOX_URL": sks.url})
    assert proc.returncode == 0 and '"KeyLocal": false' in proc.stdout, proc

    proc = cli("verify", "--local", "--url", sks.url, str(img))
    assert proc.returncode == 255 and "unknown entity" in proc.stderr, proc
    # a keyserver that can't be reached: a warning says so, and the signature is unknown
    from tests.integration.registry_server import free_port

    proc = cli("verify", "--url", f"http://127.0.0.1:{free_port()}", str(img))
    assert proc.returncode == 255 and "unknown entity" in proc.stderr and "can't reach keyserver" in proc.stderr, proc
    # a keyserver answering with another key: refused, nothing verified
    signer_other = make_key(shared_tmp, "Someone Else")
    server = HostileServer(lambda path: (200, signer_other.armored.read_bytes()))
    try:
        proc = cli("verify", "--url", server.url, str(img))
        assert proc.returncode == 255 and "not the one asked for" in proc.stderr, proc
    finally:
        server.close()


def test_keyserver_login(cli: Cli, shared_tmp: Path) -> None:
    """keyserver login checks the credentials (GET of the URI), keeps them in the user's
    remote.yaml (0600) and sends them to that keyserver only; logout forgets them."""
    key = make_key(shared_tmp, f"Login {cli.who.name}")
    cli.env.pop("SIFBOX_URL", None)
    ok = {"login": True}
    server = HostileServer(lambda path: (200, key.armored.read_bytes()) if path.startswith("/pks/")
                           else ((200, b"hello") if ok["login"] else (401, b"no")))  # fmt: skip
    try:
        url = server.url
        one_error(cli("keyserver", "login", "-u", "bob", "--password-stdin", url, input="pw\n"),
                  "no external keyserver configuration found")  # fmt: skip
        if not cli.who.is_root:
            assert cli("remote", "add", "--no-login", "site", "https://site.example.invalid").returncode == 0
        assert cli("keyserver", "add", url).returncode == 0
        if cli.who.is_root:  # no test reaches the internet
            assert cli("keyserver", "remove", "https://keys.openpgp.org").returncode == 0
        ok["login"] = False
        one_error(cli("keyserver", "login", "-u", "bob", "--password-stdin", url, input="pw\n"), "refused the request")
        ok["login"] = True
        proc = cli("keyserver", "login", "-u", "bob", "--password-stdin", url, input="s3cret\n")
        assert proc.returncode == 0, proc
        conf = cli.home / ".sifbox/remote.yaml"
        assert conf.stat().st_mode & 0o777 == 0o600
        assert "Authorization" not in proc.stderr and "s3cret" not in proc.stdout + proc.stderr
        assert server.authorization[-1] == "Basic Ym9iOnMzY3JldA=="
        assert cli("key", "pull", key.fingerprint).returncode == 0
        assert server.authorization[-1] == "Basic Ym9iOnMzY3JldA=="
        assert re.search(rf"(?m)^Authenticated Logins\n=+\n\nURI\s+INSECURE\n{re.escape(url)}\s+NO$",
                         cli("remote", "list").stdout)  # fmt: skip
        # another keyserver never sees them
        assert cli("key", "pull", "-u", f"http://localhost:{server.port}", key.fingerprint).returncode == 0
        assert server.authorization[-1] == ""
        assert cli("keyserver", "logout", url).returncode == 0
        assert "Authenticated Logins" not in cli("remote", "list").stdout
        one_error(cli("keyserver", "logout", url), "not logged in")
    finally:
        server.close()


def test_newpair_push(cli: Cli, sks: SksServer) -> None:
    """key newpair --push sends the new key to the default endpoint's keyserver (SIFBOX_URL
    here); a keyserver that can't be reached leaves the key made, and says so."""
    proc = cli("key", "newpair", "-N", f"New {cli.who.name}", "-E", "new@example.org", "-P", "", "-b", "1024",
               "--push", env={"SIFBOX_URL": sks.url})  # fmt: skip
    assert proc.returncode == 0, proc
    assert proc.stdout.endswith("Key successfully pushed to keystore\n"), proc.stdout
    fpr = proc.stdout.split("Key fingerprint: ")[1].split()[0]
    found = cli("key", "search", "-u", sks.url, fpr)
    assert found.returncode == 0 and "New " in found.stdout, found
    proc = cli("key", "newpair", "-N", "Other", "-E", "o@example.org", "-P", "", "-b", "1024", "-U",
               env={"SIFBOX_URL": "http://127.0.0.1:9"})  # fmt: skip
    assert proc.returncode == 0 and "Failed to push newly created key to keystore: can't push key" in proc.stdout, proc
