"""Apptainer's e2e/actions/regressions.go (issues of apptainer/singularity and apptainer) and
e2e/run/regressions.go. (The environment regressions are in test_env.py, the instance ones in
test_instance.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import (
    C,
    Case,
    check,
    contains,
    exact,
    lacks,
    new_dir,
    params,
    regex,
    remove_dir,
    run_case,
)

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parent / "data"


def copy_sandbox(src: Path, dest: Path, owner: tuple[int, int] | None = None) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    if owner:
        subprocess.run(["chown", "-R", f"{owner[0]}:{owner[1]}", str(dest)], check=True)
    return dest


# --- one-line cases ------------------------------------------------------------------------------

SIMPLE = [
    # No file descriptor leaks into the container: 0, 1, 2, and the one `ls` opens.
    C("regressions.go:issue4488", "exec", "@test@", "ls", "-1", "/proc/self/fd", out=exact("0\n1\n2\n3")),
    # Symlinks in the image that are bind destinations (user namespace, so Apptainer's underlay).
    *(C(f"regressions.go:issue4797/{name}", "exec", "--bind", f"/etc/passwd:/etc/{link}", "@test@", "test",
        flag, path, profile="userns")
      for name, link, flag, path in (
          ("RelativeUsrBin", "relative-slink", "-d", "/usr/bin"),
          ("RelativeUTC", "relative-slink", "-f", "/usr/share/zoneinfo/Etc/UTC"),
          ("AbsoluteUsrBin", "absolute-slink", "-d", "/usr/bin"),
          ("AbsoluteUTC", "absolute-slink", "-f", "/usr/share/zoneinfo/Etc/UTC"))),
    # The home directory `/` (as for `nobody`) is not mounted over the container's root.
    C("regressions.go:issue5228", "exec", "--home", "/", "@test@", "/bin/true", cwd="@home@"),
    C("regressions.go:issue5271", "exec", "--writable-tmpfs", "@test@", "mkdir", "/e2e-dir"),
    C("regressions.go:issue5690/user", "exec", "@test@", "/bin/true"),
    C("regressions.go:issue5690/fakeroot", "exec", "@test@", "/bin/true", profile="fakeroot"),
    # A nested bind more than one level below a directory the image lacks (user namespace).
    C("regressions.go:issue619", "exec", "--bind", "/var,/var/lib/apt", "@test@", "true", profile="userns"),
    # The line added to /etc/passwd for the caller (Apptainer runs docker://rockylinux:8; any image
    # with an /etc/passwd does). Root is in the image's /etc/passwd already: user profile only.
    C("regressions.go:issue1848", "exec", "@test@", "tail", "-1", "/etc/passwd",
      out=exact("@user@:x:@uid@:@gid@:@gecos@:@home@:@shell@"), only="user"),
    # The host's TZ does not shift times in the container (Apptainer runs GNU date in
    # docker://ghcr.io/apptainer/centos_base:7; busybox's date takes -d 'YYYY-MM-DD hh:mm:ss').
    C("regressions.go:issue1868", "exec", "@test@", "sh", "-c", "TZ=UTC date -d '2020-01-01 12:00:00' +%s",
      env={"TZ": "JST"}, out=exact("1577880000")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(SIMPLE))
def test_simple(request, sb, case: Case) -> None:
    run_case(request, sb, case)


# --- cases that set up files ---------------------------------------------------------------------


def test_issue4587_home_is_cwd(request, sb) -> None:
    """regressions.go:issue4587: from the home directory, --home DIR:$HOME still mounts DIR."""
    home = sb.work / "homedir"
    home.mkdir()
    (home / "canary_file").touch()
    home.chmod(0o755)
    run_case(request, sb, C("regressions.go:issue4587", "exec", "--home", f"{home}:@home@", "@test@", "test", "-f",
                            "@home@/canary_file", cwd="@home@"))  # fmt: skip


def test_issue4755_cwd_and_image_content(request, sb, e2e_images) -> None:
    """regressions.go:issue4755: a current directory whose parent holds files in the image."""
    sandbox = copy_sandbox(e2e_images.sandbox, sb.work / "sandbox", (sb.who.uid, sb.who.gid))
    base = sandbox / str(sb.work.parent).lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    (base / "underlay-test").touch()
    cwd = sb.work / "cwd"
    cwd.mkdir()
    cwd.chmod(0o777)
    run_case(request, sb, C("regressions.go:issue4755", "exec", str(sandbox), "true", profile="userns",
                            cwd=str(cwd)))  # fmt: skip


def test_issue4768_cwd_symlink_to_dot(request, sb) -> None:
    """regressions.go:issue4768: the current directory is a symlink to `.`: pwd is its target."""
    home = sb.work / "issue-4768"
    home.mkdir()
    home.chmod(0o755)
    (home / "symlink").symlink_to(".")
    run_case(request, sb, C("regressions.go:issue4768", "exec", "@test@", "pwd", cwd=str(home / "symlink"),
                            out=exact(str(home))))  # fmt: skip


def test_issue4836_cwd_through_symlink(request, sb) -> None:
    """regressions.go:issue4836: a current directory reached through a symlinked parent."""
    issue = sb.work / "issue-4836"
    (issue / "dir/child").mkdir(parents=True)
    for p in (issue, issue / "dir", issue / "dir/child"):
        p.chmod(0o755)
    (issue / "symlink").symlink_to(issue / "dir")
    run_case(request, sb, C("regressions.go:issue4836", "exec", "@test@", "pwd", cwd=str(issue / "symlink/child"),
                            out=exact(str(issue / "dir/child"))))  # fmt: skip


@pytest.mark.skip(
    reason="regressions.go:issue4823 runs http:// image URIs and reads Apptainer's debug lines "
    "(`Downloading network image`, `Using image from cache`): sifbox has no http(s):// "
    "image source for actions"
)
def test_issue4823_http_cache() -> None:
    pass


def test_issue5211_fakeroot_contain_home(request, sb) -> None:
    """regressions.go:issue5211: with --fakeroot --contain the host home is not under /root,
    and HOME is /root."""
    canary = Path(tempfile.mkdtemp(prefix="apptainer-issue5211-dir-", dir=sb.who.home))
    try:
        os.chown(canary, sb.who.uid, sb.who.gid)
        run_case(
            request,
            sb,
            C(
                "regressions.go:issue5211/no home under /root",
                "exec",
                "--contain",
                "@test@",
                "test",
                "!",
                "-d",
                f"/root/{canary.name}",
                profile="fakeroot",
                cwd="@home@",
            ),
        )
        run_case(
            request,
            sb,
            C(
                "regressions.go:issue5211/HOME",
                "exec",
                "--contain",
                "@test@",
                "sh",
                "-c",
                "echo $HOME",
                profile="fakeroot",
                cwd="@home@",
                out=exact("/root"),
            ),
        )
    finally:
        shutil.rmtree(canary, ignore_errors=True)


@pytest.mark.skip(
    reason="regressions.go:issue5399 sets a security.* xattr in %post with `apk add attr` "
    "(no network here, no setfattr on this host)"
)
def test_issue5399_system_xattr() -> None:
    pass


@pytest.fixture(scope="module")
def perm_sandbox(e2e_images) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """issue5455: a root-owned sandbox with /perm mode 0777."""
    base = new_dir("perm")
    sandbox = copy_sandbox(e2e_images.sandbox, base / "sandbox", (0, 0))
    (sandbox / "perm").mkdir()
    (sandbox / "perm").chmod(0o777)
    yield sandbox
    remove_dir(base)


def test_issue5455_writable_tmpfs_in_open_dir(request, sb, perm_sandbox: Path) -> None:
    """regressions.go:issue5455: with --writable-tmpfs, mkdir in a root-owned 0777 directory."""
    name = f"issue5455-{uuid.uuid4().hex[:6]}"
    run_case(request, sb, C("regressions.go:issue5455", "exec", "--writable-tmpfs", str(perm_sandbox), "mkdir",
                            f"/perm/{name}", exit={"root": 0, "user": 1}, err={"user": FOREIGN_OWNER}.get(sb.kind),
                            diverges=None if sb.who.is_root else FOREIGN_OWNER_WHY))  # fmt: skip


#: What the user's mkdir says (the kernel's EOVERFLOW).
FOREIGN_OWNER = contains("Value too large for defined data type")
FOREIGN_OWNER_WHY = (
    "an unprivileged user's container is a user namespace in which only the user is mapped: the kernel "
    "refuses to copy up (EOVERFLOW) a directory whose owner (root here) is not mapped, so nothing can be "
    "made in it. Apptainer passes this case with its setuid starter (no user namespace), which sifbox "
    "does not have (DESIGN decision 2); Apptainer's own user-namespace mode fails the same way"
)


@pytest.mark.parametrize("contain", [False, True], ids=["Standard", "Contain"])
def test_issue5465_hosts_localtime_not_fatal(request, sb, e2e_images, contain: bool) -> None:
    """regressions.go:issue5465: /etc/localtime and /etc/hosts are symlinks to a directory in
    the image: binding the host's files there fails, and that is not fatal."""
    sandbox = copy_sandbox(e2e_images.sandbox, sb.work / "sandbox", (sb.who.uid, sb.who.gid))
    (sandbox / "dir").mkdir()
    for name in ("localtime", "hosts"):
        (sandbox / "etc" / name).unlink(missing_ok=True)
        (sandbox / "etc" / name).symlink_to("/dir")
    case = C(f"regressions.go:issue5465/{'Contain' if contain else 'Standard'}", "exec",
             *(("--contain",) if contain else ()), str(sandbox), "true")  # fmt: skip
    run_case(request, sb, case)


