"""`sifbox oci`: runc's command line on OCI bundles, checked as runc's own integration tests
(tests/integration/{create,start,state,kill,delete,run,exec,tty}.bats) check runc, as root and
as the unprivileged user (rootless: a user namespace mapping the user to root), and side by
side with runc itself where it is installed (Debian's `runc`): same statuses, same outputs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import images, oci_bundle

CLI = os.environ.get("SIFBOX_CLI", "/usr/local/bin/sifbox")
action_images = images.action_images
RUNC = shutil.which("runc")


@pytest.fixture(scope="module", autouse=True)
def _subreaper() -> None:
    oci_bundle.become_subreaper()


class Runtime:
    """`sifbox oci` or `runc`, with its own state root, run as `who`."""

    def __init__(self, name: str, who: Any, run_as: Any, base: Path) -> None:
        self.name, self.who, self.run_as = name, who, run_as
        self.root = base / f"state-{name}"
        self.argv = [CLI, "oci"] if name == "sifbox" else [RUNC or "runc"]

    def __call__(self, *args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run_as(self.who, [*self.argv, "--root", self.root, *args], **kw)

    def detached(self, *args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """create/run -d: the container keeps the command's stdout, so no pipe for it."""
        err = self.root.parent / f"{self.name}.err"
        with open(err, "w") as f:
            os.chmod(err, 0o666)
            r = self(*args, capture_output=False, stdout=subprocess.DEVNULL, stderr=f, cwd=cwd)
        r.stderr = err.read_text()
        return r

    def state(self, cid: str) -> dict[str, Any] | None:
        r = self("state", cid)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait_status(self, cid: str, want: str, timeout: float = 10) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            status = st["status"] if st else None
            if status == want or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


@pytest.fixture(params=["sifbox", "runc"])
def runtime_name(request: pytest.FixtureRequest) -> str:
    if request.param == "runc" and RUNC is None:
        pytest.skip("runc is not installed (Debian package `runc`)")
    return str(request.param)


def _bundle(base: Path, who: Any, args: list[str], name: str = "bundle", **kw: Any) -> Path:
    return oci_bundle.make(base / name, args, uid=who.uid, gid=who.gid, **kw)


def _runtimes(who: Any, run_as: Any, base: Path) -> list[Runtime]:
    names = ["sifbox"] + (["runc"] if RUNC else [])
    return [Runtime(n, who, run_as, base) for n in names]


# --- create / start / state / kill / delete ------------------------------------------------------


def _lifecycle(rt: Runtime, bundle: Path, base: Path) -> list[object]:
    """create.bats, start.bats, state.bats, kill.bats, delete.bats: what each step reports."""
    seen: list[object] = []
    cid = f"life-{rt.name}"
    pid_file = base / f"{rt.name}.pid"
    r = rt.detached("create", "--bundle", bundle, "--pid-file", pid_file, cid)
    assert r.returncode == 0, r.stderr
    st = rt.state(cid)
    assert st is not None
    pid = int(pid_file.read_text())
    seen += [st["status"], st["pid"] == pid, sorted(st), st["bundle"] == str(bundle), st["id"]]
    seen.append(rt("create", "--bundle", bundle, cid, stdin=subprocess.DEVNULL).returncode != 0)  # id in use
    seen.append(rt("start", cid).returncode)
    seen.append(rt.wait_status(cid, "running"))
    seen.append(rt("start", cid).returncode != 0)  # already running
    seen.append(rt("delete", cid).returncode != 0)  # running: refused without --force
    seen.append(rt("kill", cid, "KILL").returncode)
    seen.append(oci_bundle.reap(pid))  # the container's process ends with SIGKILL's status
    seen.append(rt.wait_status(cid, "stopped"))
    seen.append(rt.state(cid)["pid"])  # type: ignore[index]
    seen.append(rt("kill", cid, "KILL").returncode != 0)  # not running
    seen.append(rt("start", cid).returncode != 0)  # stopped
    seen.append(rt("delete", cid).returncode)
    seen.append(rt.state(cid))
    seen.append(rt("delete", cid).returncode != 0)  # gone
    seen.append(rt("delete", "--force", cid).returncode)  # gone, but --force: fine
    return seen


