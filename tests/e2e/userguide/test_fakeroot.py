"""fakeroot.rst: what a "fake root" user is (the rootless mode with /etc/subuid ranges), its
file system restrictions, and the examples (a build, a package added into a writable overlay,
`--ignore-fakeroot-command`). The network examples (ping, a port-mapped HTTP server) are the
networking chapter's, skipped in test_other_chapters.py.

/tmp/test.sif and /tmp/test.def are files of the test's directory; test.def is
data/fakeroot.def; `dnf -y install openssh` becomes a shell command that writes where the
package would (no network).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, check, contains, exact, regex
from tests.e2e.userguide import guide
from tests.e2e.userguide.guide import staged

pytestmark = pytest.mark.integration

FR = "fakeroot.rst"


def subid(user: str, path: str) -> tuple[int, int] | None:
    for ln in Path(path).read_text().splitlines():
        name, _, rest = ln.partition(":")
        if name == user:
            start, count = rest.split(":")
            return int(start), int(count)
    return None


def test_rootless_mapping(request, sb) -> None:
    """Overview and Restrictions/security: with /etc/subuid and /etc/subgid ranges, uid 0 in
    the container is the user, and uids 1.. are the range (the guide's table: 1 -> 131072 when
    the range starts at 131072)."""
    if sb.who.is_root:
        pytest.skip("the guide's table maps an unprivileged user")
    uids = subid(sb.who.name, "/etc/subuid")
    if uids is None:
        pytest.skip(f"{sb.who.name} has no /etc/subuid range")
    start, count = uids
    res = guide.run(request, sb, C(f"{FR}:Restrictions/security[uid map]", "exec", "--fakeroot", "@lolcow@",
                                   "cat", "/proc/self/uid_map"))  # fmt: skip
    rows = [ln.split() for ln in res.stdout.splitlines()]
    assert ["0", str(sb.who.uid), "1"] in rows and ["1", str(start), str(count)] in rows, rows


FILES = [
    C(f"{FR}:Overview[root inside]", "exec", "--fakeroot", "@lolcow@", "id", "-u", out=exact("0")),
    # A fake root cannot read root-only host files such as /etc/shadow.
    C(f"{FR}:Filesystem[/etc/shadow]", "exec", "--fakeroot", "--bind", "/etc/shadow:/mnt/shadow", "@lolcow@", "cat",
      "/mnt/shadow", exit=1, err=contains("Permission denied"), only="user"),
    C(f"{FR}:Filesystem[HOME]", "exec", "--fakeroot", "@lolcow@", "sh", "-c", "echo $HOME", out=exact("/root")),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in FILES])
def test_filesystem(request, sb, case) -> None:  # type: ignore[no-untyped-def]
    guide.run(request, sb, case)


def test_home_on_root(request, sb) -> None:
    """Filesystem: "by default the original user's home directory is bound to /root inside the
    container" (the same directory: its inode)."""
    res = guide.run(request, sb, C(f"{FR}:Filesystem[home on /root]", "exec", "--fakeroot", "@lolcow@", "stat",
                                   "-c", "%i", "/root"))  # fmt: skip
    assert res.stdout.strip() == str(os.stat(sb.who.home).st_ino), (res.stdout, sb.who.home)


def test_ownership(request, sb) -> None:
    """Filesystem: what the fake root creates is root's inside and the user's outside; what it
    gives to `bin` (uid 2) belongs to the second uid of the range outside (131073 in the guide's
    table, whose range starts at 131072)."""
    guide.dirs("@work@/out")(sb)
    guide.run(request, sb, C(f"{FR}:Filesystem[owners]", "exec", "--fakeroot", "--bind", "@work@/out:/out",
                             "@lolcow@", "sh", "-c", "touch /out/file && ls -ln /out/file",
                             out=regex(r"^-\S+\s+\d+\s+0\s+0\s")))  # fmt: skip
    st = os.stat(sb.subst("@work@/out/file"))
    assert (st.st_uid, st.st_gid) == (sb.who.uid, sb.who.gid), (st.st_uid, st.st_gid)
    uids = subid(sb.who.name, "/etc/subuid")
    if sb.who.is_root or uids is None:
        return
    check(sb, C(f"{FR}:Filesystem[bin]"), sb.run(["exec", "--fakeroot", "--bind", "@work@/out:/out", "@lolcow@",
                                                  "sh", "-c", "touch /out/binfile && chown 2:2 /out/binfile"]))  # fmt: skip
    assert os.stat(sb.subst("@work@/out/binfile")).st_uid == uids[0] + 1


EXAMPLES = [
    # fakeroot is implied when a user builds
    C(f"{FR}:Build from a definition file", "build", "@work@/test.sif", "@work@/test.def"),
    C(f"{FR}:Build from a definition file[--fakeroot]", "build", "--fakeroot", "@work@/test.sif", "@work@/test.def"),
    C(f"{FR}:Using fakeroot command inside definition file", "build", "--ignore-fakeroot-command", "@work@/test.sif",
      "@work@/test.def"),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in EXAMPLES])
def test_build(request, sb, case) -> None:  # type: ignore[no-untyped-def]
    def setup(sb) -> None:  # type: ignore[no-untyped-def]
        staged("fakeroot.def")(sb)
        os.rename(sb.work / "fakeroot.def", sb.work / "test.def")

    guide.run(request, sb, case, setup)
    # The file %post gave to bin (uid 2), seen as the fake root sees it (a user's own view maps
    # only the user's uid)
    check(sb, C(f"{case.name}[owner]", out=regex(r"^-\S+\s+\d+\s+2\s+2\s")),
          sb.run(["exec", "--fakeroot", "@work@/test.sif", "ls", "-ln", "/etc/owned-by-bin"]))  # fmt: skip


def test_overlay_package(request, sb) -> None:
    """Add package to a writable overlay: `mkdir /tmp/test.overlay`, then `exec --fakeroot
    --overlay /tmp/test.overlay /tmp/test.sif dnf -y install openssh`; what it writes lands in
    the overlay directory, owned by the user on the host."""
    guide.dirs("@work@/test.overlay")(sb)
    guide.run(request, sb, C(f"{FR}:Add package to a writable overlay", "exec", "--fakeroot", "--overlay",
                             "@work@/test.overlay", "@lolcow@", "sh", "-c",
                             "mkdir -p /usr/sbin && touch /usr/sbin/sshd && chown 0:0 /usr/sbin/sshd"))  # fmt: skip
    found = [p for p in Path(sb.work, "test.overlay").rglob("sshd")]
    assert found and found[0].stat().st_uid == sb.who.uid, found
