"""`sifbox config global` and `sifbox config fakeroot` as root and as the test user: Apptainer's
operations, the file edited in place of its directive only and replaced atomically, root only.

`config fakeroot` edits /etc/subuid and /etc/subgid: here in a private mount namespace whose /etc
is an overlay of the host's, so that the machine's files are never touched."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration
ROOT = images.user_named("root")


@pytest.fixture
def conf(shared_tmp) -> Path:  # type: ignore[no-untyped-def]
    d = shared_tmp / "etc"
    d.mkdir()
    path = d / "sifbox.conf"
    path.write_text(Path(__file__).resolve().parents[2].joinpath("sifbox/data/sifbox.conf").read_text())
    path.chmod(0o640)
    return path


def _global(run_as, who, cli, conf, *argv):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, "--config", str(conf), "config", "global", *argv], env=env_for(who),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip


def test_set_get_unset_reset(run_as, sifbox_cli, conf: Path) -> None:
    before = conf.read_text()
    proc = _global(run_as, ROOT, sifbox_cli, conf, "--set", "enable fusemount", "no")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc.stderr
    after = conf.read_text()
    assert "enable fusemount = no" in after
    assert [ln for ln in before.splitlines() if "enable fusemount" not in ln] == \
        [ln for ln in after.splitlines() if "enable fusemount" not in ln]  # fmt: skip
    assert conf.stat().st_mode & 0o777 == 0o640 and conf.stat().st_uid == 0
    assert _global(run_as, ROOT, sifbox_cli, conf, "--get", "enable fusemount").stdout == "no\n"
    proc = _global(run_as, ROOT, sifbox_cli, conf, "-s", "bind path", "/opt,/srv:/data")
    assert proc.returncode == 0, proc.stderr
    assert _global(run_as, ROOT, sifbox_cli, conf, "-g", "bind path").stdout == "/etc/localtime,/etc/hosts,/opt,/srv:/data\n"
    assert _global(run_as, ROOT, sifbox_cli, conf, "-u", "bind path", "/opt").returncode == 0
    assert _global(run_as, ROOT, sifbox_cli, conf, "-r", "bind path").returncode == 0
    assert _global(run_as, ROOT, sifbox_cli, conf, "-r", "enable fusemount").returncode == 0
    assert conf.read_text() == before
    assert sorted(os.listdir(conf.parent)) == ["sifbox.conf"]


def test_the_edited_file_is_the_one_in_force(run_as, sifbox_cli, conf: Path, action_images: ActionImages) -> None:
    proc = _global(run_as, ROOT, sifbox_cli, conf, "--set", "mount home", "no")
    assert proc.returncode == 0, proc.stderr
    check = run_as(ROOT, [sifbox_cli, "--config", str(conf), "config", "check"], env=env_for(ROOT),
                   timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert check.returncode == 0 and "mount home" in check.stdout
    line = next(ln for ln in check.stdout.splitlines() if ln.startswith("mount home"))
    assert "= no" in line and str(conf) in line


def test_dry_run_writes_nothing(run_as, as_who, sifbox_cli, conf: Path) -> None:
    before = conf.read_bytes()
    conf.chmod(0o644)
    proc = _global(run_as, as_who, sifbox_cli, conf, "--dry-run", "--set", "mount home", "no")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == before.decode().replace("mount home = yes", "mount home = no")
    assert conf.read_bytes() == before


def test_users_may_not_change_it(run_as, test_user, sifbox_cli, conf: Path) -> None:
    conf.chmod(0o644)
    before = conf.read_bytes()
    for op in (["--set", "mount home", "no"], ["--unset", "mount home", "yes"], ["--reset", "mount home"]):
        proc = _global(run_as, test_user, sifbox_cli, conf, *op)
        assert proc.returncode == 255, proc.stderr
        assert proc.stderr.startswith("sifbox: error: can't ") and "only root" in proc.stderr
    assert conf.read_bytes() == before
    assert _global(run_as, test_user, sifbox_cli, conf, "--get", "mount home").stdout == "yes\n"


def test_root_refuses_a_file_another_user_controls(run_as, sifbox_cli, conf: Path, test_user) -> None:
    """Hostile: root edits (and so reads) only a file that root trusts."""
    os.chown(conf, test_user.uid, test_user.gid)
    proc = _global(run_as, ROOT, sifbox_cli, conf, "--set", "mount home", "no")
    assert proc.returncode == 125 and "not by root" in proc.stderr, proc.stderr
    assert "mount home = no" not in conf.read_text()


@pytest.mark.parametrize(("argv", "status", "needle"), [
    (["mount home"], 125, "you must specify an option"),
    (["--set", "mount home"], 125, "no value given"),
    (["--set", "mount home", "perhaps"], 125, "must be `yes` or `no`"),
    (["--set", "mount homes", "no"], 125, "not a sifbox.conf directive"),
    (["--set", "bind path", "/a\nallow setuid = yes"], 125, "newline"),
    (["--unset", "bind path", "/not/there"], 255, "not found"),
    (["--set", "--get", "mount home"], 125, "not allowed with"),
])  # fmt: skip
def test_mistakes_are_one_line(run_as, sifbox_cli, conf: Path, argv, status, needle) -> None:  # type: ignore[no-untyped-def]
    before = conf.read_bytes()
    proc = _global(run_as, ROOT, sifbox_cli, conf, *argv)
    assert proc.returncode == status, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint:")]
    assert len(errors) == 1 and errors[0].startswith("sifbox: error: ") and needle in errors[0], proc.stderr
    assert conf.read_bytes() == before


def test_concurrent_edits_are_all_kept(run_as, sifbox_cli, conf: Path) -> None:
    paths = [f"/srv/p{i}" for i in range(6)]
    codes = []

    def add(path: str) -> None:
        codes.append(_global(run_as, ROOT, sifbox_cli, conf, "--set", "bind path", path).returncode)

    threads = [threading.Thread(target=add, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0] * len(paths)
    got = _global(run_as, ROOT, sifbox_cli, conf, "--get", "bind path").stdout.strip().split(",")
    assert sorted(got) == sorted(["/etc/localtime", "/etc/hosts", *paths])


# --- config fakeroot ---------------------------------------------------------------------------------


def _in_private_etc(shared_tmp: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` (sh) as root in a mount namespace whose /etc is an overlay of the host's."""
    upper, work = shared_tmp / "etc-upper", shared_tmp / "etc-work"
    upper.mkdir()
    work.mkdir()
    setup = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc || exit 99\n"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", setup + script],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_fakeroot_add_disable_enable_remove(sifbox_cli, shared_tmp, test_user,
                                            action_images: ActionImages) -> None:  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("needs root")
    host_subuid = Path("/etc/subuid").read_bytes() if Path("/etc/subuid").exists() else b""
    user, sif = test_user.name, action_images.sif
    fakeroot_map = f"runuser -u {user} -- {sifbox_cli} exec --fakeroot {sif} cat /proc/self/uid_map"
    script = f"""
set -e
grep -v "^{user}:" /etc/subuid > /etc/subuid.new || true; mv /etc/subuid.new /etc/subuid
grep -v "^{user}:" /etc/subgid > /etc/subgid.new || true; mv /etc/subgid.new /etc/subgid
echo "# kept comment" >> /etc/subuid
{sifbox_cli} config fakeroot --add {user}
echo ADDED; cat /etc/subuid; {fakeroot_map}
{sifbox_cli} config fakeroot --disable {user}
echo DISABLED; cat /etc/subgid; {fakeroot_map}
{sifbox_cli} config fakeroot --enable {user}
echo ENABLED; cat /etc/subgid
{sifbox_cli} config fakeroot --remove {user}
echo REMOVED; cat /etc/subuid
{sifbox_cli} config fakeroot --remove {user} || echo "status $?"
"""
    proc = _in_private_etc(shared_tmp, script)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    entry = f"{test_user.uid}:4294836224:65536"
    added = out.split("ADDED\n")[1].split("DISABLED\n")[0].splitlines()
    assert added[:2] == ["# kept comment", entry], out
    assert added[2].split() == ["0", str(test_user.uid), "1"] and added[3].split() == ["1", "4294836224", "65536"]
    disabled = out.split("DISABLED\n")[1].split("ENABLED\n")[0].splitlines()
    assert f"!{entry}" in disabled
    assert [ln.split() for ln in disabled[-1:]] == [["0", str(test_user.uid), "1"]]  # root mapped alone
    assert entry in out.split("ENABLED\n")[1].split("REMOVED\n")[0].splitlines()
    assert out.split("REMOVED\n")[1].splitlines()[0] == "# kept comment"
    assert out.rstrip().endswith("status 255")
    assert "no mapping entry found in `/etc/subuid`" in proc.stderr
    assert (Path("/etc/subuid").read_bytes() if Path("/etc/subuid").exists() else b"") == host_subuid


def test_fakeroot_config_is_root_only(run_as, test_user, sifbox_cli) -> None:
    before = Path("/etc/subuid").read_bytes()
    for op in ("--add", "--remove", "--enable", "--disable"):
        proc = run_as(test_user, [sifbox_cli, "config", "fakeroot", op, test_user.name], env=env_for(test_user),
                      timeout=LAUNCH_TIMEOUT)  # fmt: skip
        assert proc.returncode == 255 and "only root" in proc.stderr, proc.stderr
    assert Path("/etc/subuid").read_bytes() == before
    proc = run_as(ROOT, [sifbox_cli, "config", "fakeroot", "--add", "no-such-user-here"], env=env_for(ROOT),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 255 and "no such user" in proc.stderr
    proc = run_as(ROOT, [sifbox_cli, "config", "fakeroot", test_user.name], env=env_for(ROOT), timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 125 and "you must specify an option" in proc.stderr
