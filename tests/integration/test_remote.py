"""`sifbox remote`: endpoints in remote.yaml (the user's, and root's system one beside
sifbox.conf), Apptainer's `remote list`, and `remote login` to a registry (docker-registry
with htpasswd on 127.0.0.1), whose credentials land where `registry login` keeps them. As
root and as the test user, each with configuration directories of its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.keyserver_server import SksServer
from tests.integration.registry_server import RegistryServer
from tests.integration.test_keyserver import Cli, one_error

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(run_as, as_who, sifbox_cli, shared_tmp) -> Cli:  # type: ignore[no-untyped-def]
    c = Cli(run_as, as_who, sifbox_cli, shared_tmp)
    c.env.pop("SIFBOX_URL", None)
    return c


def table(out: str, header: str) -> list[list[str]]:
    lines = out.split(header + "\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [ln.split() for ln in lines]


def test_list_default(cli: Cli) -> None:
    proc = cli("remote", "list")
    assert proc.returncode == 0, proc
    conf = cli.home / ".sifbox/remote.yaml"
    assert conf.exists() and conf.stat().st_mode & 0o777 == 0o600
    assert proc.stdout.startswith("Cloud Services Endpoints\n========================\n\n")
    rows = table(proc.stdout, "========================\n")
    assert rows == [["NAME", "URI", "ACTIVE", "GLOBAL", "EXCLUSIVE"],
                    ["DefaultRemote", "cloud.apptainer.org", "YES", "YES", "NO"]], proc.stdout  # fmt: skip
    assert "\nKeyservers\n==========\n\nURI                       GLOBAL  INSECURE  ORDER\n" \
           "https://keys.openpgp.org  YES     NO        1*\n\n* Active cloud services keyserver\n" in proc.stdout


def test_add_use_remove(cli: Cli) -> None:
    assert cli("remote", "add", "--no-login", "mine", "https://mine.example.org").returncode == 0
    rows = table(cli("remote", "list").stdout, "========================\n")
    assert ["mine", "https://mine.example.org", "YES", "NO", "NO"] in rows
    assert ["DefaultRemote", "cloud.apptainer.org", "NO", "YES", "NO"] in rows
    one_error(cli("remote", "add", "--no-login", "mine", "https://x"), "mine is already a remote")
    one_error(cli("remote", "add", "--no-login", "plain", "http://x"), "http URI requires --insecure")
    assert cli("remote", "add", "--no-login", "-n", "-i", "plain", "http://x").returncode == 0
    assert ["plain", "http://x", "NO", "NO", "NO"] in table(cli("remote", "list").stdout, "========================\n")
    one_error(cli("remote", "add", "bad/name", "https://x"), "invalid remote name")
    proc = cli("remote", "use", "DefaultRemote")
    assert proc.returncode == 0 and 'Remote "DefaultRemote" now in use.' in proc.stderr, proc
    one_error(cli("remote", "use", "nowhere"), "nowhere is not a remote")
    one_error(cli("remote", "remove", "DefaultRemote"), "DefaultRemote is global and can't be removed")
    assert cli("remote", "remove", "mine").returncode == 0
    assert "mine" not in cli("remote", "list").stdout
    if not cli.who.is_root:
        one_error(cli("remote", "use", "--exclusive", "DefaultRemote"), "not root user")
        one_error(cli("remote", "add", "--global", "g", "https://g"), "not root user")


def test_global(cli: Cli) -> None:
    """Root's --global endpoints live in the system remote.yaml (0644); an exclusive one is
    everyone's default."""
    if not cli.who.is_root:
        pytest.skip("--global is root's")
    assert cli("remote", "add", "--global", "site", "https://site.example.org").returncode == 0
    system = cli.etc / "remote.yaml"
    assert system.stat().st_mode & 0o777 == 0o644
    assert "site" in system.read_text()
    assert cli("remote", "use", "--exclusive", "site").returncode == 0
    rows = table(cli("remote", "list").stdout, "========================\n")
    assert ["site", "https://site.example.org", "YES", "YES", "YES"] in rows
    assert cli("remote", "add", "--no-login", "mine", "https://mine").returncode == 0
    one_error(cli("remote", "use", "mine"), "remote site has been set exclusive by the system administrator")


