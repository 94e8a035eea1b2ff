"""`sifbox exec|run|shell|test docker://REF`, as root and as the test user: the image is pulled
into the cache as `sifbox pull` does and run from there (nothing is written in the current
directory); with the cache disabled it is converted for the run alone and nothing is left; a
read-only cache directory disables the cache with Apptainer's warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import User
from tests.integration.images import env_for
from tests.integration.registry_server import (
    RegistryServer,
    busybox_registry,
)

pytestmark = pytest.mark.integration
REF = "test/busybox:1"


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with busybox_registry("sifbox-actionuri-", REF) as reg:
        yield reg


@pytest.fixture
def place() -> Iterator[Path]:
    """A 0777 working directory; its `tmp` is the user's SIFBOX_TMPDIR."""
    base = Path(tempfile.mkdtemp(prefix="sifbox-au-", dir="/tmp"))
    base.chmod(0o777)
    (base / "tmp").mkdir(mode=0o777)
    (base / "tmp").chmod(0o777)
    (base / "cwd").mkdir(mode=0o777)
    (base / "cwd").chmod(0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _sb(run_as, who: User, cli: str, place: Path, *args: object, **env: str):  # type: ignore[no-untyped-def]
    env.setdefault("SIFBOX_CACHEDIR", str(place / f"cache-{who.name}"))
    env.setdefault("SIFBOX_TMPDIR", str(place / "tmp"))
    return run_as(who, [cli, *map(str, args)], env=env_for(who, **env), cwd=str(place / "cwd"), timeout=300)


def test_run_a_registry_image(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    uri = f"docker://{registry.host}/{REF}"
    first = _sb(run_as, as_who, sifbox_cli, place, "exec", uri, "cat", "/etc/marker")
    assert (first.returncode, first.stdout) == (0, "image-amd64\n"), first.stderr
    assert "Converting OCI blobs to SIF format" in first.stderr
    assert os.listdir(place / "cwd") == [], "the image was written in the current directory"
    assert os.listdir(place / "tmp") == []
    cached = list((place / f"cache-{as_who.name}" / "oci-tmp").iterdir())
    assert len(cached) == 1 and cached[0].is_file()
    again = _sb(run_as, as_who, sifbox_cli, place, "run", uri, "true")  # CMD replaced by the arguments
    assert again.returncode == 0, again.stderr
    assert "Using cached SIF image" in again.stderr and "Converting" not in again.stderr
    for action in (["shell"], ["test"]):
        proc = run_as(as_who, [sifbox_cli, *action, uri], input="echo shell-ok\n",
                      env=env_for(as_who, SIFBOX_CACHEDIR=str(place / f"cache-{as_who.name}")),
                      cwd=str(place / "cwd"), timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def test_disable_cache_leaves_nothing(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    uri = f"docker://{registry.host}/{REF}"
    for flags, env in (("--disable-cache",), {}), ((), {"APPTAINER_DISABLE_CACHE": "true"}):
        proc = _sb(run_as, as_who, sifbox_cli, place, "exec", *flags, uri, "cat", "/etc/marker", **env)
        assert (proc.returncode, proc.stdout) == (0, "image-amd64\n"), proc.stderr
        assert not (place / f"cache-{as_who.name}").exists()
        assert os.listdir(place / "tmp") == [] and os.listdir(place / "cwd") == []


def test_read_only_cache_disables_the_cache(registry, run_as, test_user, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    cache = place / "ro-cache"
    cache.mkdir()
    os.chown(cache, test_user.uid, test_user.gid)
    cache.chmod(0o555)
    uri = f"docker://{registry.host}/{REF}"
    for argv in (["exec", uri, "true"], ["pull", str(place / "cwd" / "x.sif"), uri]):
        proc = _sb(run_as, test_user, sifbox_cli, place, *argv, SIFBOX_CACHEDIR=str(cache))
        assert proc.returncode == 0, proc.stderr
        warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
        assert warnings == [f"WARNING  Cache disabled - cache location {cache} is not writable."], proc.stderr
        assert os.listdir(cache) == [] and os.listdir(place / "tmp") == []


def test_the_image_is_killed_not_left(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    """The temporary SIF of a run without cache is gone as soon as the container started:
    a container killed by SIGKILL leaves nothing either."""
    uri = f"docker://{registry.host}/{REF}"
    env = env_for(as_who, SIFBOX_TMPDIR=str(place / "tmp"), SIFBOX_DISABLE_CACHE="1")
    argv = [sifbox_cli, "exec", uri, "sh", "-c", "echo up; sleep 30"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    proc = subprocess.Popen(argv, env=env, cwd=str(place / "cwd"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        assert os.listdir(place / "tmp") == []
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert os.listdir(place / "tmp") == []


@pytest.mark.parametrize("uri", ["library://alpine", "shub://a/b", "https://x/y.sif"])
def test_other_uris_are_refused(run_as, as_who, sifbox_cli, place, uri) -> None:  # type: ignore[no-untyped-def]
    proc = _sb(run_as, as_who, sifbox_cli, place, "run", uri)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith(f"sifbox: error: can't run `{uri}`: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_writable_uri_is_refused(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    """Hostile to the cache: --writable would write into the cached SIF that other runs share."""
    proc = _sb(run_as, as_who, sifbox_cli, place, "exec", "--writable", f"docker://{registry.host}/{REF}", "true")
    assert proc.returncode == 125, proc.stderr
    assert "--writable" in proc.stderr.splitlines()[0]
    assert not (place / f"cache-{as_who.name}").exists()


def test_unknown_image_is_one_error(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    proc = _sb(run_as, as_who, sifbox_cli, place, "exec", f"docker://{registry.host}/test/none:1", "true")
    assert proc.returncode == 255, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert os.listdir(place / "tmp") == []


def test_pulled_image_is_executable_with_apptainers_launch_script(registry, run_as, as_who, sifbox_cli,
                                                                  place) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    uri = f"docker://{registry.host}/{REF}"
    for extra in ([], ["--disable-cache"]):
        out = place / "cwd" / f"pulled{len(extra)}.sif"
        proc = _sb(run_as, as_who, sifbox_cli, place, "pull", *extra, out, uri)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes()[:32] == b"#!/usr/bin/env run-singularity\n".ljust(32, b"\0")
        assert out.stat().st_mode & 0o777 == 0o755  # the umask of run_as is 022
