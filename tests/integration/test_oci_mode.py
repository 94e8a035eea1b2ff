"""`sifbox exec|run|shell --oci`: a SIF run with OCI semantics through the OCI planner, as root
and as a user: the image's OCI config (Env, Entrypoint, Cmd, WorkingDir, from a SIF pulled from
an OCI archive), PID 1, no host environment, a read-only root (--writable-tmpfs for a
throw-away one), Apptainer's binds, --env, --fakeroot."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import oci_bundle
from tests.integration.images import LAUNCH_TIMEOUT, env_for

CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")


@pytest.fixture(scope="module")
def oci_sif() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the test image is pulled as root")
    base = Path(tempfile.mkdtemp(prefix="sifbox-ocimode-", dir="/tmp"))
    base.chmod(0o755)
    tar = oci_bundle.oci_image_tar(base / "img.tar", "docker.io/library/ocimode:1", ["echo from-cmd; exit 3"],
                                   entrypoint=["sh", "-c"], env=("PATH=/bin", "FOO=bar"), workdir="/tmp")  # fmt: skip
    sif = base / "img.sif"
    r = subprocess.run([CLI, "pull", str(sif), f"oci-archive:{tar}"], capture_output=True, text=True, check=False,
                       env={**os.environ, "SIFBOX_CACHEDIR": str(base / "cache")})  # fmt: skip
    assert r.returncode == 0, r.stderr
    sif.chmod(0o644)
    ocisif = base / "img.oci.sif"
    r = subprocess.run([CLI, "pull", "--oci", str(ocisif), f"oci-archive:{tar}"], capture_output=True, text=True,
                       check=False, env={**os.environ, "SIFBOX_CACHEDIR": str(base / "cache")})  # fmt: skip
    assert r.returncode == 0, r.stderr
    ocisif.chmod(0o644)
    yield sif
    shutil.rmtree(base, ignore_errors=True)


def _sb(run_as: Any, who: Any, *argv: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**env_for(who), "LEAKED_FROM_HOST": "1"}
    return run_as(who, [CLI, *map(str, argv)], env=env, timeout=LAUNCH_TIMEOUT, cwd="/", **kw)


def test_run_uses_entrypoint_and_cmd(run_as: Any, as_who: Any, oci_sif: Path) -> None:
    r = _sb(run_as, as_who, "run", "--oci", oci_sif)
    assert (r.returncode, r.stdout) == (3, "from-cmd\n"), r.stderr
    r = _sb(run_as, as_who, "run", "--oci", oci_sif, "echo override $$")
    assert (r.returncode, r.stdout) == (0, "override 1\n"), r.stderr


def test_exec_sees_oci_semantics(run_as: Any, as_who: Any, oci_sif: Path) -> None:
    r = _sb(run_as, as_who, "exec", "--oci", "--env", "EXTRA=yes", oci_sif, "sh", "-c",
            "echo $$ $FOO $EXTRA ${LEAKED_FROM_HOST:-clean}; pwd; id -u; touch /x 2>/dev/null || echo ro")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1 bar yes clean", "/tmp", str(as_who.uid), "ro"]


def test_writable_tmpfs_binds_and_fakeroot(run_as: Any, as_who: Any, oci_sif: Path, shared_tmp: Path) -> None:
    (shared_tmp / "marker").write_text("host file\n")
    (shared_tmp / "marker").chmod(0o644)
    flags = ["--writable-tmpfs", "-B", f"{shared_tmp}:/data:ro"] + ([] if as_who.is_root else ["--fakeroot"])
    r = _sb(run_as, as_who, "exec", "--oci", *flags, oci_sif, "sh", "-c",
            "touch /x && echo wrote; cat /data/marker; touch /data/y 2>/dev/null || echo data-ro; id -u")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["wrote", "host file", "data-ro", "0"]
    again = _sb(run_as, as_who, "exec", "--oci", oci_sif, "sh", "-c", "test -e /x && echo kept || echo gone")
    assert again.stdout == "gone\n"


@pytest.mark.parametrize("flag", [["--overlay", "/tmp"], ["--app", "x"], ["--env-file", "/dev/null"]])
def test_refused_in_oci_mode(run_as: Any, as_who: Any, oci_sif: Path, flag: list[str]) -> None:
    r = _sb(run_as, as_who, "exec", "--oci", *flag, oci_sif, "true")
    assert r.returncode == 125 and r.stderr.startswith("sifbox: error: can't use ") and "--oci" in r.stderr, r.stderr


def test_oci_sif_runs_with_its_image_config(run_as: Any, as_who: Any, oci_sif: Path) -> None:
    """An OCI-SIF (pull --oci): its image config's Entrypoint, Cmd, Env and WorkingDir."""
    ocisif = oci_sif.with_name("img.oci.sif")
    r = _sb(run_as, as_who, "run", "--oci", ocisif)
    assert (r.returncode, r.stdout) == (3, "from-cmd\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", ocisif, "sh", "-c", "echo $$ $FOO; pwd")
    assert (r.returncode, r.stdout) == (0, "1 bar\n/tmp\n"), r.stderr


