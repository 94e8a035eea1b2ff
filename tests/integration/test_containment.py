"""A root-run container is contained: hostile images and payloads tried as an attacker would.

Each test is an attack that reached the host before sifbox contained root's containers:
the runtime's own interpreter rewritten through `#!/proc/self/exe` (runc's CVE-2019-5736),
kernel settings written through /proc/sys and /sys, device nodes of an image used through a
mount that lost nosuid/nodev, and the host's /dev, files and processes within reach. The same
payloads run as the unprivileged test user, where the kernel already refuses them. A control
with `root default capabilities = full` (Apptainer's root container, the documented opt-out)
shows that each probe does detect a container that is not contained.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for, user_named

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration

ROOT = user_named("root")


def _conf(directory: Path, text: str = "") -> Path:
    """A sifbox.conf owned by root, writable by no one else (as root requires)."""
    conf = directory / "contained.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    return conf


def _run(run_as, who, cli, *args: str, conf: Path | None = None, **env: str):  # type: ignore[no-untyped-def]
    argv = [cli, *(["-c", str(conf)] if conf else []), *args]
    return run_as(who, argv, env=env_for(who, **env), timeout=LAUNCH_TIMEOUT)


def _sandbox(shared_tmp: Path, action_images: ActionImages, name: str = "sb") -> Path:
    sandbox = shared_tmp / name
    shutil.copytree(action_images.sandbox, sandbox, symlinks=True)
    return sandbox


# --- 1. the runtime's binary ---------------------------------------------------------------------

ATTACK = """#!/proc/self/exe
import os, sys, time
fd = os.open("/proc/self/exe", os.O_PATH)
if os.fork() == 0:
    os.setsid()
    for _ in range(100):
        try:
            w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_TRUNC)
            os.write(w, b"#!/bin/sh\\necho pwned\\n")
            os._exit(0)
        except OSError:
            time.sleep(0.05)
    os._exit(1)
print("HOST-INTERPRETER-RAN", file=sys.stderr)
"""


def _copied_interpreter_cli(sifbox_cli: str, where: Path) -> tuple[Path, Path]:
    """A copy of the CLI launcher whose interpreter is a copy of the host's Python."""
    launcher = Path(os.path.realpath(sifbox_cli)).read_text()
    first, rest = launcher.split("\n", 1)
    interpreter = first[2:].split()[0]
    copy = where / "python-copy"
    shutil.copy2(os.path.realpath(interpreter), copy)
    cli = where / "sifbox-copy"
    cli.write_text(f"#!{copy} -IS\n{rest}")
    cli.chmod(0o755)
    return copy, cli


def test_runtime_binary_cannot_be_rewritten_through_proc_self_exe(run_as, as_who, sifbox_cli, shared_tmp,
                                                                   action_images: ActionImages) -> None:  # fmt: skip
    sandbox = _sandbox(shared_tmp, action_images)
    (sandbox / "bin/sh").unlink()
    (sandbox / "bin/sh").write_text(ATTACK)
    (sandbox / "bin/sh").chmod(0o755)
    interpreter, cli = _copied_interpreter_cli(sifbox_cli, shared_tmp)
    before = hashlib.sha256(interpreter.read_bytes()).hexdigest()
    proc = _run(run_as, as_who, str(cli), "exec", str(sandbox), "/bin/sh", conf=_conf(shared_tmp))
    assert proc.returncode == 126, (proc.returncode, proc.stderr)
    assert "its interpreter is /proc/self/exe" in proc.stderr
    assert "HOST-INTERPRETER-RAN" not in proc.stderr
    import time

    time.sleep(1)  # the attacker's child would retry for 5 s; it never ran
    assert hashlib.sha256(interpreter.read_bytes()).hexdigest() == before


