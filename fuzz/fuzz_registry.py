"""Fuzz target: what a registry answers to a pull (`sifbox.oci.registry`): status lines,
headers (redirects, `WWW-Authenticate` challenges, `Docker-Content-Digest`, `Content-Type`),
token answers, error bodies, manifests and indexes.

    python fuzz/fuzz_registry.py -max_total_time=60

One input is the sequence of HTTP answers a registry gives, separated by `fuzzlib.SEP`; each
is `STATUS\\r\\nHeader: value\\r\\n...\\r\\n\\r\\nBODY`, headers parsed by `http.client` as
from a socket. A real `RegistryClient` (each connection it opens answers with the next
answer, no retries and no sleeping) runs the manifest half of a pull, `registry._fetch`, for
`registry.fuzz/team/app:1.0` on linux/amd64 with a cache that holds every blob already (so
nothing is downloaded); an input starting with `@` pulls with credentials. A `SifboxError`
is a clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import contextlib
import http.client
import io
from pathlib import Path

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.oci import registry
    from sifbox.oci.auth import Credentials
    from sifbox.oci.reference import Platform, parse_reference
    from sifbox.util.errors import SifboxError

IMAGE = parse_reference("registry.fuzz/team/app:1.0")
WANTED = Platform("linux", "amd64", None)


class _Answer:
    """An HTTP answer as `http.client.HTTPResponse` gives it: status, headers, body."""

    def __init__(self, raw: bytes):
        head, _, body = raw.partition(b"\r\n")
        try:
            self.status = int(head[:3])
        except ValueError:
            self.status = 200
        fp = io.BytesIO(body)
        try:
            self.headers = http.client.parse_headers(fp)
        except http.client.HTTPException:
            self.headers = http.client.HTTPMessage()
        self._body = fp

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def close(self) -> None:
        pass


class _Connection:
    """Stands for `http.client.HTTP(S)Connection`: each request gets the next answer; no
    answer left is a refused connection."""

    def __init__(self, answers: list[bytes]):
        self._answers = answers

    def request(self, method: str, url: str, body: object = None, headers: dict[str, str] | None = None) -> None:
        if not self._answers:
            raise ConnectionRefusedError(111, "Connection refused")

    def getresponse(self) -> _Answer:
        return _Answer(self._answers.pop(0))

    def close(self) -> None:
        pass


class _Client(registry.RegistryClient):
    def __init__(self, answers: list[bytes], creds: Credentials | None):
        super().__init__(IMAGE, credentials=creds, retries=0)
        self._scheme = "https"
        self._answers = answers

    def _connect(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        http.client.HTTPConnection(netloc)  # what the real connection refuses before connecting
        return _Connection(self._answers), False  # type: ignore[return-value]


class _Writer:
    def write(self, data: bytes) -> None:
        pass

    def commit(self) -> None:
        pass


class _Cache:
    """Holds every blob (so `download_all` fetches nothing), and no manifest."""

    def has_blob(self, digest: str, size: int | None = None) -> Path | None:
        return Path("/blob") if size is not None else None

    def blob_lock(self, digest: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def blob_writer(self, digest: str) -> contextlib.AbstractContextManager[_Writer]:
        return contextlib.nullcontext(_Writer())

    def make_layout(self, descriptor: dict[str, object], blobs: list[str]) -> Path:
        registry.split_digest(str(descriptor["digest"]))
        return Path("/layout")


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    creds = Credentials("user", "secret") if data[:1] == b"@" else None  # `@`: logged in
    answers = data.removeprefix(b"@").split(fuzzlib.SEP)
    try:
        registry._fetch(_Client(answers, creds), _Cache(), IMAGE, WANTED)  # type: ignore[arg-type]
    except SifboxError:
        pass


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="http")