@pytest.mark.parametrize(
    "variant",
    [
        "APPTAINER_BIND listed",
        "both mounted",
        "SIFBOX_BIND, both mounted",
        "APPTAINER_BIND and APPTAINER_BINDPATH, all mounted",
    ],
)
def test_issue5599_bind_env_and_flag(request, sb, variant: str) -> None:
    """regressions.go:issue5599: binds from APPTAINER_BIND and --bind add up, and the container's
    APPTAINER_BIND lists them (--bind first)."""
    tmp = sb.work / "issue-5599"
    tmp.mkdir()
    (tmp / "marker").touch()
    tmp.chmod(0o755)
    both = ("sh", "-c", "test -e /mnt/marker && test -e /srv/marker")
    if variant == "APPTAINER_BIND listed":
        # Older Apptainer lists the full specs (`SRC:/mnt,SRC:/srv`), newer ones the destinations
        # (`/mnt,/srv`, the substring the Go test looks for): either matches.
        listed = rf"APPTAINER_BIND=({tmp}:)?/mnt,({tmp}:)?/srv\b"
        case = C(
            "regressions.go:issue5599",
            "exec",
            "--bind",
            f"{tmp}:/mnt",
            "@test@",
            "/usr/bin/env",
            env={"APPTAINER_BIND": f"{tmp}:/srv"},
            out=regex(listed),
        )
    elif variant == "both mounted":
        case = C(
            "regressions.go:issue5599[both mounted]",
            "exec",
            "--bind",
            f"{tmp}:/mnt",
            "@test@",
            *both,
            env={"APPTAINER_BIND": f"{tmp}:/srv"},
        )
    elif variant == "APPTAINER_BIND and APPTAINER_BINDPATH, all mounted":
        # --bind reads both variables and appends each (its flag: EnvKeys BIND and BINDPATH,
        # EnvHandler cmdline.EnvAppendValue).
        (tmp / "other").mkdir()
        case = C(
            "regressions.go:issue5599[APPTAINER_BIND and APPTAINER_BINDPATH, all mounted]",
            "exec",
            "--bind",
            f"{tmp}:/mnt",
            "@test@",
            "sh",
            "-c",
            "test -e /mnt/marker && test -e /srv/marker && test -d /media/other",
            env={"APPTAINER_BIND": f"{tmp}:/srv", "APPTAINER_BINDPATH": f"{tmp}:/media"},
        )
    else:
        case = C(
            "regressions.go:issue5599[SIFBOX_BIND, both mounted]",
            "exec",
            "--bind",
            f"{tmp}:/mnt",
            "@test@",
            *both,
            env={"SIFBOX_BIND": f"{tmp}:/srv"},
        )
    run_case(request, sb, case)


