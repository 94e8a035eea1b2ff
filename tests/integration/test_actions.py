"""`sifbox exec/run/shell/test`: what a payload sees and what the caller gets back.

Written from Apptainer's documented behaviour (shared/reference/apptainer-behaviour.md A.2, A.5,
A.8). Every test runs as root (kernel squashfs on a loop device) and as the unprivileged test user
(user namespace + squashfuse_ll); image kinds (SIF, bare SquashFS, sandbox directory) are varied
only where the kind matters. Assertions are made from inside the container with busybox probes.
After each test, `no_leaks` checks that nothing stayed mounted, running or attached.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import (
    DEFAULT_PATH,
    HELLO,
    KINDS,
    LAUNCH_TIMEOUT,
    PASSWD,
    ActionImages,
    descendants,
    env_for,
    loops_for,
    popen_as,
    run_direct,
    user_named,
)

# Fixtures shared with test_action_errors.py (the images are built once per session).
action_images = images.action_images
no_leaks = images.no_leaks  # autouse: nothing mounted, running or attached after each test

pytestmark = pytest.mark.integration

Launch = Callable[..., "subprocess.CompletedProcess[str]"]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def launch_as(run_as, sifbox_cli, action_images: ActionImages) -> Launch:
    """`launch_as(who, *sifbox_args, env={...}, cwd=..., **run_kw)`: run the installed CLI.

    The environment is the user's own plus `env`; the default working directory is the images
    directory (under /tmp, so available inside the container).
    """

    def launch(who, *args: object, env: dict[str, str] | None = None, **kw: object):
        kw.setdefault("cwd", str(action_images.root))
        kw.setdefault("timeout", LAUNCH_TIMEOUT)
        return run_as(who, [sifbox_cli, *map(str, args)], env=env_for(who, **(env or {})), **kw)

    return launch


@pytest.fixture
def sb(launch_as: Launch, as_who) -> Launch:
    """`sb(*sifbox_args, ...)`: `launch_as` for the parametrized user (root, then test user)."""
    return lambda *args, **kw: launch_as(as_who, *args, **kw)


@pytest.fixture
def sif(action_images: ActionImages) -> str:
    return str(action_images.sif)


def _owned_dir(path: Path, who, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (path / name).write_text(text, encoding="utf-8")
        os.chown(path / name, who.uid, who.gid)
    os.chown(path, who.uid, who.gid)
    path.chmod(0o755)
    return path


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A world-writable host directory outside every path bound by default (/tmp, $HOME, ...)."""
    parent = "/srv" if os.path.isdir("/srv") else "/opt"
    path = Path(tempfile.mkdtemp(prefix="sifbox-itest-", dir=parent))
    path.chmod(0o777)
    (path / "marker").write_text("outside\n", encoding="utf-8")
    (path / "marker").chmod(0o644)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@pytest.fixture
def home_marker(as_who) -> Iterator[str]:
    """A file in the caller's real home directory, with its own name as content."""
    name = f".sifbox-itest-{uuid.uuid4().hex[:8]}"
    path = Path(as_who.home) / name
    path.write_text(name + "\n", encoding="utf-8")
    os.chown(path, as_who.uid, as_who.gid)
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def host_tmp_markers() -> Iterator[tuple[Path, Path]]:
    """One file in the host's /tmp and one in /var/tmp, readable by all."""
    made = []
    for d in ("/tmp", "/var/tmp"):
        fd, name = tempfile.mkstemp(prefix="sifbox-itest-", dir=d)
        os.write(fd, f"host {d}\n".encode())
        os.close(fd)
        os.chmod(name, 0o644)
        made.append(Path(name))
    try:
        yield made[0], made[1]
    finally:
        for p in made:
            p.unlink(missing_ok=True)


