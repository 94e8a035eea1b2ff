"""`sifbox build` where Apptainer users meet differences, as root and as the unprivileged test
user: build-arg files taken as written, `%files from STAGE` keeping links, images with device
nodes (a debootstrap root) as the source of a user's build, and debootstrap's progress."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.integration.images import env_for
from tests.integration.test_build import _busybox, _sifbox, build, work  # noqa: F401

pytestmark = pytest.mark.integration


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_build_arg_file_values_as_written(build, run_as, as_who, sifbox_cli, work) -> None:  # type: ignore[no-untyped-def]
    """Apptainer keeps quotes: `GREETING="hello world"` makes `export GREETING="hello world"`
    (stripped, the script would read `export GREETING=hello world`: GREETING=hello)."""
    _write(work / "args.txt", '# arguments\nGREETING="hello world"\nQUOTED=\'single\'\nnot a line\n')
    _write(work / "args.def", f"""Bootstrap: busybox
MirrorURL: {_busybox()}

%environment
    export GREETING={{{{ GREETING }}}}

%post
    echo {{{{ QUOTED }}}}-{{{{ QUOTED }}}} > /quoted

%runscript
    echo "$GREETING"; cat /quoted
""")
    out = work / "args.sif"
    proc = build("--build-arg-file", "args.txt", str(out), "args.def")
    assert proc.returncode == 0, proc.stderr
    assert "skipping `not a line` in build-arg file `args.txt:4`: not NAME=VALUE" in proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out))
    assert (run.returncode, run.stdout) == (0, "hello world\nsingle-single\n"), run.stderr


def test_files_from_stage_keep_links(build, work) -> None:  # type: ignore[no-untyped-def]
    bb = _busybox()
    _write(work / "multi.def", f"""Bootstrap: busybox
MirrorURL: {bb}
Stage: builder

%post
    mkdir -p /work/dir/sub /libs/real
    echo hi > /work/target
    ln -s target /work/link
    ln -s /work/target /work/abslink
    ln -s ../target /work/dir/inlink
    echo x > /work/dir/sub/f
    ln -s /etc /work/etc-link
    echo from-the-stage > /etc/stage-only
    echo lib > /libs/real/libfoo.so.1
    ln -s libfoo.so.1 /libs/real/libfoo.so
    ln -s /libs/real /libs/cur

Bootstrap: busybox
MirrorURL: {bb}
Stage: final

%files from builder
    /work/link /opt/link
    /work/abslink /opt/
    /work/dir /opt/dir
    /work/l* /opt/glob/
    /work/etc-link/stage-only /opt/stage-only
    /libs/cur/libfoo.so* /usr/lib/
