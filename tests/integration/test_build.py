"""`sifbox build` end to end, as root and as the unprivileged test user (fakeroot builds).

Images are busybox-based (the host's busybox-static) so no test needs a network.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.images import env_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 120


@pytest.fixture(scope="session")
def demo_def(stage_for_user) -> str:  # type: ignore[no-untyped-def]
    """examples/demo.def where the test user can read it (the checkout may be unreadable to it)."""
    return str(stage_for_user(REPO / "examples" / "demo.def"))


def _busybox() -> str:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(p):
            return p
    pytest.skip("busybox is not installed (Debian package busybox-static)")


def _mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if text in line]


@pytest.fixture
def work() -> Iterator[Path]:
    """A fresh directory under /tmp that root and the test user can both write (0777).

    Not shared_tmp: other suites' leak guards kill processes whose command line names a
    shared_tmp path, and a build runs many (mksquashfs, cp, debootstrap).
    """
    base = Path(tempfile.mkdtemp(prefix="sifbox-bt-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        leaked = _mounts_mentioning(str(base))
        for mnt in reversed(leaked):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)
        assert not leaked, f"mounts left behind: {leaked}"


@pytest.fixture
def build(run_as, as_who, sifbox_cli, work):  # type: ignore[no-untyped-def]
    """build(*args, cwd=None, env=None) -> CompletedProcess: `sifbox build ...` as `as_who`,
    with scratch files under work/scratch (checked empty afterwards)."""
    scratch = work / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)

    def run(
        *args: str,
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
        timeout: int = BUILD_TIMEOUT,
    ):  # type: ignore[no-untyped-def]
        env = env_for(as_who, SIFBOX_TMPDIR=str(scratch), **(extra_env or {}))
        return run_as(
            as_who, [sifbox_cli, "build", *args], env=env, cwd=str(cwd or work), timeout=timeout
        )

    yield run
    assert list(scratch.iterdir()) == [], "the build left scratch files behind"
    assert _mounts_mentioning(str(work)) == []


def _sifbox(run_as, who, cli, *args: str, **kw):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, *args], env=env_for(who), timeout=60, **kw)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_demo_definition_builds_and_runs(build, run_as, as_who, sifbox_cli, work, demo_def) -> None:
    out = work / "demo.sif"
    proc = build(str(out), demo_def)
    assert proc.returncode == 0, proc.stderr
    for step in (
        "==> bootstrapping busybox",
        "==> running %post",
        "==> running %test",
        "==> creating SIF image",
    ):
        assert step in proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "Ada")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Hello from a sifbox build, Ada!")
    app = _sifbox(run_as, as_who, sifbox_cli, "run", "--app", "hello", str(out))
    assert (app.returncode, app.stdout) == (0, "hello from the SCIF app hello\n"), app.stderr
    ex = _sifbox(
        run_as,
        as_who,
        sifbox_cli,
        "exec",
        str(out),
        "sh",
        "-c",
        'echo "$DEMO_BUILT"; cat /etc/demo-build',
    )
    assert ex.stdout == "yes\nbuilt with sifbox build\n", ex.stderr
    deffile = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--deffile", str(out))
    assert deffile.stdout.rstrip("\n") == (REPO / "examples/demo.def").read_text().rstrip("\n")
    # siftool (Sylabs' reference tool) reads the image.
    siftool = subprocess.run(
        ["siftool", "list", str(out)], capture_output=True, text=True, check=False
    )
    if siftool.returncode == 127 or "not found" in siftool.stderr:
        pytest.skip("siftool is not installed")
    assert siftool.returncode == 0, siftool.stderr
    assert "Def.FILE" in siftool.stdout and "FS (Squashfs/*System/" in siftool.stdout
    assert "JSON.Generic" in siftool.stdout
    header = subprocess.run(
        ["siftool", "header", str(out)], capture_output=True, text=True, check=False
    )
    assert "run-singularity" in header.stdout


def test_every_section(build, run_as, as_who, sifbox_cli, work) -> None:
    bb = _busybox()
    ctx = work / "ctx"
    ctx.mkdir()
    ctx.chmod(0o755)
    _write(ctx / "data.txt", "data file\n")
    (ctx / "conf").mkdir()
    (ctx / "conf").chmod(0o755)
    _write(ctx / "conf" / "a.conf", "a\n")
    _write(ctx / "conf" / "b.conf", "b\n")
    _write(ctx / "args.txt", "# build arguments\nFROM_FILE=file-value\n")
    _write(
        ctx / "every.def",
        f"""Bootstrap: busybox
MirrorURL: file://{bb}

