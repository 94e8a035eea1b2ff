"""sifbox.conf changes what containers get, for root and the test user alike."""

from __future__ import annotations

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


def _run(run_as, who, sifbox_cli, conf, image, *argv):  # type: ignore[no-untyped-def]
    return run_as(who, [sifbox_cli, "--config", str(conf), "exec", str(image), *argv],
                  env=env_for(who), timeout=LAUNCH_TIMEOUT)  # fmt: skip


def test_mount_home_and_dev_and_bind_path(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    conf = shared_tmp / "sifbox.conf"
    conf.write_text(
        "mount home = no\nmount dev = minimal\nbind path = /etc/hosts:/etc/hosts-from-conf\n"
        "sessiondir max size = 16\nno such directive = 1\n"
    )
    conf.chmod(0o644)
    script = (f'test -d "{as_who.home}" && echo home || echo nohome; ls /dev | grep -c . ; '
              'test -f /etc/hosts-from-conf && echo conf-bind; df -k / | tail -1')  # fmt: skip
    proc = _run(run_as, as_who, sifbox_cli, conf, action_images.sif, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "nohome" or as_who.home in ("/root",)  # /root exists in the image itself
    assert int(lines[1]) < 20  # minimal /dev
    assert lines[2] == "conf-bind"
    assert int(lines[3].split()[1]) <= 16 * 1024  # the session tmpfs holds the writable layer
    assert "unknown directive `no such directive`" in proc.stderr


def test_disallowed_namespace(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    conf = shared_tmp / "nopid.conf"
    conf.write_text("allow pid ns = no\n")
    conf.chmod(0o644)
    proc = run_as(as_who, [sifbox_cli, "--config", str(conf), "exec", "--pid", str(action_images.sif), "true"],
                  env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 125
    assert proc.stderr.startswith("sifbox: error: can't run")
    assert "allow pid ns = no" in proc.stderr


def test_bad_value_is_a_clear_error(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    conf = shared_tmp / "bad.conf"
    conf.write_text("mount proc = maybe\n")
    conf.chmod(0o644)
    proc = _run(run_as, as_who, sifbox_cli, conf, action_images.sif, "true")
    assert proc.returncode == 125
    assert proc.stderr.startswith(f"sifbox: error: can't read configuration `{conf}`: line 1:")


def test_fuse_overlayfs_driver(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    """`enable overlay = driver`: the writable layer comes from fuse-overlayfs (the fallback
    where the kernel refuses overlayfs in a user namespace)."""
    conf = shared_tmp / "driver.conf"
    conf.write_text("enable overlay = driver\n")
    conf.chmod(0o644)
    proc = run_as(as_who, [sifbox_cli, "-v", "--config", str(conf), "exec", "--writable-tmpfs",
                           str(action_images.sif), "sh", "-c", "touch /new-file && echo wrote"],
                  env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "wrote\n"), proc.stderr
    assert "overlay: fuse-overlayfs" in proc.stderr
