"""Apptainer's e2e/remote/remote.go: `remote add|remove|use|list|status|login|logout`,
`remote add-keyserver|remove-keyserver` and exclusive endpoints.

Each test has a configuration directory (SIFBOX_CONFIGDIR) and a system one (the sifbox.conf
directory, SIFBOX_CONFIG_FILE) of its own under @work@, so /etc/sifbox and the users' homes
are left alone; the Go tests' `--config FILE` is @work@/testConfig. The registry of the login
cases is a docker-registry with htpasswd on 127.0.0.1 that this module starts. The sequences
that switch between Apptainer's root and user profiles (keyserver, use exclusive) run as root
here, with the user-profile steps run as root on the same files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.e2e.apptainer.cases import (
    C,
    Case,
    contains,
    lacks,
    new_dir,
    params,
    regex,
    remove_dir,
    run_case,
)

pytestmark = pytest.mark.integration

ENV = {"SIFBOX_CONFIGDIR": "@work@/conf", "SIFBOX_CONFIG_FILE": "@work@/etc/sifbox.conf"}
CONFIG = ("--config", "@work@/testConfig")
USER, PASSWORD = "e2e", "e2e-Pw1"


def R(name: str, *argv: str, **kw: object) -> Case:
    """A `remote ...` case of remote.go, with this module's directories."""
    return C(f"remote.go:{name}", *argv, env={**ENV, **kw.pop("env", {})}, **kw)  # type: ignore[arg-type, dict-item]


def run_all(request, sb, cases: list[Case]) -> None:  # type: ignore[no-untyped-def]
    for case in cases:
        run_case(request, sb, case)


ADD = [
    R("remoteAdd[AddCloud]", "remote", *CONFIG, "add", "--no-login", "cloud", "cloud.sylabs.io"),
    R("remoteAdd[AddOtherCloud]", "remote", *CONFIG, "add", "--no-login", "other", "cloud.sylabs.io"),
    R("remoteAdd[AddExistingRemote]", "remote", *CONFIG, "add", "--no-login", "cloud", "cloud.sylabs.io", exit=255),
    R("remoteAdd[AddExistingRemoteInvalidURI]", "remote", *CONFIG, "add", "--no-login", "other", "anythingcangohere",
      exit=255),
]  # fmt: skip


def test_add(request, sb) -> None:  # type: ignore[no-untyped-def]
    run_all(request, sb, ADD)


def test_remove(request, sb) -> None:  # type: ignore[no-untyped-def]
    run_all(request, sb, ADD[:2] + [
        R("remoteRemove[RemoveCloud]", "remote", *CONFIG, "remove", "cloud"),
        R("remoteRemove[RemoveOther]", "remote", *CONFIG, "remove", "other"),
        R("remoteRemove[RemoveNonExistingRemote]", "remote", *CONFIG, "remove", "cloud", exit=255),
    ])  # fmt: skip


def test_use(request, sb) -> None:  # type: ignore[no-untyped-def]
    run_all(request, sb, [
        R("remoteUse[UseNonExistingRemote]", "remote", *CONFIG, "use", "cloud", exit=255),
        *ADD[:2],
        R("remoteUse[UseFromNothingToRemote]", "remote", *CONFIG, "use", "cloud"),
        R("remoteUse[UseFromRemoteToRemote]", "remote", *CONFIG, "use", "other"),
    ])  # fmt: skip


def test_status(request, sb) -> None:  # type: ignore[no-untyped-def]
    run_all(request, sb, [
        R("remoteStatus[addCloud]", "remote", *CONFIG, "add", "--no-login", "cloud", "cloud.sylabs.io"),
        R("remoteStatus[addInvalidRemote]", "remote", *CONFIG, "add", "--no-login", "invalid", "notarealendpoint"),
        R("remoteStatus[NonExistingRemote]", "remote", *CONFIG, "status", "notaremote", exit=255),
        R("remoteStatus[NonExistingEndpoint]", "remote", *CONFIG, "status", "invalid", exit=255),
        # ValidRemote (`status cloud`, exit 0) asks cloud.sylabs.io: no test reaches the internet,
        # and sifbox, without a library service, checks an endpoint's keyservers only
        R("remoteStatus[ValidRemote]", "remote", *CONFIG, "status", "cloud", exit=255,
          diverges="cloud.sylabs.io's services are not asked (no internet in tests, no library "
                   "service in sifbox): an endpoint without keyservers has nothing to check"),
    ])  # fmt: skip


