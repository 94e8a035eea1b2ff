"""A Docker Registry HTTP API v2 client, and `fetch_image`: a registry image into an OCI layout.

    layout = fetch_image("alpine:3.20", platform=None, cache_dir=cache, disable_cache=False)

Everything is verified while it streams: every blob's size and digest, every manifest's
digest (also when fetched by tag, against `Docker-Content-Digest`). Nothing unverified reaches
the cache (see `sifbox.oci.cache`). Authentication: anonymous, Basic, or Bearer tokens from
the realm a `WWW-Authenticate` challenge names (Docker's token protocol), with credentials
from `sifbox.oci.auth`. HTTPS always, except for insecure registries (`--nohttps`/
`SIFBOX_NOHTTPS`, `insecure = true` in registries.conf, the loopback): TLS without
verification, else plain HTTP, as containers/image does. Transient failures (refused or
dropped connections, 408/429/5xx) are retried, after the pause a `Retry-After` asks for (at
most MAX_RETRY_AFTER seconds) when longer than the back-off; a dropped blob download resumes
with a Range request. Proxies and certificates: `sifbox.oci.netconf`; the downloads:
`sifbox.oci.download`.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sifbox.oci.auth import Credentials, parse_challenge, resolve_credentials
from sifbox.oci.cache import BlobWriter, Cache, CacheError, split_digest
from sifbox.oci.download import download_all
from sifbox.oci.netconf import connection, env_flag, insecure_by_config, is_loopback
from sifbox.oci.reference import (
    ImageRef,
    Platform,
    ReferenceError,
    host_platform,
    parse_platform,
    parse_reference,
    platforms_of,
    select_manifest,
)
from sifbox.util.errors import SifboxError, UsageError, describe_os_error

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
USER_AGENT = "sifbox"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: The config media type of a SIF pushed as an ORAS artifact (sifbox.oci.oras).
SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"
_CORRUPT_HINT = "the registry's copy is corrupt or was altered on the way; nothing of it was stored"


#: What a request sends: nothing, bytes, or a file read from its start.
Body = bytes | BinaryIO | None


class RegistryError(SifboxError):
    reference = "registry"


class DigestMismatch(RegistryError):
    reference = "digest-mismatch"


#: The longest pause a registry's `Retry-After` gets before the next try, in seconds.
MAX_RETRY_AFTER = 30.0


class _Transient(Exception):
    """A failure worth another try (connection reset, timeout, 5xx, 429); `retry_after`: the
    pause the registry asked for, in seconds, or None."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """The seconds a `Retry-After` value asks to wait (delta-seconds or an HTTP date), between 0
    and MAX_RETRY_AFTER; None for a missing or malformed one."""
    value = (value or "").strip()
    if not value or len(value) > 64:
        return None
    if value.isascii() and value.isdigit():
        seconds = float(int(value[:9]))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def transient_status(what: str, status: int, headers: http.client.HTTPMessage) -> _Transient:
    """The _Transient of a 408/429/5xx answer, with the pause its `Retry-After` asks for."""
    return _Transient(f"{what} answered HTTP {status}", retry_after(headers.get("Retry-After")))


def backoff(delay: float, err: BaseException) -> float:
    """The pause before the next try: `delay`, or the registry's Retry-After when longer."""
    asked = err.retry_after if isinstance(err, _Transient) else None
    return max(delay, asked or 0.0)


@dataclass
class _Response:
    status: int
    headers: http.client.HTTPMessage
    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse

    def read(self, n: int = -1) -> bytes:
        return self.resp.read(n)

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


