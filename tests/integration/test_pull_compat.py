"""`sifbox pull` (and `build` from a registry) as Apptainer users know it, as root and as the
unprivileged user: the lines it prints (Apptainer's, and the file it wrote), `--no-https`/
`--nohttps`, and faults that end in one line: a full output file system (a small tmpfs), a cache
directory root made first."""

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
    FlakyRelay,
    RegistryServer,
    busybox_registry,
)

pytestmark = pytest.mark.integration
REF = "test/busybox:1"


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with busybox_registry("sifbox-pullcompat-", REF) as reg:
        yield reg


@pytest.fixture
def place() -> Iterator[Path]:
    """A 0777 directory under /tmp (not shared_tmp: its leak guard kills processes that name it)."""
    base = Path(tempfile.mkdtemp(prefix="sifbox-pc-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        subprocess.run(["umount", "-l", str(base / "small")], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _sifbox(run_as, who: User, cli: str, place: Path, *args: object, **env: str):  # type: ignore[no-untyped-def]
    env.setdefault("SIFBOX_CACHEDIR", str(place / f"cache-{who.name}"))
    env.setdefault("SIFBOX_TMPDIR", str(place))
    return run_as(who, [cli, *map(str, args)], env=env_for(who, **env), cwd=str(place), timeout=300)


def _one_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 255, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], proc.stderr
    return errors[0]


def test_pull_says_what_it_wrote(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    uri = f"docker://{registry.host}/{REF}"
    proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", "first.sif", uri)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for line in ("INFO     Converting OCI blobs to SIF format", "INFO     Creating SIF file..."):
        assert line in lines, proc.stderr
    assert lines[-1] == "INFO     Wrote `first.sif`", proc.stderr
    assert "oci-tmp" not in proc.stderr and ".tmp" not in proc.stderr  # no cache path for a name
    proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", "--dir", place / "d", "second.sif", uri)
    assert proc.returncode != 0  # --dir must exist
    (place / "d").mkdir(mode=0o777)
    os.chmod(place / "d", 0o777)
    proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", "--dir", place / "d", "second.sif", uri)
    assert proc.returncode == 0, proc.stderr
    assert "INFO     Using cached SIF image" in proc.stderr.splitlines()
    assert proc.stderr.splitlines()[-1] == f"INFO     Wrote `{place / 'd' / 'second.sif'}`"
    # Apptainer's message format: the lines scripts grep for
    proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", "--disable-cache", "third.sif", uri,
                   SIFBOX_MESSAGE_FORMAT="apptainer")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "INFO:    Converting OCI blobs to SIF format" in lines and "INFO:    Creating SIF file..." in lines
    assert lines[-1] == "INFO:    Wrote `third.sif`"
    assert (place / "third.sif").read_bytes()[:10] == (place / "first.sif").read_bytes()[:10]


@pytest.mark.parametrize("flag", ["--no-https", "--nohttps"])
def test_no_https(registry, run_as, as_who, sifbox_cli, place, flag: str) -> None:  # type: ignore[no-untyped-def]
    """A registry that is not on the loopback and answers plain HTTP (reached through a proxy
    here): refused without the flag, pulled and built from with it."""
    relay = FlakyRelay(registry.port)
    proxy = f"http://127.0.0.1:{relay.port}"
    via = {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    uri = f"docker://registry.invalid:5000/{REF}"
    try:
        _one_error(_sifbox(run_as, as_who, sifbox_cli, place, "pull", "a.sif", uri, **via),
                   "registry `registry.invalid:5000`")  # fmt: skip
        assert not relay.requests
        proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", flag, "a.sif", uri, **via)
        assert proc.returncode == 0, proc.stderr
        assert relay.requests[0].startswith("GET http://registry.invalid:5000/v2/ HTTP/1.1")
        deffile = place / "docker.def"
        deffile.write_text(f"Bootstrap: docker\nFrom: registry.invalid:5000/{REF}\n")
        deffile.chmod(0o644)
        proc = _sifbox(run_as, as_who, sifbox_cli, place, "build", "b.sif", deffile, **via)
        assert proc.returncode == 255 and not (place / "b.sif").exists(), proc.stderr
        proc = _sifbox(run_as, as_who, sifbox_cli, place, "build", flag, "b.sif", deffile, **via)
        assert proc.returncode == 0, proc.stderr
        run = _sifbox(run_as, as_who, sifbox_cli, place, "exec", "b.sif", "cat", "/etc/marker")
        assert run.returncode == 0 and run.stdout.strip(), run.stderr
    finally:
        relay.stop()


def test_full_output_file_system(registry, run_as, as_who, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    """ENOSPC on the output directory (a 256 KiB tmpfs): one line, nothing half-written left,
    the cache usable afterwards; from the cache and without it."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs needs root")
    small = place / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=1777", "tmpfs", str(small)], check=True)
    uri = f"docker://{registry.host}/{REF}"
    assert _sifbox(run_as, as_who, sifbox_cli, place, "pull", "cached.sif", uri).returncode == 0
    for extra in ([], ["--disable-cache"]):
        proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", *extra, small / "out.sif", uri)
        _one_error(proc, f"`{small / 'out.sif'}`", "no space left on device")
        assert os.listdir(small) == [], os.listdir(small)
    proc = _sifbox(run_as, as_who, sifbox_cli, place, "pull", "again.sif", uri)
    assert proc.returncode == 0 and "Using cached SIF image" in proc.stderr, proc.stderr
    assert (place / "again.sif").read_bytes() == (place / "cached.sif").read_bytes()


def test_cache_made_by_root_then_used_by_a_user(registry, run_as, test_user, sifbox_cli, place) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("needs root and the test user")
    cache = place / "shared-cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    uri = f"docker://{registry.host}/{REF}"
    root = User("root", 0, 0, "/root")
    proc = _sifbox(run_as, root, sifbox_cli, place, "pull", "root.sif", uri, SIFBOX_CACHEDIR=str(cache))
    assert proc.returncode == 0, proc.stderr
    for argv in (["pull", "user.sif", uri], ["cache", "clean", "-f"]):
        proc = _sifbox(run_as, test_user, sifbox_cli, place, *argv, SIFBOX_CACHEDIR=str(cache))
        line = _one_error(proc, f"can't use cache directory `{cache}`", "permission denied", "belongs to root")
        assert "hint: use a cache directory of your own" in proc.stderr, line
    assert not (place / "user.sif").exists()
    # --disable-cache works for the user
    proc = _sifbox(run_as, test_user, sifbox_cli, place, "pull", "--disable-cache", "user.sif", uri,
                   SIFBOX_CACHEDIR=str(cache))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
