"""The admission store against hostile local users.

The daemon starts as root and serves every local user: each test here is an attack on it
(its start-up, its descriptors, its disk, its SBOM reader, its protocol, its audit log),
played as root and as the unprivileged test user where a user would play it. The daemon
must refuse, stay up, serve the others, and say so in its audit log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.images import make_sif, mksquashfs, popen_as, user_named
from tests.integration.store_daemon import (  # noqa: F401 - fixtures
    DPKG_CLEAN,
    OTHER_USER,
    STORE_USER,
    children_of,
    cmdline,
    images,
    other_user,
    rootfs,
    start_store,
    store_account,
    wait_for,
)

pytestmark = pytest.mark.integration

#: Opens N connections to the socket and holds them until its standard input closes;
#: prints how many connected, failed, and were answered "busy".
FLOOD = r"""
import json, resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
path, n = sys.argv[1], int(sys.argv[2])
held, failed = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)  # blocking: waits while the backlog is full
    try:
        s.connect(path)
        held.append(s)
    except OSError:
        failed += 1
        s.close()
time.sleep(0.5)
busy = 0
for s in held:
    s.setblocking(False)
    try:
        busy += bool(json.loads(s.recv(4096)).get("busy"))
    except (OSError, ValueError):
        pass
print(len(held), failed, busy, flush=True)
sys.stdin.read()
"""


def _flood(who, store, count: int) -> tuple[subprocess.Popen[str], list[int]]:  # type: ignore[no-untyped-def]
    proc = popen_as(who, ["/usr/bin/python3", "-c", FLOOD, str(store.socket), str(count)],
                    stdin=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, [int(x) for x in line.split()]


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def _other(who):  # type: ignore[no-untyped-def]
    """Root for the test user, the test user for root."""
    return user_named("root") if not who.is_root else user_named(os.environ.get("SIFBOX_TEST_USER", "sifbox-test"))


def _raw(store, payload: bytes, fds: list[int] | None = None) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """Send `payload` (and `fds`) as root over a raw connection; the daemon's reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(store.socket))
        try:
            if fds:
                socket.send_fds(s, [payload], fds)
            else:
                s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (and closed) before the whole request was sent
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return json.loads(data)  # type: ignore[no-any-return]


# --- start-up as root ------------------------------------------------------------------------


def test_start_up_follows_no_link_of_the_store_user(run_as, start_store) -> None:  # type: ignore[no-untyped-def]
    """The store user owns its log directory: its log, swapped for a link to a root file,
    must not make root chown that file at the next start."""
    store = start_store()
    store.stop()
    victim = store.base / "victim"
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    ln = run_as(STORE_USER, ["ln", "-sfn", str(victim), str(store.audit)])
    assert ln.returncode == 0, ln.stderr
    err = store.refused_start()
    assert "the audit log" in err and "is a symbolic link" in err, err
    assert (victim.stat().st_uid, victim.stat().st_mode & 0o777) == (0, 0o600)
    assert victim.read_text() == "root's own\n"


@pytest.mark.parametrize("which", ["socket", "root", "audit"])
def test_start_up_refuses_directories_of_other_users(run_as, test_user, start_store, which) -> None:  # type: ignore[no-untyped-def]
    """A socket, store or log directory under a directory an ordinary user owns would let
    that user swap what root then binds, creates or chowns (or serve the socket himself)."""
    store = start_store(start=False)
    userdir = store.base / "userdir"
    userdir.mkdir()
    os.chown(userdir, test_user.uid, test_user.gid)
    where = {"socket": userdir / "store.sock", "root": userdir / "store", "audit": userdir / "log" / "a.log"}
    setattr(store, which, where[which])
    store.write_conf()
    err = store.refused_start()
    assert f"`{userdir}` belongs to uid {test_user.uid}" in err, err
    assert "sifbox: error: can't start the image store:" in err and "Traceback" not in err
    assert os.listdir(userdir) == []  # root made nothing there
    # The user's own links are not followed either.
    run_as(test_user, ["ln", "-s", str(store.base), str(userdir / "store")])
    store.root = userdir / "store" / "inner"
    store.write_conf()
    assert "belongs to uid" in store.refused_start()
    assert not (store.base / "inner").exists()


