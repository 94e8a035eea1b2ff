"""The registry client and the cache against a real registry on 127.0.0.1.

`docker-registry` (Debian) runs three times for this module: anonymous, with htpasswd (Basic,
bcrypt) and with token auth (Docker's token protocol; the token server is in this process).
Images are OCI layouts made here from busybox-static and pushed with `skopeo copy --all`.
Every test runs as root and as the unprivileged test user; `fetch_image` runs in the installed
venv's Python (the `pull` command is its user-facing front end), `registry`/`cache` through
the installed CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import User
from tests.integration.registry_server import (
    BuiltImage,
    FlakyRelay,
    RegistryServer,
    free_port,
    make_layout,
    need,
    push_layout,
)

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "s3cret-Pw"

DRIVER = """
import sys
from pathlib import Path
from sifbox.cli.main import render_error
from sifbox.util.errors import SifboxError
from sifbox.oci.cache import default_cache_dir
from sifbox.oci.registry import fetch_image
ref, platform, disable = sys.argv[1:4]
try:
    path = fetch_image(ref, platform=platform or None, cache_dir=default_cache_dir(), disable_cache=disable == "1")
except SifboxError as err:
    sys.exit(render_error(err, False))
print(path)
"""


@dataclass
class Registries:
    work: Path
    plain: RegistryServer
    basic: RegistryServer
    token: RegistryServer
    single: dict[str, BuiltImage]  # test/busybox:1 (amd64, 3 layers)
    multi: dict[str, BuiltImage]  # test/multi:1 (amd64 + arm64 index)
    counter: int = 0

    def fresh_image(
        self, reg: RegistryServer, *, extra_layers: int = 2, big: int = 0, creds: str | None = None
    ) -> tuple[str, BuiltImage]:
        """Push a new image no other test has seen (unique blobs); return (ref, image)."""
        self.counter += 1
        name = f"fresh/img{self.counter}-{os.getpid()}"
        layout = self.work / f"layout-{self.counter}"
        built = make_layout(layout, "t", ["amd64"], extra_layers=extra_layers, big=big)
        push_layout(layout, "t", f"{reg.host}/{name}:t", creds)
        return f"{reg.host}/{name}:t", built["amd64"]


@pytest.fixture(scope="module")
def registries() -> Iterator[Registries]:
    need("docker-registry", "skopeo", "htpasswd", "openssl")
    work = Path(tempfile.mkdtemp(prefix="sifbox-registry-test-", dir="/tmp"))
    work.chmod(0o755)
    servers: list[RegistryServer] = []
    try:
        single = make_layout(work / "single", "1", ["amd64"], extra_layers=2)
        multi = make_layout(work / "multi", "1", ["amd64", "arm64"])
        for kind in (None, "htpasswd", "token"):
            reg = RegistryServer(work / f"reg-{kind or 'plain'}", auth=kind, users={USER: PASSWORD})
            servers.append(reg.__enter__())
            creds = f"{USER}:{PASSWORD}" if kind else None
            push_layout(work / "single", "1", f"{reg.host}/test/busybox:1", creds)
            push_layout(work / "multi", "1", f"{reg.host}/test/multi:1", creds)
            if kind is None:
                push_layout(work / "single", "1", f"{reg.host}/test/docker:1", docker_format=True)
            if kind == "token":
                push_layout(work / "single", "1", f"{reg.host}/public/busybox:1", creds)
        yield Registries(work, *servers, single=single, multi=multi)
    finally:
        for reg in servers:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def env_for(shared_tmp: Path):  # type: ignore[no-untyped-def]
    """The environment of a fetch: a private cache, config and credentials files."""

    def make(who: User, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIFBOX_", "APPTAINER_", "SINGULARITY_", "XDG_"))
        }
        env.pop("SIFBOX_CLI", None)
        env.update(
            HOME=who.home, USER=who.name, LOGNAME=who.name,
            SIFBOX_CACHEDIR=str(shared_tmp / "cache"),
            SIFBOX_CONFIGDIR=str(shared_tmp / "config"),
            DOCKER_CONFIG=str(shared_tmp / "docker"),
            XDG_CONFIG_HOME=str(shared_tmp / "xdg"),
            PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )  # fmt: skip
        env.update(extra)
        return env

    return make


@pytest.fixture
def fetch(run_as, sifbox_cli: str, shared_tmp: Path, env_for):  # type: ignore[no-untyped-def]
    python = str(Path(sifbox_cli).resolve().parent / "python")

    def run(
        who: User,
        ref: str,
        *,
        platform: str = "",
        disable: bool = False,
        wait: bool = True,
        **env: str,
    ):  # type: ignore[no-untyped-def]
        # Paths go through the environment: other test suites on this machine kill leftover
        # processes whose command line names a shared_tmp directory.
        argv = [python, "-c", DRIVER, ref, platform, "1" if disable else "0"]
        assert "/tmp/" not in " ".join(argv)
        if not wait:
            if not who.is_root:
                argv = ["runuser", "-u", who.name, "--", *argv]
            return subprocess.Popen(
                argv,
                cwd="/",
                env=env_for(who, **env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        return run_as(who, argv, env=env_for(who, **env), cwd="/")  # the installed sifbox

    return run


def _digest_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _check_layout(layout: Path, image: BuiltImage, cache: Path | None) -> None:
    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_digest]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    blobs = sorted(p.name for p in (layout / "blobs/sha256").iterdir())
    assert blobs == sorted(d.split(":")[1] for d in image.blobs)
    for digest in image.blobs:
        path = layout / "blobs/sha256" / digest.split(":")[1]
        assert _digest_of(path) == digest
        if cache is not None:
            assert os.path.samefile(path, cache / "blob/blobs/sha256" / digest.split(":")[1])


def _cache_blobs(cache: Path) -> list[Path]:
    d = cache / "blob/blobs/sha256"
    return sorted(d.iterdir()) if d.is_dir() else []


def _ok(proc: subprocess.CompletedProcess[str]) -> Path:
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def _fails(proc: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sifbox: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], proc.stderr
    return errors[0]


# --- fetching ---------------------------------------------------------------------------------


def test_fetch_by_tag_and_digest(
    registries: Registries, fetch, run_as, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    reg, image = registries.plain, registries.single["amd64"]
    cache = shared_tmp / "cache"
    layout = _ok(fetch(as_who, f"{reg.host}/test/busybox:1"))
    assert layout.parent == cache / "layout"
    _check_layout(layout, image, cache)
    assert layout.stat().st_uid == as_who.uid
    # real tools read the layout (paths relative to shared_tmp: see `fetch`)
    rel = layout.relative_to(shared_tmp)
    inspect = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci:{rel}"],
        capture_output=True,
        text=True,
        cwd=shared_tmp,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["config"]["Labels"] == {"marker": "image-amd64"}

    # and umoci unpacks it, as the same user
    bundle = shared_tmp / "bundle"
    unpack = run_as(
        as_who, ["umoci", "unpack", "--rootless", "--image", f"{rel}:1", "bundle"],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": as_who.home}, cwd=shared_tmp,
    )  # fmt: skip
    assert unpack.returncode == 0, unpack.stderr
    assert (bundle / "rootfs/etc/marker").read_text() == "image-amd64\n"
    assert os.access(bundle / "rootfs/bin/busybox", os.X_OK)

    # the same tag again: a HEAD tells the digest, the manifest comes from the cache
    def manifest_requests(method: str) -> int:
        needle = f"http.request.method={method} "
        return sum(
            1
            for line in reg.log.read_text().splitlines()
            if needle in line and "response completed" in line
            and re.search(r'uri="?/v2/test/busybox/manifests/1[" ]', line)
        )  # fmt: skip

    gets, heads = manifest_requests("GET"), manifest_requests("HEAD")
    assert _ok(fetch(as_who, f"docker://{reg.host}/test/busybox:1")) == layout  # as pull passes it
    assert (manifest_requests("GET"), manifest_requests("HEAD")) == (gets, heads + 1)

    before = reg.blob_gets()
    pinned = _ok(fetch(as_who, f"{reg.host}/test/busybox@{image.manifest_digest}"))
    assert pinned == layout
    assert reg.blob_gets() == before  # everything came from the cache
    # pinned and cached: no registry needed at all
    reg_down = f"127.0.0.1:{free_port()}/test/busybox@{image.manifest_digest}"
    assert _ok(fetch(as_who, reg_down)).parent == cache / "layout"


def test_fetch_docker_schema2(
    registries: Registries, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    """An image pushed in Docker's format keeps its manifest (and digest) in the layout."""
    reg = registries.plain
    layout = _ok(fetch(as_who, f"{reg.host}/test/docker:1"))
    (desc,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert desc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    manifest_path = layout / "blobs/sha256" / desc["digest"].split(":")[1]
    assert _digest_of(manifest_path) == desc["digest"]
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["digest"] == registries.single["amd64"].config_digest
    assert [m["digest"] for m in manifest["layers"]] == registries.single["amd64"].layers
    for d in [manifest["config"]["digest"], *(m["digest"] for m in manifest["layers"])]:
        assert _digest_of(layout / "blobs/sha256" / d.split(":")[1]) == d


def test_fetch_disable_cache(registries: Registries, fetch, as_who: User, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    reg, image = registries.plain, registries.single["amd64"]
    tmp = shared_tmp / "scratch"
    tmp.mkdir()
    tmp.chmod(0o777)
    layout = _ok(fetch(as_who, f"{reg.host}/test/busybox:1", disable=True, SIFBOX_TMPDIR=str(tmp)))
    try:
        assert layout.parent == tmp
        _check_layout(layout, image, None)
        assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
        assert not (shared_tmp / "cache").exists()
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def test_manifest_list_by_platform(
    registries: Registries, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    reg = registries.plain
    ref = f"{reg.host}/test/multi:1"
    arm = _ok(fetch(as_who, ref, platform="linux/arm64"))
    _check_layout(arm, registries.multi["arm64"], shared_tmp / "cache")
    index = json.loads((arm / "index.json").read_text())
    assert index["manifests"][0]["platform"] == {"architecture": "arm64", "os": "linux"}
    amd = _ok(fetch(as_who, ref, platform="amd64"))
    _check_layout(amd, registries.multi["amd64"], shared_tmp / "cache")
    if os.uname().machine == "x86_64":
        assert _ok(fetch(as_who, ref)) == amd  # default: this machine's platform
    _fails(fetch(as_who, ref, platform="linux/s390x"), 255,
           "no image for platform `linux/s390x`", "linux/amd64, linux/arm64")  # fmt: skip
    _fails(fetch(as_who, ref, platform="linux/"), 125, "is not a platform")


def test_not_found_and_bad_reference(
    registries: Registries, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    reg = registries.plain
    _fails(fetch(as_who, f"{reg.host}/test/busybox:nope"), 255,
           f"can't find image `{reg.host}/test/busybox:nope`", "`nope` not found")  # fmt: skip
    _fails(fetch(as_who, f"{reg.host}/test/missing:1"), 255, "not found")
    _fails(fetch(as_who, f"{reg.host}/test/busybox@sha256:{'0' * 64}"), 255, "not found")
    _fails(fetch(as_who, f"{reg.host}/Test/UPPER:1"), 125, "not a valid repository name")
    assert _cache_blobs(shared_tmp / "cache") == []


def test_unreachable_registry(fetch, as_who: User, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    start = time.monotonic()
    err = _fails(
        fetch(as_who, f"127.0.0.1:{port}/test/busybox:1"), 255, f"registry `127.0.0.1:{port}`"
    )
    assert "connection refused" in err
    assert time.monotonic() - start < 30
    assert _cache_blobs(shared_tmp / "cache") == []


def test_transient_errors_are_retried(
    registries: Registries, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    reg = registries.plain
    ref, image = registries.fresh_image(reg, extra_layers=1, big=4 << 20)
    relay = FlakyRelay(reg.port, fail=2, cut=2)
    try:
        layout = _ok(fetch(as_who, ref.replace(reg.host, f"127.0.0.1:{relay.port}")))
        _check_layout(layout, image, shared_tmp / "cache")
        assert (relay.fail, relay.cut) == (0, 0)
        # a dropped download goes on where it stopped
        assert any("\r\nRange: bytes=" in r for r in relay.requests), relay.requests
    finally:
        relay.stop()
    # a registry that keeps failing: a clear error, nothing cached
    shutil.rmtree(shared_tmp / "cache")
    relay = FlakyRelay(reg.port, fail=100)
    try:
        ref2 = ref.replace(reg.host, f"127.0.0.1:{relay.port}")
        _fails(fetch(as_who, ref2), 255, "answered HTTP 503")
    finally:
        relay.stop()
    assert _cache_blobs(shared_tmp / "cache") == []  # the manifest waits for the blobs


def test_http_proxy_and_insecure_registries(
    registries: Registries, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    """Plain HTTP through HTTP_PROXY, for a registry marked insecure by --nohttps
    (SIFBOX_NOHTTPS) or by registries.conf; without either, no plain HTTP."""
    reg = registries.plain
    relay = FlakyRelay(reg.port)
    proxy = f"http://127.0.0.1:{relay.port}"
    via = {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    ref = "registry.invalid:5000/test/busybox:1"
    try:
        err = _fails(fetch(as_who, ref, **via), 255, "registry `registry.invalid:5000`")
        assert not relay.requests, relay.requests
        layout = _ok(fetch(as_who, ref, SIFBOX_NOHTTPS="1", **via))
        _check_layout(layout, registries.single["amd64"], None)
        first = relay.requests[0].split("\r\n", 1)[0]
        assert first == "GET http://registry.invalid:5000/v2/ HTTP/1.1"
        assert any(
            r.startswith("GET http://registry.invalid:5000/v2/test/busybox/manifests/1 HTTP/1.1")
            for r in relay.requests
        )
        shutil.rmtree(shared_tmp / "cache")
        conf = shared_tmp / "xdg/containers/registries.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text('[[registry]]\nlocation = "registry.invalid:5000"\ninsecure = true\n')
        _check_layout(_ok(fetch(as_who, ref, **via)), registries.single["amd64"], None)
    finally:
        relay.stop()
    assert "can't" in err


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_auth(registries: Registries, fetch, as_who: User, shared_tmp: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    reg = registries.basic if kind == "basic" else registries.token
    ref = f"{reg.host}/test/busybox:1"
    _fails(fetch(as_who, ref), 255, "requires authentication")
    _fails(fetch(as_who, ref, SIFBOX_DOCKER_USERNAME=USER, SIFBOX_DOCKER_PASSWORD="wrong"), 255,
           f"can't authenticate to registry `{reg.host}` as `{USER}`", "wrong username or password")  # fmt: skip
    assert _cache_blobs(shared_tmp / "cache") == []
    layout = _ok(fetch(as_who, ref, SIFBOX_DOCKER_USERNAME=USER, SIFBOX_DOCKER_PASSWORD=PASSWORD))
    _check_layout(layout, registries.single["amd64"], shared_tmp / "cache")
    # APPTAINER_* when the SIFBOX_* form is unset, for the other image
    layout = _ok(fetch(as_who, f"{reg.host}/test/multi:1", platform="linux/arm64",
                       APPTAINER_DOCKER_USERNAME=USER, APPTAINER_DOCKER_PASSWORD=PASSWORD))  # fmt: skip
    _check_layout(layout, registries.multi["arm64"], shared_tmp / "cache")
    # containers' auth.json
    auth_json = shared_tmp / "xdg/containers/auth.json"
    auth_json.parent.mkdir(parents=True)
    import base64

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth_json.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    auth_json.parent.parent.chmod(0o777)
    os.chown(auth_json, as_who.uid, as_who.gid)
    os.chown(auth_json.parent, as_who.uid, as_who.gid)
    shutil.rmtree(shared_tmp / "cache")
    _ok(fetch(as_who, ref))


def _host_address() -> str | None:
    """This machine's first non-loopback IPv4 address, if any."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else str(address)


def test_tls_registry(registries: Registries, fetch, as_who: User, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """HTTPS with certificate verification for a registry that is not on the loopback: the CA
    must be trusted (SSL_CERT_FILE here; /etc/containers/certs.d/HOST/ works the same way), and
    --nohttps accepts any certificate."""
    address = _host_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve TLS on")
    with RegistryServer(registries.work / f"reg-tls-{as_who.name}", tls_address=address) as reg:
        push_layout(registries.work / "single", "1", f"{reg.host}/test/busybox:1")
        ref = f"{reg.host}/test/busybox:1"
        _fails(fetch(as_who, ref), 255, f"can't talk to registry `{reg.host}`: TLS error")
        assert _cache_blobs(shared_tmp / "cache") == []
        ca = shared_tmp / "ca.crt"
        assert reg.ca is not None
        shutil.copy(reg.ca, ca)
        ca.chmod(0o644)
        layout = _ok(fetch(as_who, ref, SSL_CERT_FILE=str(ca)))
        _check_layout(layout, registries.single["amd64"], shared_tmp / "cache")
        shutil.rmtree(shared_tmp / "cache")
        layout = _ok(fetch(as_who, ref, SIFBOX_NOHTTPS="1"))
        _check_layout(layout, registries.single["amd64"], shared_tmp / "cache")
    gets = [line for line in reg.log.read_text().splitlines() if "/manifests/1" in line]
    assert gets  # it was the TLS registry that answered


def test_anonymous_token(registries: Registries, fetch, as_who: User, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """A public repository behind token auth: an anonymous token is enough (Docker Hub's way)."""
    reg = registries.token
    assert reg.token is not None
    seen = len(reg.token.requests)
    layout = _ok(fetch(as_who, f"{reg.host}/public/busybox:1"))
    _check_layout(layout, registries.single["amd64"], shared_tmp / "cache")
    asked = reg.token.requests[seen:]
    assert asked and all("scope=repository%3Apublic%2Fbusybox%3Apull" in r for r in asked), asked
    assert all("account=" not in r for r in asked)


def test_registry_login_logout(
    registries: Registries, run_as, sifbox_cli: str, env_for, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    reg = registries.token
    env = env_for(as_who)
    uri = f"docker://{reg.host}"

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_as(as_who, [sifbox_cli, "registry", *args], env=env, input=stdin)

    _fails(
        cli("login", "-u", USER, "--password-stdin", uri, stdin="wrong\n"),
        255,
        "wrong username or password",
    )
    login_file = shared_tmp / "config/docker-config.json"
    assert not login_file.exists()
    proc = cli("login", "-u", USER, "--password-stdin", uri, stdin=PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    assert f"Token stored in {login_file}" in proc.stderr
    assert oct(login_file.stat().st_mode & 0o777) == "0o600"
    assert login_file.stat().st_uid == as_who.uid
    assert json.loads(login_file.read_text())["auths"][reg.host]["auth"]
    proc = cli("list")
    assert proc.returncode == 0
    assert f"docker://{reg.host}" in proc.stdout and USER in proc.stdout
    # the stored login is used
    _check_layout(
        _ok(fetch(as_who, f"{reg.host}/test/busybox:1")),
        registries.single["amd64"],
        shared_tmp / "cache",
    )
    # skopeo reads the same file
    inspect = run_as(as_who, ["skopeo", "inspect", "--tls-verify=false", f"docker://{reg.host}/test/busybox:1"],
                     env={**env, "REGISTRY_AUTH_FILE": str(login_file)})  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr
    proc = cli("logout", uri)
    assert proc.returncode == 0 and "Logout succeeded" in proc.stderr, proc.stderr
    assert json.loads(login_file.read_text())["auths"] == {}
    _fails(cli("logout", uri), 255, f"can't log out from registry `{reg.host}`: not logged in")
    shutil.rmtree(shared_tmp / "cache")
    _fails(fetch(as_who, f"{reg.host}/test/busybox:1"), 255, "requires authentication")
    _fails(
        cli("login", "-u", USER, "--password-stdin", "library://x"),
        125,
        "only docker:// and oras://",
    )


def test_corrupted_blob(registries: Registries, fetch, as_who: User, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    reg = registries.plain
    ref, image = registries.fresh_image(reg, extra_layers=1)
    layer = image.layers[-1]
    data = reg.blob_data(layer)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    data.write_bytes(bytes(raw))
    err = _fails(fetch(as_who, ref), 255, f"can't verify blob `{layer}`", "digest mismatch")
    assert "got sha256:" in err
    cache = shared_tmp / "cache"
    assert layer.split(":")[1] not in [p.name for p in _cache_blobs(cache)]
    for blob in _cache_blobs(cache):
        assert _digest_of(blob) == f"sha256:{blob.name}"
    assert not list((cache / "layout").glob("*")) if (cache / "layout").exists() else True
    # larger than the manifest says
    data.write_bytes(bytes(raw) + b"x" * 100)
    _fails(fetch(as_who, ref), 255, f"can't verify blob `{layer}`", "larger than")
    assert layer.split(":")[1] not in [p.name for p in _cache_blobs(cache)]


@pytest.mark.slow
def test_sixteen_concurrent_fetches(
    registries: Registries, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    reg = registries.plain
    ref, image = registries.fresh_image(reg, extra_layers=3, big=8 << 20)
    before = reg.blob_gets()
    procs = [fetch(as_who, ref, wait=False) for _ in range(16)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    for status, _out, err in results:
        assert status == 0, err
    paths = {out.strip().splitlines()[-1] for _s, out, _e in results}
    assert len(paths) == 1
    _check_layout(Path(paths.pop()), image, shared_tmp / "cache")
    after = reg.blob_gets()
    for digest in [image.config_digest, *image.layers]:
        assert after.get(digest, 0) - before.get(digest, 0) == 1, (
            digest,
            before.get(digest),
            after.get(digest),
        )
    assert list((shared_tmp / "cache/tmp").iterdir()) == []


@pytest.mark.slow
def test_kill_during_fetch(registries: Registries, fetch, as_who: User, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    reg = registries.plain
    ref, image = registries.fresh_image(reg, extra_layers=1, big=96 << 20)
    cache = shared_tmp / "cache"
    big = image.layers[-1]
    for _attempt in range(5):
        shutil.rmtree(cache, ignore_errors=True)
        proc = fetch(as_who, ref, wait=False)
        try:
            killed = _kill_while_writing(proc, cache)
        finally:
            if proc.poll() is None:  # the helper failed: leave no fetch running
                subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
                proc.kill()
        proc.communicate()
        if killed:
            break
    else:
        pytest.skip("the download was always over before it could be killed")
    assert big.split(":")[1] not in [p.name for p in _cache_blobs(cache)]
    for blob in _cache_blobs(cache):
        assert _digest_of(blob) == f"sha256:{blob.name}"  # only complete, verified blobs
    assert list((cache / "tmp").iterdir()) == []
    assert not (cache / "layout").exists() or list((cache / "layout").iterdir()) == []
    _check_layout(_ok(fetch(as_who, ref)), image, cache)


def _kill_while_writing(proc: subprocess.Popen[str], cache: Path) -> bool:
    """SIGKILL the fetch once it writes a blob of a few MiB; False if it finished first."""
    deadline = time.monotonic() + 60
    pids = {proc.pid}
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in sorted(pids):  # a copy: the loop adds children
            try:
                pids.update(
                    int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                )
            except OSError:
                pass
        for pid in pids:
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd)
                    size = fd.stat().st_size
                except OSError:
                    continue
                if target.startswith(str(cache)) and size > (4 << 20) and "/blob" in target:
                    for p in pids:
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    proc.wait()
                    return True
        time.sleep(0.002)
    return False


# --- the cache commands -----------------------------------------------------------------------


def test_cache_list_and_clean(
    registries: Registries, run_as, sifbox_cli: str, env_for, fetch, as_who: User, shared_tmp: Path
) -> None:  # type: ignore[no-untyped-def]
    env = env_for(as_who)

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_as(as_who, [sifbox_cli, "cache", *args], env=env, input=stdin)

    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "There are 0 container file(s) using 0.00 KiB and 0 oci blob file(s) using 0.00 KiB of space\n"
        "Total space used: 0.00 KiB\n"
    )
    image = registries.single["amd64"]
    _ok(fetch(as_who, f"{registries.plain.host}/test/busybox:1"))
    sif = shared_tmp / "fake.sif"
    sif.write_bytes(b"x" * 2048)
    os.chown(sif, as_who.uid, as_who.gid)
    store = run_as(as_who, [str(Path(sifbox_cli).resolve().parent / "python"), "-c",
                            "import os, sys; from sifbox.oci.cache import Cache; "
                            "print(Cache.default().store_sif(sys.argv[1], os.environ['SIF']))",
                            image.manifest_digest], env={**env, "SIF": str(sif)}, cwd="/")  # fmt: skip
    assert store.returncode == 0, store.stderr
    n_blobs = len(image.blobs)
    blob_bytes = sum(len(b) for b in image.blobs.values())
    proc = cli("list")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(
        f"There are 1 container file(s) using 2.00 KiB and {n_blobs} oci blob file(s) using "
    )
    assert lines[1].startswith("Total space used: ")
    proc = cli("list", "-v", "-T", "blob")
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{'NAME':<24} {'DATE CREATED':<22} {'SIZE':<16} TYPE"
    rows = [line for line in lines[1:] if line.endswith(" blob")]
    assert len(rows) == n_blobs
    assert {r.split()[0] for r in rows} == {d.split(":")[1][:22] for d in image.blobs}
    assert (
        f"There are 0 container file(s) using 0.00 KiB and {n_blobs} oci blob file(s)"
        in proc.stdout
    )
    assert blob_bytes > 0

    proc = cli("clean", "--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.count("Would remove blob cache entry:") == n_blobs
    assert proc.stdout.count("Would remove oci cache entry:") == 1
    assert len(_cache_blobs(shared_tmp / "cache")) == n_blobs
    proc = cli("clean", stdin="n\n")
    assert "Do you want to continue? [N/y]" in proc.stdout
    assert len(_cache_blobs(shared_tmp / "cache")) == n_blobs
    proc = cli("clean", "-f", "--days", "1")
    assert len(_cache_blobs(shared_tmp / "cache")) == n_blobs  # all younger than a day
    proc = cli("clean", "-f", "-T", "oci")
    assert proc.returncode == 0, proc.stderr
    assert "Removing oci cache entry:" in proc.stderr
    assert not list((shared_tmp / "cache/oci-tmp").iterdir())
    assert len(_cache_blobs(shared_tmp / "cache")) == n_blobs
    proc = cli("clean", stdin="y\n")
    assert proc.returncode == 0, proc.stderr
    assert _cache_blobs(shared_tmp / "cache") == []
    assert list((shared_tmp / "cache/layout").iterdir()) == []
    assert cli("list").stdout.startswith(
        "There are 0 container file(s) using 0.00 KiB and 0 oci blob"
    )
    _fails(cli("clean", "-f", "-T", "bogus"), 125, "can't use cache type `bogus`")


def test_pull_docker_and_run(  # type: ignore[no-untyped-def]
    registries: Registries, run_as, sifbox_cli: str, as_who: User, shared_tmp: Path, env_for
) -> None:
    """`sifbox pull docker://` end to end: registry -> cache -> SIF -> run; a second pull takes the
    cached SIF; --disable-cache leaves no blobs behind; token auth works through pull too."""
    ref = f"{registries.plain.host}/test/busybox:1"
    out = shared_tmp / "out"
    out.mkdir()
    os.chown(out, as_who.uid, as_who.gid)
    env = env_for(as_who)

    def pull(*argv: str):  # type: ignore[no-untyped-def]
        return run_as(as_who, [sifbox_cli, "pull", *argv], env=env, cwd=str(out))

    proc = pull("first.sif", f"docker://{ref}")
    assert proc.returncode == 0, proc.stderr
    proc = run_as(as_who, [sifbox_cli, "exec", str(out / "first.sif"), "cat", "/etc/marker"], env=env, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    proc = pull("second.sif", f"docker://{ref}")
    assert proc.returncode == 0 and "Using cached SIF image" in proc.stderr, proc.stderr
    assert (out / "second.sif").read_bytes() == (out / "first.sif").read_bytes()
    # Apptainer's default name, and no cache at all with --disable-cache.
    before = sorted(p.name for p in (shared_tmp / "cache").rglob("*"))
    tmpdir = shared_tmp / "tmp"
    tmpdir.mkdir()
    os.chown(tmpdir, as_who.uid, as_who.gid)
    env.update(TMPDIR=str(tmpdir), SIFBOX_TMPDIR=str(tmpdir))
    proc = pull("--disable-cache", f"docker://{ref}")
    assert proc.returncode == 0, proc.stderr
    assert (out / "busybox_1.sif").is_file()
    assert sorted(p.name for p in (shared_tmp / "cache").rglob("*")) == before
    assert list(tmpdir.iterdir()) == []
    # Token auth through pull, with credentials from the environment.
    env.update(SIFBOX_DOCKER_USERNAME=USER, SIFBOX_DOCKER_PASSWORD=PASSWORD)
    proc = pull("tok.sif", f"docker://{registries.token.host}/test/busybox:1")
    assert proc.returncode == 0, proc.stderr