""")
    proc = build("--sandbox", str(work / "sb"), "multi.def")
    assert proc.returncode == 0, proc.stderr
    sb = work / "sb"

    def link(path: str) -> str:
        assert stat.S_ISLNK(os.lstat(sb / path).st_mode), f"{path} is not a link"
        return os.readlink(sb / path)

    assert link("opt/link") == "target"
    assert link("opt/abslink") == "/work/target"  # named after the link, not its target
    assert not (sb / "opt/target").exists()
    assert link("opt/dir/inlink") == "../target" and (sb / "opt/dir/sub/f").read_text() == "x\n"
    assert link("opt/glob/link") == "target"
    assert link("usr/lib/libfoo.so") == "libfoo.so.1" and (sb / "usr/lib/libfoo.so.1").read_text() == "lib\n"
    # an absolute link on the way is the stage's path, never the host's
    assert (sb / "opt/stage-only").read_text() == "from-the-stage\n"


@pytest.fixture
def device_sif(work: Path, sifbox_cli: str) -> Path:
    """A SIF whose root has device nodes in /dev, as a debootstrap root has, made by root."""
    root = work / "devroot"
    for d in ("bin", "dev", "etc"):
        (root / d).mkdir(parents=True)
    import shutil

    shutil.copy2(_busybox(), root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    (root / "bin/cat").symlink_to("busybox")
    (root / "bin/ls").symlink_to("busybox")
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev/sda", 0o640 | stat.S_IFBLK, os.makedev(8, 0))
    os.mknod(root / "dev/tty", 0o666 | stat.S_IFCHR, os.makedev(5, 0))
    (root / "dev/fd").symlink_to("/proc/self/fd")
    (root / "etc/marker").write_text("from the image\n")
    out = work / "dev.sif"
    proc = subprocess.run([sifbox_cli, "-q", "build", str(out), str(root)], capture_output=True, text=True,
                          env=env_for_root(work), check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out.chmod(0o644)
    return out


def env_for_root(work: Path) -> dict[str, str]:
    scratch = work / "root-scratch"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, "SIFBOX_TMPDIR": str(scratch)}


def _devices(sif: Path) -> dict[str, str]:
    """Device nodes of a SIF's root: path -> `c 1,3 666`."""
    proc = subprocess.run(["unsquashfs", "-lln", "-d", "", "-o", str(_partition_offset(sif)), str(sif)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = {}
    for line in proc.stdout.splitlines():
        if line[:1] in ("c", "b"):
            fields = line.split()
            out[fields[-1]] = f"{line[0]} {fields[2]}{fields[3]}"
    return out


def _partition_offset(sif: Path) -> int:
    from sifbox.formats.sif.image import SifImage

    with open(sif, "rb") as f:
        part = SifImage.load(f).primary_partition()
        assert part is not None
        return int(part.offset)


def test_user_builds_from_an_image_with_device_nodes(build, run_as, as_who, sifbox_cli, work, device_sif) -> None:  # type: ignore[no-untyped-def]
    """unsquashfs cannot create device nodes in a user namespace: the sandbox goes without
    them (with a warning), a SIF gets them back, as they were."""
    sb = work / "sb"
    proc = build("--sandbox", str(sb), str(device_sif))
    assert proc.returncode == 0, proc.stderr
    assert (sb / "etc/marker").read_text() == "from the image\n"
    assert os.readlink(sb / "dev/fd") == "/proc/self/fd"
    if as_who.is_root:
        assert stat.S_ISCHR(os.lstat(sb / "dev/null").st_mode)
    else:
        assert "skipping 3 device nodes the user namespace could not create (/dev/null, /dev/sda, /dev/tty)" \
            in proc.stderr  # fmt: skip
        assert sorted(os.listdir(sb / "dev")) == ["fd"]
    new = work / "new.sif"
    proc = build(str(new), str(device_sif))
    assert proc.returncode == 0, proc.stderr
    assert _devices(new) == _devices(device_sif) == {
        "/dev/null": "c 1,3", "/dev/sda": "b 8,0", "/dev/tty": "c 5,0",
    }  # fmt: skip
    run = _sifbox(run_as, as_who, sifbox_cli, "exec", str(new), "cat", "/etc/marker")
    assert (run.returncode, run.stdout) == (0, "from the image\n"), run.stderr


FAKE_DEBOOTSTRAP = r"""#!/bin/sh
# debootstrap's output, with a pause: the build must show progress before it ends.
set -e
for last; do :; done
root=$(eval echo "\${$(($# - 1))}")
echo "I: Retrieving InRelease"
echo "I: Checking Release signature"
echo "I: Retrieving Packages"
echo "I: Validating Packages"
echo "I: Resolving dependencies of required packages..."
for p in adduser apt base-files base-passwd bash; do
    echo "I: Retrieving $p 1.0"
    echo "I: Validating $p 1.0"
done
i=0
while [ ! -e "$GATE" ]; do
    i=$((i + 1)); [ $i -lt 600 ] || { echo "E: nobody opened the gate"; exit 1; }
    sleep 0.05
done
echo "I: Chosen extractor for .deb packages: dpkg-deb"
for p in adduser apt base-files; do echo "I: Extracting $p..."; done
echo "I: Installing core packages..."
echo "I: Unpacking required packages..."
for p in adduser apt; do echo "I: Unpacking $p..."; done
echo "dpkg: some output of the tools debootstrap runs"
echo "I: Configuring required packages..."
for p in adduser apt; do echo "I: Configuring $p..."; done
echo "W: a warning"
mkdir -p "$root/bin" "$root/etc" "$root/dev"
cp "$BUSYBOX" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
echo "I: Base system installed successfully."
"""


@pytest.fixture
def fake_debootstrap(work: Path) -> Path:
    d = work / "fakebin"
    d.mkdir()
    d.chmod(0o755)
    _write(d / "debootstrap", FAKE_DEBOOTSTRAP, 0o755)
    _write(work / "deb.def", "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://127.0.0.1:9/debian\n")
    return d


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_debootstrap_progress_is_shown_as_it_goes(as_who, sifbox_cli, work, fake_debootstrap) -> None:  # type: ignore[no-untyped-def]
    scratch = work / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    gate = work / "gate"
    env = env_for(as_who, SIFBOX_TMPDIR=str(scratch), GATE=str(gate), BUSYBOX=_busybox(),
                  PATH=f"{fake_debootstrap}:/usr/sbin:/usr/bin:/sbin:/bin")  # fmt: skip
    argv = [sifbox_cli, "build", str(work / "deb.sif"), "deb.def"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    proc = subprocess.Popen(argv, cwd=str(work), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: list[str] = []
    try:
        lines = _lines(proc)
        deadline = time.monotonic() + 60
        while not any("Retrieving packages" in ln for ln in seen):  # shown while debootstrap waits
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "\n".join(seen)
            seen.append(line)
        gate.touch()
        while (line := lines.get(timeout=120)) is not None:
            seen.append(line)
        assert proc.wait(timeout=60) == 0, "\n".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    steps = [ln.removeprefix("==> debootstrap: ") for ln in seen if ln.startswith("==> debootstrap: ")]
    assert steps == [
        "Retrieving InRelease", "Checking Release signature", "Retrieving Packages", "Validating Packages",
        "Resolving dependencies of required packages...", "Retrieving packages...",
        "Chosen extractor for .deb packages: dpkg-deb", "Extracting packages...", "Installing core packages...",
        "Unpacking required packages...", "Unpacking packages...", "Configuring required packages...",
        "Configuring packages...", "warning: a warning", "Base system installed successfully.",
    ], "\n".join(seen)  # fmt: skip
    assert not any("dpkg: some output" in ln for ln in seen)


def test_debootstrap_output_at_verbose_and_on_failure(run_as, as_who, sifbox_cli, work, fake_debootstrap) -> None:  # type: ignore[no-untyped-def]
    scratch = work / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    (work / "gate").touch()
    env = env_for(as_who, SIFBOX_TMPDIR=str(scratch), GATE=str(work / "gate"), BUSYBOX=_busybox(),
                  PATH=f"{fake_debootstrap}:/usr/sbin:/usr/bin:/sbin:/bin")  # fmt: skip
    proc = run_as(as_who, [sifbox_cli, "-v", "build", str(work / "v.sif"), "deb.def"], env=env, cwd=str(work),
                  timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for raw in ("I: Retrieving adduser 1.0", "I: Extracting apt...", "dpkg: some output of the tools"):
        assert raw in proc.stderr
    proc = run_as(as_who, [sifbox_cli, "-q", "build", str(work / "q.sif"), "deb.def"], env=env, cwd=str(work),
                  timeout=120)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    (work / "gate").unlink()
    env["GATE"] = str(work / "never")
    # a failure: one error line naming debootstrap, its last lines above it
    _write(fake_debootstrap / "debootstrap", textwrap.dedent("""\
        #!/bin/sh
        echo "I: Retrieving InRelease"
        echo "E: Failed getting release file http://127.0.0.1:9/debian/dists/bookworm/InRelease"
        exit 1
        """), 0o755)  # fmt: skip
    proc = run_as(as_who, [sifbox_cli, "build", str(work / "f.sif"), "deb.def"], env=env, cwd=str(work), timeout=120)
    assert proc.returncode == 255
    assert "==> debootstrap: error: Failed getting release file" in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sifbox: error:")]
    assert errors == ["sifbox: error: can't bootstrap bookworm with debootstrap: `debootstrap` failed with status 1: "
                      "E: Failed getting release file http://127.0.0.1:9/debian/dists/bookworm/InRelease"]  # fmt: skip
    assert not (work / "f.sif").exists() and list(scratch.iterdir()) == []