def test_socket_path_that_is_not_a_socket_is_left_alone(start_store) -> None:  # type: ignore[no-untyped-def]
    store = start_store(start=False)
    (store.base / "run").mkdir()
    precious = store.base / "run" / "precious"
    precious.write_text("keep me\n")
    store.socket = precious
    store.write_conf()
    err = store.refused_start()
    assert f"`{precious}` exists and is not a socket" in err, err
    assert precious.read_text() == "keep me\n"


def test_socket_in_a_directory_of_root(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    """Root's own socket directory: bound as root (nobody else can swap anything there),
    served as the store user; the stale socket is replaced at the next start."""
    store = start_store(start=False)
    (store.base / "run").mkdir(mode=0o755)
    store.start()
    assert store.socket.stat().st_uid == 0 and store.socket.stat().st_mode & 0o777 == 0o666
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "a").returncode == 0
    store.stop()
    assert store.socket.exists()  # the store user may not remove it from root's directory
    store.start()
    assert store.cli_as(run_as, as_who, "info", "a").returncode == 0


def test_store_user_root_is_refused(start_store) -> None:  # type: ignore[no-untyped-def]
    store = start_store(start=False)
    store.user = "root"
    store.write_conf()
    assert "must not do so as root" in store.refused_start()


# --- connections -----------------------------------------------------------------------------