def test_payload_does_not_see_the_runtime_as_its_executable(run_as, as_who, sifbox_cli, shared_tmp,
                                                            action_images: ActionImages) -> None:  # fmt: skip
    # Every process of the container runs an image binary: PID 1 (root's PID namespace) is
    # sifbox's non-dumpable supervisor, whose /proc entries the payload cannot open.
    script = "for p in /proc/[0-9]*; do readlink $p/exe 2>/dev/null; done | sort -u"
    proc = _run(run_as, as_who, sifbox_cli, "exec", str(action_images.sif), "sh", "-c", script,
                conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = set(proc.stdout.split())
    assert not any("python" in exe for exe in seen), seen


# --- 2. the host kernel's settings -----------------------------------------------------------------

PROBE = """
try_write() {  # write a file's own value back: no change, unless the write is refused
    v=$(cat "$1" 2>/dev/null) || { echo "$1 unreadable"; return; }
    case $1 in */transparent_hugepage/*) v=$(echo "$v" | sed 's/.*\\[\\(.*\\)\\].*/\\1/') ;; esac
    if echo "$v" 2>/dev/null > "$1"; then echo "$1 WRITABLE"; else echo "$1 refused"; fi
}
try_write /proc/sys/kernel/core_pattern
try_write /proc/sys/vm/overcommit_memory
try_write /sys/kernel/mm/transparent_hugepage/enabled
for q in /sys/block/*/queue/read_ahead_kb; do try_write "$q"; break; done
if [ -w /proc/sysrq-trigger ] && ( : > /proc/sysrq-trigger ) 2>/dev/null; then echo "sysrq WRITABLE"; else echo "sysrq refused"; fi
for f in /proc/keys /proc/timer_list; do [ -e "$f" ] && echo "$f has $(cat $f 2>/dev/null | wc -c) bytes"; done
"""


@pytest.mark.parametrize("opts", [(), ("--contain",), ("-C",), ("--userns",)], ids=["default", "contain", "containall", "userns"])
def test_root_payload_cannot_change_kernel_settings(run_as, sifbox_cli, shared_tmp, action_images: ActionImages,
                                                    opts) -> None:  # fmt: skip
    proc = _run(run_as, ROOT, sifbox_cli, "exec", *opts, str(action_images.sif), "sh", "-c", PROBE,
                conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "WRITABLE" not in proc.stdout, proc.stdout
    assert proc.stdout.count("refused") >= 4, proc.stdout
    for line in proc.stdout.splitlines():
        if line.startswith(("/proc/keys", "/proc/timer_list")):
            assert line.endswith(" 0 bytes"), line  # masked


MASKED = ("/proc/acpi", "/proc/interrupts", "/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/scsi",
          "/sys/firmware")  # fmt: skip


def test_every_mask_is_a_read_only_nosuid_nodev_noexec_mount(run_as, sifbox_cli, shared_tmp,
                                                             action_images: ActionImages) -> None:  # fmt: skip
    # The first mask of each kind (directory, file) is made, the others bind it: each keeps its flags.
    proc = _run(run_as, ROOT, sifbox_cli, "exec", str(action_images.sif), "cat", "/proc/self/mountinfo",
                conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = {fields[4]: fields[5].split(",") for fields in (line.split() for line in proc.stdout.splitlines())}
    masks = [path for path in MASKED if path in seen]
    assert len(masks) >= 3, sorted(seen)  # interrupts, keys, timer_list are in every /proc
    for path in masks:
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(seen[path]), (path, seen[path])


def test_users_cannot_change_kernel_settings(run_as, test_user, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    proc = _run(run_as, test_user, sifbox_cli, "exec", str(action_images.sif), "sh", "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    assert "WRITABLE" not in proc.stdout, proc.stdout


def test_full_capabilities_are_not_contained_and_the_probe_sees_it(run_as, sifbox_cli, shared_tmp,
                                                                   action_images: ActionImages) -> None:  # fmt: skip
    # The control: Apptainer's root container (the documented opt-out) reaches the host's settings.
    conf = _conf(shared_tmp, "root default capabilities = full\n")
    proc = _run(run_as, ROOT, sifbox_cli, "exec", str(action_images.sif), "sh", "-c", PROBE, conf=conf)
    assert proc.returncode == 0, proc.stderr
    assert "/proc/sys/vm/overcommit_memory WRITABLE" in proc.stdout, proc.stdout


# --- 3. mount flags: nosuid, nodev, read-only ---------------------------------------------------------


def _root_options(stdout: str) -> set[str]:
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError(f"no / in mountinfo:\n{stdout}")


@pytest.mark.parametrize("kind", images.KINDS)
def test_container_root_is_read_only_nosuid_nodev(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages,
                                                   kind: str) -> None:  # fmt: skip
    proc = _run(run_as, as_who, sifbox_cli, "exec", str(action_images.kind(kind)), "cat", "/proc/self/mountinfo",
                conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {"ro", "nosuid", "nodev"} <= _root_options(proc.stdout)


def test_writable_sandbox_is_nosuid_nodev(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    sandbox = _sandbox(shared_tmp, action_images)
    subprocess.run(["chown", "-R", f"{as_who.uid}:{as_who.gid}", str(sandbox)], check=True)
    proc = _run(run_as, as_who, sifbox_cli, "exec", "--writable", str(sandbox), "cat", "/proc/self/mountinfo",
                conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    options = _root_options(proc.stdout)
    assert {"nosuid", "nodev", "rw"} <= options, options


@pytest.mark.parametrize("kind", ["sandbox", "sif"])
def test_device_node_in_the_image_is_unusable(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages,
                                              kind: str) -> None:  # fmt: skip
    sandbox = _sandbox(shared_tmp, action_images)
    os.mknod(sandbox / "data/kmsg", 0o666 | 0o020000, os.makedev(1, 11))  # the kernel log's device
    image = sandbox
    if kind == "sif":
        image = images.make_sif(sifbox_cli, images.mksquashfs(sandbox, shared_tmp / "dev.sqfs"), shared_tmp / "dev.sif")
    probe = "if echo sifbox-test > /data/kmsg; then echo OPENED; else echo refused; fi"
    proc = _run(run_as, as_who, sifbox_cli, "exec", str(image), "sh", "-c", probe, conf=_conf(shared_tmp))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused", proc.stdout


@pytest.fixture
def host_dir() -> Path:
    """A directory of the host outside /tmp (a contained root container has its own /tmp)."""
    d = Path(f"/var/lib/sifbox-test-host-{os.getpid()}")
    d.mkdir(mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_root_sees_the_host_read_only_and_a_minimal_dev(run_as, sifbox_cli, shared_tmp, host_dir: Path,
                                                        action_images: ActionImages) -> None:  # fmt: skip
    host_file = host_dir / "host-file"
    host_file.write_text("host\n")
    probe = ("if touch new-file 2>/dev/null; then echo CWD-WRITABLE; fi; cat host-file; "
             "if touch /root/.sifbox-test 2>/dev/null; then echo HOME-WRITABLE; fi; "
             f"touch /tmp/private-{os.getpid()} && echo tmp-ok; ls /dev | tr '\\n' ' '")  # fmt: skip
    proc = run_as(ROOT, [sifbox_cli, "-c", str(_conf(shared_tmp)), "exec", str(action_images.sif), "sh", "-c", probe],
                  env=env_for(ROOT), cwd=str(host_dir), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "WRITABLE" not in proc.stdout, proc.stdout
    assert "host\n" in proc.stdout and "tmp-ok" in proc.stdout, proc.stdout
    assert not (host_dir / "new-file").exists() and not Path(f"/tmp/private-{os.getpid()}").exists()
    devices = set(proc.stdout.split("tmp-ok\n")[1].split())
    assert "vda" not in devices and "kmsg" not in devices and "loop-control" not in devices, devices
    assert {"null", "zero", "urandom", "tty"} <= devices
    # An explicit bind is as asked: writable.
    proc = _run(run_as, ROOT, sifbox_cli, "exec", "-B", f"{shared_tmp}:/out", str(action_images.sif),
                "touch", "/out/asked", conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (shared_tmp / "asked").exists()


def test_root_payload_sees_no_host_process(run_as, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    proc = _run(run_as, ROOT, sifbox_cli, "exec", str(action_images.sif), "sh", "-c",
                "ls -d /proc/[0-9]* | wc -l; kill -0 1 && echo pid1-is-ours", conf=_conf(shared_tmp))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    count = int(proc.stdout.split()[0])
    assert count <= 4, proc.stdout  # sifbox's PID 1, the shell, ls (and wc)


# --- root's capabilities -----------------------------------------------------------------------------


def _cap_eff(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError(stdout)


BOUNDED = {0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 29, 31}  # chown dac_override fowner fsetid kill setgid setuid setpcap
#                                                     net_bind_service sys_chroot audit_write setfcap


def _bounding() -> set[int]:
    """The capabilities sifbox itself may have here (this machine's bounding set)."""
    got = int(next(line for line in open("/proc/self/status") if line.startswith("CapBnd:")).split()[1], 16)
    return {n for n in range(64) if got >> n & 1}


@pytest.mark.parametrize(("directive", "opts", "expected"), [
    ("default", (), BOUNDED),
    ("default", ("--net", "--network", "none"), BOUNDED | {13}),
    ("no", (), set()),
    ("full", (), set(range(41))),
    ("default", ("--keep-privs",), set(range(41))),
    ("default", ("--no-privs",), set()),
    ("default", ("--drop-caps", "CAP_CHOWN"), BOUNDED - {0}),
    ("no", ("--add-caps", "CAP_CHOWN,net_raw"), {0, 13}),
])  # fmt: skip
def test_root_capability_sets(run_as, sifbox_cli, shared_tmp, action_images: ActionImages, directive, opts,
                              expected) -> None:  # fmt: skip
    conf = _conf(shared_tmp, f"root default capabilities = {directive}\n")
    proc = _run(run_as, ROOT, sifbox_cli, "exec", *opts, str(action_images.sif), "cat", "/proc/self/status", conf=conf)
    assert proc.returncode == 0, proc.stderr
    got = _cap_eff(proc.stdout)
    assert {n for n in range(64) if got >> n & 1} == expected & _bounding(), hex(got)


def test_capability_file_mode(run_as, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    conf = _conf(shared_tmp, "root default capabilities = file\n")
    cap_file = shared_tmp / "capability.json"
    cap_file.write_text('{"users": {"root": ["CAP_NET_BIND_SERVICE"]}, "groups": {"root": ["CAP_CHOWN"]}}')
    cap_file.chmod(0o644)
    proc = _run(run_as, ROOT, sifbox_cli, "exec", str(action_images.sif), "cat", "/proc/self/status", conf=conf)
    assert proc.returncode == 0, proc.stderr
    assert _cap_eff(proc.stdout) == (1 << 10) | (1 << 0)


def test_admin_workflows_work_as_root(run_as, sifbox_cli, shared_tmp, action_images: ActionImages) -> None:
    """chown and seteuid in a writable sandbox (what apt-get needs), a port below 1024."""
    sandbox = _sandbox(shared_tmp, action_images)
    with open(sandbox / "etc/passwd", "a") as f:
        f.write("worker:x:4321:4321::/tmp:/bin/sh\n")
    conf = _conf(shared_tmp)
    script = ("touch /owned && chown 4321:4321 /owned && stat -c %u /owned && "
              "busybox su -s /bin/sh worker -c 'id -u' && "
              "(busybox nc -l -p 873 -e echo port-ok & sleep 0.3; busybox nc 127.0.0.1 873 </dev/null; wait)")  # fmt: skip
    proc = _run(run_as, ROOT, sifbox_cli, "exec", "--writable", str(sandbox), "sh", "-c", script, conf=conf)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4321", "4321", "port-ok"], proc.stdout
    assert (sandbox / "owned").stat().st_uid == 4321


# --- 5. configuration a root-run sifbox trusts ----------------------------------------------------------


@pytest.mark.parametrize("flaw", ["user-owned", "world-writable"])
def test_root_refuses_a_configuration_another_user_controls(run_as, sifbox_cli, shared_tmp, test_user,
                                                            action_images: ActionImages, flaw: str) -> None:  # fmt: skip
    conf = _conf(shared_tmp, "root default capabilities = full\n")
    if flaw == "user-owned":
        os.chown(conf, test_user.uid, test_user.gid)
    else:
        conf.chmod(0o666)
    for how in ("-c", "env"):
        extra = {"SIFBOX_CONFIG_FILE": str(conf)} if how == "env" else {}
        argv = [sifbox_cli, *(["-c", str(conf)] if how == "-c" else []), "exec", str(action_images.sif), "true"]
        proc = run_as(ROOT, argv, env=env_for(ROOT, **extra), timeout=LAUNCH_TIMEOUT)
        assert proc.returncode == 125, proc.stderr
        assert proc.stderr.startswith(f"sifbox: error: can't read configuration `{conf}`: it ")
        assert "Traceback" not in proc.stderr
    # The user runs with their own file: it can only restrict themselves.
    proc = run_as(test_user, [sifbox_cli, "-c", str(conf), "exec", str(action_images.sif), "true"],
                  env=env_for(test_user), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_root_refuses_an_ecl_another_user_controls(run_as, sifbox_cli, shared_tmp, test_user,
                                                   action_images: ActionImages) -> None:  # fmt: skip
    conf = _conf(shared_tmp)
    ecl = shared_tmp / "ecl.toml"
    ecl.write_text("activated = false\n")
    os.chown(ecl, test_user.uid, test_user.gid)
    proc = _run(run_as, ROOT, sifbox_cli, "exec", str(action_images.sif), "true", conf=conf)
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith(f"sifbox: error: can't read ECL configuration `{ecl}`: it is owned by uid")


@pytest.mark.parametrize(("directive", "said"), [("default", "contained: "), ("full", "NOT CONTAINED: ")])
def test_config_check_says_whether_root_containers_are_contained(run_as, sifbox_cli, shared_tmp, directive,
                                                                 said) -> None:  # fmt: skip
    conf = _conf(shared_tmp, f"root default capabilities = {directive}\n")
    proc = _run(run_as, ROOT, sifbox_cli, "config", "check", conf=conf)
    assert proc.returncode == 0, proc.stderr
    assert said in " ".join(proc.stdout.split()), proc.stdout
    import json

    proc = _run(run_as, ROOT, sifbox_cli, "config", "check", "--json", conf=conf)
    assert json.loads(proc.stdout)["root containers contained"] is (directive != "full")
