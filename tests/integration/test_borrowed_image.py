"""A launch that joins a node holder takes the image's descriptor from the holder
(sifbox.runtime.nodemount.borrow) instead of opening the image again, as root and as the
test user:

* a joined launch opens nothing of the image (inotify sees no open of it) and runs it;
* the container holds no descriptor of the image;
* an image renamed over the path, again and again, while launches run: each launch runs
  one of the two images, and the one the site refuses never runs;
* a holder's descriptor of another file than the one at the path now is never used, nor
  one opened by another name (a hard link outside the site's allowed paths).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images

pytestmark = pytest.mark.integration

IN_OPEN = 0x20
IN_NONBLOCK = os.O_NONBLOCK
OTHER = "hello from the other image\n"


def _exec(run_as, who, cli, image, *words, conf=None):  # type: ignore[no-untyped-def]
    argv = [cli, "-v", *(("-c", str(conf)) if conf else ()), "exec", str(image), *(words or ("cat", "/data/hello.txt"))]
    return run_as(who, argv, env=env_for(who), timeout=LAUNCH_TIMEOUT)


def _prune(run_as, who, cli) -> None:  # type: ignore[no-untyped-def]
    proc = run_as(who, [cli, "mounts", "prune", "--force"], env=env_for(who), timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def two_images(action_images: ActionImages, sifbox_cli: str) -> Iterator[tuple[Path, Path]]:
    """The test SIF and another one whose /data/hello.txt says OTHER, in a directory of their own."""
    base = action_images.root / "borrowed"
    base.mkdir(mode=0o755)
    root = base / "other-root"
    shutil.copytree(action_images.sandbox, root, symlinks=True)
    (root / "data/hello.txt").write_text(OTHER)
    other = images.make_sif(sifbox_cli, images.mksquashfs(root, base / "other.sqfs"), base / "other.sif")
    one = base / "one.sif"
    shutil.copy2(action_images.sif, one)
    yield one, other
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh(run_as, as_who, sifbox_cli):  # type: ignore[no-untyped-def]
    _prune(run_as, as_who, sifbox_cli)
    yield
    _prune(run_as, as_who, sifbox_cli)


class _Opens:
    """inotify's IN_OPEN events of one file, counted."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert libc.inotify_add_watch(self.fd, str(path).encode(), IN_OPEN) >= 0

    def count(self) -> int:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return 0
        n, at = 0, 0
        while at < len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, at)
            n += bool(mask & IN_OPEN)
            at += 16 + size
        return n

    def close(self) -> None:
        os.close(self.fd)


def test_a_join_opens_nothing_of_the_image(run_as, as_who, sifbox_cli, two_images, fresh) -> None:  # type: ignore[no-untyped-def]
    one, _ = two_images
    first = _exec(run_as, as_who, sifbox_cli, one)
    assert first.returncode == 0 and "started the node mount holder" in first.stderr, first.stderr
    opens = _Opens(one)
    try:
        joined = _exec(run_as, as_who, sifbox_cli, one, "sh", "-c", "cat /data/hello.txt; ls -l /proc/$$/fd/")
        assert joined.returncode == 0, joined.stderr
        assert opens.count() == 0
        assert "the node holder's descriptor of it" in joined.stderr, joined.stderr
        assert "joining the node mount holder" in joined.stderr, joined.stderr
    finally:
        opens.close()
    assert joined.stdout.startswith("hello from image\n"), joined.stdout
    assert "one.sif" not in joined.stdout, joined.stdout  # the payload holds no descriptor of it