def _custom_config(sb) -> Path:  # type: ignore[no-untyped-def]
    if not sb.who.is_root:
        pytest.skip("a custom configuration file is root's (the Go test uses the root profile)")
    conf = sb.work / "apptainer.conf"
    system = Path("/etc/sifbox/sifbox.conf")
    conf.write_text(system.read_text() if system.exists() else "")
    conf.chmod(0o600)
    return conf


def test_issue5631_config_global_set(request, sb) -> None:
    """regressions.go:issue5631, first step: `config global --set "enable fusemount" no` on a
    custom configuration file (root profile)."""
    conf = _custom_config(sb)
    run_case(
        request,
        sb,
        C(
            "regressions.go:issue5631/config global --set",
            "--config",
            str(conf),
            "config",
            "global",
            "--set",
            "enable fusemount",
            "no",
        ),
    )
    assert "enable fusemount = no" in conf.read_text()


def test_issue5631_no_fusemount_config(request, sb) -> None:
    """regressions.go:issue5631: a container runs with --config FILE where FILE says
    `enable fusemount = no` (written here as `config global --set` would)."""
    conf = _custom_config(sb)
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("enable fusemount")]
    conf.write_text("\n".join([*lines, "enable fusemount = no", ""]))
    run_case(
        request,
        sb,
        C("regressions.go:issue5631/exec", "--config", str(conf), "exec", "@test@", "/bin/true"),
    )


