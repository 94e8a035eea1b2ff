"""Credentials (sifbox.oci.auth) and the blob/SIF cache (sifbox.oci.cache), on temporary files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from sifbox.oci import auth
from sifbox.oci.cache import Cache, CacheError, default_cache_dir, split_digest

ENV = (
    "SIFBOX_DOCKER_USERNAME", "SIFBOX_DOCKER_PASSWORD", "APPTAINER_DOCKER_USERNAME",
    "APPTAINER_DOCKER_PASSWORD", "SINGULARITY_DOCKER_USERNAME", "SINGULARITY_DOCKER_PASSWORD",
    "SIFBOX_AUTH_FILE", "APPTAINER_AUTH_FILE", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME", "DOCKER_CONFIG", "SIFBOX_CONFIGDIR", "SIFBOX_CACHEDIR",
    "APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR", "XDG_CACHE_HOME",
)  # fmt: skip


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# --- auth -----------------------------------------------------------------------------------


def test_parse_challenge() -> None:
    scheme, params = auth.parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull,push",
    }
    assert auth.parse_challenge('Basic realm="x \\"y\\""') == ("basic", {"realm": 'x "y"'})
    assert auth.parse_challenge("Bearer realm=http://a/t, service=s") == (
        "bearer", {"realm": "http://a/t", "service": "s"}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "normalized"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://reg:5000/v2/", "reg:5000"),
        ("quay.io/org/repo", "quay.io/org/repo"),
        ("reg:5000/", "reg:5000"),
    ],
)
def test_normalize_key(key: str, normalized: str) -> None:
    assert auth.normalize_key(key) == normalized


def test_no_credentials(home: Path) -> None:
    assert auth.resolve_credentials("reg:5000", "a/b") is None


def test_precedence(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _write(home / ".docker/config.json", {"auths": {"reg:5000": _auth("docker", "d")}})
    assert auth.resolve_credentials("reg:5000", "a").username == "docker"
    _write(home / ".config/containers/auth.json", {"auths": {"reg:5000": _auth("podman", "p")}})
    assert auth.resolve_credentials("reg:5000", "a").username == "podman"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    _write(tmp_path / "run/containers/auth.json", {"auths": {"reg:5000": _auth("runtime", "r")}})
    assert auth.resolve_credentials("reg:5000", "a").username == "runtime"
    auth.store_login("reg:5000", auth.Credentials("sifbox", "s"))
    assert auth.resolve_credentials("reg:5000", "a").username == "sifbox"
    _write(tmp_path / "explicit.json", {"auths": {"reg:5000": _auth("explicit", "e")}})
    assert (
        auth.resolve_credentials("reg:5000", "a", authfile=tmp_path / "explicit.json").username
        == "explicit"
    )
    monkeypatch.setenv("APPTAINER_DOCKER_USERNAME", "apptainer")
    monkeypatch.setenv("APPTAINER_DOCKER_PASSWORD", "ap")
    creds = auth.resolve_credentials("reg:5000", "a")
    assert (creds.username, creds.password, creds.source) == ("apptainer", "ap", "environment")
    monkeypatch.setenv("SIFBOX_DOCKER_USERNAME", "env")
    monkeypatch.setenv("SIFBOX_DOCKER_PASSWORD", "pw")
    assert auth.resolve_credentials("reg:5000", "a").username == "env"
    given = auth.Credentials("cli", "c")
    assert auth.resolve_credentials("reg:5000", "a", explicit=given) is given


def test_docker_hub_and_namespaced_keys(home: Path) -> None:
    _write(
        home / ".docker/config.json",
        {"auths": {
            "https://index.docker.io/v1/": _auth("hub", "h"),
            "quay.io": _auth("quay", "q"),
            "quay.io/team": _auth("team", "t"),
            "other:5000": {"username": "plain", "password": "text"},
        }},
    )  # fmt: skip
    assert auth.resolve_credentials("docker.io", "library/busybox").username == "hub"
    assert auth.resolve_credentials("quay.io", "team/app").username == "team"
    assert auth.resolve_credentials("quay.io", "teamx/app").username == "quay"
    creds = auth.resolve_credentials("other:5000", "x")
    assert (creds.username, creds.password) == ("plain", "text")
    assert "text" not in repr(creds)


def test_credential_helper(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin/docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        '#!/bin/sh\nread server\necho "{\\"Username\\":\\"helped\\",\\"Secret\\":\\"$server\\"}"\n'
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    _write(home / ".docker/config.json", {"credHelpers": {"reg.example.org": "fake"}})
    creds = auth.resolve_credentials("reg.example.org", "x")
    assert (creds.username, creds.password) == ("helped", "reg.example.org")
    _write(home / ".docker/config.json", {"credsStore": "fake"})
    assert auth.resolve_credentials("docker.io", "library/x").password == auth.DOCKER_HUB_LEGACY_KEY


def test_bad_auth_file(home: Path) -> None:
    (home / ".docker").mkdir()
    (home / ".docker/config.json").write_text("{not json")
    with pytest.raises(
        auth.AuthError, match=r"can't read credentials file `.*config.json`: not valid JSON"
    ):
        auth.resolve_credentials("reg", "x")


def test_login_file_round_trip(home: Path) -> None:
    path = auth.store_login(
        auth.login_key("docker://reg:5000/some/repo"), auth.Credentials("alice", "pw:1")
    )
    assert path == home / ".sifbox/docker-config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data == {"auths": {"reg:5000": _auth("alice", "pw:1")}}
    auth.store_login("reg:5000", auth.Credentials("bob", "x"))
    auth.store_login("docker.io", auth.Credentials("hub", "y"))
    assert list(auth.list_logins()) == [("docker.io", "hub"), ("reg:5000", "bob")]
    assert auth.remove_login("reg:5000")
    assert not auth.remove_login("reg:5000")
    assert list(auth.list_logins()) == [("docker.io", "hub")]
    assert [p.name for p in path.parent.iterdir()] == ["docker-config.json"]


# --- cache ----------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_default_cache_dir(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir() == home / ".cache/sifbox"
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert default_cache_dir() == Path("/x/sifbox")
    monkeypatch.setenv("APPTAINER_CACHEDIR", "/a")
    assert default_cache_dir() == Path("/a")
    monkeypatch.setenv("SIFBOX_CACHEDIR", "/s")
    assert default_cache_dir() == Path("/s")


@pytest.mark.parametrize(
    "bad", ["sha256:../../etc", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256:"]
)
def test_digest_must_be_well_formed(bad: str) -> None:
    with pytest.raises(CacheError, match="can't use digest"):
        split_digest(bad)


def test_blob_writer_commit_and_abort(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    data = b"hello blob"
    digest = _digest(data)
    with cache.blob_lock(digest), cache.blob_writer(digest) as w:
        w.write(data)
        # nothing visible before commit
        assert cache.has_blob(digest) is None
        assert list((cache.blob_root / "blobs/sha256").iterdir()) == []
        path = w.commit()
    assert path.read_bytes() == data
    assert cache.has_blob(digest, len(data)) == path
    assert cache.has_blob(digest, 3) is None
    other = _digest(b"other")
    with cache.blob_writer(other) as w:
        w.write(b"oth")
    assert cache.has_blob(other) is None
    assert list(cache.tmp_dir.iterdir()) == []


def test_nonblocking_lock(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    digest = _digest(b"x")
    with cache.blob_lock(digest) as got:
        assert got
        pid = os.fork()
        if pid == 0:
            with cache.blob_lock(digest, blocking=False) as other:
                os._exit(0 if other is False else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_sif_store(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    digest = _digest(b"manifest")
    assert cache.cached_sif(digest) is None
    tmp = tmp_path / "out.sif"
    tmp.write_bytes(b"SIF")
    tmp.chmod(0o755)
    stored = cache.store_sif(digest, tmp)
    assert stored == cache.cached_sif(digest)
    assert stored.read_bytes() == b"SIF"
    assert not tmp.exists()
    assert stored.parent.name == "oci-tmp"
    with cache.sif_lock(digest) as got:
        assert got


def _fill(cache: Cache, *blobs: bytes) -> list[str]:
    digests = []
    for data in blobs:
        d = _digest(data)
        with cache.blob_writer(d) as w:
            w.write(data)
            w.commit()
        digests.append(d)
    return digests


def test_make_layout(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    manifest, config, layer = _fill(cache, b"{manifest}", b"{config}", b"layer")
    desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest,
        "size": 10,
    }
    layout = cache.make_layout(desc, [manifest, config, layer])
    assert json.loads((layout / "index.json").read_text()) == {
        "schemaVersion": 2,
        "manifests": [desc],
    }
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    names = sorted(p.name for p in (layout / "blobs/sha256").iterdir())
    assert names == sorted(d.split(":")[1] for d in (manifest, config, layer))
    for d in (manifest, config, layer):
        linked = layout / "blobs/sha256" / d.split(":")[1]
        assert os.path.samefile(linked, cache.blob_path(d))  # a link, not a copy
    assert cache.make_layout(desc, [manifest, config, layer]) == layout


def test_flat_layout(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "flat", flat=True)
    (manifest,) = _fill(cache, b"{m}")
    desc = {"mediaType": "x", "digest": manifest, "size": 3}
    assert cache.make_layout(desc, [manifest]) == cache.root
    assert (cache.root / "blobs/sha256" / manifest.split(":")[1]).read_bytes() == b"{m}"
    assert (cache.root / "index.json").is_file()
    assert sorted(p.name for p in cache.root.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_entries_remove_prune(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    a, _ = _fill(cache, b"aaaa", b"bb")
    sif_tmp = tmp_path / "x.sif"
    sif_tmp.write_bytes(b"S" * 10)
    cache.store_sif(a, sif_tmp)
    entries = cache.entries()
    assert sorted((e.type, e.size) for e in entries) == [("blob", 2), ("blob", 4), ("oci", 10)]
    assert [e.type for e in cache.entries(("oci",))] == ["oci"]
    dead = cache.tmp_dir / "sha256-abc.999999999.part"
    dead.write_bytes(b"partial")
    live = cache.tmp_dir / f"layout-x.{os.getpid()}"
    live.mkdir()
    for e in cache.entries(("blob",)):
        assert cache.remove(e)
    cache.prune(layouts=True)
    assert cache.entries(("blob",)) == []
    assert not dead.exists()
    assert live.exists()
    assert list(cache.lock_dir.iterdir()) == []


def test_remove_skips_what_a_pull_holds(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    (digest,) = _fill(cache, b"held")
    (entry,) = cache.entries(("blob",))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a pull holding the blob's lock
        os.close(read_end)
        with cache.blob_lock(digest):
            os.write(write_end, b"x")
            time.sleep(5)
        os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"x"
        assert cache.remove(entry) is False
        assert cache.has_blob(digest)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read_end)
    assert cache.remove(entry) is True
    assert cache.has_blob(digest) is None