def test_launches_at_once_wait_for_the_holder(run_as, as_who, sifbox_cli, two_images, fresh) -> None:  # type: ignore[no-untyped-def]
    """Six launches at once, no holder yet: one starts it, the others wait for it and take
    its descriptor rather than each opening the image (a race may let one more open it)."""
    one, _ = two_images
    opens = _Opens(one)
    argv = [sifbox_cli, "-v", "exec", str(one), "cat", "/data/hello.txt"]
    try:
        procs = [images.popen_as(as_who, argv, env=env_for(as_who), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(6)]  # fmt: skip
        done = [(p, *p.communicate(timeout=LAUNCH_TIMEOUT)) for p in procs]
        count = opens.count()
    finally:
        opens.close()
    for proc, out, err in done:
        assert proc.returncode == 0 and out == "hello from image\n", err
    borrowed = sum("the node holder's descriptor of it" in err for _, _, err in done)
    # The holder's own open (squashfuse_ll opens the image as the user's holder starts).
    assert count <= 2 + (not as_who.is_root), count
    assert borrowed >= 4, [err for _, _, err in done]


def test_a_renamed_image_runs_as_admitted(run_as, sifbox_cli, as_who, two_images, shared_tmp: Path, fresh) -> None:  # type: ignore[no-untyped-def]
    """Two images renamed over one path in a loop while launches run: each runs one of the
    two, whole. As root, the site refuses the other (its owner): it never runs."""
    one, other = two_images
    work = shared_tmp / "swap"
    work.mkdir(mode=0o755)
    a, b, path = work / "a.sif", work / "b.sif", work / "image.sif"
    shutil.copy2(one, a)
    shutil.copy2(other, b)
    conf = None
    if as_who.is_root:
        os.chown(b, 65534, 65534)  # the site allows root's images only
        conf = shared_tmp / "sifbox.conf"
        conf.write_text("limit container owners = root\n")
    os.link(a, path)
    assert _exec(run_as, as_who, sifbox_cli, path, conf=conf).returncode == 0  # its holder runs
    stop = threading.Event()

    def swap() -> None:
        n = 0
        while not stop.is_set():
            tmp = work / f".tmp{n % 2}"
            os.link(b if n % 2 == 0 else a, tmp)
            os.rename(tmp, path)
            n += 1

    swapper = threading.Thread(target=swap)
    swapper.start()
    results = []
    try:
        for _ in range(8):
            results.append(_exec(run_as, as_who, sifbox_cli, path, conf=conf))
    finally:
        stop.set()
        swapper.join()
    for proc in results:
        if proc.returncode == 0:
            assert proc.stdout in ("hello from image\n", OTHER), proc.stdout
            assert not (as_who.is_root and proc.stdout == OTHER), proc.stderr
        else:
            assert as_who.is_root and proc.returncode == 126, proc.stderr
            assert "owner" in proc.stderr, proc.stderr
    assert any(p.returncode == 0 for p in results)


def test_a_holder_of_a_replaced_file_is_not_used(run_as, as_who, sifbox_cli, two_images, shared_tmp: Path,  # type: ignore[no-untyped-def]
                                                 fresh) -> None:  # fmt: skip
    """The holder holds the file that was at the path; a copy (same size and times, another
    inode) has been renamed over it: the launch opens the copy and runs it, not the holder's."""
    one, _ = two_images
    work = shared_tmp / "replaced"
    work.mkdir(mode=0o755)
    path = work / "image.sif"
    shutil.copy2(one, path)
    assert _exec(run_as, as_who, sifbox_cli, path).returncode == 0
    st = path.stat()
    replacement = work / ".new"
    shutil.copy2(one, replacement)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(replacement, path)
    proc = _exec(run_as, as_who, sifbox_cli, path)
    assert proc.returncode == 0, proc.stderr
    assert "the node holder's descriptor of it" not in proc.stderr, proc.stderr
    assert "started the node mount holder" in proc.stderr, proc.stderr


def test_a_hard_link_elsewhere_is_judged_by_its_own_name(run_as, sifbox_cli, two_images, shared_tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """Root (-c is root's): the holder runs for the image in an allowed directory; the same
    file by a hard link outside it is refused, as an open of that name is."""
    one, _ = two_images
    root = images.user_named("root")
    allowed, other = shared_tmp / "allowed", shared_tmp / "other"
    allowed.mkdir(mode=0o755)
    other.mkdir(mode=0o755)
    shutil.copy2(one, allowed / "image.sif")
    os.link(allowed / "image.sif", other / "image.sif")
    conf = shared_tmp / "sifbox.conf"
    conf.write_text(f"limit container paths = {allowed}\n")
    _prune(run_as, root, sifbox_cli)
    try:
        first = _exec(run_as, root, sifbox_cli, allowed / "image.sif", conf=conf)
        assert first.returncode == 0 and "started the node mount holder" in first.stderr, first.stderr
        again = _exec(run_as, root, sifbox_cli, allowed / "image.sif", conf=conf)
        assert again.returncode == 0 and "the node holder's descriptor of it" in again.stderr, again.stderr
        proc = _exec(run_as, root, sifbox_cli, other / "image.sif", conf=conf)
        assert proc.returncode == 126, proc.stderr
        assert "image is not in an allowed configured path" in proc.stderr, proc.stderr
    finally:
        _prune(run_as, root, sifbox_cli)


def test_a_holder_descriptor_of_another_file_is_not_used(run_as, as_who, sifbox_cli, two_images, fresh) -> None:  # type: ignore[no-untyped-def]
    """The state names another descriptor of the holder (its stdin, /dev/null): not the
    image, so the launch opens the image itself (and runs it)."""
    one, _ = two_images
    assert _exec(run_as, as_who, sifbox_cli, one).returncode == 0
    listed = run_as(as_who, [sifbox_cli, "mounts", "list", "--json"], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)
    row = next(r for r in json.loads(listed.stdout) if r["image"] == str(one))
    state = Path(row["dir"]) / f"{row['key']}.state"
    text = state.read_text()
    state.write_text("".join("fd 0\n" if line.startswith("fd ") else line for line in text.splitlines(True)))
    proc = _exec(run_as, as_who, sifbox_cli, one)
    assert proc.returncode == 0 and proc.stdout == "hello from image\n", proc.stderr
    assert "opened here" in proc.stderr and "the node holder's descriptor of it" not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_join_never_asks_for_the_image_access_time(run_as, as_who, sifbox_cli, two_images, shared_tmp: Path,  # type: ignore[no-untyped-def]
                                                     fresh) -> None:  # fmt: skip
    """An NFS or FUSE client marks a file's access time stale as it reads from it: a stat
    asking for every field would then be a request to the file server at every launch. A
    joined launch stats the image only with statx(2) without STATX_ATIME."""
    one, _ = two_images
    assert _exec(run_as, as_who, sifbox_cli, one).returncode == 0  # the holder
    size = one.stat().st_size
    trace = shared_tmp / f"stat-trace-{as_who.name}"
    argv = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=stat,lstat,fstat,newfstatat,statx",
            sifbox_cli, "-v", "exec", str(one), "true"]  # fmt: skip
    proc = run_as(as_who, argv, env=env_for(as_who), timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "the node holder's descriptor of it" in proc.stderr, proc.stderr
    lines = trace.read_text().splitlines()
    trace.unlink()
    of_image = [line for line in lines if f"st_size={size}," in line or f"stx_size={size}," in line]
    assert of_image, lines[-20:]
    for line in of_image:
        call, _, _ = line.partition("{")
        assert "statx(" in call and "STATX_ATIME" not in call and "STATX_BASIC_STATS" not in call, line


def test_a_planted_walk_lock_is_not_followed(run_as, as_who, sifbox_cli, two_images, shared_tmp: Path,  # type: ignore[no-untyped-def]
                                             fresh) -> None:  # fmt: skip
    """The lock a launch takes to walk the image's path (in the state directory, named after the
    path and the node), planted as a link to another file or as a directory: the launch runs the
    image all the same (opening it itself), follows no link and writes nothing."""
    import zlib

    from sifbox.runtime import borrow, nodemount

    one, _ = two_images
    assert _exec(run_as, as_who, sifbox_cli, one).returncode == 0  # the holder, and the state directory
    env = env_for(as_who)
    where = next(d for d in nodemount.state_dirs(as_who.uid, env.get("XDG_RUNTIME_DIR")) if os.path.isdir(d))
    lock = Path(where) / f"{zlib.crc32(os.fsencode(str(one))):08x}-{nodemount.node_tag()}.{borrow.WALK}"
    target = shared_tmp / f"walk-target-{as_who.name}"
    target.write_text("keep\n")
    os.chmod(target, 0o666)
    for plant in ("link", "directory"):
        lock.unlink(missing_ok=True)
        if plant == "link":
            lock.symlink_to(target)
        else:
            lock.mkdir()
        os.lchown(lock, as_who.uid, as_who.gid)
        proc = _exec(run_as, as_who, sifbox_cli, one)
        assert proc.returncode == 0 and proc.stdout == "hello from image\n", (plant, proc.stderr)
        assert target.read_text() == "keep\n" and (lock.is_symlink() if plant == "link" else lock.is_dir())
        if plant == "directory":
            lock.rmdir()