@dataclass
class RegistryClient:
    """Talks to one repository of one registry."""

    ref: ImageRef
    credentials: Credentials | None = None
    insecure: bool = False
    timeout: float = 60.0
    retries: int = 3
    _scheme: str | None = None
    _verify: bool = True
    _authorization: str | None = None
    requests: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.ref.api_host

    def _what(self) -> str:
        return f"registry `{self.ref.registry}`"

    # --- transport --------------------------------------------------------------------------

    def _connect(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for `scheme://netloc` (netconf.connection: proxies, TLS trust)."""
        return connection(scheme, netloc, timeout=self.timeout, verify=self._verify)

    def _once(self, method: str, url: str, headers: dict[str, str], body: Body = None) -> _Response:
        try:
            parts = urllib.parse.urlsplit(url)
            conn, absolute = self._connect(parts.scheme, parts.netloc)
        except (ValueError, http.client.InvalidURL) as err:
            raise RegistryError(
                f"can't talk to {self._what()}: invalid URL `{url}` ({err})"
            ) from None
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if body is not None and not isinstance(body, bytes):
            body.seek(0)  # an upload sent again (retry, redirect, authentication) starts over
            conn.blocksize = CHUNK
        try:
            conn.request(
                method, url if absolute else target, body=body,
                headers={"User-Agent": USER_AGENT, **headers},
            )  # fmt: skip
            resp = conn.getresponse()
        except ssl.SSLError:
            conn.close()
            raise
        except (ConnectionRefusedError, socket.gaierror) as err:
            conn.close()
            raise _Transient(f"can't reach {self._what()}: {describe_os_error(err)}") from err
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            reason = describe_os_error(err) if isinstance(err, OSError) else type(err).__name__
            raise _Transient(
                f"can't talk to {self._what()}: {reason or 'connection lost'}"
            ) from err
        return _Response(resp.status, resp.headers, conn, resp)

    def base_url(self) -> str:
        """https://HOST, or http://HOST for an insecure registry (`--nohttps`, registries.conf
        `insecure = true`, or on the loopback) that does not answer over TLS."""
        if self._scheme is None:
            self._scheme = "https"
            if self.insecure or is_loopback(self.host) or insecure_by_config(self.host):
                self._verify = False
                try:
                    self._once("GET", f"https://{self.host}/v2/", {}).close()
                except (ssl.SSLError, _Transient):
                    try:
                        self._once("GET", f"http://{self.host}/v2/", {}).close()
                        self._scheme = "http"
                    except (ssl.SSLError, _Transient):
                        pass  # the real request reports the error
        return f"{self._scheme}://{self.host}"

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        ok: tuple[int, ...] = (200,),
        body: Body = None,
    ) -> _Response:
        """`method` on the registry `path` (or an absolute URL), with authentication, redirects
        and retries; returns a response with a status in `ok` or raises RegistryError. `body`:
        bytes, or a file sent from its start (uploads)."""
        headers = dict(headers or {})
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                resp = self._request_once(method, path, headers, ok, body)
                if resp.status in _TRANSIENT_STATUS:
                    resp.close()
                    raise transient_status(self._what(), resp.status, resp.headers)
                return resp
            except _Transient as err:
                if attempt == self.retries:
                    message = str(err)
                    if not message.startswith("can't"):
                        message = f"can't talk to {self._what()}: {message}"
                    raise RegistryError(message) from err
                time.sleep(backoff(delay, err))
                delay *= 2
            except ssl.SSLError as err:
                raise RegistryError(
                    f"can't talk to {self._what()}: TLS error: {err.reason or err}",
                    hint="for a registry without TLS, use --nohttps (SIFBOX_NOHTTPS=1); for a "
                    f"private CA, put its certificate in /etc/containers/certs.d/{self.host}/",
                ) from err
        raise AssertionError("unreachable")

    def _request_once(
        self, method: str, path: str, headers: dict[str, str], ok: tuple[int, ...], body: Body = None
    ) -> _Response:
        url = path if "://" in path else self.base_url() + path
        authenticated = False  # one (re)authentication per request: tokens expire
        for _ in range(8):
            send = dict(headers)
            same_host = urllib.parse.urlsplit(url).netloc == self.host
            if self._authorization and same_host:
                send["Authorization"] = self._authorization
            self.requests.append(f"{method} {url}")
            resp = self._once(method, url, send, body)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                resp.close()
                if not location:
                    raise RegistryError(f"can't follow a redirect of {self._what()}: no Location")
                try:
                    url = urllib.parse.urljoin(url, location)
                    urllib.parse.urlsplit(url)
                except ValueError:
                    raise RegistryError(
                        f"can't follow a redirect of {self._what()}: invalid Location `{location}`"
                    ) from None
                continue
            if resp.status == 401 and same_host and not authenticated:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                self._authenticate(challenge)
                authenticated = True
                continue
            if resp.status == 401:
                resp.close()
                raise self._auth_failure()
            if resp.status not in ok and resp.status not in _TRANSIENT_STATUS:
                body = _read_limited(resp, 65536)
                resp.close()
                raise _HTTPError(resp.status, body)
            return resp
        raise RegistryError(f"can't talk to {self._what()}: too many redirects")

    # --- authentication ---------------------------------------------------------------------

    def _auth_failure(self) -> RegistryError:
        if self.credentials is None:
            return RegistryError(
                f"can't access `{self.ref}`: {self._what()} requires authentication",
                hint="log in with `sifbox registry login`, or set SIFBOX_DOCKER_USERNAME and "
                "SIFBOX_DOCKER_PASSWORD, or use --docker-login",
            )
        return RegistryError(
            f"can't authenticate to {self._what()} as `{self.credentials.username}`: "
            f"wrong username or password, or no access to `{self.ref.repository}` "
            f"(credentials from {self.credentials.source})",
        )

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if not scheme:  # a 401 without a challenge: nothing to answer it with
            raise self._auth_failure()
        if scheme == "basic":
            if self.credentials is None:
                raise self._auth_failure()
            self._authorization = self.credentials.basic()
        elif scheme == "bearer":
            self._authorization = "Bearer " + self._token(params)
        else:
            raise RegistryError(
                f"can't authenticate to {self._what()}: unsupported scheme `{scheme or challenge}`"
            )

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryError(
                f"can't authenticate to {self._what()}: the challenge names no realm"
            )
        query = {}
        if params.get("scope") or self.ref.repository:
            query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
        if params.get("service"):
            query["service"] = params["service"]
        if self.credentials is not None:
            query["account"] = self.credentials.username
        sep = "&" if "?" in realm else "?"
        url = realm + sep + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic()
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                resp = self._once("GET", url, headers)
                break
            except _Transient as err:
                if attempt == self.retries:
                    raise RegistryError(f"can't get a token from `{realm}`: {err}") from err
                time.sleep(delay)
                delay *= 2
        try:
            body = _read_limited(resp, 1 << 20)
        finally:
            resp.close()
        if resp.status in (401, 403):
            raise self._auth_failure()
        if resp.status != 200:
            raise RegistryError(f"can't get a token from `{realm}`: HTTP {resp.status}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"can't get a token from `{realm}`: the answer holds no token")
        return token

    # --- manifests and blobs ----------------------------------------------------------------

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of the manifest `reference` (tag or digest), verified."""
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        try:
            resp = self.request("GET", path, {"Accept": ACCEPT})
        except _HTTPError as err:
            raise self._not_found(err, "manifest", reference) from None
        try:
            body = _read_limited(resp, MAX_MANIFEST + 1)
        except (OSError, http.client.HTTPException) as err:
            raise RegistryError(f"can't read the manifest of `{self.ref}`: {err}") from err
        finally:
            resp.close()
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"can't read the manifest of `{self.ref}`: larger than 4 MiB")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = (
            reference if reference.startswith("sha") else resp.headers.get("Docker-Content-Digest")
        )
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatch(
                f"can't verify manifest `{expected}` of `{self.ref}`: digest mismatch (got {digest})",
                hint=_CORRUPT_HINT,
            )
        media_type = _media_type(body, resp.headers.get("Content-Type", ""))
        return body, media_type, digest

    def head_manifest(self, reference: str) -> str | None:
        """The digest the registry gives for manifest `reference` (HEAD), or None if it gives
        none or answers with an error (the GET that follows reports it, with its body)."""
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        try:
            resp = self.request("HEAD", path, {"Accept": ACCEPT})
        except _HTTPError:
            return None
        resp.close()
        digest = resp.headers.get("Docker-Content-Digest")
        try:
            split_digest(digest or "")
        except CacheError:
            return None
        return digest

    def _not_found(self, err: _HTTPError, what: str, reference: str) -> RegistryError:
        code, message = err.registry_error()
        if err.status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            if code == "NAME_UNKNOWN":
                reason = f"repository `{self.ref.repository}` not found"
            elif what == "manifest":
                reason = f"tag or digest `{reference}` not found"
            else:
                reason = f"blob `{reference}` not found"
            return RegistryError(f"can't find image `{self.ref}`: {reason}", exit_status=None)
        if err.status == 403:
            return RegistryError(
                f"can't access `{self.ref}`: {self._what()} denied access (HTTP 403)"
            )
        detail = f": {message}" if message else ""
        return RegistryError(
            f"can't get {what} `{reference}` of `{self.ref}`: HTTP {err.status}{detail}"
        )

    def download_blob(self, digest: str, size: int, writer: BlobWriter) -> None:
        """Stream blob `digest` into `writer` (a cache BlobWriter), checking size and digest;
        a dropped connection resumes with a Range request where the registry allows it."""
        algo = digest.split(":", 1)[0]
        hasher = hashlib.new(algo)
        path = f"/v2/{self.ref.repository}/blobs/{digest}"
        delay = 0.25
        attempt = 0
        while True:
            headers = {}
            if writer.size:
                headers["Range"] = f"bytes={writer.size}-"
            try:
                resp = self.request("GET", path, headers, ok=(200, 206))
            except _HTTPError as err:
                raise self._not_found(err, "blob", digest) from None
            try:
                resumed = resp.headers.get("Content-Range", "").startswith(f"bytes {writer.size}-")
                if writer.size and (resp.status == 200 or not resumed):
                    writer.truncate()  # the whole blob again (or a range we did not ask for)
                    hasher = hashlib.new(algo)
                    if resp.status != 200:
                        continue
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    if writer.size + len(chunk) > size:
                        raise DigestMismatch(
                            f"can't verify blob `{digest}` of `{self.ref}`: larger than the "
                            f"{size} bytes its manifest declares",
                            hint=_CORRUPT_HINT,
                        )
                    hasher.update(chunk)
                    writer.write(chunk)
            except (OSError, http.client.HTTPException) as err:
                if isinstance(err, OSError) and err.errno in (28, 122):  # ENOSPC, EDQUOT
                    raise CacheError(
                        f"can't store blob `{digest}`: {describe_os_error(err)}"
                    ) from err
                attempt += 1
                if attempt > self.retries:
                    reason = (
                        describe_os_error(err) if isinstance(err, OSError) else "connection lost"
                    )
                    raise RegistryError(
                        f"can't download blob `{digest}` of `{self.ref}`: {reason}"
                    ) from err
                time.sleep(delay)
                delay *= 2
                continue
            finally:
                resp.close()
            if writer.size < size:
                attempt += 1
                if attempt > self.retries:
                    raise RegistryError(
                        f"can't download blob `{digest}` of `{self.ref}`: the registry sent "
                        f"{writer.size} of {size} bytes"
                    )
                continue
            break
        got = f"{algo}:{hasher.hexdigest()}"
        if got != digest:
            raise DigestMismatch(
                f"can't verify blob `{digest}` of `{self.ref}`: digest mismatch (got {got})",
                hint=_CORRUPT_HINT,
            )


