"""Apptainer's e2e/cmdenvvars/cmdenvvars.go (the directories commands take from the
environment) and run.go:testRun555Cache.

Apptainer pulls an oras:// image from a local registry; here a busybox image is pushed with
skopeo to a `docker-registry` this module starts on 127.0.0.1, and pulled as docker://. Where
Apptainer looks for its own cache entry (CACHEDIR/cache/oras/HASH), sifbox's cache layout is its
own: the cases check that the cache directory is used (or not) at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, check, new_dir
from tests.integration.registry_server import RegistryServer, make_layout, need, push_layout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry_image() -> Iterator[str]:
    """docker://127.0.0.1:PORT/e2e/busybox:1 (one busybox layer); the registry stops after."""
    need("docker-registry", "skopeo")
    work = new_dir("registry")
    try:
        make_layout(work / "layout", "1", ["amd64"])
        with RegistryServer(work / "registry") as reg:
            push_layout(work / "layout", "1", f"{reg.host}/e2e/busybox:1")
            yield f"docker://{reg.host}/e2e/busybox:1"
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def cache_dir(sb, mode: int = 0o755) -> Path:  # type: ignore[no-untyped-def]
    """cmdenvvars.go:setupTemporaryCache: a fresh directory of the user's for the cache."""
    path = sb.work / "cache-dir"
    path.mkdir()
    os.chown(path, sb.who.uid, sb.who.gid)
    path.chmod(mode)
    return path


def pull(sb, image: str, **env: str):  # type: ignore[no-untyped-def]
    """cmdenvvars.go:pullTestImage: pull the test image to a fresh file; exit 0."""
    out = sb.work / "image-cache" / "testImg.sif"
    out.parent.mkdir()
    os.chown(out.parent, sb.who.uid, sb.who.gid)
    res = sb.run(["pull", str(out), image], env=env)
    check(sb, C("cmdenvvars.go:pullTestImage", exit=0), res)
    assert out.is_file()
    return res


@pytest.mark.parametrize("var", ["APPTAINER_CACHEDIR", "SIFBOX_CACHEDIR"])
def test_cache_dir(request, sb, registry_image, var: str) -> None:
    """cmdenvvars.go:testApptainerCacheDir: the pull fills the cache directory the variable names."""
    cache = cache_dir(sb)
    pull(sb, registry_image, **{var: str(cache)})
    assert any(cache.rglob("*")), f"nothing was cached in {cache}"


@pytest.mark.parametrize("var", ["APPTAINER_DISABLE_CACHE", "SIFBOX_DISABLE_CACHE"])
def test_disable_cache(request, sb, registry_image, var: str) -> None:
    """cmdenvvars.go:testApptainerDisableCache: with the cache disabled, nothing is written to
    the cache directory."""
    cache = cache_dir(sb)
    pull(sb, registry_image, APPTAINER_CACHEDIR=str(cache), **{var: "1"})
    assert not any(cache.iterdir()), f"the cache was created: {sorted(cache.rglob('*'))}"


def test_read_only_cache_dir(request, sb, registry_image) -> None:
    """cmdenvvars.go:testApptainerReadOnlyCacheDir: a read-only cache directory (as on grids
    with shared, read-only homes) disables caching; the pull still works."""
    if sb.who.is_root:
        pytest.skip("root can write into a 0555 directory: the Go test runs as the user")
    cache = cache_dir(sb, 0o555)
    try:
        pull(sb, registry_image, APPTAINER_CACHEDIR=str(cache))
    finally:
        cache.chmod(0o755)
    assert not any(cache.iterdir()), f"the cache was created: {sorted(cache.rglob('*'))}"


@pytest.mark.parametrize("var", ["APPTAINER_KEYSDIR", "SIFBOX_KEYSDIR"])
def test_keys_dir(request, sb, var: str) -> None:
    """cmdenvvars.go:testApptainerKeysDir: `key list` makes both keyrings in the directory."""
    keys = sb.work / "keys-dir"
    keys.mkdir()
    os.chown(keys, sb.who.uid, sb.who.gid)
    res = sb.run(["key", "list"], env={var: str(keys)})
    assert res.status == 0, res
    for ring in ("pgp-public", "pgp-secret"):
        assert (keys / ring).exists(), f"failed to find keyring {keys / ring}\n{res}"


def test_config_dir(request, sb) -> None:
    """cmdenvvars.go:testApptainerConfigDir: `remote list` writes remote.yaml in APPTAINER_CONFIGDIR."""
    conf = sb.work / "config-dir"
    conf.mkdir()
    os.chown(conf, sb.who.uid, sb.who.gid)
    res = sb.run(["remote", "list"], env={"APPTAINER_CONFIGDIR": str(conf)})
    assert res.status == 0, res
    assert (conf / "remote.yaml").exists(), f"failed to find remote.yaml\n{res}"


def test_run_555_cache(request, sb, registry_image) -> None:
    """run.go:testRun555Cache: `run URI /bin/true` with a 0555 cache directory (the grid use
    case). Apptainer runs oras://...alpine; here the docker:// image of the local registry."""
    cache = cache_dir(sb, 0o555)
    try:
        res = sb.run(["run", registry_image, "/bin/true"], env={"APPTAINER_CACHEDIR": str(cache)})
    finally:
        cache.chmod(0o755)
    assert res.status == 0, res