%arguments
    GREETING=default-greeting
    FROM_FILE=unset

%setup
    echo "setup $SIFBOX_ROOTFS" > /dev/null
    test "$SIFBOX_ROOTFS" = "$APPTAINER_ROOTFS" && test "$SIFBOX_ROOTFS" = "$SINGULARITY_ROOTFS"
    echo setup-ran > "$SIFBOX_ROOTFS/setup-marker"

%files
    data.txt /opt/data.txt
    conf/*.conf /etc/myconf/
    conf /opt/confdir

%environment
    export GREETING="{{{{ GREETING }}}}"
    export FROM_FILE={{{{ FROM_FILE }}}}

%post -c /bin/sh
    set -e
    test -f /setup-marker
    test -f /opt/data.txt
    test "$SIFBOX_ENVIRONMENT" = /.singularity.d/env/91-environment.sh
    test "$APPTAINER_ENVIRONMENT" = "$SINGULARITY_ENVIRONMENT"
    echo 'export POST_VAR=from-post' >> "$SIFBOX_ENVIRONMENT"
    echo "post.label from-post" >> "$SINGULARITY_LABELS"
    echo "uid=$(id -u)" > /post-id
    mkdir -p /owned && chown 1234:1234 /owned

%runscript
    echo "run: $GREETING $FROM_FILE $POST_VAR $*"

%startscript
    echo started

%test
    test "$POST_VAR" = from-post
    test -f /etc/myconf/a.conf

%labels
    Author Someone
    Version 1.0

%help
    How to use this image.
""",
    )
    out = work / "every.sif"
    proc = build(
        "--build-arg", "GREETING=hi", "--build-arg-file", "args.txt", str(out), "every.def", cwd=ctx
    )
    assert proc.returncode == 0, proc.stderr
    for step in ("%setup", "copying files", "%post", "%test"):
        assert step in proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out), "x")
    assert (run.returncode, run.stdout) == (0, "run: hi file-value from-post x\n"), run.stderr
    probe = (
        "cat /setup-marker /opt/data.txt /etc/myconf/a.conf /etc/myconf/b.conf /opt/confdir/a.conf /post-id;"
        " stat -c %u:%g /owned; cat /.singularity.d/startscript"
    )
    ex = _sifbox(run_as, as_who, sifbox_cli, "exec", str(out), "sh", "-c", probe)
    assert ex.returncode == 0, ex.stderr
    lines = ex.stdout.splitlines()
    assert lines[:6] == ["setup-ran", "data file", "a", "b", "a", "uid=0"]
    # Ownership given in %post is kept (through the subuid map for users): the user sees it
    # with --fakeroot (the same map), as root sees it plainly.
    owner = _sifbox(run_as, as_who, sifbox_cli, "exec", *([] if as_who.is_root else ["--fakeroot"]), str(out),
                    "stat", "-c", "%u:%g", "/owned")  # fmt: skip
    assert owner.stdout == "1234:1234\n", owner.stderr
    assert "echo started" in ex.stdout
    labels = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--labels", str(out))
    for text in (
        "Author: Someone",
        "Version: 1.0",
        "post.label: from-post",
        "org.label-schema.build-arch",
        "org.label-schema.usage.singularity.deffile.bootstrap: busybox",
    ):
        assert text in labels.stdout
    helptext = _sifbox(run_as, as_who, sifbox_cli, "run-help", str(out))
    assert "How to use this image." in helptext.stdout
    test = _sifbox(run_as, as_who, sifbox_cli, "test", str(out))
    assert test.returncode == 0, test.stderr


def test_multi_stage_files_from(build, run_as, as_who, sifbox_cli, work) -> None:
    bb = _busybox()
    _write(
        work / "multi.def",
        f"""Bootstrap: busybox
MirrorURL: {bb}
Stage: builder

%post
    mkdir -p /work
    echo "made in the builder stage" > /work/artifact

Bootstrap: busybox
MirrorURL: {bb}
Stage: final

%files from builder
    /work/artifact /opt/artifact

%runscript
    cat /opt/artifact
""",
    )
    out = work / "multi.sif"
    proc = build(str(out), "multi.def")
    assert proc.returncode == 0, proc.stderr
    assert "(stage builder)" in proc.stderr and "copying files from stage builder" in proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(out))
    assert (run.returncode, run.stdout) == (0, "made in the builder stage\n"), run.stderr
    ex = _sifbox(run_as, as_who, sifbox_cli, "exec", str(out), "test", "-e", "/work/artifact")
    assert ex.returncode == 1  # only what %files from copied comes over


def test_scif_apps(build, run_as, as_who, sifbox_cli, work) -> None:
    bb = _busybox()
    _write(work / "cfg.txt", "app config\n")
    _write(
        work / "apps.def",
        f"""Bootstrap: busybox
MirrorURL: {bb}

%appinstall tool
    echo '#!/bin/sh' > bin/tool
    echo 'echo tool binary' >> bin/tool
    chmod +x bin/tool
    pwd > installed-in

%appfiles tool
    cfg.txt

%apprun tool
    echo "tool runs $TOOL_VAR $*"
    tool

%appenv tool
    export TOOL_VAR=tool-env

%applabels tool
    Kind utility

%apphelp tool
    Tool help.

%apptest tool
    test -x /scif/apps/tool/bin/tool

%apprun other
    echo other
""",
    )
    out = work / "apps.sif"
    proc = build(str(out), "apps.def")
    assert proc.returncode == 0, proc.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", "--app", "tool", str(out), "a")
    assert (run.returncode, run.stdout) == (0, "tool runs tool-env a\ntool binary\n"), run.stderr
    other = _sifbox(run_as, as_who, sifbox_cli, "run", "--app", "other", str(out))
    assert other.stdout == "other\n"
    ex = _sifbox(run_as, as_who, sifbox_cli, "exec", str(out), "sh", "-c",
                 "cat /scif/apps/tool/installed-in /scif/apps/tool/cfg.txt /scif/apps/tool/scif/labels.json; "
                 "test -d /scif/data/tool/input && echo data-ok")  # fmt: skip
    assert ex.stdout.startswith("/scif/apps/tool\napp config\n"), ex.stderr
    assert '"Kind": "utility"' in ex.stdout and "data-ok" in ex.stdout
    apps = _sifbox(run_as, as_who, sifbox_cli, "inspect", "--list-apps", str(out))
    assert apps.stdout.split() == ["other", "tool"]
    helptext = _sifbox(run_as, as_who, sifbox_cli, "run-help", "--app", "tool", str(out))
    assert "Tool help." in helptext.stdout


def test_failing_post_leaves_nothing(build, work) -> None:
    bb = _busybox()
    _write(work / "fail.def", f"Bootstrap: busybox\nMirrorURL: {bb}\n\n%post\n    echo before\n    false\n"
                                    "    echo never\n")  # fmt: skip
    out = work / "fail.sif"
    proc = build(str(out), "fail.def")
    assert proc.returncode == 255
    assert "sifbox: error: can't build: %post failed with exit status 1" in proc.stderr
    assert "+ echo before" in proc.stderr and "never" not in proc.stderr
    assert not out.exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []
    sandbox = build("--sandbox", str(work / "failbox"), "fail.def")
    assert sandbox.returncode == 255 and not (work / "failbox").exists()


def test_reproducible(build, work, demo_def) -> None:
    digests = []
    for n in (1, 2):
        out = work / f"r{n}.sif"
        proc = build(
            str(out), demo_def, extra_env={"SOURCE_DATE_EPOCH": "1700000000"}
        )
        assert proc.returncode == 0, proc.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        time.sleep(1.1)  # a clock-dependent field would differ
    assert digests[0] == digests[1]
    proc = build("--reproducible", str(work / "r3.sif"), demo_def)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((work / "r3.sif").read_bytes()).hexdigest() != digests[0]  # epoch 0


def test_sandbox_update_and_conversions(build, run_as, as_who, sifbox_cli, work, demo_def) -> None:
    box = work / "box"
    proc = build("--sandbox", "--fix-perms", str(box), demo_def)
    assert proc.returncode == 0, proc.stderr
    assert (box / ".singularity.d/runscript").exists()
    again = build("--sandbox", str(box), demo_def)
    assert (
        again.returncode == 125 and "already exists" in again.stderr and "--force" in again.stderr
    )
    _write(work / "more.def", "Bootstrap: localimage\nFrom: unused\n\n%post\n    echo more > /more\n\n"
                                    "%runscript\n    cat /more\n")  # fmt: skip
    upd = build("--sandbox", "--update", "--section", "post,runscript", str(box), "more.def")
    assert upd.returncode == 0, upd.stderr
    assert "bootstrapping" not in upd.stderr
    run = _sifbox(run_as, as_who, sifbox_cli, "run", str(box))
    assert run.stdout == "more\n", run.stderr
    # sandbox -> SquashFS -> SIF -> sandbox
    sqfs, sif, back = work / "box.sqfs", work / "box.sif", work / "back"
    for args in ((str(sqfs), str(box)), (str(sif), str(sqfs)), ("--sandbox", str(back), str(sif))):
        proc = build(*args)
        assert proc.returncode == 0, proc.stderr
    for image in (sqfs, sif, back):
        run = _sifbox(run_as, as_who, sifbox_cli, "run", str(image))
        assert (run.returncode, run.stdout) == (0, "more\n"), (image, run.stderr)
    with open(sqfs, "rb") as f:
        assert f.read(4) == b"hsqs"
    force = build("--force", str(sif), str(box))
    assert force.returncode == 0, force.stderr


def test_bad_input(build, work) -> None:
    _write(work / "bad.def", "Bootstrap: busybox\nMirrorURL: /bin/busybox\n\n%pots\n  true\n")
    proc = build(str(work / "bad.sif"), "bad.def")
    assert proc.returncode == 255
    assert (
        proc.stderr.splitlines()[0]
        == "sifbox: error: can't parse `bad.def:4`: unknown section `%pots`"
    )
    assert "Traceback" not in proc.stderr
    missing = build(str(work / "x.sif"), "nosuch.def")
    assert missing.returncode == 125 and "no such file" in missing.stderr
    _write(work / "yum.def", "Bootstrap: yum\nOSVersion: 9\nMirrorURL: http://example/\n")
    yum = build(str(work / "y.sif"), "yum.def")
    assert yum.returncode != 0
    assert "can't bootstrap with `yum`: this host has no `yum` or `dnf`" in yum.stderr
    assert not (work / "y.sif").exists()


def test_interrupted_build_leaves_nothing(run_as, as_who, sifbox_cli, work, build) -> None:
    bb = _busybox()
    _write(work / "slow.def", f"Bootstrap: busybox\nMirrorURL: {bb}\n\n%post\n    touch /started\n"
                                    "    sleep 60\n")  # fmt: skip
    out = work / "slow.sif"
    env = env_for(as_who, SIFBOX_TMPDIR=str(work / "scratch"))
    argv = [sifbox_cli, "build", str(out), "slow.def"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    proc = subprocess.Popen(argv, env=env, cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "+ sleep 60" not in _peek(work / "scratch"):
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not out.exists()
    assert [p.name for p in work.iterdir() if p.name.startswith(".slow")] == []


def _peek(scratch: Path) -> str:
    """Whether %post started: its marker file in the scratch root."""
    for p in scratch.glob("sifbox-build.*/stage0/started"):
        if p.exists():
            return "+ sleep 60"
    return ""