def test_lifecycle(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    bundle = _bundle(shared_tmp, as_who, ["sleep", "100"])
    results = {rt.name: _lifecycle(rt, bundle, shared_tmp) for rt in _runtimes(as_who, run_as, shared_tmp)}
    ours = results["sifbox"]
    assert ours[:5] == ["created", True, ["bundle", "created", "id", "ociVersion", "owner", "pid", "rootfs",
                                           "status"], True, "life-sifbox"]  # fmt: skip
    assert ours[5:] == [True, 0, "running", True, True, 0, -9, "stopped", 0, True, True, 0, None, True, 0]
    if "runc" in results:
        theirs = results["runc"]
        assert ours[:4] == theirs[:4] and ours[5:] == theirs[5:], (ours, theirs)
    left = [p for n in results for p in (shared_tmp / f"state-{n}").glob("life-*")]
    assert left == [], "state left behind"


def test_kill_sigterm_and_delete_force(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """kill.bats: the default signal is SIGTERM (the payload here handles it); delete --force
    kills a running container."""
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"])
    for rt in _runtimes(as_who, run_as, shared_tmp):
        pid_file = shared_tmp / f"{rt.name}.pid"
        assert rt.detached("run", "-d", "--pid-file", pid_file, "t1", cwd=bundle).returncode == 0
        assert rt.wait_status("t1", "running") == "running"
        assert rt("kill", "t1").returncode == 0
        assert oci_bundle.reap(int(pid_file.read_text())) == 7, rt.name
        assert rt.wait_status("t1", "stopped") == "stopped"
        assert rt("delete", "t1").returncode == 0
        assert rt.detached("run", "-d", "--pid-file", pid_file, "t2", cwd=bundle).returncode == 0
        assert rt("delete", "--force", "t2").returncode == 0, rt.name
        oci_bundle.reap(int(pid_file.read_text()))
        assert rt.state("t2") is None


# --- run: exit statuses and what the process sees ------------------------------------------------

PROBE = ("id; hostname; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status | grep -v CapAmb; ls /dev; "
         "cat /proc/self/uid_map; ls /proc/self/fd; readlink /proc/self/cwd; readlink /proc/self/exe; "
         "touch /proc/sys/kernel/x 2>/dev/null || echo proc-sys-ro; cat /proc/kcore 2>&1 | wc -c; "
         "echo x > /sys/x 2>/dev/null || echo sys-ro; ulimit -n; umask; env | sort; "
         "grep -c . /proc/self/mountinfo >/dev/null && echo ok")


@pytest.mark.parametrize("args, status", [(["sh", "-c", "exit 42"], 42), (["sh", "-c", "kill -9 $$; exit 5"], 5),
                                          (["true"], 0), (["/bin/nonexistent"], None)])  # fmt: skip
def test_run_exit_status(as_who: Any, run_as: Any, shared_tmp: Path, args: list[str], status: int | None) -> None:
    """run.bats: the container's status is `run`'s; a missing program is an error of the runtime.
    The process is PID 1 of its PID namespace: its own SIGKILL can't end it."""
    bundle = _bundle(shared_tmp, as_who, args)
    for rt in _runtimes(as_who, run_as, shared_tmp):
        r = rt("run", f"x-{rt.name}", cwd=bundle)
        if status is None:
            assert r.returncode != 0 and "nonexistent" in r.stderr, (rt.name, r.stderr)
        else:
            assert r.returncode == status, (rt.name, r.stderr)
        assert rt.state(f"x-{rt.name}") is None  # run deletes what it created


def test_run_sees_what_runc_gives(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """The same bundle, the same view from inside: identity, hostname, capabilities, no new
    privileges, the devices, the uid map, no leaked descriptor, cwd, /proc/sys and /sys read-only,
    /proc/kcore masked."""
    def edit(doc: dict[str, Any]) -> None:
        doc["hostname"] = "oci-probe"

    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", PROBE], edit=edit)
    extra = os.open("/dev/null", os.O_RDONLY)  # an open descriptor of the caller must not leak in
    try:
        out = {rt.name: rt("run", "probe", cwd=bundle, pass_fds=(extra,)) for rt in _runtimes(as_who, run_as, shared_tmp)}
    finally:
        os.close(extra)
    ours = out["sifbox"]
    assert ours.returncode == 0, ours.stderr
    lines = ours.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0") and lines[1] == "oci-probe" and "HOME=/root" in lines
    assert "CapBnd:\t00000000200004" + "20" in ours.stdout and "NoNewPrivs:\t1" in ours.stdout
    assert "proc-sys-ro" in lines and "sys-ro" in lines and lines[-1] == "ok"
    assert "/bin/busybox" in lines  # /proc/self/exe: the program, never a host binary
    fds = lines[lines.index("/") - 4 : lines.index("/")]
    assert fds == ["0", "1", "2", "3"], ours.stdout  # 3: ls's own
    if "runc" in out:
        assert out["runc"].returncode == 0, out["runc"].stderr
        assert ours.stdout == out["runc"].stdout


# --- console socket ---------------------------------------------------------------------------------


def _console(rt: Runtime, bundle: Path, base: Path) -> str:
    """tty.bats / recvtty: the pty master comes through the console socket (SCM_RIGHTS)."""
    path = base / f"console-{rt.name}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)
    server.listen(1)
    err = base / f"{rt.name}.err"
    with open(err, "w") as f:
        os.chmod(err, 0o666)
        user = [] if rt.who.is_root else ["runuser", "-u", rt.who.name, "--"]
        create = subprocess.Popen([*user, *rt.argv, "--root", str(rt.root), "create", "--bundle", str(bundle),
                                   "--console-socket", str(path), "--pid-file", str(base / "c.pid"), "tty1"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)  # fmt: skip
    server.settimeout(30)
    conn, _ = server.accept()
    _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    conn.close()
    server.close()
    assert create.wait(30) == 0, err.read_text()
    assert len(fds) == 1
    master = fds[0]
    assert rt("start", "tty1").returncode == 0
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the pty's other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    oci_bundle.reap(int((base / "c.pid").read_text()))
    assert rt("delete", "--force", "tty1").returncode == 0
    return out.decode()


def test_console_socket(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", "tty; test -t 0 && test -t 1 && echo both-ttys"],
                     terminal=True)  # fmt: skip
    outs = {rt.name: _console(rt, bundle, shared_tmp) for rt in _runtimes(as_who, run_as, shared_tmp)}
    assert outs["sifbox"].split() == ["/dev/pts/0", "both-ttys"], outs
    if "runc" in outs:
        assert outs["sifbox"] == outs["runc"]


def test_terminal_needs_console_socket(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    bundle = _bundle(shared_tmp, as_who, ["true"], terminal=True)
    rt = Runtime("sifbox", as_who, run_as, shared_tmp)
    r = rt.detached("create", "--bundle", bundle, "c1")
    assert r.returncode != 0 and "--console-socket" in r.stderr
    assert rt.state("c1") is None


# --- exec, ps, list ---------------------------------------------------------------------------------


def test_exec_ps_list(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """exec.bats: a process joins the running container (its PID namespace: it sees the payload),
    its status passes through; ps.bats, list.bats."""
    bundle = _bundle(shared_tmp, as_who, ["sleep", "100"])
    for rt in _runtimes(as_who, run_as, shared_tmp):
        pid_file = shared_tmp / f"{rt.name}.pid"
        assert rt.detached("run", "-d", "--pid-file", pid_file, "e1", cwd=bundle).returncode == 0
        r = rt("exec", "e1", "sh", "-c", "ps -o comm | grep -c sleep; id -u; echo $HOME; exit 3")
        assert (r.returncode, r.stdout.split()) == (3, ["1", "0", "/root"]), (rt.name, r.stdout, r.stderr)
        r = rt("exec", "e1", "/bin/nonexistent")
        assert r.returncode != 0, rt.name
        if rt.name == "sifbox" or as_who.is_root:  # runc's ps reads cgroups, which rootless runc has none of
            ps = rt("ps", "--format", "json", "e1")
            assert ps.returncode == 0 and len(json.loads(ps.stdout)) == 1, (rt.name, ps.stdout)
        listed = json.loads(rt("list", "--format", "json").stdout)
        assert [(c["id"], c["status"]) for c in listed] == [("e1", "running")]
        assert rt("list", "-q").stdout.split() == ["e1"]
        assert rt("delete", "--force", "e1").returncode == 0
        oci_bundle.reap(int(pid_file.read_text()))


# --- hostile bundles ----------------------------------------------------------------------------


@pytest.mark.parametrize("mount", [
    {"destination": "/proc/self/attr", "type": "tmpfs", "source": "tmpfs"},
    {"destination": "/proc/sys", "type": "bind", "source": "/tmp", "options": ["rbind"]},
    {"destination": "/proc/../proc/sysrq-trigger", "type": "bind", "source": "/dev/null", "options": ["bind"]},
])  # fmt: skip
def test_mount_into_proc_refused(as_who: Any, run_as: Any, shared_tmp: Path, mount: dict[str, Any]) -> None:
    """CVE-2019-19921's family: nothing may be mounted over /proc's files (a fake /proc/self/attr
    would defeat LSM labels). Refused before any namespace exists, and logged as runc logs."""
    bundle = _bundle(shared_tmp, as_who, ["true"], edit=lambda doc: doc["mounts"].append(mount))
    rt = Runtime("sifbox", as_who, run_as, shared_tmp)
    log = shared_tmp / "log.json"
    r = rt("--log", log, "--log-format", "json", "run", "p1", cwd=bundle)
    assert r.returncode != 0 and "inside /proc" in r.stderr and r.stderr.startswith("sifbox: error: can't ")
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "inside /proc" in entry["msg"]
    assert rt.state("p1") is None


def test_symlinked_destination_stays_inside(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """A mount whose destination runs through a symlink of the rootfs pointing out of it (absolute,
    or `..` past the root) lands inside the root, as runc's securejoin makes it."""
    outside = shared_tmp / "outside"
    outside.mkdir(mode=0o777)

    def edit(doc: dict[str, Any]) -> None:
        doc["mounts"].append({"destination": "/escape/m", "type": "tmpfs", "source": "tmpfs"})
        doc["mounts"].append({"destination": "/up/m2", "type": "tmpfs", "source": "tmpfs"})

    for rt in _runtimes(as_who, run_as, shared_tmp):
        bundle = _bundle(shared_tmp, as_who, ["sh", "-c", "touch /escape/m/a /up/m2/b && echo done"],
                         name=f"b-{rt.name}", edit=edit)  # fmt: skip
        (bundle / "rootfs" / "escape").symlink_to(outside)
        (bundle / "rootfs" / "up").symlink_to("../../../../../../" + str(outside))
        r = rt("run", "s1", cwd=bundle)
        assert (r.returncode, r.stdout) == (0, "done\n"), (rt.name, r.stderr)
        assert list(outside.iterdir()) == [], rt.name


def test_host_binaries_unreachable(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """CVE-2019-5736: no process of the container can write a host binary through /proc/PID/exe
    (the payload runs through sifbox's sealed trampoline; sifbox's own processes in the container
    are not dumpable as root, and root-owned host files to a user)."""
    script = ("for p in /proc/[0-9]*; do (echo x >> $p/exe) 2>/dev/null && echo WROTE $p; "
              "readlink $p/exe; done; true")
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", script])
    rt = Runtime("sifbox", as_who, run_as, shared_tmp)
    r = rt("run", "h1", cwd=bundle)
    assert r.returncode == 0, r.stderr
    assert "WROTE" not in r.stdout
    assert "python" not in r.stdout if as_who.is_root else True


@pytest.mark.parametrize("device, reason", [
    ({"path": "/etc/shadow", "type": "c", "major": 1, "minor": 3}, "not a device path under /dev"),
    ({"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}, "not a device path under /dev"),
    ({"path": "/dev/fifo", "type": "p", "major": 0, "minor": 0}, "only c, u and b devices"),
    ({"path": "/dev/nothing", "type": "c", "major": 4095, "minor": 4095}, "the host has no such device"),
])  # fmt: skip
def test_bad_devices_refused(as_who: Any, run_as: Any, shared_tmp: Path, device: dict[str, Any], reason: str) -> None:
    bundle = _bundle(shared_tmp, as_who, ["true"], edit=lambda doc: doc["linux"].setdefault("devices", []).append(device))
    r = Runtime("sifbox", as_who, run_as, shared_tmp)("run", "d1", cwd=bundle)
    assert r.returncode != 0 and reason in r.stderr, r.stderr


def test_device_is_bound(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """linux.devices: the host's node of that major:minor appears at the path given."""
    device = {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 438}
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", "echo x > /dev/mynull && stat -c %t:%T /dev/mynull"],
                     edit=lambda doc: doc["linux"].setdefault("devices", []).append(device))  # fmt: skip
    r = Runtime("sifbox", as_who, run_as, shared_tmp)("run", "d2", cwd=bundle)
    assert (r.returncode, r.stdout) == (0, "1:3\n"), r.stderr


def test_rootless_needs_user_namespace(test_user: Any, run_as: Any, shared_tmp: Path) -> None:
    bundle = oci_bundle.make(shared_tmp / "b", ["true"], edit=None)
    for path in [bundle, *bundle.rglob("*")]:
        os.lchown(path, test_user.uid, test_user.gid)
    r = Runtime("sifbox", test_user, run_as, shared_tmp)("run", "r1", cwd=bundle)
    assert r.returncode != 0 and "no user namespace" in r.stderr, r.stderr


def test_features(run_as: Any) -> None:
    r = run_as(None, [CLI, "oci", "features"])
    doc = json.loads(r.stdout)
    assert "mount" in doc["linux"]["namespaces"] and "CAP_SYS_ADMIN" in doc["linux"]["capabilities"]


@pytest.mark.parametrize("fd", range(3, 13))
def test_cwd_through_a_leaked_descriptor(as_who: Any, run_as: Any, shared_tmp: Path, fd: int) -> None:
    """CVE-2024-21626: a working directory that is a link to /proc/self/fd/N, where N is a
    descriptor of the runtime's (the bundle's rootfs, the state directory...), must not put the
    process in a directory of the host: refused, or a directory of the container."""
    (shared_tmp / "HOST-MARKER").touch()

    def edit(doc: dict[str, Any]) -> None:
        doc["process"]["cwd"] = "/work"

    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", "ls -a . .. ../.. ../../.."], edit=edit)
    (bundle / "HOST-MARKER").touch()
    (bundle / "rootfs" / "work").symlink_to(f"/proc/self/fd/{fd}")
    r = Runtime("sifbox", as_who, run_as, shared_tmp)("run", "w1", cwd=bundle)
    for name in ("HOST-MARKER", "config.json", "rootfs", "state-sifbox", "etc/passwd"):
        assert name not in r.stdout, (r.stdout, r.stderr)
    refused = ("outside the container", "working directory", "does not exist in the container")
    assert r.returncode == 0 or any(why in r.stderr for why in refused), r.stderr
    direct = Runtime("sifbox", as_who, run_as, shared_tmp)
    with open(bundle / "config.json") as f:
        doc = json.load(f)
    doc["process"]["cwd"] = f"/proc/self/fd/{fd}"
    (bundle / "config.json").write_text(json.dumps(doc))
    r = direct("run", "w2", cwd=bundle)
    assert r.returncode != 0 and "inside /proc" in r.stderr


def test_seccomp_profile_as_runc(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """linux.seccomp of config.json (seccomp.bats): compiled with libseccomp, loaded before the
    process's exec; the same errors as under runc, and exec'd processes are filtered too."""
    pytest.importorskip("sifbox.security.seccomp").binding()
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                            {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                            {"names": ["no_such_syscall_here"], "action": "SCMP_ACT_KILL"}]}  # fmt: skip
    script = "mkdir /tmp/x; chmod 600 /bin; grep -E '^Seccomp(_filters)?:' /proc/self/status; sleep 100"

    def edit(doc: dict[str, Any]) -> None:
        doc["linux"]["seccomp"] = profile

    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", script], edit=edit)
    seen = {}
    for rt in _runtimes(as_who, run_as, shared_tmp):
        pid_file = shared_tmp / f"{rt.name}.pid"
        err = shared_tmp / f"{rt.name}.out"
        with open(err, "w") as f:
            os.chmod(err, 0o666)
            r = rt("run", "-d", "--pid-file", pid_file, "sc1", cwd=bundle, capture_output=False,
                   stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
        assert r.returncode == 0, (rt.name, err.read_text())
        x = rt("exec", "sc1", "sh", "-c", "mkdir /tmp/y")
        deadline = time.monotonic() + 10
        while "Seccomp" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt("delete", "--force", "sc1").returncode == 0
        oci_bundle.reap(int(pid_file.read_text()))
        seen[rt.name] = (err.read_text(), x.returncode, x.stderr)
    out, status, stderr = seen["sifbox"]
    assert "Operation not permitted" in out and "Function not implemented" in out and "Seccomp:\t2" in out
    assert status != 0 and "Operation not permitted" in stderr
    if "runc" in seen:
        assert out == seen["runc"][0]
        assert status == seen["runc"][1]


def test_state_directory_planted_by_another(test_user: Any, run_as: Any, shared_tmp: Path) -> None:
    """A --root that others can write (or a link to one) is refused: its state decides which
    processes kill and delete signal."""
    bundle = _bundle(shared_tmp, test_user, ["true"])
    planted = shared_tmp / "planted"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    (shared_tmp / "link").symlink_to(planted)
    for root in (planted, shared_tmp / "link"):
        r = run_as(test_user, [CLI, "oci", "--root", root, "run", "p1"], cwd=bundle)
        assert r.returncode != 0 and "can't use the state directory" in r.stderr, r.stderr
        assert list(planted.iterdir()) == []


@pytest.mark.parametrize("link", ["/proc", "proc/self", "../proc/sys"])
def test_mount_led_into_proc_by_a_symlink(as_who: Any, run_as: Any, shared_tmp: Path, link: str) -> None:
    """CVE-2019-19921: a destination that is no /proc path, but a symlink of the rootfs leading
    into /proc, would let a bind cover /proc (a fake procfs, LSM attributes): refused."""
    source = shared_tmp / "fake"
    source.mkdir(mode=0o755)

    def edit(doc: dict[str, Any]) -> None:
        doc["mounts"].append({"destination": "/vol", "type": "bind", "source": str(source), "options": ["rbind"]})

    for rt in _runtimes(as_who, run_as, shared_tmp):
        bundle = _bundle(shared_tmp, as_who, ["true"], name=f"b-{rt.name}", edit=edit)
        (bundle / "rootfs" / "vol").symlink_to(link)
        r = rt("run", "v1", cwd=bundle)
        if rt.name == "sifbox":
            assert r.returncode != 0 and "leads it into /proc" in r.stderr, r.stderr
        else:
            assert r.returncode != 0, (rt.name, r.stderr)  # runc refuses it too


def test_process_user_and_capabilities_as_runc(run_as: Any, shared_tmp: Path) -> None:
    """process.user (uid, gid, additionalGids) and process.capabilities, as root: the same
    identity and capability sets as under runc."""
    from tests.integration.images import user_named

    root = user_named("root")

    def edit(doc: dict[str, Any]) -> None:
        doc["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [10, 20]}
        doc["process"]["capabilities"]["bounding"] = ["CAP_CHOWN", "CAP_KILL"]

    bundle = _bundle(shared_tmp, root, ["sh", "-c", "id; grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status"], edit=edit)
    outs = {rt.name: rt("run", "u1", cwd=bundle) for rt in _runtimes(root, run_as, shared_tmp)}
    assert outs["sifbox"].returncode == 0, outs["sifbox"].stderr
    assert outs["sifbox"].stdout.splitlines()[0] == "uid=1000 gid=1001 groups=10,20"
    assert "CapBnd:\t0000000000000021" in outs["sifbox"].stdout
    if "runc" in outs:
        assert outs["sifbox"].stdout == outs["runc"].stdout


def test_exec_tty_console_socket(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """exec --detach --tty --console-socket (tty.bats, containerd's `ctr task exec -t`): the exec'd
    process runs on a pty of the container whose master comes through the socket; its status is
    that of the process named in --pid-file."""
    bundle = _bundle(shared_tmp, as_who, ["sleep", "100"])
    outs = {}
    for rt in _runtimes(as_who, run_as, shared_tmp):
        pid_file = shared_tmp / f"{rt.name}.pid"
        assert rt.detached("run", "-d", "--pid-file", pid_file, "t1", cwd=bundle).returncode == 0
        path = shared_tmp / f"exec-{rt.name}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o777)
        server.listen(1)
        user = [] if as_who.is_root else ["runuser", "-u", as_who.name, "--"]
        exec_pid = shared_tmp / f"{rt.name}-exec.pid"
        proc = subprocess.Popen([*user, *rt.argv, "--root", str(rt.root), "exec", "--detach", "--pid-file",
                                 str(exec_pid), "--tty", "--console-socket", str(path), "t1", "sh", "-c",
                                 "tty; test -t 1 && echo on-a-tty; exit 5"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        server.settimeout(30)
        try:
            conn, _ = server.accept()
        except TimeoutError:
            proc.kill()
            pytest.fail(f"{rt.name} exec did not connect: {proc.communicate()}")
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        server.close()
        out = b""
        while True:
            try:
                chunk = os.read(fds[0], 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(fds[0])
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        assert oci_bundle.reap(int(exec_pid.read_text())) == 5, rt.name  # runc's exec -d: as containerd runs it
        outs[rt.name] = out.decode().split()
        assert rt("delete", "--force", "t1").returncode == 0
        oci_bundle.reap(int(pid_file.read_text()))
    assert outs["sifbox"][1:] == ["on-a-tty"] and outs["sifbox"][0].startswith("/dev/pts/"), outs
    if "runc" in outs:
        assert outs["sifbox"] == outs["runc"]


def test_mount_options_as_runc(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """Mount options: ro and noexec on tmpfs and binds, the tmpfs's mode and size (mounts.bats)."""
    data = shared_tmp / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)

    def edit(doc: dict[str, Any]) -> None:
        doc["mounts"] += [
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["noexec", "mode=700", "size=4m"]},
            {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "noexec"]},
            {"destination": "/ro", "type": "bind", "source": str(data), "options": ["rbind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=4m"]},
        ]  # fmt: skip

    script = ("cp /bin/busybox /scratch/true && (/scratch/true 2>/dev/null || echo scratch-noexec); "
              "stat -c %a /scratch; cp /bin/busybox /data/true && (/data/true 2>/dev/null || echo data-noexec); "
              "cp /bin/busybox /tmp/true && /tmp/true && echo tmp-exec; "
              "touch /ro/x 2>/dev/null || echo ro; head -c 5m /dev/zero > /scratch/big 2>/dev/null || echo full")
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", script], edit=edit)
    outs = {}
    for rt in _runtimes(as_who, run_as, shared_tmp):
        r = rt("run", "m1", cwd=bundle)
        outs[rt.name] = (r.returncode, r.stdout)
        (data / "true").unlink(missing_ok=True)
    assert outs["sifbox"] == (0, "scratch-noexec\n700\ndata-noexec\ntmp-exec\nro\nfull\n"), outs
    if "runc" in outs:
        assert outs["sifbox"] == outs["runc"]


def test_mknod_gives_no_device(run_as: Any, shared_tmp: Path) -> None:
    """Without a device cgroup, a root container given CAP_MKNOD (containerd's default set has
    it) could make a node of the host's disk: every mount of the container is nodev, so a node it
    makes opens nothing. Only the devices of the config (bound) work."""
    from tests.integration.images import user_named

    root = user_named("root")
    st = os.stat("/dev/null")
    disk = next((d for d in ("/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0") if os.path.exists(d)), None)
    major, minor = (os.major(os.stat(disk).st_rdev), os.minor(os.stat(disk).st_rdev)) if disk else (7, 0)

    def edit(doc: dict[str, Any]) -> None:
        doc["process"]["capabilities"]["bounding"] += ["CAP_MKNOD", "CAP_SYS_ADMIN"]
        doc["root"]["readonly"] = False

    script = (f"for d in /dev/x /tmp/x /x; do mknod $d b {major} {minor} && "
              f"(head -c 1 $d >/dev/null 2>&1 && echo OPENED $d || echo refused $d); done; "
              f"mknod /dev/n c {os.major(st.st_rdev)} {os.minor(st.st_rdev)} && (echo > /dev/n) 2>/dev/null || echo null-refused")
    bundle = _bundle(shared_tmp, root, ["sh", "-c", script], edit=edit)
    r = Runtime("sifbox", root, run_as, shared_tmp)("run", "k1", cwd=bundle)
    assert "OPENED" not in r.stdout, r.stdout
    assert r.stdout.split().count("refused") == 3 and "null-refused" in r.stdout, (r.stdout, r.stderr)


def test_spec_then_run(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """`sifbox oci spec [--rootless]` writes what `runc spec [--rootless]` writes (but the
    hostname); a bundle made with it runs."""
    bundle = _bundle(shared_tmp, as_who, ["true"])
    (bundle / "config.json").unlink()
    rootless = [] if as_who.is_root else ["--rootless"]
    r = run_as(as_who, [CLI, "oci", "spec", "--bundle", bundle, *rootless])
    assert r.returncode == 0, r.stderr
    doc = json.loads((bundle / "config.json").read_text())
    doc["process"].update(terminal=False, args=["sh", "-c", "hostname; id -u"])
    (bundle / "config.json").write_text(json.dumps(doc))
    r = Runtime("sifbox", as_who, run_as, shared_tmp)("run", "s1", cwd=bundle)
    assert (r.returncode, r.stdout) == (0, "sifbox\n0\n"), r.stderr
    if RUNC:
        theirs = shared_tmp / "runc-spec"
        theirs.mkdir(mode=0o777)
        theirs.chmod(0o777)
        assert run_as(as_who, [RUNC, "spec", "--bundle", theirs, *rootless]).returncode == 0
        expected = json.loads((theirs / "config.json").read_text())
        doc["process"].update(terminal=True, args=["sh"])
        assert {**doc, "hostname": "runc", "ociVersion": expected["ociVersion"]} == expected


def test_pause_resume(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """pause.bats: pause freezes every process of the container (cgroup freezer), state says
    paused, exec and a plain delete are refused, resume thaws it; delete --force of a paused
    container works. As root (a user without delegated cgroups: refused, as rootless runc)."""
    script = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"

    def edit(doc: dict[str, Any]) -> None:
        doc["root"]["readonly"] = False

    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", script], edit=edit)
    count = bundle / "rootfs" / "tmp" / "count"
    runtimes = _runtimes(as_who, run_as, shared_tmp) if as_who.is_root else [Runtime("sifbox", as_who, run_as, shared_tmp)]
    for rt in runtimes:
        pid_file = shared_tmp / f"{rt.name}.pid"
        assert rt.detached("run", "-d", "--pid-file", pid_file, "p1", cwd=bundle).returncode == 0
        try:
            r = rt("pause", "p1")
            if not as_who.is_root:
                assert r.returncode != 0 and "no freezer cgroup" in r.stderr, r.stderr
                continue
            assert r.returncode == 0, (rt.name, r.stderr)
            assert rt.state("p1")["status"] == "paused"  # type: ignore[index]
            before = count.read_text()
            time.sleep(0.4)
            assert count.read_text() == before, rt.name
            assert rt("exec", "p1", "true").returncode != 0
            assert rt("delete", "p1").returncode != 0
            assert rt("resume", "p1").returncode == 0
            assert rt.wait_status("p1", "running") == "running"
            time.sleep(0.3)
            assert count.read_text() != before, rt.name
            assert rt("resume", "p1").returncode != 0  # not paused
            assert rt("pause", "p1").returncode == 0
        finally:
            assert rt("delete", "--force", "p1").returncode == 0, rt.name
            oci_bundle.reap(int(pid_file.read_text()))
        assert rt.state("p1") is None


def test_sifbox_runc_entry_point(run_as: Any, shared_tmp: Path) -> None:
    """`sifbox-runc ARGS` is `sifbox oci ARGS` (sifbox.cli.main:runc_main): the installed one
    next to the CLI, or this CLI's launcher calling runc_main instead of main."""
    installed = Path(CLI).with_name("sifbox-runc")
    if installed.exists():
        runc_cli = installed
    else:
        text = Path(CLI).read_text()
        if "from sifbox.cli.main import main" not in text:
            pytest.skip(f"{CLI} is not a Python launcher to derive sifbox-runc from")
        runc_cli = shared_tmp / "sifbox-runc"
        runc_cli.write_text(text.replace("from sifbox.cli.main import main", "from sifbox.cli.main import runc_main")
                            .replace("sys.exit(main())", "sys.exit(runc_main())"))  # fmt: skip
        runc_cli.chmod(0o755)
    r = run_as(None, [runc_cli, "--root", shared_tmp / "st", "features"])
    assert r.returncode == 0 and "namespaces" in json.loads(r.stdout)["linux"], r.stderr
    r = run_as(None, [runc_cli, "--root", shared_tmp / "st", "--log", shared_tmp / "log.json", "--log-format", "json",
                      "state", "nothing"])  # fmt: skip
    assert r.returncode == 1 and "container does not exist" in r.stderr
    assert json.loads((shared_tmp / "log.json").read_text())["msg"].endswith("container does not exist")


def test_preserve_fds(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """run.bats/exec.bats `--preserve-fds`: descriptors 3 to 3+N-1 of the caller are the
    process's (here 4 is a pipe the test reads); the others are closed; the same as runc."""
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", "echo run >&4; ls /proc/self/fd; sleep 100"])
    results = {}
    for rt in _runtimes(as_who, run_as, shared_tmp):
        r_fd, w_fd = os.pipe()
        try:
            # the caller's 3 is /dev/null, its 4 the pipe's write end, its 5 something not passed
            wrap = ["bash", "-c", f'exec "$@" 3</dev/null 4>&{w_fd} 5</dev/null {w_fd}>&-', "bash"]
            cid = f"fds-{rt.name}"
            r = run_as(as_who, [*wrap, *rt.argv, "--root", rt.root, "run", "-d", "--preserve-fds", "2",
                                "--bundle", bundle, cid], pass_fds=(w_fd,), capture_output=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            assert r.returncode == 0, rt.name
            r = run_as(as_who, [*wrap, *rt.argv, "--root", rt.root, "exec", "--preserve-fds", "2", cid,
                                "sh", "-c", "echo exec >&4; ls /proc/self/fd >&4"], pass_fds=(w_fd,))  # fmt: skip
            assert r.returncode == 0, (rt.name, r.stderr)
            os.close(w_fd)
            w_fd = -1
            assert rt("delete", "--force", cid).returncode == 0
            with os.fdopen(r_fd, "r") as f:
                r_fd = -1
                results[rt.name] = f.read().split()
        finally:
            for fd in (r_fd, w_fd):
                if fd >= 0:
                    os.close(fd)
    # 5: the directory `ls` reads (a leaked 5 would make it 6)
    assert results["sifbox"] == ["run", "exec", "0", "1", "2", "3", "4", "5"], results
    if "runc" in results:
        assert results["sifbox"] == results["runc"], results
    r = run_as(as_who, [CLI, "oci", "--root", shared_tmp / "st", "run", "--preserve-fds", "99999999", "--bundle",
                        bundle, "x"])  # fmt: skip
    assert r.returncode == 1 and "can't use --preserve-fds `99999999`" in r.stderr, r.stderr


# --- hooks ---------------------------------------------------------------------------------------


def _hooks_bundle(base: Path, who: Any, hooks: dict[str, Any], args: list[str], name: str) -> Path:
    def edit(doc: dict[str, Any]) -> None:
        doc["hooks"] = hooks
        doc["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]})

    return _bundle(base, who, args, name=name, edit=edit)


def test_hooks_order_state_and_place(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """hooks.bats: every kind runs once, in the spec's order, with the state on its stdin (the
    container's id, its pid, the status of that moment); startContainer in the container
    (its path is the container's), the others on the host; poststop at delete. As runc."""
    log = shared_tmp / "hooks.log"
    log.touch(mode=0o666)
    log.chmod(0o666)
    host_hook = shared_tmp / "hook.sh"
    host_hook.write_text(f'#!/bin/sh\nprintf "%s %s %s\\n" "$1" "$HOOKVAR" "$(cat)" >> {log}\n')
    host_hook.chmod(0o755)
    kinds = ["prestart", "createRuntime", "createContainer", "poststart", "poststop"]
    hooks: dict[str, Any] = {k: [{"path": str(host_hook), "args": ["hook.sh", k], "env": [f"HOOKVAR=v-{k}"]}]
                             for k in kinds}  # fmt: skip
    hooks["startContainer"] = [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/start-state"]}]
    bundle = _hooks_bundle(shared_tmp, as_who, hooks, ["cat", "/tmp/start-state"], "hooked")
    seen = {}
    for rt in _runtimes(as_who, run_as, shared_tmp):
        log.write_text("")
        r = rt("run", "--bundle", bundle, f"h-{rt.name}")
        assert r.returncode == 0, (rt.name, r.stderr)
        started = json.loads(r.stdout)
        lines = [ln.split(" ", 2) for ln in log.read_text().splitlines()]
        states = [json.loads(state) for _, _, state in lines]
        assert [(k, v) for k, v, _ in lines] == [(k, f"v-{k}") for k in kinds], (rt.name, lines)
        assert {s["id"] for s in states} | {started["id"]} == {f"h-{rt.name}"}
        pids = [s.get("pid") for s in states] + [started["pid"]]
        assert pids[0] > 1 and pids[1] == pids[3] == pids[0] and pids[4:] == [None, 1], (rt.name, pids)  # 1: inside
        assert states[0]["bundle"] == str(bundle)
        seen[rt.name] = [s["status"] for s in states] + [started["status"]] + [pids[2] == pids[0]]
        assert rt.state(f"h-{rt.name}") is None  # run deletes it
    # createContainer runs on the host, with the host's pid (runc: in the container, pid 1);
    # poststart says `running` (runc: `created`, though the process runs)
    assert seen["sifbox"] == ["creating", "creating", "creating", "running", "stopped", "created", True], seen
    if "runc" in seen:
        assert seen["runc"] == ["creating", "creating", "creating", "created", "stopped", "created", False], seen


@pytest.mark.parametrize("case", ["fails", "timeout", "startContainer-fails"])
def test_hooks_that_fail(as_who: Any, run_as: Any, shared_tmp: Path, case: str) -> None:
    """hooks.bats: a create hook that fails, or outlives its timeout (killed), fails create:
    nothing runs, no state is left; a startContainer hook that fails fails start. As runc."""
    if case == "fails":
        hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}
    elif case == "timeout":
        hooks = {"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}
    else:
        hooks = {"startContainer": [{"path": "/bin/false", "args": ["false"]}]}
    bundle = _hooks_bundle(shared_tmp, as_who, hooks, ["echo", "the process ran"], "bad")
    for rt in _runtimes(as_who, run_as, shared_tmp):
        r = rt("run", "--bundle", bundle, f"bad-{rt.name}")
        assert r.returncode != 0 and "the process ran" not in r.stdout, (rt.name, r.stdout)
        assert rt.state(f"bad-{rt.name}") is None, rt.name
        if rt.name == "sifbox":
            want = {"fails": "the createRuntime hook `/bin/sh` failed with exit status 3",
                    "timeout": "the prestart hook `/bin/sleep` did not end within its timeout (1 s)",
                    "startContainer-fails": "the startContainer hook `/bin/false` failed with exit status 1"}[case]
            assert want in r.stderr, r.stderr


def test_hooks_refused_in_config(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    for bad, why in (({"prestart": [{"path": "relative/hook"}]}, "no absolute `path`"),
                     ({"poststart": [{"path": "/bin/true", "timeout": -1}]}, "must be a positive number"),
                     ({"prestart": [{"path": "/bin/true", "env": ["NOEQUALS"]}]}, "NAME=VALUE"),
                     ({"prestart": {"path": "/bin/true"}}, "must be a list")):  # fmt: skip
        bundle = _hooks_bundle(shared_tmp, as_who, bad, ["true"], f"cfg{len(why)}")
        r = run_as(as_who, [CLI, "oci", "--root", shared_tmp / "st", "run", "--bundle", bundle, "c"])
        assert r.returncode != 0 and why in r.stderr, (bad, r.stderr)


# --- update, events ------------------------------------------------------------------------------


def test_update_and_events(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """update.bats, events.bats: `update` changes the limits of a running container (options,
    or linux.resources from a file), `events --stats` reads them back with the usage; as runc.
    A user without delegated cgroup controllers is refused with the reason."""
    bundle = _bundle(shared_tmp, as_who, ["sleep", "100"])
    resources = shared_tmp / "resources.json"
    resources.write_text(json.dumps({"memory": {"limit": 100 << 20}, "pids": {"limit": 30}}))
    resources.chmod(0o644)
    seen = {}
    runtimes = _runtimes(as_who, run_as, shared_tmp) if as_who.is_root else [Runtime("sifbox", as_who, run_as, shared_tmp)]
    for rt in runtimes:
        cid = f"up-{rt.name}"
        assert rt.detached("run", "-d", "--bundle", bundle, cid).returncode == 0
        try:
            r = rt("update", "--memory", "64m", "--pids-limit", "50", "--cpu-quota", "50000", cid)
            if not as_who.is_root:
                assert r.returncode != 0 and "can't update the resources of container" in r.stderr, r.stderr
                assert "controller" in r.stderr
                return
            assert r.returncode == 0, (rt.name, r.stderr)
            ev = json.loads(rt("events", "--stats", cid).stdout)
            got = [ev["type"], ev["id"] == cid, ev["data"]["memory"]["usage"]["limit"], ev["data"]["pids"]["limit"],
                   ev["data"]["pids"]["current"], ev["data"]["cpu"]["usage"]["total"] > 0]  # fmt: skip
            assert rt("update", "-r", resources, cid).returncode == 0
            ev = json.loads(rt("events", "--stats", cid).stdout)
            got += [ev["data"]["memory"]["usage"]["limit"], ev["data"]["pids"]["limit"]]
            seen[rt.name] = got
        finally:
            assert rt("delete", "--force", cid).returncode == 0
        assert rt("update", "--memory", "64m", cid).returncode != 0  # gone
    assert seen["sifbox"] == ["stats", True, 64 << 20, 50, 1, True, 100 << 20, 30], seen
    if "runc" in seen:
        assert seen["sifbox"] == seen["runc"], seen
    r = run_as(as_who, [CLI, "oci", "--root", shared_tmp / "st", "update", "--kernel-memory", "5", "x"])
    assert r.returncode != 0 and "--kernel-memory`: not supported" in r.stderr, r.stderr


# --- namespaces by path --------------------------------------------------------------------------


def test_join_namespaces_by_path(as_who: Any, run_as: Any, shared_tmp: Path) -> None:
    """run.bats/netns tests: `linux.namespaces[].path` joins an existing network, IPC and UTS
    namespace (here a root process's) instead of making new ones; the PID namespace stays the
    container's own. A user can't join root's namespaces: refused before anything runs, as by
    runc. Not a namespace file, or a mount/user namespace by path: refused."""
    holder = subprocess.Popen(["unshare", "--net", "--ipc", "--uts", "sleep", "300"])
    try:
        time.sleep(0.2)
        theirs = {n: os.readlink(f"/proc/{holder.pid}/ns/{n}") for n in ("net", "ipc", "uts")}

        def edit(doc: dict[str, Any]) -> None:
            doc.pop("hostname", None)
            doc["linux"]["namespaces"] = [
                {"type": n["type"], "path": f"/proc/{holder.pid}/ns/" + {"network": "net"}.get(n["type"], n["type"])}
                if n["type"] in ("network", "ipc", "uts") else n for n in doc["linux"]["namespaces"]]  # fmt: skip
            if not as_who.is_root:  # a user's config.json: the same namespaces (no network one of its own)
                doc["linux"]["namespaces"].append({"type": "network", "path": f"/proc/{holder.pid}/ns/net"})

        script = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done"
        bundle = _bundle(shared_tmp, as_who, ["sh", "-c", script], name="joined", edit=edit)
        seen = {}
        for rt in _runtimes(as_who, run_as, shared_tmp):
            r = rt("run", "--bundle", bundle, f"j-{rt.name}")
            seen[rt.name] = r.returncode == 0
            if as_who.is_root:
                assert r.returncode == 0, (rt.name, r.stderr)
                lines = r.stdout.split()
                assert lines[:3] == [theirs["net"], theirs["ipc"], theirs["uts"]], (rt.name, lines)
                assert lines[3] != os.readlink(f"/proc/{holder.pid}/ns/pid")
            else:
                assert r.returncode != 0 and r.stdout == "", (rt.name, r.stdout)
                if rt.name == "sifbox":  # can't even open them
                    assert f"can't join the ipc namespace `/proc/{holder.pid}/ns/ipc`: Permission denied" in r.stderr
            assert rt.state(f"j-{rt.name}") is None
        assert len(set(seen.values())) == 1, seen  # sifbox and runc agree
    finally:
        holder.kill()
        holder.wait()
    for path, kind, why in (("/etc/passwd", "network", "can't create namespaces"),
                            ("/proc/1/ns/mnt", "mount", "joining an existing mount namespace")):  # fmt: skip
        def bad(doc: dict[str, Any], path: str = path, kind: str = kind) -> None:
            doc["linux"]["namespaces"] = [n for n in doc["linux"]["namespaces"] if n["type"] != kind] + [
                {"type": kind, "path": path}]  # fmt: skip

        bundle = _bundle(shared_tmp, as_who, ["true"], name=f"bad-{kind}", edit=bad)
        r = run_as(as_who, [CLI, "oci", "--root", shared_tmp / "st", "run", "--bundle", bundle, "b"])
        assert r.returncode != 0 and why in r.stderr, r.stderr


# --- an image as the root file system ------------------------------------------------------------


def _helpers_of(user: Any, image: Path) -> list[int]:
    """squashfuse servers of `user` serving `image` (other sessions' serve theirs)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if (entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().startswith("squashfuse")
                    and os.stat(f"/proc/{entry}").st_uid == user.uid
                    and any(os.readlink(f"/proc/{entry}/fd/{fd}") == str(image)
                            for fd in os.listdir(f"/proc/{entry}/fd"))):  # fmt: skip
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_sif_as_the_root_file_system(as_who: Any, run_as: Any, shared_tmp: Path, action_images: Any) -> None:
    """`root.path` (or `rootfs`) that is a SIF: mounted as sifbox mounts images (kernel SquashFS
    for root, squashfuse for a user), never extracted, the container's writes on a tmpfs; the
    whole create/start/delete life of runc's; nothing left mounted or running afterwards. A file
    that is not an image is refused."""
    before = _helpers_of(as_who, action_images.sif)

    def edit(doc: dict[str, Any]) -> None:
        doc["root"] = {"path": "image.sif", "readonly": False}

    script = "echo written > /tmp/x; cat /tmp/x; ls /.singularity.d >/dev/null && echo image"
    bundle = _bundle(shared_tmp, as_who, ["sh", "-c", script], name="sifroot", edit=edit)
    (bundle / "image.sif").symlink_to(action_images.sif)
    rt = Runtime("sifbox", as_who, run_as, shared_tmp)
    r = rt("run", "--bundle", bundle, "s1")
    assert (r.returncode, r.stdout) == (0, "written\nimage\n"), r.stderr
    assert rt.detached("create", "--bundle", bundle, "s2").returncode == 0
    assert rt.state("s2")["status"] == "created"  # type: ignore[index]
    assert rt("delete", "--force", "s2").returncode == 0
    assert rt.state("s2") is None
    assert not (bundle / "image.sif").is_dir() and os.path.isfile(action_images.sif)
    deadline = time.monotonic() + 5
    while _helpers_of(as_who, action_images.sif) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _helpers_of(as_who, action_images.sif) == before, "a squashfuse server was left running"
    (bundle / "image.sif").unlink()
    (bundle / "image.sif").write_text("not an image\n")
    r = rt("run", "--bundle", bundle, "s3")
    assert r.returncode != 0 and "sifbox: error: " in r.stderr and r.stdout == "", r.stderr