def test_list(request, sb) -> None:  # type: ignore[no-untyped-def]
    run_all(request, sb, [
        R("remoteList[EmptyConfig]", "remote", *CONFIG, "list"),
        R("remoteList[addCloud]", "remote", *CONFIG, "add", "--no-login", "cloud", "cloud.sylabs.io"),
        R("remoteList[addRemote]", "remote", *CONFIG, "add", "--no-login", "remote", "cloud.sylabs.io"),
        R("remoteList[PopulatedConfig]", "remote", *CONFIG, "list"),
        R("remoteList[useCloud]", "remote", *CONFIG, "use", "cloud"),
        R("remoteList[PopulatedConfigWithDefault]", "remote", *CONFIG, "list",
          out=regex(r"(?m)^cloud\s+cloud\.sylabs\.io\s+YES\s+NO\s+NO$")),
    ])  # fmt: skip


def words(text: str) -> object:
    """The text at the start of a line, its words wrapped as argparse wraps them."""
    import re

    return regex(r"(?m)^" + r"\s+".join(re.escape(w) for w in text.split()))


FLAGS = [
    R("remoteTestFlag[add help]", "remote", "add", "--help", out=words("Add a new sifbox remote endpoint")),
    R("remoteTestFlag[list help]", "remote", "list", "--help",
      out=words("List all sifbox remote endpoints, keyservers, and OCI credentials that are configured")),
    R("remoteTestFlag[login help]", "remote", "login", "--help",
      out=words("Login to a sifbox remote endpoint, an OCI/Docker registry or a keyserver using credentials")),
    R("remoteTestFlag[remove help]", "remote", "remove", "--help", out=words("Remove an existing sifbox remote endpoint")),
    R("remoteTestFlag[status help]", "remote", "status", "--help",
      out=words("Check the status of the sifbox services at an endpoint")),
    R("remoteTestFlag[use help]", "remote", "use", "--help", out=words("Set a sifbox remote endpoint to be actively used")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(FLAGS))
def test_flags(request, sb, case: Case) -> None:  # type: ignore[no-untyped-def]
    """The help texts say what the command does (Apptainer's, with sifbox's name: the usage
    line comes first in argparse's help, so the match is per line)."""
    run_case(request, sb, case)


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    from tests.integration.registry_server import RegistryServer, need

    need("docker-registry", "htpasswd")
    work = new_dir("remote-registry")
    try:
        with RegistryServer(work / "registry", auth="htpasswd", users={USER: PASSWORD}) as reg:
            yield f"oras://{reg.host}"
    finally:
        remove_dir(work)


def test_basic_login(request, sb, registry: str) -> None:  # type: ignore[no-untyped-def]
    host = registry.removeprefix("oras://")
    run_all(request, sb, [
        R("remoteBasicLogin[login username and empty password]", "remote", "login", "-u", USER, "-p", "", registry,
          exit=255),
        R("remoteBasicLogin[login empty username and empty password]", "remote", "login", "-p", "", registry,
          exit=125, diverges="bad usage exits 125 (README: exit statuses)"),
        R("remoteBasicLogin[login empty username and bad password]", "remote", "login", "-p", "bad", registry,
          exit=125, diverges="bad usage exits 125 (README: exit statuses)"),
        R("remoteBasicLogin[login KO]", "remote", "login", "-u", USER, "-p", "bad", registry, exit=255),
        R("remoteBasicLogin[login without scheme KO]", "remote", "login", "-u", USER, "-p", PASSWORD, host,
          exit=125, diverges="sifbox has no library endpoint to log in to: usage, status 125"),
        R("remoteBasicLogin[login into non-existing keyserver]", "remote", "login", "http://localhost:11371",
          exit=255),
        R("remoteBasicLogin[login OK]", "remote", "login", "-u", USER, "-p", PASSWORD, registry),
        R("remoteBasicLogin[login password-stdin]", "remote", "login", "-u", USER, "--password-stdin", registry,
          stdin=PASSWORD),
        R("remoteBasicLogin[logout KO]", "remote", "logout", "oras://bad_registry:5000", exit=255),
        R("remoteBasicLogin[logout OK]", "remote", "logout", registry),
    ])  # fmt: skip


def test_login_repeated(request, sb, registry: str) -> None:  # type: ignore[no-untyped-def]
    run_all(request, sb, [
        R("remoteLoginRepeated[FirstLogin]", "remote", "login", "-u", USER, "-p", PASSWORD, registry),
        R("remoteLoginRepeated[SecondLogin]", "remote", "login", "-u", USER, "-p", PASSWORD, registry),
        R("remoteLoginRepeated[logout]", "remote", "logout", registry),
        R("remoteLoginRepeated[list]", "remote", "list", out=lacks(registry)),
    ])  # fmt: skip


DEFAULT_KS = "https://keys.openpgp.org"
TEST_KS = "http://localhost:11371"


def _listing(*lines: str) -> object:
    return contains("\n".join(lines))


def test_keyserver(request, sb) -> None:  # type: ignore[no-untyped-def]
    if not sb.who.is_root:
        run_case(request, sb, R("remoteKeyserver[add-keyserver non privileged]", "remote", "add-keyserver", TEST_KS,
                                exit=255))  # fmt: skip
        return
    head = "URI                       GLOBAL  INSECURE  ORDER"
    steps = [
        R("remoteKeyserver[add-keyserver without order]", "remote", "add-keyserver", "--insecure", TEST_KS),
        R("remoteKeyserver[list]", "remote", "list",
          out=_listing(head, DEFAULT_KS + "  YES     NO        1*", TEST_KS + "    YES     YES       2")),
        R("remoteKeyserver[remove-keyserver previous]", "remote", "remove-keyserver", TEST_KS),
        R("remoteKeyserver[remove-keyserver non-existent]", "remote", "remove-keyserver", TEST_KS, exit=255),
        R("remoteKeyserver[add-keyserver with order 0]", "remote", "add-keyserver", "--order", "0", TEST_KS,
          exit=125, diverges="bad usage exits 125 (README: exit statuses)"),
        R("remoteKeyserver[add-keyserver with order 1]", "remote", "add-keyserver", "--order", "1", TEST_KS),
        R("remoteKeyserver[list]", "remote", "list",
          out=_listing(head, TEST_KS + "    YES     NO        1", DEFAULT_KS + "  YES     NO        2*")),
        R("remoteKeyserver[add-keyserver duplicate]", "remote", "add-keyserver", TEST_KS, exit=255),
        R("remoteKeyserver[remove-keyserver default]", "remote", "remove-keyserver", DEFAULT_KS),
        R("remoteKeyserver[list]", "remote", "list",
          out=_listing("URI                     GLOBAL  INSECURE  ORDER", TEST_KS + "  YES     NO        1")),
        R("remoteKeyserver[remove-keyserver primary KO]", "remote", "remove-keyserver", TEST_KS, exit=255),
        R("remoteKeyserver[add-keyserver restore default]", "remote", "add-keyserver", DEFAULT_KS),
        R("remoteKeyserver[list]", "remote", "list",
          out=_listing(head, TEST_KS + "    YES     NO        1", DEFAULT_KS + "  YES     NO        2*")),
        R("remoteKeyserver[remove-keyserver primary OK]", "remote", "remove-keyserver", TEST_KS),
        R("remoteKeyserver[list]", "remote", "list", out=_listing(head, DEFAULT_KS + "  YES     NO        1*")),
        R("remoteKeyserver[add-keyserver out of order]", "remote", "add-keyserver", "--order", "100", TEST_KS,
          exit=255),
    ]  # fmt: skip
    run_all(request, sb, steps)


def test_use_exclusive(request, sb) -> None:  # type: ignore[no-untyped-def]
    if not sb.who.is_root:
        run_case(request, sb, R("remoteUseExclusive[use exclusive as user]", "remote", "use", "--exclusive",
                                "--global", "e2e", exit=255))  # fmt: skip
        return
    # the user-profile steps run as root on the user's side of the files (no --global)
    steps = [
        R("remoteUseExclusive[add remote]", "remote", "add", "--global", "e2e", "cloud.test.com"),
        R("remoteUseExclusive[use remote exclusive with global as root]", "remote", "use", "--exclusive", "--global",
          "e2e"),
        R("remoteUseExclusive[use remote DefaultCloud as user KO]", "remote", "use", "DefaultRemote", exit=255),
        R("remoteUseExclusive[remove e2e remote]", "remote", "remove", "--global", "e2e"),
        R("remoteUseExclusive[use remote DefaultCloud as user OK]", "remote", "use", "DefaultRemote"),
        R("remoteUseExclusive[add remote]", "remote", "add", "--global", "e2e", "cloud.test.com"),
        R("remoteUseExclusive[use remote exclusive without global as root]", "remote", "use", "--exclusive", "e2e"),
        R("remoteUseExclusive[use remote DefaultCloud as exclusive]", "remote", "use", "--exclusive",
          "DefaultRemote"),
        R("remoteUseExclusive[use remote e2e as exclusive]", "remote", "use", "--exclusive", "e2e"),
        R("remoteUseExclusive[use remote DefaultCloud as user KO]", "remote", "use", "DefaultRemote", exit=255),
        R("remoteUseExclusive[remove e2e remote]", "remote", "remove", "--global", "e2e"),
        R("remoteUseExclusive[use remote DefaultCloud global]", "remote", "use", "--global", "DefaultRemote"),
    ]  # fmt: skip
    run_all(request, sb, steps[:-1])
    # "no default remote set": the user's own file chose DefaultRemote above, so a fresh one
    run_case(request, sb, replace(R("remoteUseExclusive[no default remote set]", "key", "search", "@", exit=255),
                                  env={**ENV, "SIFBOX_CONFIGDIR": "@work@/fresh"}))  # fmt: skip
    run_case(request, sb, steps[-1])