def test_flood_of_idle_connections_stops_nobody(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    """1,200 idle connections of one user (the descriptor limit is 1,024): the daemon stays
    up, holds a few of them, turns the rest away at once, and serves another user."""
    store = start_store(nofile=1024)
    flood, (held, failed, busy) = _flood(as_who, store, 1200)
    try:
        assert store.alive(), store.stderr
        assert store.open_fds() < 200
        other = _other(as_who)
        proc = store.cli_as(run_as, other, "cp", str(images["clean"]), "during-flood")
        assert proc.returncode == 0, proc.stderr
        assert store.alive()
        assert failed == 0 and held == 1200 and busy >= 1200 - 8 - 64, (held, failed, busy)
    finally:
        _end(flood)
    refused = [a for a in store.audit_lines() if a["op"] == "connect"]
    assert refused and refused[0]["by_uid"] == as_who.uid and "busy" in refused[0]["reason"]


#: FLOOD's connections, each from another uid of a user namespace's range (run as its root).
FLOOD_UIDS = FLOOD.replace("        s.connect(path)\n", (
    "        os.seteuid(1 + _ % 60000)\n"
    "        try:\n"
    "            s.connect(path)\n"
    "        finally:\n"
    "            os.seteuid(0)\n")).replace("import json,", "import os, json,")


def test_flood_from_a_user_namespace_range_stops_nobody(run_as, test_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    """A user with a subordinate id range can connect as thousands of uids: none of them has
    a user name, so none is served (or each would count as a user of its own)."""
    if f"{test_user.name}:" not in Path("/etc/subuid").read_text():
        pytest.skip(f"{test_user.name} has no range in /etc/subuid")
    store = start_store(nofile=1024)
    argv = ["unshare", "--map-users=100000,0,65536", "--map-groups=100000,0,65536",
            "--setuid", "0", "--setgid", "0", "--", "/usr/bin/python3", "-c", FLOOD_UIDS,
            str(store.socket), "1200"]  # fmt: skip
    flood = popen_as(test_user, argv, stdin=subprocess.PIPE)
    assert flood.stdout is not None
    line = flood.stdout.readline()
    try:
        held, failed, _busy = (int(x) for x in line.split())
        assert store.alive(), store.stderr
        assert store.open_fds() < 100
        proc = store.cli_as(run_as, test_user, "cp", str(images["clean"]), "during-flood")
        assert proc.returncode == 0, proc.stderr
        assert (held, failed) == (1200, 0)
    finally:
        _end(flood)
    refused = [a for a in store.audit_lines() if a["op"] == "connect"]
    assert refused[0]["reason"] == f"uid {refused[0]['by_uid']} has no user name"
    assert refused[0]["by_uid"] > 100000 and len(refused) < 100  # rate limited as one caller


def test_idle_clients_are_dropped(start_store) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store client timeout = 1\n")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(store.socket))
        started = time.monotonic()
        assert s.recv(100) == b""  # closed by the daemon
        assert time.monotonic() - started < 5
    wait_for(lambda: store.audit_lines(), "the audit line")
    (line,) = store.audit_lines()
    assert (line["op"], line["verdict"], line["reason"]) == ("connect", "refused", "no request within 1 s")


def test_limits_beyond_the_descriptors_are_lowered(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    """Limits set too high for the descriptors the daemon may open: it serves fewer
    connections at once rather than run out of descriptors, and serves again after."""
    store = start_store("store max clients = 500\nstore max clients per user = 500\n"
                        "store client timeout = 60\n", nofile=128)  # fmt: skip
    flood, (held, _failed, busy) = _flood(as_who, store, 150)
    try:
        assert store.alive(), store.stderr
        assert held == 150 and busy == 150 - 4, (held, busy)
        assert store.open_fds() < 100
    finally:
        _end(flood)
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "after-flood")
    assert proc.returncode == 0, proc.stderr
    store.stop()
    assert ("128 open files at most: serving 4 connections at once, not `store max clients = 500`"
            in store.stderr)  # fmt: skip


# --- sizes -----------------------------------------------------------------------------------


def test_sparse_file_is_refused_before_it_is_copied(run_as, as_who, start_store, images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store max size = 1024\n")
    big = shared_tmp / "big.sif"
    assert run_as(as_who, ["truncate", "-s", "1G", str(big)]).returncode == 0
    before = store.written()
    proc = store.cli_as(run_as, as_who, "cp", str(big), "big")
    assert proc.returncode == 255 and "not a SIF" in proc.stderr, proc.stderr
    assert store.written() - before < 1 << 20, "copied before it was checked"
    # A valid SIF, sparse past the size limit: refused from its size, before any copy.
    huge = shared_tmp / "huge.sif"
    assert run_as(as_who, ["cp", str(images["clean"]), str(huge)]).returncode == 0
    assert run_as(as_who, ["truncate", "-s", "2G", str(huge)]).returncode == 0
    proc = store.cli_as(run_as, as_who, "cp", str(huge), "huge")
    assert proc.returncode == 255 and "larger than the store's limit of 1024 MiB" in proc.stderr
    assert store.written() - before < 1 << 20
    lines = store.audit_lines()
    assert [(a["verdict"], a["size"], a["digest"]) for a in lines] == [
        ("refused", 1 << 30, ""), ("refused", 2 << 30, "")]  # fmt: skip
    assert store.leftovers() == []


# --- decompression bombs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(sifbox_cli: str, images) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    base = images["base"]
    out = {}
    # 300 MiB of dpkg status (one package's description, repeated) in about a megabyte.
    root = rootfs(base / "bomb-root", DPKG_CLEAN)
    stanza = "Package: filler\nStatus: install ok installed\nVersion: 1\nDescription: x\n"
    line = " " + "padding " * 127 + "\n"
    with open(root / "var/lib/dpkg/status", "w") as f:
        f.write(DPKG_CLEAN + "\n" + stanza)
        for _ in range((300 << 20) // len(line) + 1):
            f.write(line)
    out["dpkg"] = make_sif(sifbox_cli, mksquashfs(root, base / "bomb.sqfs"), base / "bomb.sif")
    (root / "var/lib/dpkg/status").unlink()
    (base / "bomb.sqfs").unlink()
    # 400 Python distributions.
    root = rootfs(base / "dists-root", DPKG_CLEAN)
    for i in range(400):
        d = root / f"usr/lib/python3/dist-packages/p{i}-1.0.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: p{i}\nVersion: 1.0\n")
    out["dists"] = make_sif(sifbox_cli, mksquashfs(root, base / "dists.sqfs"), base / "dists.sif")
    # A vulnerable package after 17 MiB of description: past the 16 MiB a reader once cut.
    root = rootfs(base / "long-root", DPKG_CLEAN)
    with open(root / "var/lib/dpkg/status", "w") as f:
        f.write(stanza)
        for _ in range(17):
            f.write(" " + "y" * (1 << 20) + "\n")
        f.write("\nPackage: libssl3\nStatus: install ok installed\nArchitecture: amd64\n"
                "Source: openssl\nVersion: 3.0.11-1~deb12u2\n")  # fmt: skip
    out["long"] = make_sif(sifbox_cli, mksquashfs(root, base / "long.sqfs"), base / "long.sif")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return out


def test_decompression_bomb_is_refused_before_extraction(run_as, as_who, start_store, bombs) -> None:  # type: ignore[no-untyped-def]
    assert bombs["dpkg"].stat().st_size < 4 << 20
    store = start_store()
    before = store.written()
    proc = store.cli_as(run_as, as_who, "cp", str(bombs["dpkg"]), "bomb")
    assert proc.returncode == 255, proc.stderr
    assert "can't read the image's packages: 300 MiB of package database files" in proc.stderr
    assert "more than the limit of 256 MiB (a limit against decompression bombs)" in proc.stderr
    assert store.written() - before < 16 << 20  # the copy, not the 300 MiB
    (line,) = store.audit_lines()
    assert line["verdict"] == "refused" and "decompression bombs" in line["reason"]
    assert {"step": "sbom", "result": "fail"} in line["checks"]
    assert store.leftovers() == []


def test_too_many_package_files_are_refused(run_as, as_who, start_store, bombs) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store sbom max files = 100\n")
    proc = store.cli_as(run_as, as_who, "cp", str(bombs["dists"]), "dists")
    assert proc.returncode == 255
    assert "package database files, more than the limit of 100" in proc.stderr, proc.stderr


def test_no_package_hides_past_a_cut(run_as, as_who, start_store, images, bombs) -> None:  # type: ignore[no-untyped-def]
    store = start_store(f"store vulnerability db = {images['db']}\n")
    proc = store.cli_as(run_as, as_who, "cp", str(bombs["long"]), "long")
    assert proc.returncode == 255
    assert "DSA-9001-1 (openssl 3.0.11-1~deb12u2, high)" in proc.stderr, proc.stderr


# --- the audit log ---------------------------------------------------------------------------


def test_refused_requests_are_audited(run_as, test_user, other_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "mine").returncode == 0
    for argv in (("ls", "--user", "root"), ("info", "mine", "--user", test_user.name),
                 ("rm", "mine", "--user", test_user.name)):  # fmt: skip
        proc = store.cli_as(run_as, other_user, *argv)
        assert proc.returncode == 255 and "only root may act on another user's images" in proc.stderr
    assert store.cli_as(run_as, other_user, "rm", "mine").returncode == 255
    assert store.cli_as(run_as, other_user, "cp", str(images["clean"]), "../x").returncode == 255
    theirs = [a for a in store.audit_lines() if a["by"] == OTHER_USER]
    assert [(a["op"], a.get("user"), a["verdict"]) for a in theirs] == [
        ("ls", "root", "refused"), ("info", test_user.name, "refused"),
        ("rm", test_user.name, "refused"), ("rm", OTHER_USER, "refused"),
        ("cp", None, "refused")]  # fmt: skip
    assert all(a["by_uid"] == other_user.uid and a["pid"] > 0 and a["reason"] for a in theirs)
    assert theirs[3]["reason"] == "no image `mine` in your store"
    assert theirs[4]["reason"] == "`../x` is not a valid image name" and theirs[4]["name"] == "../x"
    assert (store.root / test_user.name / "mine.sif").exists()


def test_audit_lines_of_cheap_requests_are_rate_limited(start_store) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    for _ in range(150):
        assert _raw(store, b'{"op": "ls"}')["ok"]
    time.sleep(1.2)
    assert _raw(store, b'{"op": "ls"}')["ok"]
    lines = store.audit_lines()
    assert 60 <= len(lines) < 100  # a burst of 60, then about one a second
    # Nothing is lost silently: the lines that pass count the ones left out.
    assert sum(a.get("suppressed", 0) for a in lines) == 151 - len(lines)
    assert "too many requests from uid 0" in store.stderr


def test_client_text_cannot_forge_log_lines(start_store) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    forged = "sifbox store: cp by root victim/x: admitted"
    reply = _raw(store, json.dumps({"op": "cp", "name": f"x\n{forged}"}).encode())
    assert reply["error"] == "`x\\nsifbox store: cp by root victim/x: admitted` is not a valid image name"
    store.stop()
    assert not any(line.startswith(forged) for line in store.stderr.splitlines()), store.stderr


# --- the protocol ----------------------------------------------------------------------------


def test_malformed_and_huge_requests(start_store) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    big = _raw(store, b'{"op": "ls", "pad": "' + b"a" * 70_000 + b'"}')
    assert big["ok"] is False and big["error"].startswith(("request too large", "malformed request"))
    deep = _raw(store, b'{"op": "ls", "user": ' + b"[" * 30000 + b"]" * 30000 + b"}")
    assert deep == {"ok": False, "error": "malformed request"}
    for payload, error in (
        (b'["op", "ls"]', "malformed request"),
        (b'{"op": ["ls"]}', "unknown request `<list>`"),
        (b'{"op": "ls", "user": 0}', "malformed request: `user` is not a string"),
        (b'{"op": "info", "name": {"a": 1}}', "`<dict>` is not a valid image name"),
        (b'{"op": "rm", "name": ".meta"}', "`.meta` is not a valid image name"),
        (b'{"op": "cp", "name": "x"}', "no image descriptor received"),
    ):
        assert _raw(store, payload)["error"] == error, payload
    assert store.alive()
    assert _raw(store, b'{"op": "ls"}') == {"ok": True, "images": []}


def test_odd_descriptors_are_refused(start_store, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    plain = shared_tmp / "plain.sif"
    plain.write_bytes(b"\0" * 4096)
    r, w = os.pipe()
    a, b = socket.socketpair()
    opened = [os.open("/dev/zero", os.O_RDONLY), r, a.fileno(), os.open(shared_tmp, os.O_RDONLY),
              os.open(plain, os.O_PATH), os.open(plain, os.O_WRONLY)]  # fmt: skip
    try:
        baseline = store.open_fds()
        reasons = [_raw(store, b'{"op": "cp", "name": "odd"}', [fd])["error"] for fd in opened]
        assert reasons == ["not a regular file"] * 4 + ["the image's descriptor is not open for reading"] * 2
        # More descriptors than a request carries: refused, and none of them kept.
        many = _raw(store, b'{"op": "ls"}', [opened[0]] * 200)
        assert many["error"] == "more than one descriptor sent (a request carries one image at most)"
        assert store.open_fds() <= baseline
    finally:
        for fd in (*opened, w):
            if fd != a.fileno():
                os.close(fd)
        a.close()
        b.close()
    assert store.alive()
    assert not [x for x in store.audit_lines() if x["verdict"] == "error"]


# --- the store directory ---------------------------------------------------------------------


def test_user_cannot_touch_the_store_while_it_writes(run_as, test_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store scanner command = /bin/sh -c 'sleep 2' scanner\n")
    client = popen_as(test_user, [store.cli, "-c", str(store.conf), "store", "cp", str(images["clean"]), "app"])
    wait_for(lambda: store.leftovers(), "the candidate's temporary file")
    (tmp,) = store.leftovers()
    udir = store.root / test_user.name
    for argv in (["rm", "-f", tmp], ["touch", str(udir / "x.sif")], ["ln", "-s", "/etc/shadow", str(udir / "x.sif")],
                 ["mv", tmp, str(udir / "app.sif")], ["truncate", "-s", "0", tmp]):  # fmt: skip
        assert run_as(test_user, argv).returncode != 0, argv
    _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert sorted(os.listdir(udir)) == ["app.sif"]


def test_rm_and_ls_wait_for_or_see_past_a_running_cp(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store scanner command = /bin/sh -c 'sleep 2' scanner\n")
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "same").returncode == 0
    client = popen_as(as_who, [store.cli, "-c", str(store.conf), "store", "cp", str(images["clean"]), "same"])
    wait_for(lambda: any("sleep" in cmdline(p) for p in children_of(store.proc.pid)), "the scanner")
    listing = store.cli_as(run_as, as_who, "ls", "--json")
    assert listing.returncode == 0 and [i["name"] for i in json.loads(listing.stdout)] == ["same"]
    assert store.cli_as(run_as, as_who, "info", "same").returncode == 0
    rm = store.cli_as(run_as, as_who, "rm", "same")  # waits for the admission, then removes
    assert rm.returncode == 0, rm.stderr
    _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout) == []
    assert store.leftovers() == []
    ops = [(a["op"], a["verdict"]) for a in store.audit_lines()]
    assert ops[-3:] == [("cp", "admitted"), ("rm", "removed"), ("ls", "listed")]
