"""Registry credentials: where they come from, and where `sifbox registry login` keeps them.

Precedence, first found wins (as Apptainer):

1. credentials given on the command line (`--docker-login` prompts for them);
2. `SIFBOX_DOCKER_USERNAME`/`SIFBOX_DOCKER_PASSWORD` (`APPTAINER_DOCKER_*`, then
   `SINGULARITY_DOCKER_*` when the SIFBOX form is unset);
3. auth files, in order: `--authfile`/`SIFBOX_AUTH_FILE`, sifbox's own login file
   `~/.sifbox/docker-config.json`, containers' `$XDG_RUNTIME_DIR/containers/auth.json` and
   `~/.config/containers/auth.json` (`REGISTRY_AUTH_FILE` first), Docker's
   `~/.docker/config.json` (`DOCKER_CONFIG`), including `credHelpers`/`credsStore` helpers.

`sifbox registry login` writes the Docker config format (`{"auths": {"host": {"auth":
base64(user:password)}}}`) with mode 0600: the format Docker, Podman, skopeo and Apptainer
(`~/.apptainer/docker-config.json`) all read, so the file can be handed to any of them
with `--authfile`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sifbox.util.errors import SifboxError, describe_os_error

_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
DOCKER_HUB_LEGACY_KEY = "https://index.docker.io/v1/"


class AuthError(SifboxError):
    reference = "registry-auth"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str = "command line"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:  # never print a password
        return f"Credentials({self.username!r}, source={self.source!r})"


def _env(name: str) -> str | None:
    for prefix in ("SIFBOX_", "APPTAINER_", "SINGULARITY_"):
        value = os.environ.get(prefix + name)
        if value is not None:
            return value
    return None


def env_credentials() -> Credentials | None:
    user, password = _env("DOCKER_USERNAME"), _env("DOCKER_PASSWORD")
    if user is None and password is None:
        return None
    return Credentials(user or "", password or "", source="environment")


def prompt_credentials() -> Credentials:
    """Ask for a username and password on the terminal (`--docker-login`)."""
    import getpass

    try:
        with open("/dev/tty", "r+", encoding="utf-8") as tty:
            tty.write("Enter Docker Username: ")
            tty.flush()
            user = tty.readline().strip()
        password = getpass.getpass("Enter Docker Password: ")
    except (OSError, EOFError) as err:
        raise AuthError(
            "can't ask for registry credentials: no terminal",
            hint="set SIFBOX_DOCKER_USERNAME and SIFBOX_DOCKER_PASSWORD, or `sifbox registry login`",
        ) from err
    return Credentials(user, password, source="--docker-login")


def _home() -> Path:
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


def sifbox_config_dir() -> Path:
    from sifbox.util.paths import config_dir

    return Path(config_dir())


def login_file() -> Path:
    """The file `sifbox registry login` writes (unless `--authfile`)."""
    return sifbox_config_dir() / "docker-config.json"


def auth_files(authfile: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every auth file consulted, in order."""
    files: list[Path] = []
    explicit = (
        authfile or os.environ.get("SIFBOX_AUTH_FILE") or os.environ.get("APPTAINER_AUTH_FILE")
    )
    if explicit:
        files.append(Path(explicit))
    files.append(login_file())
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")
    files.append(config_home / "containers" / "auth.json")
    docker_dir = Path(os.environ.get("DOCKER_CONFIG") or _home() / ".docker")
    files.append(docker_dir / "config.json")
    return files