def _ok(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, (
        f"status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.splitlines()


# --- image kinds and the four actions ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_exec_runs_in_every_image_kind_as_the_caller(sb, as_who, action_images, kind):
    img = action_images.kind(kind)
    proc = sb("exec", img, "sh", "-c", "id -u; id -g; cat /data/hello.txt")
    assert _ok(proc) == [str(as_who.uid), str(as_who.gid), HELLO.strip()]


def test_exec_static_binary_in_image_without_shell(sb, action_images):
    proc = sb("exec", action_images.static_sif, "/bin/busybox", "echo", "hi")
    assert _ok(proc) == ["hi"]


def test_exec_image_given_by_relative_path(sb, action_images):
    proc = sb("exec", action_images.sif.name, "echo", "relative-ok", cwd=action_images.root)
    assert _ok(proc) == ["relative-ok"]


def test_exec_options_after_the_command_belong_to_the_command(sb, sif):
    proc = sb("exec", sif, "echo", "--env", "X=1", "-B", "/nowhere", "--help")
    assert _ok(proc) == ["--env X=1 -B /nowhere --help"]


def test_exec_keeps_arguments_intact(sb, sif):
    proc = sb("exec", sif, "sh", "-c", 'printf "%s|" "$@"', "argv0", "a b", "", "c'd", "*", "$HOME")
    assert _ok(proc) == ["a b||c'd|*|$HOME|"]


def test_run_passes_arguments_to_runscript(sb, sif):
    proc = sb("run", sif, "a", "--flag", "-B", "x y")
    assert _ok(proc) == ["runscript args: a --flag -B x y"]


def test_shell_runs_sh_reading_stdin(sb, as_who, sif):
    proc = sb("shell", sif, input="echo SHELL-OK; id -u; exit 3\n")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == ["SHELL-OK", str(as_who.uid)]


def test_shell_option_picks_another_shell(sb, sif):
    proc = sb("shell", "--shell", "/bin/othershell", sif, input="echo via-other\n")
    out = _ok(proc)
    assert out[0].startswith("OTHER-SHELL"), out
    assert "via-other" in out


def test_test_runs_the_test_script(sb, sif):
    assert _ok(sb("test", sif)) == ["TEST-OK"]


def test_test_without_test_script_says_so_and_succeeds(sb, action_images):
    proc = sb("test", action_images.notest_sandbox)
    assert proc.returncode == 0, proc.stderr
    assert "no test script found" in (proc.stdout + proc.stderr).lower()
    assert "Traceback" not in proc.stderr


def test_test_without_test_script_needs_no_shell(sb, action_images):
    """Apptainer looks for the test script before it needs a shell: the same answer, exit 0."""
    proc = sb("test", action_images.static_sif)
    assert proc.returncode == 0, proc.stderr
    assert "no test script found" in (proc.stdout + proc.stderr).lower()
    assert "Traceback" not in proc.stderr


# --- how the image is mounted --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "flags", "driver"),
    [
        ("root", [], "kernel"),
        ("root", ["-u"], "fuse"),
        ("root", ["--userns"], "fuse"),
        ("user", [], "fuse"),
    ],
    ids=["root", "root-u", "root-userns", "user"],
)
def test_sif_is_mounted_not_extracted(sifbox_cli, test_user, action_images, who, flags, driver):
    """Root: kernel squashfs on a loop device; unprivileged or --userns: squashfuse_ll.

    Looked at from the host while the payload waits on its stdin: a loop device backed by the
    image, or a squashfuse_ll process under the sifbox process (mounted for this container:
    --no-share; tests/integration/test_shared_mounts.py has the node's shared mount).
    """
    user = user_named("root") if who == "root" else test_user
    argv = [sifbox_cli, "exec", "--no-share", *flags, str(action_images.sif), "sh", "-c", "echo ready; read x"]
    proc = popen_as(
        user, argv, stdin=subprocess.PIPE, cwd=str(action_images.root), env=env_for(user)
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], LAUNCH_TIMEOUT)
        assert ready and proc.stdout.readline() == "ready\n", proc.stderr.read()  # type: ignore[union-attr]
        loops = loops_for([action_images.sif])
        fuse = [c for c in descendants(proc.pid).values() if c.startswith("squashfuse")]
        _, err = proc.communicate("go\n", timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    if driver == "kernel":
        assert len(loops) == 1 and not fuse, (loops, fuse)
    else:
        assert fuse and not loops, (loops, fuse)


# --- default mounts ------------------------------------------------------------------------------


def test_home_is_bound(sb, as_who, sif, home_marker):
    proc = sb("exec", sif, "sh", "-c", f'echo "$HOME"; cat "$HOME/{home_marker}"')
    assert _ok(proc) == [as_who.home, home_marker]


def test_no_home_hides_the_host_home(sb, sif, home_marker):
    probe = f'test -e "$HOME/{home_marker}" && echo visible || echo hidden'
    assert _ok(sb("exec", "--no-home", sif, "sh", "-c", probe)) == ["hidden"]


def test_home_option_binds_src_at_dst(sb, as_who, sif, shared_tmp):
    src = _owned_dir(shared_tmp / "myhome", as_who, {"marker": "custom home\n"})
    proc = sb(
        "exec", "-H", f"{src}:/home/custom", sif, "sh", "-c", 'echo "$HOME"; cat "$HOME/marker"'
    )
    assert _ok(proc) == ["/home/custom", "custom home"]


def test_cwd_outside_bound_paths_is_available(sb, sif, outside_dir):
    proc = sb("exec", sif, "sh", "-c", "pwd; cat marker", cwd=outside_dir)
    assert _ok(proc) == [str(outside_dir), "outside"]


def test_host_tmp_and_var_tmp_are_shared(sb, as_who, sif, host_tmp_markers):
    tmp, var_tmp = host_tmp_markers
    if as_who.is_root:
        # Divergence from Apptainer: a contained root container has its own /tmp and /var/tmp.
        proc = sb("exec", sif, "sh", "-c", f"cat {tmp} {var_tmp} 2>/dev/null; touch /tmp/x && echo private")
        assert _ok(proc) == ["private"]
        return
    proc = sb("exec", sif, "cat", tmp, var_tmp)
    assert _ok(proc) == ["host /tmp", "host /var/tmp"]


def test_proc_sys_dev_are_present(sb, sif):
    probe = (
        "test -r /proc/self/status && echo proc; "
        "test -d /sys/kernel && echo sys; "
        "test -c /dev/null && test -c /dev/zero && test -c /dev/urandom && echo dev; "
        "echo x > /dev/null && echo devnull-writable; "
        "head -c 8 /dev/urandom | wc -c"
    )
    assert _ok(sb("exec", sif, "sh", "-c", probe)) == [
        "proc", "sys", "dev", "devnull-writable", "8"
    ]  # fmt: skip


@pytest.mark.parametrize("flag", ["-c", "--contain"])
def test_contain_gives_private_tmp_and_home_and_minimal_dev(
    sb, as_who, sif, host_tmp_markers, home_marker, flag
):
    probe = (
        "echo tmp:$(ls -A /tmp); echo var_tmp:$(ls -A /var/tmp); "
        f'test -e "$HOME/{home_marker}" && echo home:visible || echo home:hidden; '
        "test -e /dev/loop-control && echo dev:host || echo dev:minimal; "
        "test -c /dev/null && echo x > /dev/null && echo null:ok"
    )
    proc = sb("exec", flag, sif, "sh", "-c", probe, cwd="/")
    out = _ok(proc)
    assert out[:3] == ["tmp:", "var_tmp:", "home:hidden"]
    if os.path.exists("/dev/loop-control"):
        assert out[3] == "dev:minimal"
    assert out[4] == "null:ok"


def test_etc_passwd_is_the_image_one_plus_the_caller(sb, as_who, sif):
    proc = sb("exec", sif, "sh", "-c", "cat /etc/passwd; echo ---; id -un")
    out = _ok(proc)
    sep = out.index("---")
    passwd, name = out[:sep], out[sep + 1 :]
    assert PASSWD.strip() in passwd
    mine = [ln for ln in passwd if ln.split(":")[0] == as_who.name]
    assert len(mine) == 1, passwd
    fields = mine[0].split(":")
    assert fields[2:4] == [str(as_who.uid), str(as_who.gid)]
    assert fields[5] == as_who.home
    assert name == [as_who.name]


def test_etc_hosts_and_resolv_conf_come_from_the_host(sb, sif):
    proc = sb("exec", sif, "sh", "-c", "cat /etc/hosts; echo ===; cat /etc/resolv.conf")
    _ok(proc)
    hosts, _, resolv = proc.stdout.partition("===\n")
    assert hosts == Path("/etc/hosts").read_text()
    assert resolv == Path("/etc/resolv.conf").read_text()


# --- user binds ----------------------------------------------------------------------------------


@pytest.fixture
def bind_srcs(shared_tmp, as_who) -> tuple[Path, Path]:
    """Two host directories owned by the caller, each holding marker-a / marker-b."""
    a = _owned_dir(shared_tmp / "a", as_who, {"marker-a": "from a\n"})
    b = _owned_dir(shared_tmp / "b", as_who, {"marker-b": "from b\n"})
    return a, b


def test_bind_rw_writes_land_on_host_as_the_caller(sb, as_who, sif, bind_srcs):
    a, _ = bind_srcs
    proc = sb(
        "exec", "-B", f"{a}:/mnt", sif, "sh", "-c", "cat /mnt/marker-a; echo new > /mnt/written"
    )
    assert _ok(proc) == ["from a"]
    written = a / "written"
    assert written.read_text() == "new\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (as_who.uid, as_who.gid)


def test_bind_ro_makes_writes_fail(sb, sif, bind_srcs):
    a, _ = bind_srcs
    proc = sb(
        "exec", "--bind", f"{a}:/mnt:ro", sif, "sh", "-c", "cat /mnt/marker-a; touch /mnt/nope"
    )
    assert proc.returncode != 0
    assert proc.stdout.splitlines() == ["from a"]
    assert "read-only file system" in proc.stderr.lower(), proc.stderr
    assert not (a / "nope").exists()


@pytest.mark.parametrize("form", ["comma", "repeated"])
def test_bind_list_comma_separated_or_repeated(sb, sif, bind_srcs, form):
    a, b = bind_srcs
    if form == "comma":
        flags = ["-B", f"{a}:/mnt,{b}:/opt:rw"]
    else:
        flags = ["-B", f"{a}:/mnt", "--bind", f"{b}:/opt:rw"]
    proc = sb("exec", *flags, sif, "sh", "-c", "cat /mnt/marker-a /opt/marker-b; touch /opt/w")
    assert _ok(proc) == ["from a", "from b"]
    assert (b / "w").exists()


def test_bind_src_alone_binds_at_the_same_path(sb, sif, outside_dir):
    proc = sb("exec", "-B", outside_dir, sif, "cat", f"{outside_dir}/marker")
    assert _ok(proc) == ["outside"]


def test_bind_to_destinations_missing_from_the_image(sb, as_who, sif, bind_srcs, shared_tmp):
    a, _ = bind_srcs
    conf = shared_tmp / "bound.conf"
    conf.write_text("a file\n", encoding="utf-8")
    conf.chmod(0o644)
    proc = sb(
        "exec", "-B", f"{a}:/newdir/deeper", "-B", f"{conf}:/etc/sifbox-bound.conf",
        sif, "cat", "/newdir/deeper/marker-a", "/etc/sifbox-bound.conf",
    )  # fmt: skip
    assert _ok(proc) == ["from a", "a file"]


def test_bind_from_sifbox_bind_env(sb, sif, bind_srcs):
    a, b = bind_srcs
    proc = sb(
        "exec",
        sif,
        "cat",
        "/mnt/marker-a",
        "/opt/marker-b",
        env={"SIFBOX_BIND": f"{a}:/mnt,{b}:/opt"},
    )
    assert _ok(proc) == ["from a", "from b"]


def test_bind_from_apptainer_bind_env_only_when_sifbox_bind_unset(sb, sif, bind_srcs):
    a, b = bind_srcs
    probe = "cat /mnt/marker-a; test -e /opt/marker-b && echo b:bound || echo b:unbound"
    alone = sb("exec", sif, "sh", "-c", probe, env={"APPTAINER_BIND": f"{a}:/mnt"})
    assert _ok(alone) == ["from a", "b:unbound"]
    both = sb(
        "exec",
        sif,
        "sh",
        "-c",
        probe,
        env={"SIFBOX_BIND": f"{a}:/mnt", "APPTAINER_BIND": f"{b}:/opt"},
    )
    assert _ok(both) == ["from a", "b:unbound"]


# --- writability of the root ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_image_root_is_read_only(sb, action_images, kind):
    img = action_images.kind(kind)
    proc = sb("exec", img, "sh", "-c", "touch /newfile")
    assert proc.returncode != 0
    assert "read-only file system" in proc.stderr.lower(), proc.stderr
    assert not (action_images.sandbox / "newfile").exists()


def test_writable_tmpfs_writes_succeed_and_vanish(sb, sif):
    probe = "echo x > /newfile && mkdir -p /usr/new/dir && cat /newfile && echo written"
    assert _ok(sb("exec", "--writable-tmpfs", sif, "sh", "-c", probe)) == ["x", "written"]
    again = sb("exec", sif, "sh", "-c", "test -e /newfile && echo present || echo absent")
    assert _ok(again) == ["absent"]


def test_writable_tmpfs_leaves_a_sandbox_untouched(sb, action_images):
    proc = sb("exec", "--writable-tmpfs", action_images.sandbox, "sh", "-c", "echo x > /newfile")
    _ok(proc)
    assert not (action_images.sandbox / "newfile").exists()


# --- environment ---------------------------------------------------------------------------------


def test_host_environment_passes_through(sb, sif):
    proc = sb("exec", sif, "sh", "-c", 'echo "$HOST_ONLY_VAR"', env={"HOST_ONLY_VAR": "from host"})
    assert _ok(proc) == ["from host"]


def test_image_environment_overrides_host(sb, sif):
    proc = sb(
        "exec", sif, "sh", "-c", 'echo "$OVERRIDE_ME $FROM_IMAGE"', env={"OVERRIDE_ME": "host"}
    )
    assert _ok(proc) == ["image image"]


def test_env_option_and_sifboxenv_override_the_image(sb, sif):
    proc = sb(
        "exec", "--env", "OVERRIDE_ME=from cli", sif,
        "sh", "-c", 'echo "$OVERRIDE_ME|$FROM_IMAGE|$NEW_VAR"',
        env={"OVERRIDE_ME": "host", "SIFBOXENV_FROM_IMAGE": "envvar", "SIFBOXENV_NEW_VAR": "new"},
    )  # fmt: skip
    assert _ok(proc) == ["from cli|envvar|new"]


def test_apptainerenv_used_when_sifboxenv_unset(sb, sif):
    env = {
        "APPTAINERENV_OVERRIDE_ME": "apptainer",
        "APPTAINERENV_BOTH": "apptainer",
        "SIFBOXENV_BOTH": "sifbox",
    }
    proc = sb("exec", sif, "sh", "-c", 'echo "$OVERRIDE_ME $BOTH"', env=env)
    assert _ok(proc) == ["apptainer sifbox"]


def test_cleanenv_drops_host_environment(sb, as_who, sif):
    env = {"HOST_ONLY_VAR": "x", "SIFBOXENV_KEPT": "kept", "PATH": "/nonexistent:" + DEFAULT_PATH}
    proc = sb("exec", "--cleanenv", sif, "env", env=env)
    got = dict(ln.split("=", 1) for ln in _ok(proc) if "=" in ln)
    assert "HOST_ONLY_VAR" not in got
    assert got.get("KEPT") == "kept"
    assert got.get("FROM_IMAGE") == "image"
    assert got.get("PATH") == DEFAULT_PATH
    assert got.get("HOME") == as_who.home


def test_container_and_name_are_set_inside(sb, sif):
    probe = 'echo "$SIFBOX_CONTAINER"; echo "$SIFBOX_NAME"; echo "$APPTAINER_CONTAINER"; echo "$APPTAINER_NAME"'
    assert _ok(sb("exec", sif, "sh", "-c", probe)) == [sif, "busybox.sif", sif, "busybox.sif"]


def test_pwd_option_sets_the_working_directory(sb, sif):
    assert _ok(sb("exec", "--pwd", "/data", sif, "sh", "-c", "pwd; cat hello.txt")) == [
        "/data", HELLO.strip()
    ]  # fmt: skip


# --- exit status, stdin, signals -----------------------------------------------------------------


@pytest.fixture
def direct(as_who, sifbox_cli, action_images: ActionImages) -> Launch:
    """`direct(*sifbox_args)`: run the CLI as the parametrized user, without runuser in between."""

    def launch(*args: object, **kw: object) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cwd", str(action_images.root))
        kw.setdefault("env", env_for(as_who))
        return run_direct(as_who, [sifbox_cli, *map(str, args)], **kw)

    return launch


@pytest.mark.parametrize("status", [0, 1, 42])
def test_payload_exit_status_passes_through(direct, sif, status):
    proc = direct("exec", sif, "sh", "-c", f"exit {status}")
    assert proc.returncode == status, proc.stderr
    assert "sifbox: error" not in proc.stderr


@pytest.mark.parametrize("command", ["/no/such/command", "no-such-command"])
def test_command_not_found_is_127(direct, sif, command):
    proc = direct("exec", sif, command)
    assert proc.returncode == 127, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_payload_killed_by_signal_gives_128_plus_n(direct, sif, sig):
    """sifbox itself exits with 128+N (a shell would show 128+N for a death by signal N too,
    but Slurm and waitpid() tell the two apart)."""
    proc = direct("exec", sif, "sh", "-c", f"kill -{sig.name[3:]} $$")
    assert proc.returncode == 128 + sig, (proc.returncode, proc.stderr)


def test_stdin_is_passed_to_the_payload(sb, sif):
    assert _ok(sb("exec", sif, "cat", input="hi\n")) == ["hi"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_to_sifbox_reaches_the_payload(as_who, sifbox_cli, action_images, sig):
    name = sig.name[3:]
    script = f'trap "echo got {name}; exit 7" {name}; echo ready; while :; do sleep 0.1; done'
    # argv0 names the images directory, so no_leaks spots a payload left running.
    argv = [
        sifbox_cli,
        "exec",
        str(action_images.sif),
        "sh",
        "-c",
        script,
        f"{action_images.root}/payload",
    ]
    proc = popen_as(as_who, argv, cwd=str(action_images.root), env=env_for(as_who))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], LAUNCH_TIMEOUT)
        assert ready, "the payload never printed `ready`"
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first == "ready\n", (first, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 7, err
    assert out.splitlines() == [f"got {name}"], (out, err)
