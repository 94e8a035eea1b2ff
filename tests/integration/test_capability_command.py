"""`sifbox capability add|drop|list|avail` as root and as the test user: capability.json beside
sifbox.conf in Apptainer's format, edited atomically, read by the runtime for root's containers
(`root default capabilities = file`); users may not write it, root refuses one it can't trust."""

from __future__ import annotations

import json
import os
import threading

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration
ROOT = images.user_named("root")


@pytest.fixture
def conf(shared_tmp):  # type: ignore[no-untyped-def]
    d = shared_tmp / "etc"
    d.mkdir()
    path = d / "sifbox.conf"
    path.write_text("root default capabilities = file\n")
    path.chmod(0o644)
    return path


def _cap(run_as, who, sifbox_cli, conf, *argv):  # type: ignore[no-untyped-def]
    return run_as(who, [sifbox_cli, "-c", str(conf), "capability", *argv], env=env_for(who), timeout=LAUNCH_TIMEOUT)


def _cap_eff(run_as, sifbox_cli, conf, image) -> int:  # type: ignore[no-untyped-def]
    proc = run_as(ROOT, [sifbox_cli, "-c", str(conf), "exec", str(image), "grep", "CapEff", "/proc/self/status"],
                  env=env_for(ROOT), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[1], 16)


def test_add_list_drop_and_the_runtime_reads_it(run_as, sifbox_cli, conf, action_images: ActionImages) -> None:
    capfile = conf.parent / "capability.json"
    proc = _cap(run_as, ROOT, sifbox_cli, conf, "add", "--user", "root", "CAP_NET_BIND_SERVICE,chown")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    st = capfile.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o644)
    assert json.loads(capfile.read_text()) == {"users": {"root": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]}, "groups": {}}
    assert _cap_eff(run_as, sifbox_cli, conf, action_images.sif) == (1 << 0) | (1 << 10)
    proc = _cap(run_as, ROOT, sifbox_cli, conf, "add", "-g", "root", "CAP_KILL")
    assert proc.returncode == 0, proc.stderr
    proc = _cap(run_as, ROOT, sifbox_cli, conf, "list")
    assert proc.stdout == "root [user]: CAP_CHOWN,CAP_NET_BIND_SERVICE\nroot [group]: CAP_KILL\n"
    assert _cap(run_as, ROOT, sifbox_cli, conf, "list", "--group", "root").stdout == "root [group]: CAP_KILL\n"
    assert _cap_eff(run_as, sifbox_cli, conf, action_images.sif) == (1 << 0) | (1 << 10) | (1 << 5)
    # Apptainer's warnings for what is already (not) there
    proc = _cap(run_as, ROOT, sifbox_cli, conf, "add", "-u", "root", "CAP_CHOWN")
    assert proc.returncode == 0 and "Won't add capability 'CAP_CHOWN', already assigned to user root" in proc.stderr
    proc = _cap(run_as, ROOT, sifbox_cli, conf, "drop", "-u", "root", "CAP_CHOWN,CAP_SYS_ADMIN")
    assert proc.returncode == 0 and "Won't drop capability 'CAP_SYS_ADMIN', not assigned to user root" in proc.stderr
    assert _cap(run_as, ROOT, sifbox_cli, conf, "list", "root").stdout == (
        "root [user]: CAP_NET_BIND_SERVICE\nroot [group]: CAP_KILL\n")  # fmt: skip
    for argv in (["drop", "-u", "root", "all"], ["drop", "-g", "root", "all"]):
        proc = _cap(run_as, ROOT, sifbox_cli, conf, *argv)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert json.loads(capfile.read_text()) == {"users": {}, "groups": {}}
    assert _cap_eff(run_as, sifbox_cli, conf, action_images.sif) == 0
    assert sorted(os.listdir(conf.parent)) == ["capability.json", "sifbox.conf"]  # no temporary file left


