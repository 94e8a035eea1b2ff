"""How sifbox reaches a registry: proxies, TLS trust, insecure registries.

* `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (either case), never for the loopback;
* the system trust store (`SSL_CERT_FILE`, `SSL_CERT_DIR`) plus per-registry CAs and client
  certificates in `/etc/containers/certs.d/HOST[:PORT]/` and `/etc/docker/certs.d/`;
* registries marked insecure in containers-registries.conf(5), as Podman and skopeo read it.
"""

from __future__ import annotations

import http.client
import os
import ssl
import urllib.parse
import urllib.request
from pathlib import Path

from sifbox.util.errors import SifboxError

_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in _LOOPBACK or name.startswith("127.")


def proxy_for(scheme: str, netloc: str) -> str | None:
    """host:port of the proxy for `scheme://netloc` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)."""
    host = netloc.rsplit(":", 1)[0] if not netloc.startswith("[") else netloc
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxy or bypass(host, proxies) or is_loopback(netloc):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.netloc.rsplit("@", 1)[-1] or None


def tls_context(netloc: str, *, verify: bool = True) -> ssl.SSLContext:
    """The system's trust store (SSL_CERT_FILE/SSL_CERT_DIR honoured), plus the per-registry
    CAs of /etc/containers/certs.d/HOST[:PORT]/*.crt and /etc/docker/certs.d (as Podman and
    Docker read them), and a client certificate/key pair found there. Without `verify` (an
    insecure registry), any certificate is accepted."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for base in ("/etc/containers/certs.d", "/etc/docker/certs.d"):
        directory = Path(base) / netloc
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = directory / name
            try:
                if name.endswith(".crt"):
                    ctx.load_verify_locations(cafile=str(path))
                elif name.endswith(".cert") and f"{name[:-5]}.key" in names:
                    ctx.load_cert_chain(str(path), str(directory / f"{name[:-5]}.key"))
            except (OSError, ssl.SSLError) as err:
                raise SifboxError(f"can't load certificate `{path}`: {err}") from err
    return ctx


def connection(
    scheme: str, netloc: str, *, timeout: float, verify: bool = True
) -> tuple[http.client.HTTPConnection, bool]:
    """A connection for `scheme://netloc`, through HTTP(S)_PROXY unless NO_PROXY says
    otherwise; True when requests must name the absolute URL (plain HTTP via a proxy)."""
    proxy = proxy_for(scheme, netloc)
    if scheme == "https":
        ctx = tls_context(netloc, verify=verify)
        if proxy:
            conn = http.client.HTTPSConnection(proxy, timeout=timeout, context=ctx)
            host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
            conn.set_tunnel(host or netloc, int(port) if port else 443)
            return conn, False
        return http.client.HTTPSConnection(netloc, timeout=timeout, context=ctx), False
    if proxy:
        return http.client.HTTPConnection(proxy, timeout=timeout), True
    return http.client.HTTPConnection(netloc, timeout=timeout), False


def registries_conf_files() -> list[Path]:
    """containers-registries.conf(5): the user's file replaces the system one; drop-ins add."""
    config_home = Path(
        os.environ.get("XDG_CONFIG_HOME") or Path(os.environ.get("HOME", "/")) / ".config"
    )
    user = config_home / "containers" / "registries.conf"
    main = user if user.is_file() else Path("/etc/containers/registries.conf")
    files = [main]
    for d in (
        Path("/etc/containers/registries.conf.d"),
        config_home / "containers/registries.conf.d",
    ):
        try:
            files += sorted(d / n for n in os.listdir(d) if n.endswith(".conf"))
        except OSError:
            pass
    return files


def insecure_by_config(host: str) -> bool:
    """Is `host` marked `insecure = true` in registries.conf (v2 `[[registry]]` tables, or the
    v1 `[registries.insecure] registries = [...]` list)?"""
    import tomllib

    for path in registries_conf_files():
        try:
            with open(path, "rb") as f:
                conf = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            continue
        for entry in conf.get("registry") or []:
            if not isinstance(entry, dict) or not entry.get("insecure"):
                continue
            location = str(entry.get("location") or entry.get("prefix") or "")
            if location.split("/", 1)[0] == host:
                return True
        v1 = (conf.get("registries") or {}).get("insecure") or {}
        if isinstance(v1, dict) and host in (v1.get("registries") or []):
            return True
    return False


def env_flag(name: str) -> bool:
    for prefix in ("SIFBOX_", "APPTAINER_", "SINGULARITY_"):
        value = os.environ.get(prefix + name)
        if value is not None:
            return value.lower() in ("1", "yes", "true", "on")
    return False
