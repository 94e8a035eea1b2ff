"""Blob uploads to a registry (OCI distribution spec, "pushing blobs"), for `sifbox push`.

    up = Uploader(client, chunk_size=16 << 20, progress=Progress(log))
    up.blob(opener, "sha256:...", size, label="layer 1/1")

A blob the repository has already is skipped (HEAD). One the same registry holds in another
repository this user pushed it to is mounted from there (`POST ...?mount=DIGEST&from=REPO`)
where the registry offers it (201); else it is uploaded: a small blob in one request (POST,
then PUT with the bytes), a large one in chunks (PATCH with `Content-Range`, then PUT with the
digest). A chunk that fails (connection dropped, timeout, 5xx, 429, 416) does not restart the
upload: the client asks the registry how much it has (`GET` of the session: `Range: 0-N`) and
goes on from byte N+1, a bounded number of times; an upload session the registry lost starts
over. The registry's own word on the digest is checked (`Docker-Content-Digest`).

The repositories a blob was pushed to are remembered per registry in the cache
(`push-locations.json`, atomically replaced, bounded), as containers/image's blob info cache.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from sifbox.oci.registry import (
    _TRANSIENT_STATUS,
    RegistryClient,
    RegistryError,
    _HTTPError,
    _Response,
    _Transient,
    backoff,
    transient_status,
)
from sifbox.util.messages import shown

#: A blob's bytes from its start (a fresh reader on each call).
Opener = Callable[[], BinaryIO]

DEFAULT_CHUNK = 16 << 20
MAX_RESUMES = 6
_RANGE = re.compile(r"^(?:bytes=)?0-(\d{1,18})$")
_LOCATIONS_MAX = 2000


class Slice(io.RawIOBase):
    """`size` bytes of `fp` from `offset` (a blob inside a file, or one chunk of a blob);
    `seen(n)` is told of each byte read (a progress bar)."""

    def __init__(self, fp: BinaryIO, offset: int, size: int, seen: Callable[[int], None] | None = None) -> None:
        self.fp, self.offset, self.size, self.pos, self.seen = fp, offset, size, 0, seen

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = 0 if whence == 0 else self.pos if whence == 1 else self.size
        self.pos = max(0, min(self.size, base + pos))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        self.fp.seek(self.offset + self.pos)
        data = self.fp.read(n)
        buf[: len(data)] = data
        self.pos += len(data)
        if self.seen is not None:
            self.seen(len(data))
        return len(data)


class Uploader:
    """Uploads blobs to the repository of `client`."""

    def __init__(self, client: RegistryClient, *, chunk_size: int = DEFAULT_CHUNK, progress: Any = None,
                 locations: Path | None = None) -> None:  # fmt: skip
        self.client = client
        self.repo = client.ref.repository
        self.chunk_size = max(1, chunk_size)
        self.progress = progress if progress is not None and getattr(progress, "tty", False) else None  # a bar only
        self.locations = locations
        self.mounted: list[str] = []
        self.resumed = 0

    # -- one request ---------------------------------------------------------------------------
    def _send(self, method: str, url: str, headers: dict[str, str], ok: tuple[int, ...], body: Any = None) -> _Response:
        """One request (authentication and redirects, no retry): a transient failure raises
        _Transient, another status _HTTPError."""
        resp = self.client._request_once(method, url, headers, ok, body)
        if resp.status in _TRANSIENT_STATUS and resp.status not in ok:
            resp.close()
            raise transient_status(self.client._what(), resp.status, resp.headers)
        return resp

    def _absolute(self, location: str | None, digest: str) -> str:
        if not location:
            raise RegistryError(f"can't upload blob `{digest}` to `{self.client.ref}`: the registry gave no "
                                "upload location")  # fmt: skip
        url = urllib.parse.urljoin(self.client.base_url() + "/", location)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(f"can't upload blob `{digest}` to `{self.client.ref}`: the registry gave the "
                                f"invalid upload location `{location[:200]}`")  # fmt: skip
        return url

    @staticmethod
    def _with_digest(url: str, digest: str) -> str:
        return url + ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})

    # -- a blob ----------------------------------------------------------------------------------
    def blob(self, opener: Opener, digest: str, size: int, *, label: str = "") -> str:
        """Upload one blob unless the repository has it; returns how: `exists`, `mounted`,
        `uploaded`."""
        where = f"can't upload blob `{digest}` to `{self.client.ref}`"
        try:
            how = self._blob(opener, digest, size, label, where)
        except _HTTPError as err:
            raise RegistryError(f"{where}: {said(err)}", hint=_hint(err.status)) from None
        except _Transient as err:
            raise RegistryError(f"{where}: {err}") from None
        self._remember(digest)
        return how

    def _blob(self, opener: Opener, digest: str, size: int, label: str, where: str) -> str:
        if self._exists(digest):
            return "exists"
        for source in self._known(digest):
            url = self.client.base_url() + f"/v2/{self.repo}/blobs/uploads/?" + urllib.parse.urlencode(
                {"mount": digest, "from": source})
            resp = self._retrying(functools.partial(self._send, "POST", url, {"Content-Length": "0"}, (201, 202), b""))
            resp.close()
            if resp.status == 201:
                self.mounted.append(digest)
                return "mounted"
            break  # 202: the registry opened an upload instead; start a clean one below
        if self.progress is not None:
            self.progress.step(f"Uploading {label or digest[:19]}", size)
        try:
            if size <= self.chunk_size:
                self._monolithic(opener, digest, size)
            else:
                self._chunked(opener, digest, size, where)
        finally:
            if self.progress is not None:
                self.progress.done()
        return "uploaded"

    def _exists(self, digest: str) -> bool:
        try:
            resp = self._retrying(lambda: self._send("HEAD", f"/v2/{self.repo}/blobs/{digest}", {}, (200,)))
        except _HTTPError as err:
            if err.status == 404:
                return False
            raise
        resp.close()
        return True

    def _retrying(self, call: Callable[[], _Response]) -> _Response:
        """`call` again after a transient failure, `client.retries` times, backing off."""
        delay = 0.25
        for attempt in range(self.client.retries + 1):
            try:
                return call()
            except _Transient as err:
                if attempt == self.client.retries:
                    raise
                time.sleep(backoff(delay, err))
                delay *= 2
        raise AssertionError("unreachable")

    def _start(self, digest: str) -> str:
        resp = self._retrying(lambda: self._send("POST", f"/v2/{self.repo}/blobs/uploads/", {"Content-Length": "0"},
                                                 (202,), b""))  # fmt: skip
        resp.close()
        return self._absolute(resp.headers.get("Location"), digest)

    def _monolithic(self, opener: Opener, digest: str, size: int) -> None:
        with opener() as fp:
            def put() -> _Response:
                url = self._with_digest(self._start(digest), digest)
                body = Slice(fp, 0, size, self._seen)
                self._reset(0)
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
                return self._send("PUT", url, headers, (201, 204), body)

            resp = self._retrying(put)
        resp.close()
        self._check_digest(resp, digest)

    def _chunked(self, opener: Opener, digest: str, size: int, where: str) -> None:
        with opener() as fp:
            url = self._start(digest)
            offset, failures = 0, 0
            while offset < size:
                n = min(self.chunk_size, size - offset)
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                           "Content-Range": f"{offset}-{offset + n - 1}"}  # fmt: skip
                self._reset(offset)
                try:
                    resp = self._send("PATCH", url, headers, (202,), Slice(fp, offset, n, self._seen))
                except (_Transient, _HTTPError) as err:
                    if isinstance(err, _HTTPError) and err.status not in (400, 404, 416):
                        raise
                    failures += 1
                    if failures > MAX_RESUMES:
                        raise RegistryError(f"{where}: the upload failed {failures} times at byte {offset} of "
                                            f"{size}: {err}") from None  # fmt: skip
                    time.sleep(backoff(min(1.0, 0.25 * 2 ** (failures - 1)), err))
                    url, offset = self._resume_point(url, digest, size)
                    self.resumed += 1
                    continue
                resp.close()
                url = self._absolute(resp.headers.get("Location") or url, digest)
                got = _range_end(resp.headers.get("Range"))
                offset = got + 1 if got is not None else offset + n
                if offset > size:
                    raise RegistryError(f"{where}: the registry says it has {offset} bytes of a {size}-byte blob")
            headers = {"Content-Length": "0"}
            resp = self._retrying(lambda: self._send("PUT", self._with_digest(url, digest), headers, (201, 204), b""))
            resp.close()
            self._check_digest(resp, digest)

    def _resume_point(self, url: str, digest: str, size: int) -> tuple[str, int]:
        """Where an interrupted upload goes on: the session's URL and the first byte the
        registry lacks; a lost session (404) starts a new upload from byte 0."""
        try:
            resp = self._retrying(lambda: self._send("GET", url, {}, (204, 200)))
        except _HTTPError as err:
            if err.status in (400, 404):
                return self._start(digest), 0
            raise
        resp.close()
        got = _range_end(resp.headers.get("Range"))
        offset = got + 1 if got is not None else 0
        if offset > size:
            return self._start(digest), 0
        return self._absolute(resp.headers.get("Location") or url, digest), offset

    def _check_digest(self, resp: _Response, digest: str) -> None:
        said_digest = resp.headers.get("Docker-Content-Digest")
        if said_digest and said_digest != digest:
            raise RegistryError(f"can't upload blob `{digest}` to `{self.client.ref}`: the registry stored it as "
                                f"`{shown(said_digest, 80)}`")  # fmt: skip

    # -- progress --------------------------------------------------------------------------------
    def _reset(self, offset: int) -> None:
        if self.progress is not None and getattr(self.progress, "active", False):
            self.progress.done_bytes = offset

    def _seen(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(n)

    # -- where blobs were pushed -------------------------------------------------------------------
    def _load_locations(self) -> dict[str, Any]:
        if self.locations is None:
            return {}
        try:
            with open(self.locations, encoding="utf-8") as f:
                data = json.loads(f.read(8 << 20))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def _known(self, digest: str) -> list[str]:
        repos = self._load_locations().get(self.client.ref.registry, {}).get(digest, [])
        if not isinstance(repos, list):
            return []
        return [r for r in repos if isinstance(r, str) and r != self.repo and _repo_ok(r)][:3]

    def _remember(self, digest: str) -> None:
        if self.locations is None:
            return
        data = self._load_locations()
        registry = data.setdefault(self.client.ref.registry, {})
        if not isinstance(registry, dict):
            registry = data[self.client.ref.registry] = {}
        repos = [r for r in registry.pop(digest, []) if isinstance(r, str) and r != self.repo]
        registry[digest] = [self.repo, *repos][:5]
        while len(registry) > _LOCATIONS_MAX:
            registry.pop(next(iter(registry)))
        with contextlib.suppress(OSError):
            self.locations.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".push-locations.", dir=self.locations.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, separators=(",", ":"))
                os.replace(tmp, self.locations)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _repo_ok(repo: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*", repo))


def _range_end(value: str | None) -> int | None:
    m = _RANGE.match((value or "").strip())
    return int(m.group(1)) if m else None


def said(err: _HTTPError) -> str:
    code, message = err.registry_error()
    return f"HTTP {err.status}" + (f" {code}" if code else "") + (f": {message[:200]}" if message else "")


def _hint(status: int) -> str | None:
    if status == 403:
        return "the account may read but not write this repository; check its rights, or `sifbox registry login`"
    if status == 404:
        return "the repository's name may be wrong, or the registry does not take pushes there"
    return None
