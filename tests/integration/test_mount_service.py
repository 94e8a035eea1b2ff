"""The mount service (`sifbox mounts serve`, sifbox.runtime.mountsvc), started here as root on a
socket of its own, serving a store laid out as the admission store's daemon lays it out (the
service only reads it): per user a directory with NAME.sif, and .meta/USER/NAME.json with the
admitted digest.

* containers of root and of the test user join one kernel mount of an admitted image (locked
  read-only, nosuid, nodev in the user's namespace); `sifbox mounts list` and `sifbox doctor`
  show the service;
* hostile clients: garbage, huge requests, an O_PATH descriptor, two descriptors, a file that
  is not in the store, an image swapped or changed after admission, one the site's policy
  refuses, a flood of connections from one user: each is refused, and the service keeps
  serving the others;
* a socket directory that a user owns (or reaches through a user's link) is refused at start;
* a stopped service leaves no mount and no loop device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images

pytestmark = pytest.mark.integration

#: A raw client: `python3 CLIENT SOCKET OP [PATH] [o_path|two|huge|garbage]`; prints the reply.
CLIENT = r"""
import json, os, socket, sys
sock, op = sys.argv[1], sys.argv[2]
path = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
how = sys.argv[4] if len(sys.argv) > 4 else ""
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(sock)
data = json.dumps({"op": op}).encode()
if how == "huge":
    data = b"{" + b" " * (1 << 20)
elif how == "garbage":
    data = bytes(range(256)) * 4
fds = []
if path:
    fds = [os.open(path, os.O_PATH if how == "o_path" else os.O_RDONLY)]
    if how == "two":
        fds.append(os.open(path, os.O_RDONLY))
try:
    try:
        if how == "silent":
            pass  # connects, says nothing, reads
        elif fds:
            socket.send_fds(s, [data], fds)
        else:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except BrokenPipeError:
        pass  # the service stopped reading: its reply is there all the same
    out = b""
    while chunk := s.recv(65536):
        out += chunk
except OSError as err:
    out = json.dumps({"ok": False, "error": f"client: {err}"}).encode()
