"""`sifbox pull` from local OCI transports, as root and as the unprivileged test user.

The image is made here with umoci from a busybox-static root: three layers, with a whiteout,
an opaque directory, hard links, symlinks, a setuid file, a FIFO, a device node and files
owned by other users. The SIF that sifbox makes is compared, entry by entry (names, types,
modes, owners, link targets, contents, hard-link groups), with `umoci unpack` of the same
image; then the image runs with the installed runtime.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TAG = "v1"
GENERATED = {
    ".singularity.d", "apptainer", "singularity", ".run", ".exec", ".test", ".shell", "environment",
    "dev", "proc", "root", "var", "var/tmp", "tmp", "etc", "sys", "home", "etc/hosts", "etc/resolv.conf",
}  # fmt: skip


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"`{t}` is not installed (Debian package `{t}`)")


def _run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def _tar(entries: list[tarfile.TarInfo]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for t in entries:
            tf.addfile(t)
    return buf.getvalue()


def build_image(base: Path) -> Path:
    """An OCI layout at base/layout with tag v1 (three layers) made by umoci."""
    lay = base / "layout"
    bundle = base / "bundle"
    _run("umoci", "init", "--layout", str(lay))
    _run("umoci", "new", "--image", f"{lay}:{TAG}")
    _run("umoci", "unpack", "--image", f"{lay}:{TAG}", str(bundle))
    root = bundle / "rootfs"
    # layer 1: busybox, symlinks, hard links, setuid, FIFO, device, foreign owners
    for d in ("bin", "etc", "data/old/sub", "data/opaque/lower", "run", "devs", "home/alice"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo", "id", "stat", "env"):
        (root / "bin" / applet).symlink_to("busybox")
    os.link(root / "bin/busybox", root / "bin/busybox-hard")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nalice:x:1234:5678::/home/alice:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "data/old/a").write_text("old a\n")
    (root / "data/old/sub/b").write_text("old b\n")
    (root / "data/opaque/lower/x").write_text("hidden by the opaque dir\n")
    (root / "data/opaque/gone").write_text("hidden too\n")
    (root / "data/keep").write_text("kept\n")
    (root / "data/rm-me").write_text("deleted in layer 2\n")
    os.link(root / "data/keep", root / "data/keep-link")
    (root / "bin/suid").write_text("#!/bin/sh\necho suid\n")
    os.chmod(root / "bin/suid", 0o4755)
    os.mkfifo(root / "run/fifo", 0o640)
    os.mknod(root / "devs/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "home/alice/notes").write_text("alice's\n")
    for p in (root / "home/alice", root / "home/alice/notes"):
        os.lchown(p, 1234, 5678)
    (root / "abs-link").symlink_to("/data/keep")
    (root / "dangling").symlink_to("/nowhere")
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:{TAG}", str(bundle))
    # layer 2: a deletion (whiteout), a changed file, a new directory with a file
    (root / "data/rm-me").unlink()
    shutil.rmtree(root / "data/old/sub")
    (root / "data/keep").write_text("kept, changed in layer 2\n")
    (root / "data/new").mkdir()
    (root / "data/new/c").write_text("new c\n")
    os.chmod(root / "data/new", 0o750)
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:{TAG}", str(bundle))
    # layer 3, by hand: an opaque directory with new content
    entries = []
    for name, kind, data in (("data/opaque", tarfile.DIRTYPE, b""), ("data/opaque/.wh..wh..opq", tarfile.REGTYPE, b""),
                             ("data/opaque/upper", tarfile.REGTYPE, b"upper\n")):  # fmt: skip
        t = tarfile.TarInfo(name)
        t.type, t.mode, t.size, t.mtime = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644, len(data), 1_700_000_000
        entries.append((t, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for t, data in entries:
            tf.addfile(t, io.BytesIO(data))
    (base / "layer3.tar").write_bytes(buf.getvalue())
    _run("umoci", "raw", "add-layer", "--image", f"{lay}:{TAG}", str(base / "layer3.tar"))
    _run("umoci", "config", "--image", f"{lay}:{TAG}", "--config.env", "GREETING=hello from oci",
         "--config.entrypoint", "/bin/echo", "--config.cmd", "default-cmd", "--config.label", "org.example=yes",
         "--config.workingdir", "/data")  # fmt: skip
    shutil.rmtree(bundle)
    return lay


@pytest.fixture(scope="module")
def images() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("building the test images needs root (device nodes, owners)")
    _need("umoci", "skopeo", "tar2sqfs", "unsquashfs")
    base = Path(tempfile.mkdtemp(prefix="sifbox-pull-images-", dir="/tmp"))
    try:
        lay = build_image(base)
        _run("skopeo", "copy", "--quiet", f"oci:{lay}:{TAG}", f"oci-archive:{base}/image.tar:{TAG}")
        _run("skopeo", "copy", "--quiet", f"oci:{lay}:{TAG}", f"docker-archive:{base}/docker.tar:test/image:{TAG}")
        _run("skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", f"oci:{lay}:{TAG}", f"oci:{base}/zstd:{TAG}")
        _run("umoci", "unpack", "--image", f"{lay}:{TAG}", str(base / "reference"))
        _run("chmod", "-R", "a+rX", str(base / "layout"), str(base / "zstd"))
        os.chmod(base, 0o755)
        for f in ("image.tar", "docker.tar"):
            os.chmod(base / f, 0o644)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- comparing trees ----------------------------------------------------------------------
def sif_offset(sif: Path) -> int:
    out = _run("sifbox", "sif", "list", str(sif)).stdout
    for line in out.splitlines():
        if "FS (Squashfs" in line:
            return int(line.split("|")[3].split("-")[0])
    raise AssertionError(f"no SquashFS partition in {sif}:\n{out}")


def tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, link target or content hash or device)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                what = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    out["<hardlinks>"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1))
    return out


def extract(sif: Path, dest: Path) -> Path:
    _run("unsquashfs", "-no-progress", "-o", str(sif_offset(sif)), "-d", str(dest), str(sif))
    return dest


def compare(reference: Path, got: Path) -> None:
    want = tree(reference)
    have = tree(got)
    for path, attrs in want.items():
        if path in GENERATED or path.startswith(".singularity.d"):
            continue
        assert have.get(path) == attrs, f"{path}: umoci {attrs} != sifbox {have.get(path)}"
    extra = {p for p in have if p not in want and p not in GENERATED and not p.startswith(".singularity.d/")}
    assert not extra, f"entries not in the umoci tree: {sorted(extra)}"


# -- tests ----------------------------------------------------------------------------------
SOURCES = {
    "oci": lambda b: f"oci:{b}/layout:{TAG}",
    "oci-archive": lambda b: f"oci-archive:{b}/image.tar:{TAG}",
    "docker-archive": lambda b: f"docker-archive:{b}/docker.tar",
    "zstd": lambda b: f"oci:{b}/zstd:{TAG}",
}


@pytest.fixture(scope="module")
def registry(images: Path) -> Iterator[str]:
    """The test image pushed to a docker-registry on 127.0.0.1 (htpasswd auth); yields its ref."""
    from tests.integration.registry_server import RegistryServer

    _need("docker-registry", "htpasswd")
    reg = RegistryServer(images / "registry", auth="htpasswd", users={"puller": "pull-Pw1"})
    with reg:
        _run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "puller:pull-Pw1",
             f"oci:{images}/layout:{TAG}", f"docker://{reg.host}/test/image:{TAG}")  # fmt: skip
        yield f"{reg.host}/test/image:{TAG}"


def test_pull_from_registry_matches_umoci_unpack(images, registry, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    """The same image, pushed to a registry with password auth: `pull docker://` gives the tree
    `umoci unpack` gives, whiteouts, opaque directory, owners, setuid, FIFO and devices included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFBOX_", "APPTAINER_", "SINGULARITY_"))}
    env.update(HOME=as_who.home, SIFBOX_CACHEDIR=str(shared_tmp / "cache"),
               SIFBOX_DOCKER_USERNAME="puller", SIFBOX_DOCKER_PASSWORD="pull-Pw1")  # fmt: skip
    out = shared_tmp / "reg.sif"
    proc = run_as(as_who, [sifbox_cli, "pull", str(out), f"docker://{registry}"], env=env)
    assert proc.returncode == 0, proc.stderr
    got = extract(out, shared_tmp / "extracted")
    compare(images / "reference" / "rootfs", got)
    assert (got / "home/alice/notes").stat().st_uid == 1234
    assert stat.S_ISFIFO((got / "run/fifo").lstat().st_mode) and stat.S_ISCHR((got / "devs/null").lstat().st_mode)
    shutil.rmtree(got)
    env.pop("SIFBOX_DOCKER_PASSWORD")
    env["SIFBOX_CACHEDIR"] = str(shared_tmp / "cache2")
    proc = run_as(as_who, [sifbox_cli, "pull", str(shared_tmp / "no.sif"), f"docker://{registry}"], env=env)
    assert proc.returncode == 255 and "sifbox: error: can't authenticate" in proc.stderr, proc.stderr
    assert not (shared_tmp / "no.sif").exists()