def normalize_key(key: str) -> str:
    """An auths key as host[/path]: no scheme, no `/v1/`-style API suffix, Hub spelled docker.io."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            key = key.split("/", 1)[0]  # URL-style keys name a host only
    key = key.rstrip("/")
    host, sep, path = key.partition("/")
    if host in _HUB_KEYS:
        host = "docker.io"
    return host + sep + path


def _candidate_keys(registry: str, repository: str) -> list[str]:
    """Most specific first: host/ns/repo, host/ns, host."""
    parts = repository.split("/")
    keys = [f"{registry}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)]
    return [*keys, registry]


def read_auth_file(path: Path) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        reason = describe_os_error(err) if isinstance(err, OSError) else f"not valid JSON: {err}"
        raise AuthError(f"can't read credentials file `{path}`: {reason}") from err
    except RecursionError:
        raise AuthError(
            f"can't read credentials file `{path}`: not valid JSON: nested too deeply"
        ) from None
    if not isinstance(data, dict):
        raise AuthError(f"can't read credentials file `{path}`: not a JSON object")
    return data


def _decode_entry(entry: object, source: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, _, password = base64.b64decode(auth).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthError(
                f"can't read credentials file `{source}`: an `auth` entry is not base64"
            ) from None
        return Credentials(user, password, source=source)
    if isinstance(entry.get("username"), str):
        return Credentials(entry["username"], str(entry.get("password", "")), source=source)
    return None


def _helper(name: str, server: str, source: str) -> Credentials | None:
    """Ask a docker-credential-NAME helper (the protocol: `get`, server on stdin, JSON out)."""
    try:
        proc = subprocess.run(
            [f"docker-credential-{name}", "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    user, secret = data.get("Username"), data.get("Secret")
    if not isinstance(secret, str) or not secret:
        return None
    return Credentials(str(user or ""), secret, source=f"{source} (docker-credential-{name})")


def lookup_file(path: Path, registry: str, repository: str) -> Credentials | None:
    data = read_auth_file(path)
    auths = data.get("auths")
    wanted = _candidate_keys(registry, repository)
    if isinstance(auths, dict):
        normalized = {normalize_key(k): v for k, v in auths.items()}
        for key in wanted:
            found = _decode_entry(normalized.get(key), str(path))
            if found:
                return found
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if normalize_key(key) == registry and isinstance(helper, str):
                server = DOCKER_HUB_LEGACY_KEY if registry == "docker.io" else key
                return _helper(helper, server, str(path))
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        server = DOCKER_HUB_LEGACY_KEY if registry == "docker.io" else registry
        return _helper(store, server, str(path))
    return None


def resolve_credentials(
    registry: str,
    repository: str,
    *,
    explicit: Credentials | None = None,
    authfile: str | os.PathLike[str] | None = None,
) -> Credentials | None:
    """The credentials to use for `registry`/`repository`, or None (anonymous)."""
    if explicit is not None:
        return explicit
    from_env = env_credentials()
    if from_env is not None:
        return from_env
    for path in auth_files(authfile):
        found = lookup_file(path, registry, repository)
        if found:
            return found
    return None


# --- the login file -------------------------------------------------------------------------


def _write_private(path: Path, data: dict[str, object]) -> None:
    """Write JSON to `path` atomically, mode 0600 from the first byte."""
    from sifbox.util.atomic import write_file

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, (json.dumps(data, indent="\t") + "\n").encode(), 0o600)


def login_key(uri: str) -> str:
    """The auths key for a `registry login` URI: `docker://host[/path]` or `oras://...` -> host."""
    for scheme in ("docker://", "oras://", "https://", "http://"):
        if uri.startswith(scheme):
            uri = uri[len(scheme) :]
            break
    return normalize_key(uri.split("/", 1)[0])


def store_login(
    key: str, creds: Credentials, authfile: str | os.PathLike[str] | None = None
) -> Path:
    path = Path(authfile) if authfile else login_file()
    try:
        data = read_auth_file(path)
        auths = data.get("auths")
        if not isinstance(auths, dict):
            auths = {}
        auths = {k: v for k, v in auths.items() if normalize_key(k) != key}
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode("ascii")
        auths[key] = {"auth": token}
        data["auths"] = auths
        _write_private(path, data)
    except OSError as err:
        raise AuthError(f"can't store credentials in `{path}`: {describe_os_error(err)}") from err
    return path


def remove_login(key: str, authfile: str | os.PathLike[str] | None = None) -> bool:
    """Forget `key`; False when there was nothing to forget."""
    path = Path(authfile) if authfile else login_file()
    data = read_auth_file(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return False
    kept = {k: v for k, v in auths.items() if normalize_key(k) != key}
    if len(kept) == len(auths):
        return False
    data["auths"] = kept
    try:
        _write_private(path, data)
    except OSError as err:
        raise AuthError(f"can't update credentials in `{path}`: {describe_os_error(err)}") from err
    return True


def list_logins(authfile: str | os.PathLike[str] | None = None) -> Iterator[tuple[str, str]]:
    """(registry, username) for each stored login."""
    path = Path(authfile) if authfile else login_file()
    auths = read_auth_file(path).get("auths")
    if isinstance(auths, dict):
        for key, entry in sorted(auths.items()):
            creds = _decode_entry(entry, str(path))
            yield normalize_key(key), creds.username if creds else ""


# --- WWW-Authenticate -----------------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"` ->
    ("bearer", {"realm": ..., "service": ..., "scope": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1
            params[name] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[name] = rest[i:end].strip()
            i = end
    return scheme.lower(), params