print(out.decode().strip() or '{"ok": false, "error": "no reply"}')
"""


class Service:
    def __init__(self, cli: str, base: Path, sif: Path) -> None:
        self.cli, self.base = cli, base
        self.store = base / "store"
        self.run = base / "run"
        self.socket = self.run / "mount.sock"
        self.conf = base / "service.conf"  # the service's: the site's policy is judged there
        self.client_conf = base / "client.conf"
        self.errfile = base / "service.err"
        self.proc: subprocess.Popen[str] | None = None
        common = f"store path = {self.store}\nmount service = yes\nmount service socket = {self.socket}\n"
        self.conf.write_text(common + "mount service idle timeout = 1\nmount service max clients per user = 4\n"
                             "limit container owners = root\n")  # fmt: skip
        # Without the service, a launch mounts the image itself (no node mount holder).
        self.client_conf.write_text(common + "share image mounts = no\n")
        for c in (self.conf, self.client_conf):
            c.chmod(0o644)
        self.digest = self.admit("root", "app", sif)
        self.admit(images.user_named("sifbox-test").name, "app", sif)
        client = base / "client.py"
        client.write_text(CLIENT)
        client.chmod(0o644)
        self.client = client

    def admit(self, user: str, name: str, sif: Path, *, owner: int = 0) -> str:
        """Put `sif` in `user`'s directory of the store, with its admission record."""
        udir = self.store / user
        udir.mkdir(parents=True, exist_ok=True)
        udir.chmod(0o755)
        dest = udir / f"{name}.sif"
        shutil.copyfile(sif, dest)
        dest.chmod(0o644)
        os.chown(dest, owner, owner)
        digest = "sha256:" + hashlib.sha256(dest.read_bytes()).hexdigest()
        meta = self.store / ".meta" / user
        meta.mkdir(parents=True, exist_ok=True)
        (meta / f"{name}.json").write_text(json.dumps({"digest": digest, "stored_digest": digest}))
        return digest

    def start(self) -> None:
        with open(self.errfile, "w") as err:
            self.proc = subprocess.Popen([self.cli, "-c", str(self.conf), "mounts", "serve"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True)  # fmt: skip
        deadline = time.monotonic() + 20
        while "serving" not in self.errfile.read_text():  # not a socket left by a killed one
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the mount service did not start: {self.errfile.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ask(self, run_as, who, op: str, path: str | None = None, how: str = "") -> dict:  # type: ignore[no-untyped-def,type-arg]
        argv = [sys.executable, "-I", str(self.client), str(self.socket), op, path or "", how]
        proc = run_as(who, argv, timeout=LAUNCH_TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def mounts(self, *, own: bool = False) -> list[str]:
        """This namespace's mounts under the service's directory (and, with `own`, its bind
        of the directory itself)."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [p for p in points if p.startswith(f"{self.run}/") or (own and p == str(self.run))]


def _loops_of(paths: list[Path], wait: float = 0.0) -> list[str]:
    """Loop devices backed by files under `paths` (waited for to go for up to `wait` seconds:
    an auto-clearing device goes a little after its last mount)."""
    deadline = time.monotonic() + wait
    while (found := _loops_now(paths)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _loops_now(paths: list[Path]) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"], capture_output=True,
                         text=True, check=False).stdout  # fmt: skip
    return [line for line in out.splitlines() if any(str(p) in line for p in paths)]


@pytest.fixture(scope="module")
def service(sifbox_cli: str, action_images: ActionImages) -> Iterator[Service]:
    if os.geteuid() != 0:
        pytest.skip("the mount service runs as root")
    base = Path(tempfile.mkdtemp(prefix=images.IMAGES_PREFIX + "mountsvc-", dir="/tmp"))
    base.chmod(0o755)
    svc = Service(sifbox_cli, base, action_images.sif)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        left = svc.mounts(own=True)
        loops = _loops_of([svc.store], wait=10)
        shutil.rmtree(base, ignore_errors=True)
    assert left == [] and loops == [], f"left by the mount service: {left} {loops}"


def _launch(run_as, who, svc: Service, image: Path | str, *words: str, conf: Path | None = None):  # type: ignore[no-untyped-def]
    argv = [svc.cli, "-c", str(conf or svc.client_conf), "-v", "exec", str(image), *(words or ("cat", "/data/hello.txt"))]
    return run_as(who, argv, env=env_for(who), timeout=LAUNCH_TIMEOUT)


def _wait_unmounted(svc: Service, limit: float = 30.0) -> list[str]:
    deadline = time.monotonic() + limit
    while svc.mounts() and time.monotonic() < deadline:
        time.sleep(0.05)
    return svc.mounts()


def test_containers_of_every_user_join_one_service_mount(run_as, test_user, service: Service) -> None:
    root = images.user_named("root")
    mine = service.store / "root" / "app.sif"
    theirs = service.store / test_user.name / "app.sif"
    # Root's container runs (and holds the mount) while the user's come and go.
    holding = subprocess.Popen([service.cli, "-c", str(service.client_conf), "-v", "exec", str(mine), "sh", "-c",
                                "cat /data/hello.txt; read line"], env=env_for(root), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holding.stdout is not None and holding.stdout.readline() == "hello from image\n"
        _while_root_holds_it(run_as, test_user, service, theirs)
    finally:
        _, err = holding.communicate("\n", timeout=LAUNCH_TIMEOUT)
    assert holding.returncode == 0, err
    assert "joining the mount service's mount" in err, err
    assert "image driver: shared node mount" in err
    assert "node mount holder" not in err
    # Idle, and no container uses it: unmounted, its loop device gone.
    assert _wait_unmounted(service) == []
    assert _loops_of([service.store], wait=10) == []


def _while_root_holds_it(run_as, test_user, service: Service, theirs: Path) -> None:  # type: ignore[no-untyped-def]
    root = images.user_named("root")
    # The test user's container, of the user's own admitted copy (same bytes): the same mount.
    # Reads of every file, as an interpreter's imports do, then the root's mount flags.
    probe = ("cat /data/hello.txt; for f in /bin/* /data/*; do cat \"$f\" >/dev/null || exit 9; done; "
             "grep ' / ' /proc/self/mountinfo | head -n 1")  # fmt: skip
    second = _launch(run_as, test_user, service, theirs, "sh", "-c", probe)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[0] == "hello from image", second.stdout
    # ro, nosuid, nodev: locked by the kernel in the user's namespace.
    assert {"ro", "nosuid", "nodev"} <= set(lines[1].split()[5].split(",")), lines[1]
    assert "joining the mount service's mount" in second.stderr, second.stderr
    key = service.digest.removeprefix("sha256:")[:40]
    assert sorted(service.mounts()) == sorted([f"{service.run}/.images/{key}", f"{service.run}/0/{key}",
                                               f"{service.run}/{test_user.uid}/{key}"])  # fmt: skip
    assert len(_loops_of([service.store])) == 1
    # `mounts list` shows the service's mount: the user their own, root every user's.
    listed = run_as(test_user, [service.cli, "-c", str(service.client_conf), "mounts", "list", "--json"],
                    env=env_for(test_user))  # fmt: skip
    rows = [r for r in json.loads(listed.stdout) if r["state"] == "service"]
    assert [(r["uid"], r["key"], r["in_use"]) for r in rows] == [(test_user.uid, service.digest, True)], listed.stdout
    listed = run_as(root, [service.cli, "-c", str(service.client_conf), "mounts", "list", "--all"], env=env_for(root))
    assert listed.stdout.count(" service ") == 2, listed.stdout
    # Another user can't reach the user's bind of it.
    assert service.ask(run_as, root, "ping")["ok"] is True
    theirs_dir = service.run / str(test_user.uid) / key
    peek = subprocess.run(["runuser", "-u", "nobody", "--", "ls", str(theirs_dir)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek


def test_doctor_says_whether_the_service_answers(run_as, as_who, service: Service) -> None:
    env = env_for(as_who, SIFBOX_CONFIG_FILE=str(service.client_conf))
    proc = run_as(as_who, [service.cli, "doctor", "--json"], env=env)
    (row,) = [r for r in json.loads(proc.stdout) if r["check"] == "mount-service"]
    assert row["status"] == "ok" and "reachable" in row["detail"], row
    gone = service.base / "gone.conf"
    gone.write_text(service.client_conf.read_text().replace(str(service.socket), str(service.base / "none.sock")))
    gone.chmod(0o644)
    proc = run_as(as_who, [service.cli, "doctor", "--json"], env=env_for(as_who, SIFBOX_CONFIG_FILE=str(gone)))
    (row,) = [r for r in json.loads(proc.stdout) if r["check"] == "mount-service"]
    assert row["status"] == "warn" and "not reachable" in row["detail"], row


@pytest.mark.parametrize(("how", "error"), [
    ("garbage", "malformed request"),
    ("huge", "request too large"),
])  # fmt: skip
def test_hostile_requests_are_refused(run_as, test_user, service: Service, how: str, error: str) -> None:
    reply = service.ask(run_as, test_user, "mount", None, how)
    # A huge request: refused unread, so the reply may be lost to the reset of the connection.
    assert reply["ok"] is False and (error in reply["error"] or how == "huge"), reply
    assert service.alive() and service.ask(run_as, test_user, "ping")["ok"] is True


def test_hostile_descriptors_are_refused(run_as, test_user, service: Service, shared_tmp: Path,
                                         action_images: ActionImages) -> None:  # fmt: skip
    admitted = str(service.store / test_user.name / "app.sif")
    cases = [
        (admitted, "o_path", "not open for reading"),
        (admitted, "two", "too many descriptors"),
        (str(action_images.sif), "", "not an image of the admission store"),
        ("/etc/passwd", "", "not an image of the admission store"),
        (str(service.store), "", "not a regular file"),
    ]
    # A link of the user's to the admitted image is that image: it is the file that counts.
    link = shared_tmp / "link.sif"
    link.symlink_to(admitted)
    for path, how, error in cases:
        reply = service.ask(run_as, test_user, "mount", path, how)
        assert reply["ok"] is False and error in reply["error"], (path, how, reply)
    assert service.ask(run_as, test_user, "mount", str(link))["ok"] is True
    assert service.alive()


def test_an_image_not_admitted_runs_without_the_service(run_as, as_who, service: Service,
                                                        action_images: ActionImages) -> None:  # fmt: skip
    proc = _launch(run_as, as_who, service, action_images.sif)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from image\n"
    assert "not from the mount service: not an image of the admission store" in proc.stderr, proc.stderr


def test_an_image_changed_after_admission_is_refused(run_as, test_user, service: Service,
                                                     action_images: ActionImages) -> None:  # fmt: skip
    root = images.user_named("root")
    # Swapped: another file under the admitted name, the record unchanged.
    digest = service.admit("root", "swapped", action_images.sif)
    shutil.copyfile(action_images.sqfs, service.store / "root" / "swapped.sif")
    # Changed in place: one byte at its end.
    service.admit(test_user.name, "changed", action_images.sif)
    changed = service.store / test_user.name / "changed.sif"
    with open(changed, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    for who, path in ((root, service.store / "root" / "swapped.sif"), (test_user, changed)):
        reply = service.ask(run_as, who, "mount", str(path))
        assert reply["ok"] is False and "changed since the admission store admitted it" in reply["error"], reply
    assert digest != "sha256:" + hashlib.sha256(changed.read_bytes()).hexdigest()


def test_a_record_changed_after_a_mount_is_read_again(run_as, test_user, service: Service,
                                                     action_images: ActionImages) -> None:  # fmt: skip
    """The service keeps the admission records it read while their files are unchanged: a
    record rewritten in place (same size, another digest) is read again, and refused."""
    service.admit(test_user.name, "recorded", action_images.sif)
    image = service.store / test_user.name / "recorded.sif"
    assert service.ask(run_as, test_user, "mount", str(image))["ok"] is True
    record = service.store / ".meta" / test_user.name / "recorded.json"
    text = record.read_text()
    digest = json.loads(text)["stored_digest"]
    other = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with open(record, "r+") as f:  # in place: same inode, same size
        f.write(text.replace(digest, other))
    reply = service.ask(run_as, test_user, "mount", str(image))
    assert reply["ok"] is False and "changed since the admission store admitted it" in reply["error"], reply
    assert _wait_unmounted(service) == []


def test_the_site_policy_of_the_service_is_judged(run_as, test_user, service: Service,
                                                  action_images: ActionImages) -> None:  # fmt: skip
    """The service's sifbox.conf allows images owned by root only; the client's has no limit."""
    service.admit(test_user.name, "theirs", action_images.sif, owner=test_user.uid)
    path = service.store / test_user.name / "theirs.sif"
    reply = service.ask(run_as, test_user, "mount", str(path))
    assert reply["ok"] is False and "owner" in reply["error"], reply
    proc = _launch(run_as, test_user, service, path)
    assert proc.returncode == 0 and proc.stdout == "hello from image\n", proc.stderr
    assert "not from the mount service: can't mount" in proc.stderr, proc.stderr
    assert "mounted for this container alone" in proc.stderr, proc.stderr


def test_a_flood_of_one_user_leaves_the_others_served(run_as, test_user, service: Service) -> None:
    """The test user holds many connections open without a word (more than `mount service max
    clients per user`): theirs past the limit are turned away at once, root is served."""
    script = service.base / "flood.py"
    script.write_text(
        "import socket, sys, time\n"
        "conns = []\n"
        "for _ in range(12):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); conns.append(s)\n"
        "time.sleep(0.5)\n"
        "busy = 0\n"
        "for s in conns:\n"
        "    s.setblocking(False)\n"
        "    try:\n"
        "        busy += b'busy' in s.recv(4096)\n"
        "    except BlockingIOError:\n"
        "        pass\n"
        "print(busy, flush=True)\n"
        "sys.stdin.readline()\n"
    )  # fmt: skip
    script.chmod(0o644)
    argv = ["runuser", "-u", test_user.name, "--", sys.executable, "-I", str(script), str(service.socket)]
    flood = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None
        assert int(flood.stdout.readline()) >= 8  # 12 connections, 4 served at once at most
        reply = service.ask(run_as, images.user_named("root"), "ping")
        assert reply["ok"] is True, reply
        busy = service.ask(run_as, test_user, "ping", None, "silent")
        assert busy["ok"] is False and busy.get("busy") is True, busy
    finally:
        flood.communicate("\n", timeout=30)
    assert service.ask(run_as, test_user, "ping")["ok"] is True


def test_a_launch_turned_away_as_busy_asks_again(run_as, as_who, service: Service) -> None:
    """The ranks of a node ask together: one the service turns away for now (the user's
    `max clients per user` requests are running) asks again and joins the service's mount;
    it does not mount the image a second time (a second page cache of it)."""
    script = service.base / "hold.py"
    script.write_text(
        "import socket, sys, time\n"
        "conns = []\n"
        "for _ in range(4):\n"  # the service's `mount service max clients per user`
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); conns.append(s)\n"
        "time.sleep(0.3)\n"
        "print('holding', flush=True)\n"
        "sys.stdin.readline()\n"
    )  # fmt: skip
    script.chmod(0o644)
    wrap = [] if as_who.uid == 0 else ["runuser", "-u", as_who.name, "--"]
    hold = subprocess.Popen([*wrap, sys.executable, "-I", str(script), str(service.socket)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert hold.stdout is not None and hold.stdout.readline() == "holding\n"
        mine = service.store / ("root" if as_who.uid == 0 else as_who.name) / "app.sif"
        argv = [*wrap, service.cli, "-c", str(service.client_conf), "-v", "exec", str(mine), "cat", "/data/hello.txt"]
        launch = subprocess.Popen(argv, env=env_for(as_who), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(1.0)  # turned away, asking again
        hold.communicate("\n", timeout=30)  # the user's requests end: the service takes the launch's
        out, err = launch.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait()
    assert launch.returncode == 0 and out == "hello from image\n", err
    assert "joining the mount service's mount" in err, err
    assert "not from the mount service" not in err, err
    assert _wait_unmounted(service) == []


def test_a_socket_directory_of_a_user_is_refused(run_as, test_user, sifbox_cli: str, shared_tmp: Path) -> None:
    """Root never makes its socket or mounts where a user could swap them: a directory the
    user owns, or a link the user made."""
    own = shared_tmp / "own"
    own.mkdir()
    os.chown(own, test_user.uid, test_user.gid)
    link = shared_tmp / "link"
    link.symlink_to("/run")
    os.lchown(link, test_user.uid, test_user.gid)
    for sock, error in ((own / "mount.sock", "belongs to uid"), (link / "mount.sock", "symbolic link")):
        conf = shared_tmp / "conf"
        conf.write_text(f"mount service socket = {sock}\n")
        proc = subprocess.run([sifbox_cli, "-c", str(conf), "mounts", "serve"], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        assert proc.returncode != 0, proc.stderr
        assert proc.stderr.startswith("sifbox: error: can't start the mount service: "), proc.stderr
        assert error in proc.stderr, proc.stderr
    assert list(own.iterdir()) == []


def test_only_root_runs_the_service(run_as, test_user, sifbox_cli: str) -> None:
    proc = run_as(test_user, [sifbox_cli, "mounts", "serve"], env=env_for(test_user))
    assert proc.returncode != 0
    assert proc.stderr.startswith("sifbox: error: can't start the mount service: it runs as root"), proc.stderr


def test_a_killed_service_is_cleaned_up(run_as, sifbox_cli: str, action_images: ActionImages) -> None:
    """SIGKILL leaves its mounts: the unit's ExecStopPost script (sifbox/data/sifbox-mount.sh)
    detaches them, and a service started again starts clean; no loop device is left."""
    if os.geteuid() != 0:
        pytest.skip("the mount service runs as root")
    base = Path(tempfile.mkdtemp(prefix=images.IMAGES_PREFIX + "mountsvc-killed-", dir="/tmp"))
    base.chmod(0o755)
    svc = Service(sifbox_cli, base, action_images.sif)
    root = images.user_named("root")
    script = Path(__file__).resolve().parents[2] / "sifbox" / "data" / "sifbox-mount.sh"
    try:
        svc.start()
        assert svc.ask(run_as, root, "mount", str(svc.store / "root" / "app.sif"))["ok"] is True
        assert len(svc.mounts()) == 2
        assert svc.proc is not None
        svc.proc.kill()
        svc.proc.wait()
        assert len(svc.mounts()) == 2  # left by the killed service
        done = subprocess.run(["sh", str(script)], env={**os.environ, "SIFBOX_CONFIG_FILE": str(svc.conf)},
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert svc.mounts() == []
        with open("/proc/self/mountinfo") as f:
            assert not [line for line in f if f" {svc.run} " in line], "the directory's own bind is left"
        assert _loops_of([svc.store], wait=10) == []
        # Killed again with a mount, then started again: it detaches what was left.
        svc.start()
        assert svc.ask(run_as, root, "mount", str(svc.store / "root" / "app.sif"))["ok"] is True
        svc.proc.kill()
        svc.proc.wait()
        svc.start()
        assert svc.mounts() == []
        assert svc.ask(run_as, root, "mount", str(svc.store / "root" / "app.sif"))["ok"] is True
    finally:
        svc.stop()
        left = svc.mounts(own=True)
        shutil.rmtree(base, ignore_errors=True)
    assert left == [] and _loops_of([svc.store], wait=10) == []


def test_a_running_container_or_instance_keeps_the_mount(run_as, as_who, service: Service) -> None:
    """Past the idle timeout, the image stays mounted while a container (an instance) of it
    runs, and is shown in use; once the instance is stopped it goes, and nothing is left."""
    image = service.store / ("root" if as_who.is_root else as_who.name) / "app.sif"
    name = f"msvc{os.getpid()}"
    env = env_for(as_who)
    argv = [service.cli, "-c", str(service.client_conf), "-v", "instance", "start", str(image), name]
    start = run_as(as_who, argv, env=env, timeout=LAUNCH_TIMEOUT)
    try:
        assert start.returncode == 0, start.stderr
        assert "joining the mount service's mount" in start.stderr, start.stderr
        time.sleep(2.5)  # the idle timeout is 1 s
        assert len(service.mounts()) == 2
        joined = run_as(as_who, [service.cli, "-c", str(service.client_conf), "exec", f"instance://{name}", "cat",
                                 "/data/hello.txt"], env=env, timeout=LAUNCH_TIMEOUT)  # fmt: skip
        assert joined.stdout == "hello from image\n", joined.stderr
        listed = run_as(as_who, [service.cli, "-c", str(service.client_conf), "mounts", "list", "--json"], env=env)
        rows = [r for r in json.loads(listed.stdout) if r["state"] == "service"]
        assert [r["in_use"] for r in rows] == [True], listed.stdout
    finally:
        stop = run_as(as_who, [service.cli, "instance", "stop", name], env=env, timeout=LAUNCH_TIMEOUT)
    assert stop.returncode == 0, stop.stderr
    assert _wait_unmounted(service) == []
    assert _loops_of([service.store], wait=10) == []


LOCKED = r"""
import ctypes, os, sys
sys.path.insert(0, sys.argv[1])
from sifbox.runtime import nodemount
reply = nodemount.ask_service(sys.argv[2], "mount", os.open(sys.argv[3], os.O_RDONLY))
assert reply["ok"], reply
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x00020000) == 0  # CLONE_NEWUSER | CLONE_NEWNS
assert libc.mount(reply["path"].encode(), sys.argv[4].encode(), None, 4096, None) == 0, os.strerror(ctypes.get_errno())
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64), ("ns", ctypes.c_uint64)]
for name, bit in (("rdonly", 1), ("nosuid", 2), ("nodev", 4)):
    attr = Attr(0, bit, 0, 0)
    done = libc.syscall(442, -100, sys.argv[4].encode(), 0, ctypes.byref(attr), ctypes.sizeof(attr))  # mount_setattr
    print(name, "cleared" if done == 0 else os.strerror(ctypes.get_errno()))
"""


def test_a_user_cannot_clear_the_locked_flags(run_as, test_user, service: Service, shared_tmp: Path) -> None:
    """The user's own user+mount namespace binds the service's mount (as a launch does): the
    kernel keeps it read-only, nosuid, nodev there. (A detached mount, `open_tree`, handed over
    SCM_RIGHTS would not be: its flags could be cleared. The service never hands one out.)"""
    script = shared_tmp / "locked.py"
    script.write_text(LOCKED)
    target = shared_tmp / "here"
    target.mkdir()
    os.chown(target, test_user.uid, test_user.gid)
    repo = Path(__file__).resolve().parents[2]
    image = service.store / test_user.name / "app.sif"
    proc = run_as(test_user, [sys.executable, "-I", str(script), str(repo), str(service.socket), str(image),
                              str(target)], env=env_for(test_user), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["rdonly Operation not permitted", "nosuid Operation not permitted",
                                           "nodev Operation not permitted"], proc.stdout  # fmt: skip
