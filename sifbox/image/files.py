"""Read files of an image without mounting it.

SquashFS images (a SIF's partition or a bare file) are read with
`unsquashfs -o OFFSET -cat`, sandboxes directly; paths are resolved inside
the image, never on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from sifbox.image.source import ImageKind, ImageSource
from sifbox.util.errors import SifboxError
from sifbox.util.paths import chase

MAX_FILE = 16 << 20


def _unsquashfs() -> str:
    tool = shutil.which("unsquashfs")
    if tool is None:
        raise SifboxError("can't read the image: unsquashfs is not installed",
                          hint="install the Debian package `squashfs-tools`")  # fmt: skip
    return tool


def read_file(src: ImageSource, path: str) -> bytes | None:
    """The content of `path` in the image, or None when it is not there."""
    if src.kind is ImageKind.SANDBOX:
        try:
            with open(chase(src.path, path), "rb") as f:
                return f.read(MAX_FILE)
        except OSError:
            return None
    proc = subprocess.run(
        [_unsquashfs(), "-o", str(src.offset), "-cat", f"/proc/self/fd/{src.fd}", path.lstrip("/")],
        capture_output=True, pass_fds=(src.fd,), check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    return proc.stdout[:MAX_FILE]


def list_dir(src: ImageSource, path: str) -> list[str]:
    """Names of the entries of directory `path` in the image ([] if absent)."""
    if src.kind is ImageKind.SANDBOX:
        try:
            return sorted(os.listdir(chase(src.path, path)))
        except OSError:
            return []
    top = "/" + path.strip("/")
    proc = subprocess.run(
        [_unsquashfs(), "-o", str(src.offset), "-d", "", "-ls", f"/proc/self/fd/{src.fd}", top.lstrip("/")],
        capture_output=True, text=True, pass_fds=(src.fd,), check=False,
    )  # fmt: skip
    names = set()
    for line in proc.stdout.splitlines():
        if line.startswith(top + "/"):
            rest = line[len(top) + 1 :]
            if rest and "/" not in rest:
                names.add(rest)
    return sorted(names)
