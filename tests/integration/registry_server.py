"""A real Docker registry on 127.0.0.1 for tests, and test images pushed into it with skopeo.

    with RegistryServer(tmp, auth="htpasswd", users={"alice": "s3cret"}) as reg:
        push_layout(layout_dir, f"{reg.host}/test/busybox:1", creds="alice:s3cret")
        reg.blob_gets()  # {digest: number of GETs}, from the registry's own log

`auth` is None (anonymous), "htpasswd" (Basic, bcrypt file made by `htpasswd -B`) or "token"
(the Docker token protocol: the registry trusts a certificate; a small token server in this
process checks the password and signs RS256 JWTs with `openssl`). Images are OCI layouts
written here from busybox-static (gzip layers, config, manifest, optional multi-platform index).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")
ISSUER = "sifbox-test-issuer"
SERVICE = "sifbox-test-registry"


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(
                f"`{tool}` is not installed (Debian: docker-registry, skopeo, apache2-utils, openssl)"
            )


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _TokenServer:
    """The token endpoint of Docker's token protocol (realm), for one user."""

    def __init__(self, workdir: Path, users: dict[str, str]):
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
             "-out", self.cert, "-days", "2", "-subj", "/CN=sifbox-test-token"],
            check=True, capture_output=True,
        )  # fmt: skip
        der = subprocess.run(
            ["openssl", "x509", "-in", self.cert, "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode("ascii")
        self.users = users
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                status, body = server.answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def answer(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(path).query)
        subject = ""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            user, _, password = base64.b64decode(value).decode().partition(":")
            if scheme.lower() != "basic" or self.users.get(user) != password:
                return 401, b'{"details":"wrong credentials"}'
            subject = user
        access = []
        for scope in query.get("scope", []):
            for one in scope.split(" "):
                kind, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and subject:
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                elif kind == "repository" and name.startswith("public/"):
                    # anonymous pulls of public repositories, as on Docker Hub
                    access.append({"type": kind, "name": name, "actions": ["pull"]})
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": subject, "aud": query.get("service", [""])[0],
            "exp": now + 600, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
            "access": access,
        }  # fmt: skip
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(), check=True, capture_output=True,
        ).stdout  # fmt: skip
        token = f"{signing_input}.{_b64url(sig)}"
        return 200, json.dumps({"token": token, "expires_in": 600}).encode()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class RegistryServer:
    workdir: Path
    auth: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    token: _TokenServer | None = None
    #: serve HTTPS on this address (a certificate for it is made, `ca` is its file)
    tls_address: str | None = None
    ca: Path | None = None

    @property
    def address(self) -> str:
        return self.tls_address or "127.0.0.1"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def log(self) -> Path:
        return self.workdir / "registry.log"

    def __enter__(self) -> RegistryServer:
        need("docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        auth = ""
        if self.auth == "htpasswd":
            need("htpasswd")
            htpasswd = self.workdir / "htpasswd"
            for user, password in self.users.items():
                flags = "-cbB" if not htpasswd.exists() else "-bB"
                subprocess.run(
                    ["htpasswd", flags, htpasswd, user, password], check=True, capture_output=True
                )
            auth = f"auth:\n  htpasswd:\n    realm: sifbox-test\n    path: {htpasswd}\n"
        elif self.auth == "token":
            need("openssl")
            self.token = _TokenServer(self.workdir, self.users)
            auth = (
                f"auth:\n  token:\n    realm: {self.token.realm}\n    service: {SERVICE}\n"
                f"    issuer: {ISSUER}\n    rootcertbundle: {self.token.cert}\n"
            )
        tls = ""
        if self.tls_address:
            need("openssl")
            self.ca = self.workdir / "tls.crt"
            key = self.workdir / "tls.key"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                 "-out", self.ca, "-days", "2", "-subj", "/CN=sifbox-test-registry",
                 "-addext", f"subjectAltName=IP:{self.tls_address}"],
                check=True, capture_output=True,
            )  # fmt: skip
            tls = f"  tls:\n    certificate: {self.ca}\n    key: {key}\n"
        for _attempt in range(5):
            self.port = free_port(self.address)
            config = self.workdir / "config.yml"
            config.write_text(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n{tls}{auth}"
            )
            logf = open(self.log, "ab")
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
            )
            logf.close()
            if self._wait_ready():
                return self
            self._stop_proc()
        self.stop()
        pytest.fail(f"docker-registry did not start: {self.log.read_text()[-2000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                if self.tls_address:
                    import ssl

                    ctx = ssl.create_default_context(cafile=str(self.ca))
                    urllib.request.urlopen(
                        f"https://{self.host}/v2/", timeout=1, context=ctx
                    ).close()
                else:
                    urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return True
            except urllib.error.HTTPError as err:
                if err.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def _stop_proc(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self._stop_proc()
        if self.token is not None:
            self.token.stop()
            self.token = None

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def blob_gets(self) -> dict[str, int]:
        """How many completed GETs of each blob the registry logged."""
        counts: dict[str, int] = {}
        pattern = re.compile(
            r'http\.request\.method=GET http\.request\.remoteaddr=\S+ http\.request\.uri="/v2/[^"]*/blobs/(sha256:[0-9a-f]{64})"'
        )
        for line in self.log.read_text(errors="replace").splitlines():
            if "response completed" not in line:
                continue
            m = pattern.search(line)
            if m:
                counts[m[1]] = counts.get(m[1], 0) + 1
        return counts

    def blob_data(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


class FlakyRelay:
    """A TCP relay in front of a registry that misbehaves on blob downloads, the way a
    congested network or an overloaded registry does: the first `fail` blob requests get
    `503 Service Unavailable`, the next `cut` have their connection dropped after `cut_after`
    bytes of answer. Every request's head is kept in `requests`. With clients that send
    absolute URLs it also serves as an HTTP forward proxy (the registry accepts them)."""

    def __init__(self, upstream: int, *, fail: int = 0, cut: int = 0, cut_after: int = 300_000):
        self.upstream = upstream
        self.fail, self.cut, self.cut_after = fail, cut, cut_after
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
                if len(head) > 1 << 20 or not head[:1].isalpha():
                    break  # not HTTP (a TLS hello): relay it as it is
            text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            is_blob = text.startswith("GET ") and "/blobs/sha256:" in text.split("\r\n", 1)[0]
            action = None
            with self.lock:
                self.requests.append(text)
                if is_blob and self.fail > 0:
                    self.fail -= 1
                    action = "fail"
                elif is_blob and self.cut > 0:
                    action = "cut"  # if the answer is long enough to cut
            if action == "fail":
                client.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return
            with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                up.sendall(head)
                threading.Thread(target=self._pump, args=(client, up), daemon=True).start()
                sent = 0
                while True:
                    try:
                        data = up.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if action == "cut" and sent + len(data) > self.cut_after:
                        with self.lock:
                            cutting = self.cut > 0
                            self.cut -= cutting
                        if cutting:
                            client.sendall(data[: self.cut_after - sent])
                            client.shutdown(socket.SHUT_RDWR)
                            return
                        action = None
                    client.sendall(data)
                    sent += len(data)

    @staticmethod
    def _pump(client: socket.socket, up: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                up.sendall(data)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


# --- test images ----------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: dict[str, bytes | str]) -> bytes:
    """A tar of `files`: bytes are regular files, `"->target"` symlinks, `"/"` directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if isinstance(content, str) and content.startswith("->"):
                info.type = tarfile.SYMTYPE
                info.linkname = content[2:]
                tar.addfile(info)
            elif content == "/":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size = len(content)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def busybox_files(marker: str) -> dict[str, bytes | str]:
    return {
        "bin": "/",
        "bin/busybox": BUSYBOX.read_bytes(),
        "bin/sh": "->busybox",
        "bin/true": "->busybox",
        "etc": "/",
        "etc/marker": f"{marker}\n".encode(),
    }


@dataclass
class BuiltImage:
    manifest_digest: str
    config_digest: str
    layers: list[str]
    blobs: dict[str, bytes]  # every blob, by digest


def write_image(
    blobs_dir: Path, arch: str, marker: str, extra_layers: int = 0, big: int = 0
) -> tuple[dict[str, object], BuiltImage]:
    """Write one image's blobs; return its manifest descriptor and what it holds.
    `extra_layers` layers of random data (the last one `big` bytes, if given)."""
    layer_tars = [_tar(busybox_files(marker))]
    for i in range(extra_layers):
        size = big if big and i == extra_layers - 1 else 200_000
        layer_tars.append(_tar({"data": "/", f"data/file{i}": os.urandom(size) + marker.encode()}))
    blobs: dict[str, bytes] = {}
    layers = []
    for raw in layer_tars:
        gz = gzip.compress(raw, compresslevel=1, mtime=0)
        blobs[_digest(gz)] = gz
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(gz),
                "size": len(gz),
                "_diff": _digest(raw),
            }
        )
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": {"marker": marker}},
        "rootfs": {"type": "layers", "diff_ids": [layer.pop("_diff") for layer in layers]},
    }).encode()  # fmt: skip
    blobs[_digest(config)] = config
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config), "size": len(config)},
        "layers": layers,
    }).encode()  # fmt: skip
    blobs[_digest(manifest)] = manifest
    for digest, data in blobs.items():
        path = blobs_dir / digest.split(":")[1]
        path.write_bytes(data)
    desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _digest(manifest), "size": len(manifest),
        "platform": {"architecture": arch, "os": "linux"},
    }  # fmt: skip
    built = BuiltImage(
        _digest(manifest), _digest(config), [str(layer["digest"]) for layer in layers], blobs
    )
    return desc, built


def make_layout(
    path: Path, tag: str, arches: list[str], extra_layers: int = 0, big: int = 0
) -> dict[str, BuiltImage]:
    """An OCI layout `path` with image `tag`: one image (one arch) or an index of several."""
    blobs_dir = path / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    built: dict[str, BuiltImage] = {}
    descs = []
    for arch in arches:
        desc, img = write_image(blobs_dir, arch, f"image-{arch}", extra_layers, big)
        descs.append(desc)
        built[arch] = img
    if len(arches) == 1:
        top = dict(descs[0])
        top.pop("platform")
    else:
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": descs,
            }
        ).encode()
        (blobs_dir / _digest(index).split(":")[1]).write_bytes(index)
        top = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": _digest(index),
            "size": len(index),
        }
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return built


def push_layout(
    layout: Path, tag: str, dest: str, creds: str | None = None, *, docker_format: bool = False
) -> None:
    """skopeo copy --all oci:LAYOUT:TAG docker://DEST (as Docker schema 2 with `docker_format`)."""
    need("skopeo")
    argv = ["skopeo", "--insecure-policy", "copy", "--all", "--dest-tls-verify=false"]
    if docker_format:
        argv += ["--format", "v2s2"]
    if creds:
        argv += ["--dest-creds", creds]
    argv += [f"oci:{layout}:{tag}", f"docker://{dest}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"


@contextlib.contextmanager
def busybox_registry(prefix: str, ref: str) -> Iterator[RegistryServer]:
    """A registry on 127.0.0.1 holding the busybox test image (one amd64 layer) as REF, in a
    0755 scratch directory under /tmp named PREFIX…; everything removed afterwards."""
    need("docker-registry", "skopeo")
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    work.chmod(0o755)
    try:
        make_layout(work / "layout", "1", ["amd64"])
        with RegistryServer(work / "reg") as reg:
            push_layout(work / "layout", "1", f"{reg.host}/{ref}")
            yield reg
    finally:
        shutil.rmtree(work, ignore_errors=True)