def test_mksquashfs_settings_and_quiet(run_as, as_who, sifbox_cli, work, demo_def) -> None:
    conf = _write(
        work / "sifbox.conf",
        "mksquashfs compression = gzip:9\nmksquashfs procs = 1\nmksquashfs mem = 64M\n",
    )
    scratch = work / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    env = env_for(as_who, SIFBOX_TMPDIR=str(scratch))
    argv = [sifbox_cli, "-q", "-c", str(conf), "build", "out.sqfs", demo_def]
    proc = run_as(as_who, argv, env=env, cwd=str(work), timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # -q: no step lines, no script trace
    with open(work / "out.sqfs", "rb") as f:
        superblock = f.read(96)
    assert superblock[:4] == b"hsqs" and int.from_bytes(superblock[20:22], "little") == 1  # gzip
    default = run_as(as_who, [sifbox_cli, "-q", "build", "def.sqfs", demo_def], env=env,
                     cwd=str(work), timeout=BUILD_TIMEOUT)  # fmt: skip
    assert default.returncode == 0, default.stderr
    with open(work / "def.sqfs", "rb") as f:
        assert int.from_bytes(f.read(96)[20:22], "little") == 6  # zstd
    assert list(scratch.iterdir()) == []


def test_links_in_a_base_image_stay_inside_it(build, run_as, as_who, work, demo_def) -> None:
    victim = _write(work / "victim", "host file\n")
    victim.chmod(0o666)
    assert build("--sandbox", "base", demo_def).returncode == 0
    links = (
        f"ln -sf {victim} base/.sifbox-build-script && rm -f base/.singularity.d/runscript"
        f" && ln -s {victim} base/.singularity.d/runscript && ln -s {victim} base/.build.labels"
    )
    assert run_as(as_who, ["sh", "-c", links], cwd=str(work)).returncode == 0
    _write(
        work / "on-base.def",
        "Bootstrap: localimage\nFrom: base\n\n%post\n    echo post\n\n%runscript\n    echo new\n",
    )
    proc = build("on-base.sif", "on-base.def")
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "host file\n"
