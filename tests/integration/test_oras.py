"""SIF images in OCI registries (`oras://`), as Apptainer keeps them there.

Against Debian's docker-registry on 127.0.0.1 (password auth): `push` then `pull` gives the same
bytes, skopeo (an independent client) sees Apptainer's media types. Against a hostile registry
(a small server in this process): a wrong digest, a size larger than the disk, more or fewer
bytes than declared, a redirect loop, a huge manifest, a layer that is no SIF, the wrong media
type: each one error line, and nothing left where the SIF would have gone; a push refused
(manifest invalid, no upload location, denied, server errors past the retries): one line.
As root and as the test user.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.registry_server import RegistryServer, need

action_images = images.action_images

pytestmark = pytest.mark.integration

SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"


def _env(who, tmp: Path, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFBOX_", "APPTAINER_", "SINGULARITY_"))}
    env.update(HOME=who.home, SIFBOX_CACHEDIR=str(tmp / "cache"), **extra)
    return env


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    need("docker-registry", "htpasswd", "skopeo")
    with RegistryServer(tmp_path_factory.mktemp("oras-registry"), auth="htpasswd", users={"pusher": "push-Pw1"}) as reg:
        yield reg


def test_push_then_pull_round_trips(registry, action_images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    env = _env(as_who, shared_tmp, SIFBOX_DOCKER_USERNAME="pusher", SIFBOX_DOCKER_PASSWORD="push-Pw1")
    uri = f"oras://{registry.host}/{as_who.name}/busybox:1.0"
    proc = run_as(as_who, [sifbox_cli, "push", str(action_images.sif), uri], env=env)
    assert proc.returncode == 0, proc.stderr
    raw = run_as(None, ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "pusher:push-Pw1",
                        f"docker://{uri.removeprefix('oras://')}"])  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    manifest = json.loads(raw.stdout)
    data = action_images.sif.read_bytes()
    assert manifest["config"]["mediaType"] == SIF_CONFIG and manifest["config"]["size"] == 2
    assert manifest["layers"] == [{"mediaType": SIF_LAYER, "size": len(data),
                                   "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                                   "annotations": {"org.opencontainers.image.title": "busybox.sif"}}]  # fmt: skip
    proc = run_as(as_who, [sifbox_cli, "pull", uri], env=env, cwd=str(shared_tmp))
    assert proc.returncode == 0, proc.stderr
    pulled = shared_tmp / "busybox_1.0.sif"
    assert pulled.read_bytes() == data and pulled.stat().st_uid == as_who.uid
    run = run_as(as_who, [sifbox_cli, "exec", str(pulled), "cat", "/data/hello.txt"], env=env, cwd="/")
    assert (run.returncode, run.stdout) == (0, images.HELLO), run.stderr
    # actions run oras:// images from the cache (a second run uses it), or once without it
    for extra, cached in (([], False), ([], True), (["--disable-cache"], False)):
        run = run_as(as_who, [sifbox_cli, "exec", *extra, uri, "cat", "/data/hello.txt"], env=env, cwd="/")
        assert (run.returncode, run.stdout) == (0, images.HELLO), run.stderr
        assert ("Using cached SIF image" in run.stderr) == cached, run.stderr
    # no password: a clear refusal, nothing written
    env.pop("SIFBOX_DOCKER_PASSWORD")
    proc = run_as(as_who, [sifbox_cli, "pull", str(shared_tmp / "anon.sif"), uri], env=env)
    assert proc.returncode == 255 and proc.stderr.startswith("sifbox: error: can't authenticate"), proc.stderr
    assert not (shared_tmp / "anon.sif").exists()
    proc = run_as(as_who, [sifbox_cli, "push", str(shared_tmp / "missing.sif"), uri], env=env)
    assert proc.returncode == 255 and proc.stderr.startswith("sifbox: error: can't push `"), proc.stderr


def test_push_and_pull_with_docker_tokens(action_images, run_as, as_who, sifbox_cli, shared_tmp,
                                          tmp_path_factory) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """Docker's token protocol: the pull token a first request gets is traded for a push one."""
    need("docker-registry", "openssl")
    with RegistryServer(tmp_path_factory.mktemp("oras-token"), auth="token", users={"tok": "tok-Pw1"}) as reg:
        env = _env(as_who, shared_tmp, SIFBOX_DOCKER_USERNAME="tok", SIFBOX_DOCKER_PASSWORD="tok-Pw1")
        uri = f"oras://{reg.host}/team/app:1"
        proc = run_as(as_who, [sifbox_cli, "push", str(action_images.sif), uri], env=env)
        assert proc.returncode == 0, proc.stderr
        out = shared_tmp / "back.sif"
        proc = run_as(as_who, [sifbox_cli, "pull", str(out), uri], env=env)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == action_images.sif.read_bytes()


# -- a registry that lies -----------------------------------------------------------------------
SIF = (b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0") + b"SIF_MAGIC\0" + b"01\0").ljust(4096, b"\0")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(blob: bytes, *, size: int | None = None, digest: str | None = None, media: str = SIF_LAYER,
              layers: int = 1) -> bytes:  # fmt: skip
    layer = {"mediaType": media, "size": len(blob) if size is None else size, "digest": digest or _sha(blob)}
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": SIF_CONFIG, "size": 2, "digest": _sha(b"{}")},
                       "layers": [layer] * layers}).encode()  # fmt: skip


