"""`Bootstrap: debootstrap` with the host's `debootstrap` against the mirror this machine's apt uses,
then apt-get and useradd in %post: as root, and unprivileged (fakeroot with the subuid map)."""

from __future__ import annotations

import os
import socket
import urllib.parse

import pytest

from tests.integration.images import env_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _mirror() -> str:
    from sifbox.build.agents import host_mirror

    mirror = host_mirror()
    if not mirror:
        pytest.skip("this machine's apt has no Debian mirror configured")
    url = urllib.parse.urlparse(mirror)
    try:
        socket.create_connection((url.hostname or "", url.port or 80), timeout=5).close()
    except OSError as err:
        pytest.skip(f"the apt mirror {mirror} is not reachable: {err}")
    return mirror


DEF = """Bootstrap: debootstrap
OSVersion: bookworm
Include: ca-certificates

%post
    apt-get -o Acquire::Check-Valid-Until=false update
    apt-get install -y --no-install-recommends hello
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    useradd -m alice
    dpkg -s ca-certificates >/dev/null

%runscript
    exec hello
"""


def test_debootstrap_and_apt_get(run_as, as_who, sifbox_cli, work) -> None:
    if not os.path.exists("/usr/sbin/debootstrap"):
        pytest.skip("debootstrap is not installed (Debian package debootstrap)")
    _mirror()
    (work / "deb.def").write_text(DEF)
    (work / "deb.def").chmod(0o644)
    scratch = work / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    env = env_for(as_who, SIFBOX_TMPDIR=str(scratch))
    proc = run_as(
        as_who, [sifbox_cli, "build", "deb.sif", "deb.def"], env=env, cwd=str(work), timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "==> debootstrap bookworm from" in proc.stderr
    assert list(scratch.iterdir()) == []
    run = run_as(
        as_who, [sifbox_cli, "run", "deb.sif"], env=env_for(as_who), cwd=str(work), timeout=60
    )
    assert (run.returncode, run.stdout) == (0, "Hello, world!\n"), run.stderr
    ex = run_as(as_who, [sifbox_cli, "exec", "deb.sif", "sh", "-c", "id -u alice; cat /etc/debian_version"],
                env=env_for(as_who), cwd=str(work), timeout=60)  # fmt: skip
    assert ex.stdout.startswith("1000\n12."), ex.stderr


ROOTFS_DEF = """Bootstrap: debootstrap
OSVersion: bookworm
"""


def test_root_admin_workflows_in_a_contained_container(run_as, sifbox_cli, work) -> None:
    """Apptainer's guide under sudo, with root's bounded capability set (the shipped default):
    apt-get (its _apt sandbox user: setuid/setgid; dpkg's chown) into a --writable sandbox and
    into a directory overlay of a SIF, while the host stays out of reach."""
    if not os.path.exists("/usr/sbin/debootstrap"):
        pytest.skip("debootstrap is not installed (Debian package debootstrap)")
    _mirror()
    (work / "rootfs.def").write_text(ROOTFS_DEF)
    conf = work / "contained.conf"
    conf.write_text("root default capabilities = default\n")
    for p in (work / "rootfs.def", conf):
        p.chmod(0o644)
    env = env_for(_root(), SIFBOX_TMPDIR=str(work))
    built = run_as(None, [sifbox_cli, "build", "--sandbox", "sb", "rootfs.def"], env=env, cwd=str(work), timeout=1200)
    assert built.returncode == 0, built.stdout + built.stderr
    apt = ("apt-get -o Acquire::Check-Valid-Until=false -q update >/dev/null && "
           "apt-get install -y -q --no-install-recommends hello >/dev/null && hello && grep CapEff /proc/self/status")
    proc = run_as(None, [sifbox_cli, "-c", str(conf), "exec", "--writable", "sb", "sh", "-c", apt], env=env,
                  cwd=str(work), timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Hello, world!" in proc.stdout and "CapEff:\t00000000a00405fb" in proc.stdout
    assert (work / "sb/usr/bin/hello").exists()
    # The same into a directory overlay of a SIF made from the sandbox.
    made = run_as(None, [sifbox_cli, "build", "base.sif", "sb"], env=env, cwd=str(work), timeout=900)
    assert made.returncode == 0, made.stderr
    (work / "ov").mkdir()
    reinstall = apt.replace("install -y", "install --reinstall -y")
    proc = run_as(None, [sifbox_cli, "-c", str(conf), "exec", "--overlay", "ov", "base.sif", "sh", "-c", reinstall],
                  env=env, cwd=str(work), timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "ov/upper/usr/bin/hello").exists()


def _root():  # type: ignore[no-untyped-def]
    from tests.integration.images import user_named

    return user_named("root")
