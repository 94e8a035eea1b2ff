"""Apptainer's privilege, fakeroot-mode and timeout flags (sifbox.runtime.options), as root and
as the test user: what each one does, and the one line each refusal is."""

from __future__ import annotations

import os
import time

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


def _sb(run_as, who, sifbox_cli, *argv, **kw):  # type: ignore[no-untyped-def]
    return run_as(who, [sifbox_cli, *map(str, argv)], env=env_for(who), timeout=LAUNCH_TIMEOUT, **kw)


def _one_error(proc, *parts: str, status: int = 125) -> str:  # type: ignore[no-untyped-def]
    """The run failed with `status` and printed one error line (plus an optional hint)."""
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint: ")]
    assert len(lines) == 1 and lines[0].startswith("sifbox: error: "), proc.stderr
    for part in parts:
        assert part in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "unknown flag" not in proc.stderr
    return str(lines[0])


# --- --security ----------------------------------------------------------------------------------


def test_security_uid_gid_runs_the_payload_as_those_ids(run_as, as_who, sifbox_cli, action_images: ActionImages,
                                                        shared_tmp) -> None:  # fmt: skip
    argv = ["exec", "--security", "uid:4321,gid:4322:27", "-B", f"{shared_tmp}:/out", action_images.sif,
            "sh", "-c", "id -u; id -g; id -G; grep CapEff /proc/self/status; touch /out/made"]  # fmt: skip
    proc = _sb(run_as, as_who, sifbox_cli, *argv)
    if not as_who.is_root:
        _one_error(proc, "--security `uid:`", "only root")
        return
    assert proc.returncode == 0, proc.stderr
    uid, gid, groups, caps = proc.stdout.splitlines()[:4]
    assert (uid, gid, sorted(groups.split())) == ("4321", "4322", ["27", "4322"])
    assert caps.split() == ["CapEff:", "0000000000000000"]  # a uid other than 0 keeps no capability
    st = (shared_tmp / "made").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_security_uid_from_the_environment(run_as, sifbox_cli, action_images: ActionImages) -> None:
    root = images.user_named("root")
    proc = run_as(root, [sifbox_cli, "exec", str(action_images.sif), "id", "-u"],
                  env=env_for(root, APPTAINER_SECURITY="uid:99"), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert (proc.returncode, proc.stdout.strip()) == (0, "99"), proc.stderr


@pytest.mark.parametrize("value", ["seccomp:/nonexistent.json", "apparmor:unconfined", "selinux:x"])
def test_security_apparmor_selinux_and_missing_seccomp_are_refused(run_as, as_who, sifbox_cli, action_images, value) -> None:  # type: ignore[no-untyped-def]
    proc = _sb(run_as, as_who, sifbox_cli, "exec", "--security", value, action_images.sif, "true")
    _one_error(proc, f"--security `{value}`")


SECCOMP_PROFILE = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
    {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
    {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
]}  # fmt: skip


def test_security_seccomp_profile(run_as, as_who, sifbox_cli, action_images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """--security seccomp:FILE: the OCI/Docker JSON profile, compiled with libseccomp, filters the
    payload (and what it starts): EPERM by default, errnoRet when given; an entry whose `includes`
    capabilities the payload lacks does not apply."""
    import json

    pytest.importorskip("sifbox.security.seccomp").binding()
    profile = shared_tmp / "profile.json"
    profile.write_text(json.dumps(SECCOMP_PROFILE))
    profile.chmod(0o644)
    script = "mkdir /tmp/x; chmod 600 /bin/sh; uname >/dev/null && echo uname-ok; grep Seccomp: /proc/self/status"
    proc = _sb(run_as, as_who, sifbox_cli, "exec", "--security", f"seccomp:{profile}", action_images.sif,
               "sh", "-c", script)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Operation not permitted" in proc.stderr and "Function not implemented" in proc.stderr
    assert proc.stdout.split() == ["uname-ok", "Seccomp:", "2"]


def test_security_ids_are_the_hosts(run_as, sifbox_cli, action_images: ActionImages) -> None:
    """Hostile: uid: in a user namespace would name an ID of the namespace, not of the host."""
    root = images.user_named("root")
    for flag in ("--userns", "--fakeroot"):
        proc = _sb(run_as, root, sifbox_cli, "exec", flag, "--security", "uid:0", action_images.sif, "true")
        _one_error(proc, "--security uid:/gid:", "--userns or --fakeroot")


def test_bad_security_values(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    for value in ("uid:root", "uid:-1", "gid:", "bogus:1"):
        proc = _sb(run_as, as_who, sifbox_cli, "exec", "--security", value, action_images.sif, "true")
        _one_error(proc, "--security")


# --- refused flags, accepted flags ----------------------------------------------------------------


def test_allow_setuid_is_refused_with_the_reason(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    proc = _sb(run_as, as_who, sifbox_cli, "exec", "--allow-setuid", action_images.sif, "true")
    _one_error(proc, "--allow-setuid", "no_new_privs")


def test_boot_is_refused_for_instances(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    proc = _sb(run_as, as_who, sifbox_cli, "instance", "start", "--boot", action_images.sif, "booted")
    _one_error(proc, "--boot", "/sbin/init")
    proc = _sb(run_as, as_who, sifbox_cli, "instance", "list", "booted")
    assert "booted" not in proc.stdout


def test_unsquash_has_no_effect_and_says_so(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    proc = _sb(run_as, as_who, sifbox_cli, "exec", "--unsquash", action_images.sif, "echo", "ran")
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "--unsquash" in ln]
    assert len(warnings) == 1 and "no effect" in warnings[0], proc.stderr


def test_ignore_fakeroot_command_is_accepted(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    """sifbox never uses a fakeroot(1) command: there is nothing to ignore."""
    proc = _sb(run_as, as_who, sifbox_cli, "exec", "--ignore-fakeroot-command", "-f", action_images.sif, "id", "-u")
    assert (proc.returncode, proc.stdout) == (0, "0\n"), proc.stderr


def test_ignore_subuid_maps_root_alone(run_as, test_user, sifbox_cli, action_images: ActionImages) -> None:
    argv = ["exec", "--fakeroot", action_images.sif, "cat", "/proc/self/uid_map"]
    plain = _sb(run_as, test_user, sifbox_cli, *argv)
    assert plain.returncode == 0, plain.stderr
    ignored = _sb(run_as, test_user, sifbox_cli, "exec", "--ignore-subuid", *argv[1:])
    assert ignored.returncode == 0, ignored.stderr
    assert [ln.split() for ln in ignored.stdout.splitlines()] == [["0", str(test_user.uid), "1"]]
    from_env = run_as(test_user, [sifbox_cli, *argv], env=env_for(test_user, APPTAINER_IGNORE_SUBUID="1"),
                      timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert from_env.stdout == ignored.stdout, from_env.stderr


def test_ignore_userns(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    """Root: no user namespace, even with -u. A user's container needs one: refused."""
    proc = _sb(run_as, as_who, sifbox_cli, "exec", "--ignore-userns", "-u", action_images.sif, "cat",
               "/proc/self/uid_map")  # fmt: skip
    if not as_who.is_root:
        _one_error(proc, "--ignore-userns", "user namespaces")
        return
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0", "4294967295"]


# --- --runscript-timeout --------------------------------------------------------------------------


def _slow_env(shared_tmp, seconds: int):  # type: ignore[no-untyped-def]
    script = shared_tmp / f"sleep{seconds}.sh"
    script.write_text(f"sleep {seconds}\n")
    script.chmod(0o755)
    return f"{script}:/.singularity.d/env/91-slow_env.sh"


def _sleepers(seconds: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == f"sleep\0{seconds}\0".encode():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_runscript_timeout_kills_slow_environment_scripts(run_as, as_who, sifbox_cli, shared_tmp,
                                                          action_images: ActionImages) -> None:  # fmt: skip
    for action in (["run"], ["exec"], ["test"]):
        start = time.monotonic()
        argv = [*action, "-B", _slow_env(shared_tmp, 17), "--runscript-timeout", "1s", action_images.sif]
        proc = _sb(run_as, as_who, sifbox_cli, *argv, *(["true"] if action == ["exec"] else []))
        assert time.monotonic() - start < 10, proc.stderr
        _one_error(proc, 'command "sleep 17" was killed after 1s timeout', status=255)
        assert proc.stdout == ""
    assert _sleepers(17) == []


def test_runscript_timeout_spares_the_payload(run_as, as_who, sifbox_cli, shared_tmp,
                                              action_images: ActionImages) -> None:  # fmt: skip
    """The limit is the environment scripts', not the program's; a quick script is not killed."""
    argv = ["exec", "-B", _slow_env(shared_tmp, 1), "--runscript-timeout", "1500ms", action_images.sif,
            "sh", "-c", "sleep 2; echo done"]  # fmt: skip
    proc = _sb(run_as, as_who, sifbox_cli, *argv)
    assert (proc.returncode, proc.stdout) == (0, "done\n"), proc.stderr


def test_runscript_timeout_is_checked(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    proc = _sb(run_as, as_who, sifbox_cli, "run", "--runscript-timeout", "soon", action_images.sif)
    _one_error(proc, "--runscript-timeout `soon`", "not a duration")
    proc = _sb(run_as, as_who, sifbox_cli, "instance", "start", "--runscript-timeout", "1s", action_images.sif, "t")
    _one_error(proc, "--runscript-timeout", "instance")
