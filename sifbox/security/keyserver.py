"""An HKP(S) client: fetch, search and push OpenPGP public keys, as Apptainer's key commands.

Keyservers are tried in order (a server that can't be reached or answers other than 2xx
passes the request to the next one, as Apptainer's keyserver transport does); the last
failure is the error. Every answer is read within a bound, a key fetched must be the one
asked for (one key, of that fingerprint or key ID), and nothing is written here: callers
store what they got.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from sifbox.formats import hkp
from sifbox.util.errors import SifboxError, describe_os_error

#: A key block (armored) read at most; keys with thousands of signatures stay below.
MAX_KEY = 8 << 20
#: An index (search answer) read at most.
MAX_INDEX = 2 << 20
#: Any other answer (push, login check) read at most.
MAX_OTHER = 64 << 10
TIMEOUT = 30.0
#: One request (connection, answer) takes at most this long, however the server trickles.
DEADLINE = 120.0
USER_AGENT = "sifbox (keyserver client)"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.remoteconf import RemoteConfig


class KeyserverError(SifboxError):
    reference = "keyserver"


class NotFound(KeyserverError):
    pass


class Unauthorized(KeyserverError):
    pass


@dataclass(frozen=True)
class Keyserver:
    uri: str
    insecure: bool = False
    #: an Authorization header value (`Basic ...`, `Bearer ...`), or ""
    auth: str = ""

    def __repr__(self) -> str:  # never print a credential
        return f"Keyserver({self.uri!r}, insecure={self.insecure})"


def _read(resp: http.client.HTTPResponse, limit: int, what: str, deadline: float) -> bytes:
    """The body, at most `limit` bytes, by `deadline` (a server that trickles is cut off)."""
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        raise KeyserverError(f"can't {what}: the keyserver's answer is too large ({length} bytes, at most {limit})")
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise KeyserverError(f"can't {what}: the keyserver took more than {DEADLINE:.0f} s to answer")
        chunk = resp.read1(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise KeyserverError(f"can't {what}: the keyserver's answer is too large (more than {limit} bytes)")


def request(servers: list[Keyserver], method: str, path: str, query: dict[str, str] | None, *,
            body: bytes | None = None, limit: int, what: str) -> bytes:  # fmt: skip
    """The body of the first 2xx answer to `method path?query`, trying `servers` in order."""
    from sifbox.oci.netconf import connection

    if not servers:
        raise KeyserverError(f"can't {what}: no keyserver configured",
                             hint="give one with --url, or add one with `sifbox keyserver add`")  # fmt: skip
    error: KeyserverError | None = None
    for ks in servers:
        try:
            uri = hkp.normalize_uri(ks.uri)
        except hkp.HkpError as err:
            error = KeyserverError(f"can't {what}: {err}")
            continue
        target = uri.path + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if ks.auth:
            headers["Authorization"] = ks.auth
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        where = f"keyserver `{uri.base}`"
        deadline = time.monotonic() + DEADLINE
        try:
            conn, absolute = connection(uri.scheme, uri.host, timeout=TIMEOUT, verify=not ks.insecure)
            try:
                conn.request(method, f"{uri.scheme}://{uri.host}{target}" if absolute else target,
                             body=body, headers=headers)  # fmt: skip
                resp = conn.getresponse()
                status = resp.status
                data = _read(resp, limit, what, deadline) if 200 <= status < 300 else b""
            finally:
                conn.close()
        except KeyserverError as err:
            error = err
            continue
        except ssl.SSLError as err:
            reason = err.reason or str(err)
            error = KeyserverError(f"can't {what}: TLS with {where} failed: {reason}",
                                   hint="the server's certificate must be trusted (SSL_CERT_FILE), or the "
                                   "keyserver configured insecure")  # fmt: skip
            continue
        except (OSError, http.client.HTTPException, ValueError) as err:
            reason = describe_os_error(err) if isinstance(err, OSError) else (str(err) or type(err).__name__)
            if isinstance(err, socket.timeout):
                reason = "timed out"
            error = KeyserverError(f"can't {what}: can't reach {where}: {reason}")
            continue
        if 200 <= status < 300:
            return data
        if status == 404:
            error = NotFound(f"can't {what}: no matching key on {where}")
        elif status in (401, 403):
            error = Unauthorized(f"can't {what}: {where} refused the request ({status} {resp.reason})",
                                 hint="log in with `sifbox keyserver login URI`")  # fmt: skip
        else:
            error = KeyserverError(f"can't {what}: {where} answered {status} {_reason(resp.reason)}")
    assert error is not None
    raise error


def _reason(text: str) -> str:
    return "".join(c for c in text[:80] if c.isprintable())


def fetch_key(servers: list[Keyserver], selector: str, verb: str = "pull") -> bytes:
    """The binary public key of `selector` (a fingerprint or key ID, as hkp.key_selector
    checks it): exactly one key, whose fingerprint is or ends with `selector`."""
    from sifbox.security import keys, pgp

    what = f"{verb} key `{selector}`"
    data = request(servers, "GET", "/pks/lookup", {"op": "get", "options": "mr", "search": "0x" + selector},
                   limit=MAX_KEY, what=what)  # fmt: skip
    if b"-----BEGIN PGP PUBLIC KEY BLOCK-----" not in data[:4096]:
        raise KeyserverError(f"can't {what}: the keyserver's answer is not an OpenPGP public key block")
    try:
        binary = pgp.dearmor(data[data.index(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):])
        found = keys.describe(binary) if binary else []
    except pgp.PgpError as err:
        raise KeyserverError(f"can't {what}: the keyserver's answer is not a valid key: {err}") from None
    if not found:
        raise KeyserverError(f"can't {what}: the keyserver's answer holds no key")
    if len(found) > 1:
        raise KeyserverError(f"can't {what}: the keyserver returned {len(found)} keys for one fingerprint")
    if any(k.secret for k in found):
        raise KeyserverError(f"can't {what}: the keyserver returned a secret key")
    fpr = found[0].fingerprint
    if not fpr.endswith(selector) or len(fpr) != 40:
        raise KeyserverError(f"can't {what}: the keyserver returned key {fpr or 'without fingerprint'}, "
                             "not the one asked for")  # fmt: skip
    return binary


def search(servers: list[Keyserver], term: str) -> hkp.Index:
    what = f"search for `{term}`"
    data = request(servers, "GET", "/pks/lookup",
                   {"op": "index", "options": "mr", "search": hkp.search_term(term), "fingerprint": "on",
                    "exact": "off"}, limit=MAX_INDEX, what=what)  # fmt: skip
    try:
        return hkp.parse_index(data.decode("utf-8", "replace"))
    except hkp.HkpError as err:
        raise KeyserverError(f"can't {what}: {err}") from None


def push_key(servers: list[Keyserver], armored: bytes, fingerprint: str) -> None:
    body = urllib.parse.urlencode({"keytext": armored.decode("ascii")}).encode()
    request(servers, "POST", "/pks/add", None, body=body, limit=MAX_OTHER, what=f"push key `{fingerprint}`")


def check_login(server: Keyserver) -> None:
    """As Apptainer's keyserver login: GET the URI with the credentials; 200 is a yes."""
    request([server], "GET", "/", None, limit=MAX_OTHER, what=f"log in to `{server.uri}`")


def configured(conf: RemoteConfig, url: str | None = None, insecure: bool = False) -> list[Keyserver]:
    """The keyservers to ask, in order: `url` alone if given, else the default endpoint's
    (remote.yaml); each with the login remote.yaml holds for it."""
    from sifbox.formats import remoteconf as rc

    if url:
        services = [rc.ServiceConfig(url, insecure=insecure)]
    else:
        ep = conf.remotes.get(conf.active)
        services = ep.active_keyservers() if ep is not None else []
    out = []
    for s in services:
        cred = next((c for c in conf.credentials if hkp.same_keyserver(c.uri, s.uri)), None)
        out.append(Keyserver(s.uri, s.insecure or bool(cred and cred.insecure), cred.auth if cred else ""))
    return out