def test_config_dir_and_hostile_file(cli: Cli) -> None:
    """APPTAINER_CONFIGDIR moves remote.yaml; a file sifbox can't read is one error line."""
    other = cli.home / "apptainer-config"
    cli.run_as(cli.who, ["mkdir", str(other)], check=True)
    env = {"SIFBOX_CONFIGDIR": "", "APPTAINER_CONFIGDIR": str(other)}
    assert cli("remote", "list", env=env).returncode == 0
    assert (other / "remote.yaml").exists()
    for bad in ("Active: [\n", "Remotes:\n  a:\n    Bogus: 1\n", "[" * 50000):
        cli.run_as(cli.who, ["sh", "-c", f"cat > {other}/remote.yaml"], input=bad, check=True)
        one_error(cli("remote", "list", env=env), r"can't read remote configuration `.*remote\.yaml`")
        one_error(cli("key", "pull", "0" * 40, env=env), r"can't read remote configuration")


def test_login_registry(cli: Cli, tmp_path: Path) -> None:
    """`remote login` to a registry checks the credentials, stores them where `registry login`
    does (docker-config.json, 0600) and lists the login; logout forgets both."""
    with RegistryServer(tmp_path / "reg", auth="htpasswd", users={"alice": "s3cret-Pw"}) as reg:
        uri = f"docker://{reg.host}"
        proc = cli("remote", "login", "-u", "alice", "--password-stdin", uri, input="wrong\n")
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc
        proc = cli("remote", "login", "-u", "alice", "--password-stdin", uri, input="s3cret-Pw\n")
        assert proc.returncode == 0, proc
        creds = cli.home / ".sifbox/docker-config.json"
        assert creds.stat().st_mode & 0o777 == 0o600
        assert reg.host in json.loads(creds.read_text())["auths"]
        listing = cli("remote", "list").stdout
        assert re.search(rf"(?m)^Authenticated Logins\n=+\n\nURI\s+INSECURE\n{re.escape(uri)}\s+NO$", listing), listing
        assert reg.host in cli("registry", "list").stdout
        # get-login-password: the stored password, for the registry named or the active endpoint's host
        proc = cli("remote", "get-login-password", uri)
        assert proc.returncode == 0 and proc.stdout == "s3cret-Pw\n", proc
        assert cli("remote", "add", "--insecure", "--no-login", "reg", f"http://{reg.host}").returncode == 0
        assert cli("remote", "use", "reg").returncode == 0
        proc = cli("remote", "get-login-password")
        assert proc.returncode == 0 and proc.stdout == "s3cret-Pw\n", proc
        one_error(cli("remote", "get-login-password", "hkp://keys.example"), "not a docker:// or oras:// URI")
        assert cli("remote", "logout", uri).returncode == 0
        one_error(cli("remote", "get-login-password"), f"not logged in to `{reg.host}`")
        assert reg.host not in json.loads(creds.read_text())["auths"]
        assert "Authenticated Logins" not in cli("remote", "list").stdout
        one_error(cli("remote", "logout", uri), "not logged in")
    one_error(cli("remote", "login", "DefaultRemote"), "no library service")


def test_status(cli: Cli) -> None:
    sks = SksServer()
    try:
        assert cli("remote", "add", "--no-login", "mine", "https://mine.example.org").returncode == 0
        if cli.who.is_root:
            assert cli("keyserver", "add", "--insecure", "DefaultRemote", sks.url).returncode == 0
            assert cli("keyserver", "remove", "https://keys.openpgp.org").returncode == 0  # no internet in tests
            cli("remote", "use", "DefaultRemote")
        else:
            assert cli("keyserver", "add", sks.url).returncode == 0
        proc = cli("remote", "status")
        assert proc.returncode == 0, proc
        assert re.search(rf"(?m)^Keyserver\s+OK\s+{re.escape(sks.url)}$", proc.stdout), proc
    finally:
        sks.close()
