"""What a launch leaves behind, and what it needs after pivot_root.

* Every helper (squashfuse_ll, fuse2fs, fuse-overlayfs) is stopped and reaped by sifbox itself:
  run under a child subreaper, nothing is left for it to adopt (a PID 1 that does not reap
  would collect the zombies otherwise).
* Nothing is imported after the container's root replaced the host's: launches through
  `python -m sifbox` from the source files, through the installed launcher with its module
  bundle, and with the bundle missing or stale, as root and as the test user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SUBREAPER = r"""
import ctypes, os, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
status = subprocess.run(sys.argv[1:]).returncode
time.sleep(0.5)
adopted = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == os.getpid():
            adopted.append(stat[stat.index("(") + 1:stat.rindex(")")] + ":" + fields[0])
print("ADOPTED", " ".join(adopted) or "none")
for _ in adopted:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
sys.exit(status)
"""


def _under_subreaper(run_as, who, argv: list[str], **kw):  # type: ignore[no-untyped-def]
    return run_as(who, [sys.executable, "-c", SUBREAPER, *argv], env=env_for(who), timeout=LAUNCH_TIMEOUT, **kw)


@pytest.fixture
def overlays(shared_tmp: Path, action_images: ActionImages) -> dict[str, Path]:
    layer = shared_tmp / "layer"
    (layer / "upper").mkdir(parents=True)
    (layer / "upper/from-layer").write_text("layer\n")
    sqfs = images.mksquashfs(layer / "upper", shared_tmp / "layer.sqfs")
    ext3 = shared_tmp / "layer.img"
    owner = f"{images.user_named('sifbox-test').uid}:{images.user_named('sifbox-test').gid}"
    subprocess.run(["mkfs.ext3", "-q", "-F", "-E", f"root_owner={owner}", str(ext3), "8M"], check=True,
                   capture_output=True)  # fmt: skip
    for path in (layer, layer / "upper", ext3):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    return {"squashfs": sqfs, "ext3": ext3, "dir": layer}


@pytest.mark.parametrize("overlay", [None, "squashfs", "ext3", "dir"])
def test_helpers_are_reaped_by_sifbox(run_as, as_who, sifbox_cli, action_images: ActionImages, overlays,
                                      overlay) -> None:  # fmt: skip
    """Per container (--no-share): nothing outlives the launch."""
    opts = ["--overlay", str(overlays[overlay])] if overlay else []
    proc = _under_subreaper(run_as, as_who, [sifbox_cli, "exec", "--no-share", *opts, str(action_images.sif), "cat",
                                             "/data/hello.txt"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "ADOPTED none", proc.stdout


@pytest.mark.parametrize("overlay", [None, "squashfs", "ext3", "dir"])
def test_shared_mounts_leave_only_their_holder(run_as, as_who, sifbox_cli, action_images: ActionImages, overlays,
                                               overlay) -> None:  # fmt: skip
    """With the node's shared mount: the launch leaves its image's holder alone (detached, it
    goes to the subreaper), never an orphan FUSE server; `mounts prune` ends it."""
    run_as(as_who, [sifbox_cli, "mounts", "prune", "--force"], env=env_for(as_who))
    opts = ["--overlay", str(overlays[overlay])] if overlay else []
    proc = _under_subreaper(run_as, as_who, [sifbox_cli, "exec", *opts, str(action_images.sif), "cat",
                                             "/data/hello.txt"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    left = proc.stdout.splitlines()[-1].split()[1:]
    assert [name.split(":")[0] for name in left] in (["sifbox-holder"], ["none"]), proc.stdout
    prune = run_as(as_who, [sifbox_cli, "mounts", "prune"], env=env_for(as_who))
    assert prune.returncode == 0, prune.stderr


def test_instance_helpers_are_reaped(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    name = f"reap{os.getpid()}"
    start = run_as(as_who, [sifbox_cli, "instance", "start", str(action_images.sif), name], env=env_for(as_who),
                   timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert start.returncode == 0, start.stderr
    proc = _under_subreaper(run_as, as_who, [sifbox_cli, "instance", "stop", name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "ADOPTED none", proc.stdout


# --- imports after pivot_root -----------------------------------------------------------------------


def _venv_of(cli: str) -> tuple[str, str]:
    """(interpreter, site-packages) of the CLI launcher."""
    text = Path(os.path.realpath(cli)).read_text()
    interpreter = text.split("\n", 1)[0][2:].split()[0]
    site = next(line.split('"')[1] for line in text.splitlines() if "sys.path.append(" in line)
    return interpreter, site


@pytest.fixture(scope="module")
def source_copy() -> Path:
    """The package's source files where the test user can read them (the checkout may be 0700)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sifbox-src-", dir="/tmp"))
    shutil.copytree(REPO / "sifbox", base / "sifbox", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


LAUNCHES = [
    ("exec",), ("run",), ("test",), ("exec", "--contain"), ("exec", "--pid"), ("exec", "--writable-tmpfs"),
    ("exec", "--fakeroot"), ("exec", "--no-mount", "proc"),
]  # fmt: skip


@pytest.mark.parametrize("how", ["python-m", "bundle", "no-bundle", "stale-bundle"])
def test_nothing_is_imported_after_the_root_moves(run_as, as_who, sifbox_cli, shared_tmp, action_images: ActionImages,
                                                  source_copy: Path, how: str) -> None:  # fmt: skip
    interpreter, site = _venv_of(sifbox_cli)
    if how == "python-m":
        # The modules come from files (no bundle), as `python -m sifbox` in a checkout.
        launcher = shared_tmp / "sifbox-from-source"
        launcher.write_text(f"#!{interpreter} -IS\nimport sys, runpy\nsys.path[:0] = [{str(source_copy)!r}]\n"
                            f"sys.path.append({site!r})\nrunpy.run_module('sifbox', run_name='__main__')\n")  # fmt: skip
    else:
        text = Path(os.path.realpath(sifbox_cli)).read_text()
        bundle = next((line.split('"')[1] for line in text.splitlines() if "_boot.install(" in line), None)
        if bundle is None:
            pytest.skip("this CLI launcher has no module bundle (a development launcher)")
        if how == "no-bundle":
            text = text.replace(bundle, str(shared_tmp / "missing.bundle"))
        elif how == "stale-bundle":
            stale = shared_tmp / "stale.bundle"
            stale.write_bytes(Path(bundle).read_bytes()[:-100])
            text = text.replace(bundle, str(stale))
        launcher = shared_tmp / "sifbox-launcher"
        launcher.write_text(text)
    launcher.chmod(0o755)
    for words in LAUNCHES:
        if "--fakeroot" in words and as_who.is_root:
            continue
        action, opts = words[0], list(words[1:])
        cmd = ["true"] if action == "exec" else []
        proc = run_as(as_who, [str(launcher), action, *opts, str(action_images.sif), *cmd], env=env_for(as_who),
                      timeout=LAUNCH_TIMEOUT)  # fmt: skip
        assert proc.returncode == 0, (words, proc.stderr)
        assert "Traceback" not in proc.stderr and "ImportError" not in proc.stderr, proc.stderr


# --- the mount work of a launch ---------------------------------------------------------------------


def _traced(run_as, who, argv: list[str], out: Path, calls: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The lines of an strace (`calls` only) of `argv` run as `who`, after an untraced run of it:
    that starts the node mount (strace -f would follow a holder the launch starts, and wait for
    it until its idle timeout)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed, so a launch's system calls can't be counted")
    assert run_as(who, argv, env=env_for(who), timeout=LAUNCH_TIMEOUT).returncode == 0  # the node mount
    proc = run_as(who, [strace, "-f", "-qq", "-o", str(out), "-e", f"trace={calls}", *argv], env=env_for(who),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_text().splitlines()


def test_a_launch_resolves_the_container_root_once(run_as, as_who, sifbox_cli, shared_tmp,
                                                    action_images: ActionImages) -> None:  # fmt: skip
    """The directories above the container root are looked up once per launch, not again for
    every mount point pinned (some 17 mounts for root, 9 for a user)."""
    argv = [sifbox_cli, "exec", str(action_images.sif), "true"]
    lines = _traced(run_as, as_who, argv, shared_tmp / f"trace-{as_who.name}", "chdir,newfstatat,statx,lstat,stat")
    roots = [line.split('"')[1] for line in lines if "chdir(" in line and line.endswith("= 0")]
    root = next(r for r in roots if r.endswith("/root"))  # the move into it: chdir, pivot_root(".", ".")
    parts = root.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        above = "/" + "/".join(parts[:depth])
        looked_up = sum(1 for line in lines if "stat" in line and f'"{above}"' in line)
        assert looked_up <= 4, (above, looked_up)


def test_a_root_container_makes_one_mask_of_each_kind(run_as, sifbox_cli, shared_tmp,
                                                      action_images: ActionImages) -> None:  # fmt: skip
    """Of the masked /proc and /sys paths of a contained root container, one empty file (a bind of
    /dev/null, then made read-only, nosuid, nodev, noexec) and one empty directory (a read-only
    tmpfs) are made; the other masks are binds of them, which keep their flags: no more
    mount_setattr call, no more tmpfs."""
    argv = [sifbox_cli, "exec", str(action_images.sif), "true"]
    lines = _traced(run_as, images.user_named("root"), argv, shared_tmp / "trace-masks", "mount,mount_setattr")
    masked = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
              "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware")  # fmt: skip
    calls = [line for line in lines if any(f'{m}"' in line for m in masked)]
    assert sum("mount_setattr(" in line for line in calls) <= 1, calls
    assert sum('"tmpfs"' in line for line in calls) <= 1, calls


def test_the_staged_passwd_and_group_are_nosuid_nodev_without_a_flag_call(run_as, as_who, sifbox_cli, shared_tmp,
                                                                          action_images: ActionImages) -> None:  # fmt: skip
    """/etc/passwd and /etc/group are binds of files staged in the session's nosuid,nodev tmpfs:
    the binds have those flags from their source, with no mount_setattr call of their own."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed, so a launch's mount calls can't be counted")
    argv = [sifbox_cli, "exec", str(action_images.sif), "true"]
    assert run_as(as_who, argv, env=env_for(as_who), timeout=LAUNCH_TIMEOUT).returncode == 0  # the node mount
    out = shared_tmp / f"trace-staged-{as_who.name}"
    proc = run_as(as_who, [strace, "-f", "-qq", "-o", str(out), "-e", "trace=mount_setattr", sifbox_cli, "exec",
                           str(action_images.sif), "cat", "/proc/self/mountinfo"], env=env_for(as_who),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [line for line in out.read_text().splitlines() if '/etc/passwd"' in line or '/etc/group"' in line]
    assert not calls, calls
    seen = {f[4]: f[5].split(",") for f in (line.split() for line in proc.stdout.splitlines()) if len(f) > 5}
    for path in ("/etc/passwd", "/etc/group"):
        assert {"nosuid", "nodev"} <= set(seen[path]), (path, seen.get(path))


# --- what a joined launch imports, and where --------------------------------------------------------

#: Modules a plain launch that joins its image's node mount has no use for (see
#: tests/unit/test_exec_path_imports.py): GPU devices, encryption, the squashfuse_ll probe
#: (sifbox.formats.elf stays: a user's launch reads its program's libraries ahead, `prefetch`),
#: and `struct`, a file to look for on sys.path (`_struct` is built in).
NOT_ON_A_JOINED_LAUNCH = ("sifbox.hpc.devices", "sifbox.formats.sif.crypt", "binascii", "sifbox.image.squashfuse",
                          "struct")  # fmt: skip

WATCHING_LAUNCHER = r"""#!{interpreter} -IS
import os, sys
sys.path[:0] = [{source!r}]
sys.path.append({site!r})
PARENT = os.getpid()
forked = {{}}

def _after_fork():
    forked.setdefault("at", set(sys.modules))  # kept by the payload forked from the container's PID 1

def _before_fork():
    if "at" in forked:  # the container's PID 1, about to fork the payload
        sys.stderr.write("PID1-IMPORTED " + " ".join(sorted(set(sys.modules) - forked["at"])) + "\n")
        sys.stderr.flush()

os.register_at_fork(before=_before_fork, after_in_child=_after_fork)
real_exit = os._exit

def _exit(status):
    if os.getpid() == PARENT:
        loaded = [m for m in {watched!r} if m in sys.modules]
        sys.stderr.write("LOADED " + " ".join(loaded) + "\n")
        sys.stderr.flush()
    real_exit(status)

os._exit = _exit
from sifbox.cli.main import main
sys.exit(main())
"""


def test_a_joined_launch_imports_what_it_uses_before_it_forks(run_as, as_who, sifbox_cli, shared_tmp,
                                                              action_images: ActionImages,
                                                              source_copy: Path) -> None:  # fmt: skip
    """Nothing a plain launch joining its node mount has no use for is imported, and a root
    container's PID 1 imports nothing after the fork: what it would unmarshal goes to pages
    copied from its parent (copy-on-write), once per launch."""
    interpreter, site = _venv_of(sifbox_cli)
    launcher = shared_tmp / "sifbox-watching"
    launcher.write_text(WATCHING_LAUNCHER.format(interpreter=interpreter, source=str(source_copy), site=site,
                                                 watched=NOT_ON_A_JOINED_LAUNCH))  # fmt: skip
    launcher.chmod(0o755)
    argv = ["exec", str(action_images.sif), "true"]
    for _ in range(3):  # (a test session beside this one may prune the idle holder in between)
        warm = run_as(as_who, [sifbox_cli, *argv], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # the holder runs
        assert warm.returncode == 0, warm.stderr
        proc = run_as(as_who, [str(launcher), "-v", *argv], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        if "joining the node mount holder" in proc.stderr:
            break
    assert "joining the node mount holder" in proc.stderr, proc.stderr
    lines = [line.rstrip() for line in proc.stderr.splitlines()]
    assert "LOADED" in lines, proc.stderr
    pid1 = [line for line in lines if line.startswith("PID1-IMPORTED")]
    assert pid1 == (["PID1-IMPORTED"] if as_who.is_root else []), proc.stderr


def test_mount_points_and_masks_look_at_each_directory_once(run_as, as_who, sifbox_cli, shared_tmp,
                                                            action_images: ActionImages) -> None:  # fmt: skip
    """The mount points the plan needs are looked for in the image's directories once for all of
    them (not once per point: /dev for each device node); a root container's masks and read-only
    paths go through its /proc once for all (not once per path)."""
    argv = [sifbox_cli, "exec", str(action_images.sif), "true"]
    lines = _traced(run_as, as_who, argv, shared_tmp / f"trace-points-{as_who.name}", "chdir,newfstatat,lstat")
    root = next(line.split('"')[1] for line in lines if "chdir(" in line and line.endswith("/root\") = 0"))
    session = os.path.dirname(root)
    looked: dict[str, int] = {}
    for line in lines:
        if "AT_SYMLINK_NOFOLLOW" in line or "lstat(" in line:
            path = line.split('"')[1]
            looked[path] = looked.get(path, 0) + 1
    layers = {p: n for p, n in looked.items() if p.startswith((session + "/image/", session + "/upper/"))}
    assert layers and max(layers.values()) == 1, layers
    if as_who.is_root:
        assert looked.get(root + "/proc", 0) <= 4, looked