class Hostile(http.server.BaseHTTPRequestHandler):
    """GET /v2/ answers; the manifest and the blob come from the scenario of the server."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if length is not None:  # a short body: the connection drops after it
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self._drain()
        self.do_GET()

    def do_PUT(self) -> None:
        self._drain()
        self.do_GET()

    def _drain(self) -> None:
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def do_GET(self) -> None:
        scenario: Callable[[Hostile], None] = self.server.scenario  # type: ignore[attr-defined]
        if self.path == "/v2/":
            self._send(200, b"{}")
        else:
            scenario(self)


@pytest.fixture
def hostile() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _serve(manifest: bytes, blob: Callable[[Hostile], None]) -> Callable[[Hostile], None]:
    def scenario(h: Hostile) -> None:
        if "/manifests/" in h.path:
            h._send(200, manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                                    "Docker-Content-Digest": _sha(manifest)})  # fmt: skip
        else:
            blob(h)

    return scenario


def _blob(data: bytes, length: int | None = None) -> Callable[[Hostile], None]:
    return lambda h: h._send(200, data, {"Content-Type": "application/octet-stream"}, length)


def _loop(h: Hostile) -> None:
    h._send(307, b"", {"Location": h.path})


BIG = 5 << 20
SCENARIOS = {
    "wrong-digest": (_serve(_manifest(SIF, digest=_sha(b"other")), _blob(SIF)), "digest mismatch"),
    "larger-than-the-disk": (_serve(_manifest(SIF, size=1 << 52), _blob(SIF)), "more than the"),
    "more-bytes": (_serve(_manifest(SIF[:100]), _blob(SIF)), "larger than the 100 bytes"),
    "fewer-bytes": (_serve(_manifest(SIF), _blob(SIF[:100], length=len(SIF))), "can't download blob"),
    "redirect-loop": (_serve(_manifest(SIF), _loop), "too many redirects"),
    "huge-manifest": (_serve(b"{" + b" " * BIG + b"}", _blob(SIF)), "larger than 4 MiB"),
    "not-a-sif": (_serve(_manifest(b"x" * 64), _blob(b"x" * 64)), "the layer is not a SIF image"),
    "wrong-media-type": (_serve(_manifest(SIF, media="application/vnd.oci.image.layer.v1.tar"), _blob(SIF)),
                         "not a SIF artifact"),
    "two-layers": (_serve(_manifest(SIF, layers=2), _blob(SIF)), "2 layers"),
    "negative-size": (_serve(_manifest(SIF, size=-1), _blob(SIF)), "invalid size"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_hostile_registry(name, hostile, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    hostile.scenario, reason = SCENARIOS[name]
    out = shared_tmp / "got.sif"
    uri = f"oras://127.0.0.1:{hostile.server_address[1]}/evil/image:1"
    proc = run_as(as_who, [sifbox_cli, "pull", str(out), uri], env=_env(as_who, shared_tmp), timeout=120)
    assert proc.returncode == 255, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("sifbox: error: can't "), proc.stderr
    assert reason in lines[0], proc.stderr
    assert all(line.startswith("hint: ") for line in lines[1:]), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(shared_tmp)) == [], os.listdir(shared_tmp)  # nothing half-written


def _push_scenario(post: Callable[[Hostile], None], manifest_put: Callable[[Hostile], None]) -> Callable[[Hostile], None]:
    def scenario(h: Hostile) -> None:
        if h.command == "HEAD":
            h._send(404, b"")
        elif h.command == "POST":
            post(h)
        elif "/manifests/" in h.path:
            manifest_put(h)
        else:
            h._send(201, b"")

    return scenario


def _upload_here(h: Hostile) -> None:
    h._send(202, b"", {"Location": "/v2/evil/image/blobs/uploads/1"})


PUSH_SCENARIOS = {
    "manifest-refused": (_push_scenario(_upload_here, lambda h: h._send(
        400, b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}')),
        "the registry refused the manifest: HTTP 400 MANIFEST_INVALID: manifest invalid"),
    "no-upload-location": (_push_scenario(lambda h: h._send(202, b""), lambda h: h._send(201, b"")),
                           "the registry gave no upload location"),
    "upload-denied": (_push_scenario(lambda h: h._send(403, b'{"errors":[{"code":"DENIED","message":"no"}]}'),
                                     lambda h: h._send(201, b"")), "HTTP 403 DENIED: no"),
    "server-error": (_push_scenario(lambda h: h._send(503, b""), lambda h: h._send(201, b"")), "HTTP 503"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PUSH_SCENARIOS))
def test_hostile_registry_push(name, hostile, action_images, run_as, as_who, sifbox_cli, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    hostile.scenario, reason = PUSH_SCENARIOS[name]
    uri = f"oras://127.0.0.1:{hostile.server_address[1]}/evil/image:1"
    proc = run_as(as_who, [sifbox_cli, "push", str(action_images.sif), uri], env=_env(as_who, shared_tmp), timeout=120)
    assert proc.returncode == 255, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("sifbox: error: can't ") and reason in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
