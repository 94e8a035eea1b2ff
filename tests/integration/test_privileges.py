"""Capabilities in the container, as root and as the test user."""

from __future__ import annotations

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for, user_named

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


def _caps(run_as, who, sifbox_cli, image, *opts):  # type: ignore[no-untyped-def]
    return run_as(who, [sifbox_cli, "exec", *opts, str(image), "grep", "CapEff", "/proc/self/status"],
                  env=env_for(who), timeout=LAUNCH_TIMEOUT)  # fmt: skip


def test_payload_capabilities_by_default(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    """Users: none. Root: the bounded set (Docker's default without MKNOD and NET_RAW)."""
    proc = _caps(run_as, as_who, sifbox_cli, action_images.sif)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CapEff:", "00000000a00405fb" if as_who.is_root else "0000000000000000"]


def test_root_can_keep_named_capabilities(run_as, sifbox_cli, action_images: ActionImages) -> None:
    proc = _caps(run_as, user_named("root"), sifbox_cli, action_images.sif, "--no-privs")
    assert proc.stdout.split() == ["CapEff:", "0000000000000000"], proc.stderr
    proc = _caps(run_as, user_named("root"), sifbox_cli, action_images.sif, "--add-caps", "CAP_NET_RAW,chown")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[1], 16) == 0xA00405FB | (1 << 13)


def test_users_cannot_keep_capabilities(run_as, test_user, sifbox_cli, action_images: ActionImages) -> None:
    proc = _caps(run_as, test_user, sifbox_cli, action_images.sif, "--add-caps", "CAP_NET_RAW")
    assert proc.returncode == 125
    assert proc.stderr.startswith("sifbox: error: can't use --add-caps: only root")


def test_fakeroot_is_root_inside(run_as, test_user, sifbox_cli, action_images: ActionImages, shared_tmp) -> None:
    proc = run_as(test_user, [sifbox_cli, "exec", "--fakeroot", "-B", f"{shared_tmp}:/out",
                              str(action_images.sif), "sh", "-c", "id -u; touch /out/made"],
                  env=env_for(test_user), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert (proc.returncode, proc.stdout.split()) == (0, ["0"]), proc.stderr
    assert (shared_tmp / "made").stat().st_uid == test_user.uid


def test_writable_sandbox_keeps_changes(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    import shutil
    import subprocess

    sandbox = shared_tmp / "writable-sandbox"
    shutil.copytree(action_images.sandbox, sandbox, symlinks=True)
    subprocess.run(["chown", "-R", f"{as_who.uid}:{as_who.gid}", str(sandbox)], check=True)
    proc = run_as(as_who, [sifbox_cli, "exec", "--writable", str(sandbox), "sh", "-c", "echo kept > /kept.txt"],
                  env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (sandbox / "kept.txt").read_text() == "kept\n"
    refused = run_as(as_who, [sifbox_cli, "exec", "--writable", str(action_images.sif), "true"],
                     env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert refused.returncode == 255 and "has no writable overlay partition" in refused.stderr