class _HTTPError(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body

    def registry_error(self) -> tuple[str, str]:
        try:
            errors = json.loads(self.body).get("errors") or []
            first = errors[0]
            return str(first.get("code", "")), str(first.get("message", ""))
        except (ValueError, AttributeError, IndexError, TypeError, KeyError, RecursionError):
            return "", ""


def _read_limited(resp: _Response, limit: int) -> bytes:
    return resp.read(limit)


def _media_type(body: bytes, content_type: str) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = {}
    media = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(media, str) and media:
        return media
    content_type = content_type.split(";")[0].strip()
    if content_type in INDEX_TYPES + MANIFEST_TYPES + DOCKER_SCHEMA1:
        return content_type
    if isinstance(doc, dict) and "manifests" in doc:
        return OCI_INDEX
    if isinstance(doc, dict) and "layers" in doc:
        return OCI_MANIFEST
    if isinstance(doc, dict) and doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    return content_type


# --- fetch_image ----------------------------------------------------------------------------


def _log(msg: str) -> None:
    from sifbox.util.log import log

    log.info(msg)


def _get_manifest(
    client: RegistryClient, cache: Cache, digest: str, pending: dict[str, bytes]
) -> bytes:
    """The manifest `digest`, from the cache or else the registry; what came from the registry
    is added to `pending`, stored once the whole image is in."""
    cached = cache.has_blob(digest)
    if cached:
        data = cached.read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() == digest:
            return data
    body, _, got = client.get_manifest(digest)
    pending[got] = body
    return body


def _store_bytes(cache: Cache, digest: str, body: bytes) -> None:
    if cache.has_blob(digest, len(body)):
        return
    with cache.blob_writer(digest) as writer:
        writer.write(body)
        writer.commit()


def _load_json(body: bytes, what: str) -> dict[str, object]:
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise RegistryError(f"can't read {what}: not valid JSON ({err})") from err
    except RecursionError:
        raise RegistryError(f"can't read {what}: not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"can't read {what}: not a JSON object")
    return doc


def _descriptor(obj: object, what: str) -> tuple[str, int, str]:
    if not isinstance(obj, dict):
        raise RegistryError(f"can't read {what}: malformed descriptor")
    digest, size, media = obj.get("digest"), obj.get("size"), obj.get("mediaType", "")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise RegistryError(f"can't read {what}: descriptor without digest or size")
    try:
        split_digest(digest)
    except CacheError:
        raise RegistryError(f"can't read {what}: unsupported digest `{digest}`") from None
    return digest, size, str(media)


def fetch_image(
    ref: str,
    *,
    platform: str | None,
    cache_dir: Path,
    disable_cache: bool,
    credentials: Credentials | None = None,
    authfile: str | None = None,
    insecure: bool | None = None,
) -> Path:
    """Fetch `ref` (`[registry/]repo[:tag][@digest]`, with or without `docker://`) for
    `platform` (`os/arch[/variant]`; default: this machine) and return an OCI image layout
    directory holding exactly that image.

    With the cache, the layout lives in `cache_dir` (hard links into its blob store) and belongs
    to the cache: don't modify it. With `disable_cache`, it is a new directory under
    SIFBOX_TMPDIR/TMPDIR that the caller removes (shutil.rmtree) when done.
    """
    try:
        image = parse_reference(ref)
        wanted = parse_platform(platform) if platform else host_platform(os.uname().machine)
    except ReferenceError as err:
        uri = ref if ref.startswith("docker:") else f"docker://{ref}"
        raise UsageError(f"can't pull `{uri}`: {err}") from None
    if insecure is None:
        insecure = env_flag("NOHTTPS") or env_flag("NO_HTTPS")
    creds = resolve_credentials(
        image.registry, image.repository, explicit=credentials, authfile=authfile
    )
    client = RegistryClient(image, credentials=creds, insecure=insecure)

    tmp_root = None
    if disable_cache:
        base = os.environ.get("SIFBOX_TMPDIR") or os.environ.get("APPTAINER_TMPDIR") or None
        tmp_root = Path(tempfile.mkdtemp(prefix="sifbox-oci-", dir=base))
        cache = Cache(tmp_root, flat=True)
    else:
        cache = Cache(cache_dir)
    try:
        return _fetch(client, cache, image, wanted)
    except BaseException:
        if tmp_root is not None:
            import shutil

            shutil.rmtree(tmp_root, ignore_errors=True)
        raise


def _fetch(client: RegistryClient, cache: Cache, image: ImageRef, wanted: Platform) -> Path:
    # Manifests are stored last, once every blob is in: a failed pull leaves no image behind
    # (only complete, verified blobs, which the next pull reuses).
    pending: dict[str, bytes] = {}
    if image.digest:
        body = _get_manifest(client, cache, image.digest, pending)
        digest = image.digest
        media = _media_type(body, "")
    else:
        _log(f"Fetching manifest of {image}")
        # HEAD first: a tag whose manifest is cached costs no GET (Docker Hub counts GETs
        # against its pull limit, HEADs not)
        known = client.head_manifest(image.reference)
        cached = cache.has_blob(known) if known else None
        body = cached.read_bytes() if cached else b""
        if cached and "sha256:" + hashlib.sha256(body).hexdigest() == known:
            digest, media = str(known), _media_type(body, "")
        else:
            body, media, digest = client.get_manifest(image.reference)
            pending[digest] = body
    if media in DOCKER_SCHEMA1:
        raise RegistryError(
            f"can't pull `{image}`: it has an old Docker schema 1 manifest, which sifbox doesn't read",
            hint="push the image again with a current Docker, skopeo or buildah",
        )
    platform_info: dict[str, object] | None = None
    if media in INDEX_TYPES:
        index = _load_json(body, f"the image index of `{image}`")
        chosen = select_manifest(index, wanted)
        if chosen is None:
            offered = ", ".join(platforms_of(index)) or "none"
            raise RegistryError(
                f"can't pull `{image}`: no image for platform `{wanted}` (the image offers: {offered})",
                hint="choose one with --platform OS/ARCH[/VARIANT] or --arch ARCH",
            )
        digest, _, _ = _descriptor(chosen, f"the image index of `{image}`")
        platform_info = chosen.get("platform")  # type: ignore[assignment]
        body = _get_manifest(client, cache, digest, pending)
        media = _media_type(body, "")
    if media not in MANIFEST_TYPES:
        raise RegistryError(f"can't pull `{image}`: unsupported manifest type `{media}`")
    manifest = _load_json(body, f"the manifest of `{image}`")
    what = f"the manifest of `{image}`"
    config_digest, config_size, _ = _descriptor(manifest.get("config"), what)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"can't read {what}: no layer list")
    _check_types(manifest, layers, image)
    wanted_blobs = [(config_digest, config_size, "config")]
    for layer in layers:
        layer_digest, layer_size, _ = _descriptor(layer, what)
        urls = layer.get("urls") if isinstance(layer, dict) else None
        if urls:
            raise RegistryError(
                f"can't pull `{image}`: layer `{layer_digest}` is a foreign layer (it lives at "
                f"{urls[0] if isinstance(urls, list) else urls}), which sifbox doesn't download"
            )
        wanted_blobs.append((layer_digest, layer_size, "blob"))
    download_all(client, cache, wanted_blobs)
    blobs = [digest, *(b[0] for b in wanted_blobs)]
    descriptor: dict[str, object] = {"mediaType": media, "digest": digest, "size": len(body)}
    if platform_info:
        descriptor["platform"] = platform_info
    annotations = {"org.opencontainers.image.ref.name": image.tag} if image.tag else {}
    if annotations:
        descriptor["annotations"] = annotations
    try:
        for pending_digest, pending_body in pending.items():
            with cache.blob_lock(pending_digest):
                _store_bytes(cache, pending_digest, pending_body)
        return cache.make_layout(descriptor, blobs)
    except OSError as err:
        raise CacheError(
            f"can't assemble the image layout of `{image}`: {describe_os_error(err)}"
        ) from err


def _check_types(manifest: dict[str, object], layers: list[object], image: ImageRef) -> None:
    """Before any blob is fetched: the manifest is a container image's (not a SIF pushed with
    oras://, not a layer sifbox can't read), so a refused image leaves nothing in the cache."""
    from sifbox.oci.layout import check_layer_types

    config = manifest.get("config")
    if isinstance(config, dict) and config.get("mediaType") == SIF_CONFIG:
        raise RegistryError(
            f"can't pull `docker://{image}`: it is a SIF image (an ORAS artifact), not a container image",
            hint=f"pull it with `oras://{image}`",
        )
    types = [
        (str(layer.get("digest", "?")).split(":")[-1][:12], str(layer.get("mediaType") or ""))
        for layer in layers
        if isinstance(layer, dict)
    ]
    check_layer_types(types, f"docker://{image}")


def check_login(uri_host: str, creds: Credentials, *, insecure: bool = False) -> None:
    """Try `creds` against a registry's `/v2/` endpoint; raises RegistryError if refused."""
    image = ImageRef(uri_host, "", "latest", None)
    client = RegistryClient(image, credentials=creds, insecure=insecure)
    try:
        client.request("GET", "/v2/").close()
    except _HTTPError as err:
        raise RegistryError(f"can't log in to registry `{uri_host}`: HTTP {err.status}") from None
    except RegistryError as err:
        if "requires authentication" in err.message or "wrong username" in err.message:
            raise RegistryError(
                f"can't log in to registry `{uri_host}` as `{creds.username}`: wrong username or password"
            ) from None
        raise