@pytest.mark.parametrize("kind", list(SOURCES))
def test_pull_matches_umoci_unpack(kind, images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    out = shared_tmp / "img.sif"
    proc = run_as(as_who, [sifbox_cli, "pull", str(out), SOURCES[kind](images)])
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    assert out.stat().st_uid == as_who.uid
    got = extract(out, shared_tmp / "extracted")
    compare(images / "reference" / "rootfs", got)
    assert not (got / "data/rm-me").exists() and not (got / "data/old/sub").exists()
    assert sorted(os.listdir(got / "data/opaque")) == ["upper"]
    assert (got / "home/alice/notes").stat().st_uid == 1234
    assert stat.S_IMODE((got / "bin/suid").stat().st_mode) == 0o4755
    assert stat.S_ISFIFO((got / "run/fifo").lstat().st_mode)
    assert stat.S_ISCHR((got / "devs/null").lstat().st_mode)
    assert os.readlink(got / "bin/sh") == "busybox"
    shutil.rmtree(got)


def test_pulled_image_runs(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    out = shared_tmp / "run.sif"
    proc = run_as(as_who, [sifbox_cli, "pull", str(out), SOURCES["oci"](images)])
    assert proc.returncode == 0, proc.stderr
    assert "WORKDIR `/data`" in proc.stderr
    run = run_as(as_who, [sifbox_cli, "run", str(out)], cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "default-cmd\n"
    run = run_as(as_who, [sifbox_cli, "run", str(out), "one", "two words"], cwd="/")
    assert run.stdout == "one two words\n", run.stderr
    ex = run_as(as_who, [sifbox_cli, "exec", str(out), "/bin/sh", "-c",
                         'echo "$GREETING"; cat /data/keep /data/opaque/upper; id -u'], cwd="/")  # fmt: skip
    assert ex.returncode == 0, ex.stderr
    assert ex.stdout == f"hello from oci\nkept, changed in layer 2\nupper\n{as_who.uid}\n"
    insp = run_as(as_who, [sifbox_cli, "inspect", "--json", str(out)], cwd="/")
    labels = json.loads(insp.stdout)["data"]["attributes"]["labels"]
    assert labels["org.example"] == "yes"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "oci"


def test_default_name_and_force(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    proc = run_as(as_who, [sifbox_cli, "pull", SOURCES["oci-archive"](images)], cwd=shared_tmp)
    assert proc.returncode == 0, proc.stderr
    assert (shared_tmp / f"image_{TAG}.sif").is_file()
    again = run_as(as_who, [sifbox_cli, "pull", SOURCES["oci-archive"](images)], cwd=shared_tmp)
    assert again.returncode == 255
    assert "will not overwrite" in again.stderr and "Traceback" not in again.stderr
    forced = run_as(as_who, [sifbox_cli, "pull", "--force", SOURCES["oci-archive"](images)], cwd=shared_tmp)
    assert forced.returncode == 0, forced.stderr
    assert sorted(os.listdir(shared_tmp)) == [f"image_{TAG}.sif"]


def test_reproducible(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", HOME=as_who.home)
    digests = set()
    for name in ("a.sif", "b.sif"):
        proc = run_as(as_who, [sifbox_cli, "pull", str(shared_tmp / name), SOURCES["oci"](images)], env=env)
        assert proc.returncode == 0, proc.stderr
        digests.add(hashlib.sha256((shared_tmp / name).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_bad_input_leaves_nothing(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    def pull(uri: str) -> subprocess.CompletedProcess[str]:
        proc = run_as(as_who, [sifbox_cli, "pull", str(shared_tmp / "x.sif"), uri])
        assert proc.returncode != 0
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error: ")], proc.stderr
        assert "Traceback" not in proc.stderr
        assert os.listdir(shared_tmp) == [], os.listdir(shared_tmp)
        return proc

    assert "no image tagged `nope`" in pull(f"oci:{images}/layout:nope").stderr
    assert "does not exist" in pull(f"oci:{images}/missing").stderr
    assert "unsupported URI" in pull("library://x").stderr
    # a corrupt copy of the layout: one layer blob changed, same size
    bad = shared_tmp.parent / f"{shared_tmp.name}-bad"
    shutil.copytree(images / "layout", bad)
    try:
        manifest_digest = json.loads((bad / "index.json").read_text())["manifests"][0]["digest"]
        manifest = json.loads((bad / "blobs/sha256" / manifest_digest.split(":")[1]).read_text())
        blob = bad / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(bytes(data))
        os.system(f"chmod -R a+rX {bad}")
        stderr = pull(f"oci:{bad}:{TAG}").stderr
        assert "digest mismatch" in stderr or "invalid gzip" in stderr or "corrupt" in stderr, stderr
    finally:
        shutil.rmtree(bad)


def test_disk_full(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    small = shared_tmp / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(small)], check=True)
    try:
        proc = run_as(as_who, [sifbox_cli, "pull", str(small / "x.sif"), SOURCES["oci"](images)])
        assert proc.returncode == 255
        assert f"sifbox: error: can't write `{small / 'x.sif'}`: no space left on device" in proc.stderr
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_interrupted_pull_leaves_nothing(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    import signal
    import time

    argv = [sifbox_cli, "pull", str(shared_tmp / "x.sif"), SOURCES["zstd"](images)]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(p.name.endswith(".tmp") for p in shared_tmp.iterdir()):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the pull finished before it could be interrupted")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert os.listdir(shared_tmp) == []
    left = subprocess.run(["pgrep", "-f", str(shared_tmp)], capture_output=True, text=True, check=False).stdout
    assert not left.strip(), f"processes left: {left}"


def test_pull_to_tmpfs(images, run_as, as_who, sifbox_cli, shared_tmp) -> None:
    """tmpfs cannot insert a range at the start of a file: the SIF is assembled by copying."""
    mnt = shared_tmp / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", str(mnt)], check=True)
    try:
        proc = run_as(as_who, [sifbox_cli, "pull", str(mnt / "x.sif"), SOURCES["oci"](images)])
        assert proc.returncode == 0, proc.stderr
        assert os.listdir(mnt) == ["x.sif"]
        shutil.copy(mnt / "x.sif", shared_tmp / "x.sif")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    os.chmod(shared_tmp / "x.sif", 0o644)
    ex = run_as(as_who, [sifbox_cli, "exec", str(shared_tmp / "x.sif"), "/bin/cat", "/data/opaque/upper"], cwd="/")
    assert ex.returncode == 0 and ex.stdout == "upper\n", ex.stderr


# -- the streamed registry pull: pass 1 while downloading, layers through igzip ----------------------
def _registry_env(as_who, shared_tmp: Path, **more: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFBOX_", "APPTAINER_", "SINGULARITY_"))}
    env.update(HOME=as_who.home, SIFBOX_CACHEDIR=str(shared_tmp / "cache"), SOURCE_DATE_EPOCH="1700000000",
               SIFBOX_DOCKER_USERNAME="puller", SIFBOX_DOCKER_PASSWORD="pull-Pw1", **more)  # fmt: skip
    return env


def _without_igzip(shared_tmp: Path) -> str:
    """A PATH with tar2sqfs, zstd (and runuser) only: layers are then decompressed in-process."""
    bin_dir = shared_tmp / "bin"
    bin_dir.mkdir()
    for tool in ("tar2sqfs", "zstd", "runuser"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    return str(bin_dir)


def test_streamed_registry_pull_is_byte_identical_to_the_pull_from_the_cache(
    images, registry, run_as, as_who, sifbox_cli, shared_tmp
) -> None:  # type: ignore[no-untyped-def]
    """A registry pull reads the layers' headers while they download (through a relay that
    drops the first blob download half-way: the scan follows the resumed download) and
    decompresses them with igzip; the SIF and the OCI-SIF are the very bytes that the pull
    from the cached blobs, decompressed in-process, makes (SOURCE_DATE_EPOCH set)."""
    from tests.integration.registry_server import FlakyRelay

    _need("igzip")
    port = int(registry.split("/", 1)[0].rsplit(":", 1)[1])
    relay = FlakyRelay(port, cut=1, cut_after=100_000)
    uri = "docker://" + registry.replace(registry.split("/", 1)[0], f"127.0.0.1:{relay.port}")
    env = _registry_env(as_who, shared_tmp)
    try:
        for out, flags in (("a.sif", []), ("a.oci.sif", ["--disable-cache", "--oci"])):
            proc = run_as(as_who, [sifbox_cli, "pull", *flags, str(shared_tmp / out), uri], env=env)
            assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr
            assert "Reading layer" not in proc.stderr, proc.stderr  # read while they downloaded
        assert relay.cut == 0 and any("\r\nRange: bytes=" in r for r in relay.requests)
        shutil.rmtree(shared_tmp / "cache" / "oci-tmp")  # the converted SIF, not the blobs
        env["PATH"] = _without_igzip(shared_tmp)
        for out, flags in (("b.sif", []), ("b.oci.sif", ["--oci"])):
            proc = run_as(as_who, [sifbox_cli, "pull", *flags, str(shared_tmp / out), uri], env=env)
            assert proc.returncode == 0 and "Reading layer 1/3" in proc.stderr, proc.stderr
    finally:
        relay.stop()
    for a, b in (("a.sif", "b.sif"), ("a.oci.sif", "b.oci.sif")):
        assert (shared_tmp / a).read_bytes() == (shared_tmp / b).read_bytes(), f"{a} and {b} differ"
    compare(images / "reference" / "rootfs", extract(shared_tmp / "a.sif", shared_tmp / "extracted"))


def _processes_with(marker: str) -> list[str]:
    """Processes whose environment holds `marker` (what sifbox started keeps its environment)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(f"{pid} {comm}")
    return found


def test_registry_pull_interrupted_while_scanning_leaves_nothing(
    registry, run_as, as_who, sifbox_cli, shared_tmp
) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C while a layer downloads and its scan (an igzip process) runs: status 130, no
    output or temporary file, only whole verified blobs in the cache, no process left."""
    import signal
    import time

    from tests.integration.registry_server import FlakyRelay

    _need("igzip")
    port = int(registry.split("/", 1)[0].rsplit(":", 1)[1])
    relay = FlakyRelay(port, cut=1, cut_after=100_000)  # the dropped download holds the scan open a while
    uri = "docker://" + registry.replace(registry.split("/", 1)[0], f"127.0.0.1:{relay.port}")
    out = shared_tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    env = _registry_env(as_who, shared_tmp)
    argv = [sifbox_cli, "pull", str(out / "x.sif"), uri]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    try:
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(p.endswith("igzip") for p in _processes_with(str(shared_tmp))):
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        relay.stop()
    if proc.returncode == 0:
        pytest.skip("the pull finished before it could be interrupted")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert os.listdir(out) == []
    for blob in (shared_tmp / "cache" / "blob" / "blobs" / "sha256").glob("*"):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, f"a partial blob in the cache: {blob}"
    time.sleep(0.5)
    assert _processes_with(str(shared_tmp)) == []