def test_issue6165_bind_without_destination_once(request, sb) -> None:
    """regressions.go:issue6165: --contain --bind FILE (no destination) is mounted once."""
    canary = sb.work / "file"
    canary.touch()
    canary.chmod(0o644)
    run_case(
        request,
        sb,
        C(
            "regressions.go:issue6165",
            "exec",
            "--contain",
            "--bind",
            str(canary),
            "@test@",
            "test",
            "-f",
            str(canary),
            err=lacks("destination is already in the mount point list"),
        ),
    )


@pytest.mark.skip(
    reason="regressions.go:invalidRemote runs library/oras images from remote endpoints "
    "(`remote add/use`) on the internet (cloud.sylabs.io, ghcr.io): no test reaches the network"
)
def test_invalid_remote() -> None:
    pass


@pytest.fixture(scope="module")
def issue1097_image(sifbox_cli) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    base = new_dir("issue1097")
    shutil.copy(DATA / "issue_1097.def", base / "issue_1097.def")
    proc = subprocess.run([sifbox_cli, "build", str(base / "issue_1097.sif"), str(base / "issue_1097.def")],
                          cwd=base, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"can't build issue_1097.sif: {proc.stderr[-2000:]}")
    (base / "issue_1097.sif").chmod(0o644)
    yield base / "issue_1097.sif"
    remove_dir(base)


def test_issue1097_var_tmp_symlink(request, sb, issue1097_image: Path) -> None:
    """regressions.go:issue1097: where /var/tmp in the image is a symlink to /tmp, the host's
    /var/tmp is not mounted over /tmp: its files are not seen."""
    if os.path.realpath("/tmp") == os.path.realpath("/var/tmp"):
        pytest.skip("/var/tmp links to /tmp on this host")
    fd, canary = tempfile.mkstemp(prefix="issue-1950", dir="/var/tmp")
    os.close(fd)
    os.chmod(canary, 0o644)
    try:
        run_case(
            request,
            sb,
            C(
                "regressions.go:issue1097",
                "exec",
                str(issue1097_image),
                "cat",
                canary,
                exit=1,
                # A contained root container's /var/tmp is its own tmpfs: nothing of the host's.
            ),
        )
    finally:
        os.unlink(canary)


# --- run/regressions.go --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [0o700, 0o400, 0o000],
    ids=[
        "accessible home directory",
        "read only home directory",
        "inaccessible only home directory",
    ],
)
def test_issue409_inaccessible_home(request, sb, mode: int) -> None:
    """run/regressions.go:issue409: `run` works whatever the mode of HOME (an image of the test
    image's kind instead of oras://ghcr.io/apptainer/alpine:3.15.0)."""
    home = sb.work / "home"
    home.mkdir()
    os.chown(home, sb.who.uid, sb.who.gid)
    home.chmod(mode)
    res = sb.run(["run", "@test@", "/bin/true"], env={"HOME": str(home)})
    check(sb, C(f"run/regressions.go:issue409/{request.node.callspec.id}"), res)