def test_other_users_entries_are_kept_and_said_to_have_no_effect(run_as, sifbox_cli, conf, test_user) -> None:
    proc = _cap(run_as, ROOT, sifbox_cli, conf, "add", "-u", test_user.name, "CAP_NET_RAW")
    assert proc.returncode == 0, proc.stderr
    assert "only root's entries take effect" in proc.stderr
    assert _cap(run_as, ROOT, sifbox_cli, conf, "list", test_user.name).stdout == f"{test_user.name} [user]: CAP_NET_RAW\n"


def test_users_may_not_manage_capabilities(run_as, sifbox_cli, conf, test_user) -> None:
    for argv in (["add", "-u", "root", "all"], ["drop", "-u", "root", "all"], ["list"]):
        proc = _cap(run_as, test_user, sifbox_cli, conf, *argv)
        assert proc.returncode == 255, proc.stderr
        assert proc.stderr.startswith("sifbox: error: can't ") and "only root" in proc.stderr
    assert not (conf.parent / "capability.json").exists()
    proc = _cap(run_as, test_user, sifbox_cli, conf, "avail", "CAP_NET_RAW")
    assert proc.returncode == 0 and proc.stdout.startswith(f"{'CAP_NET_RAW:':<22} Use raw"), proc.stdout


def test_root_refuses_a_capability_file_it_cannot_trust(run_as, sifbox_cli, conf, test_user,
                                                       action_images: ActionImages) -> None:  # fmt: skip
    """Hostile: a capability.json another user owns would let that user grant root's containers
    any capability; root neither edits nor uses it."""
    capfile = conf.parent / "capability.json"
    capfile.write_text('{"users": {"root": ["CAP_SYS_ADMIN"]}, "groups": {}}')
    os.chown(capfile, test_user.uid, test_user.gid)
    for argv in (["add", "-u", "root", "CAP_CHOWN"], ["list"]):
        proc = _cap(run_as, ROOT, sifbox_cli, conf, *argv)
        assert proc.returncode == 255 and f"owned by uid {test_user.uid}, not by root" in proc.stderr, proc.stderr
    proc = run_as(ROOT, [sifbox_cli, "-c", str(conf), "exec", str(action_images.sif), "true"], env=env_for(ROOT),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode != 0 and "not by root" in proc.stderr
    assert os.stat(capfile).st_uid == test_user.uid  # left as it was


@pytest.mark.parametrize(("argv", "status", "needle"), [
    (["add", "CAP_CHOWN"], 125, "name a user (--user) or a group (--group)"),
    (["add", "-u", "root", "CAP_BOGUS"], 125, "unknown capability"),
    (["add", "-u", "root", ","], 125, "no capability named"),
    (["add", "-u", "no-such-user-here", "CAP_CHOWN"], 255, "does not exist"),
    (["drop", "-u", "root", "CAP_CHOWN"], 255, "it has none"),
    (["list", "no-such-user-here"], 255, "no such user or group"),
])  # fmt: skip
def test_mistakes_are_one_line(run_as, sifbox_cli, conf, argv, status, needle) -> None:  # type: ignore[no-untyped-def]
    proc = _cap(run_as, ROOT, sifbox_cli, conf, *argv)
    assert proc.returncode == status, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint:")]
    assert len(errors) == 1 and errors[0].startswith("sifbox: error: ") and needle in errors[0], proc.stderr


def test_concurrent_edits_are_all_kept(run_as, sifbox_cli, conf) -> None:
    names = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_FOWNER"]
    results = []

    def add(cap: str) -> None:
        results.append(_cap(run_as, ROOT, sifbox_cli, conf, "add", "-u", "root", cap).returncode)

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * len(names)
    got = json.loads((conf.parent / "capability.json").read_text())["users"]["root"]
    assert sorted(got) == sorted(names)


def test_avail_describes_every_capability(run_as, as_who, sifbox_cli, conf) -> None:
    proc = _cap(run_as, as_who, sifbox_cli, conf, "avail")
    assert proc.returncode == 0
    entries = [ln for ln in proc.stdout.splitlines() if ln]
    assert len(entries) == 41 and entries[0].startswith("CAP_CHOWN:") and entries[-1].startswith("CAP_CHECKPOINT")
    assert _cap(run_as, as_who, sifbox_cli, conf, "avail", "--desc", "sys_admin").stdout.startswith("CAP_SYS_ADMIN:")