@pytest.fixture(scope="module")
def user_images() -> Iterator[tuple[Path, Path]]:
    """A SIF and an OCI-SIF of an image whose config says USER alice (1234:5678 in its passwd)."""
    if os.geteuid() != 0:
        pytest.skip("the test image is pulled as root")
    base = Path(tempfile.mkdtemp(prefix="sifbox-ocimode-user-", dir="/tmp"))
    base.chmod(0o755)
    passwd = b"root:x:0:0::/root:/bin/sh\nalice:x:1234:5678::/home/alice:/bin/sh\n"
    tar = oci_bundle.oci_image_tar(base / "img.tar", "docker.io/library/ocimode-user:1", ["id -u; id -g"],
                                   entrypoint=["sh", "-c"], user="alice",
                                   files={"etc/passwd": passwd, "etc/group": b"root:x:0:\n"})  # fmt: skip
    out = []
    for name, flags in (("img.sif", []), ("img.oci.sif", ["--oci"])):
        r = subprocess.run([CLI, "pull", *flags, str(base / name), f"oci-archive:{tar}"], capture_output=True,
                           text=True, check=False, env={**os.environ, "SIFBOX_CACHEDIR": str(base / "cache")})  # fmt: skip
        assert r.returncode == 0, r.stderr
        (base / name).chmod(0o644)
        out.append(base / name)
    yield out[0], out[1]
    shutil.rmtree(base, ignore_errors=True)


def test_oci_mode_applies_the_image_user(run_as: Any, as_who: Any, user_images: tuple[Path, Path]) -> None:
    """--oci runs as the image's USER (the caller mapped to it); --fakeroot as root; native
    mode, of a SIF or an OCI-SIF, as the caller (Apptainer's native mode ignores USER)."""
    for image in user_images:
        r = _sb(run_as, as_who, "run", "--oci", image)
        assert (r.returncode, r.stdout) == (0, "1234\n5678\n"), r.stderr
        r = _sb(run_as, as_who, "exec", image, "id", "-u")
        assert (r.returncode, r.stdout) == (0, f"{as_who.uid}\n"), r.stderr
    if as_who.uid != 0:
        r = _sb(run_as, as_who, "exec", "--oci", "--fakeroot", user_images[1], "id", "-u")
        assert (r.returncode, r.stdout) == (0, "0\n"), r.stderr


def test_oci_mode_home_follows_the_container_user(run_as: Any, as_who: Any, oci_sif: Path,
                                                  user_images: tuple[Path, Path]) -> None:  # fmt: skip
    """HOME as SingularityCE's OCI mode: the image's USER's home in its /etc/passwd (root's
    with --fakeroot), not the caller's; without USER the caller's home path (/root with
    --fakeroot); --home's destination over both; --env HOME over everything."""
    probe = ["sh", "-c", "echo $HOME"]
    for image in user_images[1], user_images[0]:
        r = _sb(run_as, as_who, "exec", "--oci", image, *probe)
        assert (r.returncode, r.stdout) == (0, "/home/alice\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", "--fakeroot", user_images[1], *probe)
    assert (r.returncode, r.stdout) == (0, "/root\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", "--no-home", user_images[1], *probe)
    assert (r.returncode, r.stdout) == (0, "/home/alice\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", "--home", f"{as_who.home}:/work", user_images[1], *probe)
    assert (r.returncode, r.stdout) == (0, "/work\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", "--env", "HOME=/x", user_images[1], *probe)
    assert (r.returncode, r.stdout) == (0, "/x\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", oci_sif, *probe)
    assert (r.returncode, r.stdout) == (0, f"{as_who.home}\n"), r.stderr
    r = _sb(run_as, as_who, "exec", "--oci", "--fakeroot", oci_sif, *probe)
    assert (r.returncode, r.stdout) == (0, "/root\n" if not as_who.is_root else f"{as_who.home}\n"), r.stderr
