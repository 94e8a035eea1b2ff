"""persistent_overlays.rst: overlay images (`overlay create`, --create-dir, --sparse), with
--fakeroot, directory overlays, read-only overlays, and overlays embedded in SIF (`overlay
create IMAGE.sif`, `sif add`, --writable).

The examples build on each other, so the cases run in order in the user's @ws@. ubuntu.sif is
built from the local registry's docker://ubuntu, nginx.sif is @nginx@ (busybox httpd for
nginx); `apt-get install -y vim` becomes a script written to /usr/bin/vim (no network), which
`which vim` then finds. Overlay images are 64 MiB instead of the guide's 1024 (a sparse one
keeps its 1 GiB: it costs nothing); /tmp/... paths of the examples are in @ws@.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.apptainer.cases import C, Case, check, contains, exact, params, regex
from tests.e2e.userguide import guide

pytestmark = pytest.mark.integration

PO = "persistent_overlays.rst"
WS = "@ws@"
VIM = "printf '#!/bin/sh\\n' > /usr/bin/vim && chmod 0755 /usr/bin/vim\n"  # apt-get install -y vim
SIF_READONLY = (
    "an overlay partition of a SIF is read-only without --writable, as the guide itself says in "
    "'Embed an overlay image in SIF' and as Apptainer mounts it; this older example leaves "
    "--writable out, so the write fails"
)

ROWS = [
    C(f"{PO}:Usage[build ubuntu.sif]", "build", "ubuntu.sif", "docker://@registry@/library/ubuntu", cwd=WS,
      env={"HOME": "@ws@/home"}, host_paths=(("file", "@ws@/ubuntu.sif"),)),
    # Filesystem image overlay
    C(f"{PO}:Filesystem image overlay", "overlay", "create", "--size", "64", "@ws@/ext3_overlay.img",
      host_paths=(("file", "@ws@/ext3_overlay.img"),)),
    C(f"{PO}:Filesystem image overlay[--create-dir]", "overlay", "create", "--size", "64", "--create-dir",
      "/var/cache/nginx", "@ws@/nginx_overlay.img"),
    C(f"{PO}:Filesystem image overlay[--create-dir][write]", "exec", "--overlay", "@ws@/nginx_overlay.img",
      "@nginx@", "sh", "-c", "cat > /var/cache/nginx/test", stdin="test\n"),
    # Fakeroot with overlay
    C(f"{PO}:Fakeroot with overlay", "overlay", "create", "--fakeroot", "--size", "64", "overlay.img", cwd=WS),
    C(f"{PO}:Fakeroot with overlay[shell]", "shell", "--fakeroot", "--overlay", "overlay.img", "ubuntu.sif",
      cwd=WS, stdin=f"which vim\n{VIM}which vim\n", out=exact("/usr/bin/vim")),
    # Directory overlay
    C(f"{PO}:Directory overlay", "shell", "--fakeroot", "--overlay", "my_overlay", "ubuntu.sif", cwd=WS,
      stdin=f"mkdir /data\n{VIM}which vim\n", out=exact("/usr/bin/vim")),
    C(f"{PO}:Directory overlay[persist]", "shell", "--userns", "--overlay", "my_overlay", "ubuntu.sif", cwd=WS,
      stdin="ls -ld /data\nwhich vim\n", out=(regex(r"(?m)^drwxr-xr-x\s.*\s/data$"), regex("(?m)^/usr/bin/vim$"))),
    C(f"{PO}:Directory overlay[without]", "shell", "ubuntu.sif", cwd=WS, stdin="ls /data\nwhich vim\n", exit=1,
      err=contains("/data"), out=exact("")),
    # Readonly overlay
    C(f"{PO}:Readonly overlay", "shell", "--userns", "--overlay", "my_overlay:ro", "ubuntu.sif", cwd=WS,
      stdin="which vim\ntouch /usr/bin/myfile\n", exit=1, out=exact("/usr/bin/vim"),
      err=contains("Read-only file system")),
    # Overlay embedded in SIF
    C(f"{PO}:Overlay embedded in SIF", "overlay", "create", "--size", "64", "ubuntu.sif", cwd=WS),
    C(f"{PO}:Overlay embedded in SIF[--writable]", "shell", "--writable", "--fakeroot", "ubuntu.sif", cwd=WS,
      stdin="touch /usr/bin/vim-in-sif && chmod 0755 /usr/bin/vim-in-sif\n"),
    C(f"{PO}:Overlay embedded in SIF[persist]", "exec", "ubuntu.sif", "which", "vim-in-sif", cwd=WS,
      out=exact("/usr/bin/vim-in-sif")),
    C(f"{PO}:Overlay embedded in SIF[already has one]", "overlay", "create", "--size", "64", "ubuntu.sif", cwd=WS,
      exit=255),
    C(f"{PO}:Overlay embedded in SIF[signed]", "overlay", "create", "--size", "64", "signed.sif", cwd=WS, exit=255),
    C(f"{PO}:Overlay embedded in SIF[--create-dir]", "overlay", "create", "--size", "64", "--create-dir",
      "/var/cache/nginx", "@ws@/nginx.sif"),
    C(f"{PO}:Overlay embedded in SIF[--create-dir][write]", "exec", "@ws@/nginx.sif", "sh", "-c",
      "cat > /var/cache/nginx/test", stdin="test\n", exit=1, err=contains("Read-only file system"),
      diverges=SIF_READONLY),
    C(f"{PO}:Overlay embedded in SIF[--create-dir][write --writable]", "exec", "--writable", "@ws@/nginx.sif", "sh",
      "-c", "cat > /var/cache/nginx/test", stdin="test\n"),
    # Embed an overlay image in SIF (an image made with dd and mkfs.ext3, added with `sif add`)
    C(f"{PO}:Embed an overlay image in SIF", "sif", "add", "--datatype", "4", "--partfs", "2", "--parttype", "4",
      "--partarch", "2", "--groupid", "1", "embed/ubuntu.sif", "embed/overlay.img", cwd=WS),
    C(f"{PO}:Embed an overlay image in SIF[sif list]", "sif", "list", "embed/ubuntu.sif", cwd=WS,
      out=regex(r"(?m)^\d+\s+\|1\s+\|NONE\s+\|\d+-\d+\s+\|FS \(Ext3/Overlay/amd64\)$")),
    C(f"{PO}:Embed an overlay image in SIF[--writable --fakeroot]", "shell", "--writable", "--fakeroot",
      "embed/ubuntu.sif", cwd=WS, stdin=VIM),
    C(f"{PO}:Embed an overlay image in SIF[which]", "exec", "embed/ubuntu.sif", "which", "vim", cwd=WS,
      out=exact("/usr/bin/vim")),
]  # fmt: skip


def _setup(case: Case):  # type: ignore[no-untyped-def]
    def setup(sb) -> None:  # type: ignore[no-untyped-def]
        if case.name == f"{PO}:Directory overlay":
            guide.dirs("@ws@/my_overlay")(sb)
        elif case.name == f"{PO}:Overlay embedded in SIF[signed]":
            guide.as_user(sb, ["cp", "@lolcow@", "@ws@/signed.sif"])
            guide.as_user(
                sb, ["openssl", "genpkey", "-algorithm", "ed25519", "-out", "@ws@/key.pem"]
            )
            res = sb.run(["sign", "--key", "@ws@/key.pem", "@ws@/signed.sif"])
            assert res.status == 0, res
        elif case.name == f"{PO}:Overlay embedded in SIF[--create-dir]":
            guide.as_user(sb, ["cp", "@nginx@", "@ws@/nginx.sif"])
        elif case.name == f"{PO}:Embed an overlay image in SIF":
            guide.dirs("@ws@/embed")(sb)
            res = sb.run(["build", "@ws@/embed/ubuntu.sif", "@ws@/ubuntu.sif"])
            assert res.status == 0, res
            guide.as_user(
                sb,
                [
                    "dd",
                    "if=/dev/zero",
                    "of=@ws@/embed/overlay.img",
                    "bs=1M",
                    "count=64",
                    "status=none",
                ],
            )
            guide.as_user(sb, ["mkfs.ext3", "-q", "@ws@/embed/overlay.img"])

    return setup


@pytest.mark.parametrize("case", params(ROWS))
def test_overlays(request, sb, reg, ws, case: Case) -> None:
    guide.run(request, sb, case, _setup(case))


def test_sparse(request, sb, ws) -> None:
    """Sparse overlay images: `ls` shows the whole size of a sparse image, `du` the little it
    takes; a standard image takes its whole size on disk from the start (64 MiB here)."""
    guide.run(request, sb, C(f"{PO}:Sparse overlay images[ls du]", "overlay", "create", "--sparse", "--size",
                             "1024", "@ws@/sparse.img"))  # fmt: skip
    st = os.stat(sb.subst("@ws@/sparse.img"))
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 256 << 20, (st.st_size, st.st_blocks)
    res = sb.run(["overlay", "create", "--size", "64", "@ws@/standard.img"])
    check(sb, C(f"{PO}:Sparse overlay images[standard]"), res)
    st = os.stat(sb.subst("@ws@/standard.img"))
    assert st.st_blocks * 512 >= 64 << 20, (
        f"a 64 MiB overlay image takes {st.st_blocks * 512} bytes on disk"
    )
