"""`sifbox.build.assemble.write_sif`: the interface that turns a finished root directory (or a
SquashFS file) into a SIF, called from Python as other producers of root file systems do."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from tests.integration.images import env_for

pytestmark = pytest.mark.integration

SCRIPT = r"""
import os, sys
from sifbox.build.assemble import squash_options, write_sif

root, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(root, "bin"), exist_ok=True)
os.makedirs(os.path.join(root, ".singularity.d"), exist_ok=True)
with open(os.path.join(root, ".singularity.d", "runscript"), "w") as f:
    f.write("#!/bin/sh\necho from write_sif\n")
os.chmod(os.path.join(root, ".singularity.d", "runscript"), 0o755)
os.system(f"cp /bin/busybox {root}/bin/busybox && ln -sf busybox {root}/bin/sh")
write_sif(root, out, "Bootstrap: scratch\n", epoch=1700000000, squash=squash_options(epoch=1700000000))
write_sif(root, out + ".2", "Bootstrap: scratch\n", epoch=1700000000, squash=squash_options(epoch=1700000000))
"""


def test_write_sif_from_a_directory(run_as, as_who, sifbox_cli, work) -> None:
    proc = run_as(
        as_who,
        [sys.executable, "-c", SCRIPT, "root", "out.sif"],
        env=env_for(as_who),
        cwd=str(work),
    )
    assert proc.returncode == 0, proc.stderr
    out = work / "out.sif"
    assert (
        hashlib.sha256(out.read_bytes()).digest()
        == hashlib.sha256((work / "out.sif.2").read_bytes()).digest()
    )
    run = run_as(
        as_who, [sifbox_cli, "run", "out.sif"], env=env_for(as_who), cwd=str(work), timeout=60
    )
    assert (run.returncode, run.stdout) == (0, "from write_sif\n"), run.stderr
    listing = subprocess.run(
        ["siftool", "list", str(out)], capture_output=True, text=True, check=False
    )
    if listing.returncode == 0:
        assert "Def.FILE" in listing.stdout and "FS (Squashfs/*System/" in listing.stdout
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == []
