"""The admission store with its real daemon (`sifbox store serve`, started here as root and
dropping to the store user), and clients as root and as the unprivileged test user.

Hostile clients and hostile images are in test_store_hostile.py."""

from __future__ import annotations

import json
import os
import pwd
import signal
import time

import pytest

from tests.integration.images import popen_as
from tests.integration.store_daemon import (  # noqa: F401 - fixtures
    STORE_USER,
    children_of,
    cmdline,
    images,
    other_user,
    start_store,
    store_account,
)

pytestmark = pytest.mark.integration


# --- tests -----------------------------------------------------------------------------------


def test_cp_ls_info_rm(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "app")
    assert proc.returncode == 0, proc.stderr
    path = store.root / as_who.name / "app.sif"
    assert f"app: admitted as {path} (sha256:" in proc.stdout
    listing = json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout)
    assert [i["name"] for i in listing] == ["app"]
    info = store.cli_as(run_as, as_who, "info", "app", "--json")
    record = json.loads(info.stdout)
    steps = {c["step"]: c["result"] for c in record["checks"]}
    assert steps == {"quota": "pass", "sif": "pass", "signature": "skipped", "sbom": "appended",
                     "scan": "skipped", "external": "skipped"}  # fmt: skip
    # The SBOM object is in the stored image, and `sifbox sbom` shows it as is.
    sbom = run_as(as_who, [store.cli, "sbom", str(path)])
    assert sbom.returncode == 0, sbom.stderr
    assert "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12&upstream=zlib" in sbom.stdout.replace("%3A", ":")
    # The owner can read (and run) the image; the daemon owns it.
    assert run_as(as_who, ["head", "-c", "1", str(path)]).returncode == 0
    assert pwd.getpwuid(path.stat().st_uid).pw_name == STORE_USER
    run = run_as(as_who, [store.cli, "exec", str(path), "/bin/busybox", "echo", "ran"])
    assert run.stdout == "ran\n", run.stderr
    assert store.cli_as(run_as, as_who, "rm", "app").returncode == 0
    assert not path.exists()
    gone = store.cli_as(run_as, as_who, "rm", "app")
    assert gone.returncode == 255 and "no image `app` in your store" in gone.stderr
    # Every request is a line of the audit log, the refused one too.
    verdicts = [(a["op"], a["user"], a["verdict"]) for a in store.audit_lines()]
    assert verdicts == [("cp", as_who.name, "admitted"), ("ls", as_who.name, "listed"),
                        ("info", as_who.name, "shown"), ("rm", as_who.name, "removed"),
                        ("rm", as_who.name, "refused")]  # fmt: skip
    first = store.audit_lines()[0]
    assert first["uid"] == as_who.uid and first["digest"].startswith("sha256:") and first["checks"]
    assert first["by"] == as_who.name and first["by_uid"] == as_who.uid
    # The path is the client's word: the field says so.
    assert first["client_source"] == str(images["clean"]) and "source" not in first
    assert store.audit_lines()[-1]["reason"] == "no image `app` in your store"


def test_non_sif_refused(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    for key in ("text", "clean-sqfs"):
        proc = store.cli_as(run_as, as_who, "cp", str(images[key]), "x")
        assert proc.returncode == 255, proc.stderr
        assert "sifbox: error: can't admit" in proc.stderr and "not a SIF" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not list((store.root / as_who.name).glob("*"))
    assert [a["verdict"] for a in store.audit_lines()] == ["refused", "refused"]


def test_vulnerable_image_refused_above_threshold(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store(f"store vulnerability db = {images['db']}\nstore severity threshold = high\n")
    proc = store.cli_as(run_as, as_who, "cp", str(images["vulnerable"]), "vuln")
    assert proc.returncode == 255
    assert "1 known vulnerability at or above `high`: DSA-9001-1 (openssl 3.0.11-1~deb12u2, high)" in proc.stderr
    assert not (store.root / as_who.name / "vuln.sif").exists()
    # A low-severity finding does not cross the threshold: admitted, and recorded.
    ok = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "ok")
    assert ok.returncode == 0, ok.stderr
    info = json.loads(store.cli_as(run_as, as_who, "info", "ok", "--json").stdout)
    assert [f["id"] for f in info["findings"]] == ["DEBIAN-CVE-2023-0001"]
    refused, admitted = [a for a in store.audit_lines() if a["op"] == "cp"]
    assert refused["verdict"] == "refused" and "DSA-9001-1" in refused["reason"]
    assert admitted["verdict"] == "admitted"


@pytest.mark.slow
def test_21st_image_refused(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store sbom = no\n")
    for i in range(20):
        proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), f"img{i}")
        assert proc.returncode == 0, (i, proc.stderr)
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "img20")
    assert proc.returncode == 255
    assert "quota exceeded: 20 images stored, at most 20 per user" in proc.stderr
    # Replacing an image is not a new one; removing one frees a place.
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "img3").returncode == 0
    assert store.cli_as(run_as, as_who, "rm", "img0").returncode == 0
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "img20").returncode == 0
    assert len(json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout)) == 20


def test_one_user_cannot_read_or_remove_anothers_image(run_as, test_user, other_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "mine").returncode == 0
    path = store.root / test_user.name / "mine.sif"
    read = run_as(other_user, ["cat", str(path)])
    assert read.returncode != 0 and "Permission denied" in read.stderr
    listing = run_as(other_user, ["ls", str(store.root)])
    assert listing.returncode != 0  # the store root cannot be listed
    rm = store.cli_as(run_as, other_user, "rm", "mine")
    assert rm.returncode == 255 and "no image `mine` in your store" in rm.stderr
    assert json.loads(store.cli_as(run_as, other_user, "ls", "--json").stdout) == []
    info = store.cli_as(run_as, other_user, "info", "mine")
    assert info.returncode == 255
    run = run_as(other_user, [store.cli, "exec", str(path), "/bin/true"])
    assert run.returncode != 0
    assert path.exists() and run_as(test_user, ["head", "-c", "1", str(path)]).returncode == 0


def test_restart_loses_nothing(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "keep").returncode == 0
    before = json.loads(store.cli_as(run_as, as_who, "info", "keep", "--json").stdout)
    store.stop()
    down = store.cli_as(run_as, as_who, "ls")
    assert down.returncode == 255 and "the image store is not running" in down.stderr
    assert "hint: start it: `systemctl start sifbox-store`" in down.stderr
    store.start()
    after = json.loads(store.cli_as(run_as, as_who, "info", "keep", "--json").stdout)
    assert after == before
    # Even after SIGKILL.
    store.stop(signal.SIGKILL)
    store.start()
    assert json.loads(store.cli_as(run_as, as_who, "info", "keep", "--json").stdout) == before


def test_killed_cp_leaves_nothing(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store scanner command = /bin/sh -c 'sleep 2' scanner\n")
    client = popen_as(as_who, [store.cli, "-c", str(store.conf), "store", "cp", str(images["clean"]), "half"])
    deadline = time.monotonic() + 20
    while not any("sleep" in cmdline(p) for p in children_of(store.proc.pid)):
        assert time.monotonic() < deadline, "the external scanner never started"
        time.sleep(0.02)
    assert store.leftovers(), "the candidate should be in a temporary file now"
    client.kill()
    client.communicate()
    deadline = time.monotonic() + 20
    while not store.audit_lines():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (line,) = store.audit_lines()
    assert line["verdict"] == "refused" and "client disconnected" in line["reason"]
    assert not (store.root / as_who.name / "half.sif").exists()
    assert store.leftovers() == []
    # A daemon killed in the middle leaves a temporary file, removed when it starts again.
    client = popen_as(as_who, [store.cli, "-c", str(store.conf), "store", "cp", str(images["clean"]), "half"])
    while not any("sleep" in cmdline(p) for p in children_of(store.proc.pid)):
        time.sleep(0.02)
    for p in children_of(store.proc.pid):
        os.kill(p, signal.SIGKILL)
    store.stop(signal.SIGKILL)
    _, err = client.communicate(timeout=20)
    assert client.returncode == 255 and "can't admit" in err
    assert store.leftovers()
    store.start()
    assert store.leftovers() == []
    assert json.loads(store.cli_as(run_as, as_who, "ls", "--json").stdout) == []


def test_signature_required(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store require signature = yes\n")
    proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), "unsigned")
    assert proc.returncode == 255
    try:
        import sifbox.security.verify  # noqa: F401
    except ImportError:
        assert "a signature is required but signature checking is not available" in proc.stderr
    else:
        assert "signature" in proc.stderr
    assert not (store.root / as_who.name / "unsigned.sif").exists()


def test_bad_names_and_missing_files(run_as, as_who, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store()
    for name in ("../escape", ".hidden", "a/b", "x" * 101):
        proc = store.cli_as(run_as, as_who, "cp", str(images["clean"]), name)
        assert proc.returncode == 255 and "is not a valid image name" in proc.stderr, name
    proc = store.cli_as(run_as, as_who, "cp", "/nonexistent.sif")
    assert proc.returncode == 255 and "no such file" in proc.stderr.lower()
    assert store.leftovers() == [] and not (store.root / "escape.sif").exists()


def test_root_looks_after_every_users_images(run_as, test_user, start_store, images) -> None:  # type: ignore[no-untyped-def]
    store = start_store("store max total size = 3\n")
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "a").returncode == 0
    listing = json.loads(store.cli_as(run_as, "root", "ls", "--json", "--user", test_user.name).stdout)
    assert [i["name"] for i in listing] == ["a"]
    denied = store.cli_as(run_as, test_user, "ls", "--user", "root")
    assert denied.returncode == 255 and "only root may act on another user's images" in denied.stderr
    # The per-user size quota (3 MiB; each image is about 1 MiB).
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "b").returncode == 0
    full = store.cli_as(run_as, test_user, "cp", str(images["clean"]), "c")
    assert full.returncode == 255 and "quota exceeded:" in full.stderr and "at most 3 MiB per user" in full.stderr
    assert store.cli_as(run_as, "root", "rm", "a", "--user", test_user.name).returncode == 0
    assert store.cli_as(run_as, test_user, "cp", str(images["clean"]), "c").returncode == 0
    rm = [a for a in store.audit_lines() if a["op"] == "rm"]
    assert rm == [dict(rm[0], user=test_user.name, by="root", verdict="removed")]


def test_bad_requests_and_special_files(run_as, as_who, start_store, images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    import socket

    store = start_store()
    # Garbage, and a client that says nothing and leaves: answered or dropped, daemon lives on.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(store.socket))
    s.sendall(b"\xff not json")
    assert json.loads(s.recv(4096))["error"] == "malformed request"
    s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(store.socket))
    s.sendall(json.dumps({"op": "cp", "name": "nofd"}).encode())
    assert json.loads(s.recv(4096))["error"] == "no image descriptor received"
    s.close()
    socket.socket(socket.AF_UNIX).connect(str(store.socket))
    # A FIFO or a directory is not an image.
    fifo = shared_tmp / "fifo"
    os.mkfifo(fifo, 0o666)
    for path in (fifo, shared_tmp):
        proc = store.cli_as(run_as, as_who, "cp", str(path), "special")
        assert proc.returncode == 255 and "not a regular file" in proc.stderr, proc.stderr
    assert store.cli_as(run_as, as_who, "cp", str(images["clean"]), "fine").returncode == 0
