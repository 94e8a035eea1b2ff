"""The modules of a launch's path import none of the heavy standard-library modules
(`typing`, `re`, `enum`, `collections`, `base64`): each costs milliseconds of every launch,
once per MPI rank. Only the options that need them (resource limits, a key message) do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.importcheck import loaded_after

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("typing", "re", "enum", "collections", "base64", "sifbox.hpc.cgroups", "sifbox.hpc.cgrouptoml", "tomllib")
EXEC_PATH = (
    "sifbox.cli.main",
    "sifbox.cli.commands.action",
    "sifbox.runtime.launcher",
    "sifbox.runtime.supervisor",
    "sifbox.runtime.nodemount",
    "sifbox.runtime.borrow",
    "sifbox.runtime.env",
    "sifbox.runtime.plan",
    "sifbox.image.source",
    "sifbox.formats.sif.crypt",
)


#: Modules a launch without GPU options, of a plain (not encrypted) image, joining a node
#: mount holder has no use for: the device planner, the encryption formats, the probe of
#: squashfuse_ll's threading (asked when a holder is started); and `struct`, a file to look for
#: on sys.path (the modules use the built-in `_struct`).
NOT_ON_A_PLAIN_LAUNCH = ("sifbox.hpc.devices", "sifbox.formats.sif.crypt", "binascii", "sifbox.image.squashfuse",
                         "struct")  # fmt: skip


def _loaded_after(body: str) -> list[str]:
    return loaded_after(EXEC_PATH, body, HEAVY)


def test_the_exec_path_imports_no_heavy_module() -> None:
    body = """
from sifbox.cli.commands import action
class Args:
    pass
assert action._limits(Args(), None) is None
"""
    assert _loaded_after(body) == []


def test_limits_still_parse_when_asked_for() -> None:
    body = """
from sifbox.cli.commands import action
class Args:
    memory = "512m"
limits = action._limits(Args(), None)
assert limits.memory == 512 << 20, limits
"""
    assert "sifbox.hpc.cgroups" in _loaded_after(body)


def test_apply_cgroups_reads_toml_only_when_asked_for(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[cpu]\nshares = 512\n")
    body = f"""
from sifbox.cli.commands import action
class Args:
    apply_cgroups = {str(f)!r}
assert action._limits(Args(), None).cpu_shares == 512
"""
    assert {"sifbox.hpc.cgrouptoml", "tomllib"} <= set(_loaded_after(body))


def test_a_key_message_still_round_trips() -> None:
    from sifbox.formats.sif import crypt

    data = bytes(range(256)) * 3
    assert crypt.parse_pem_message(crypt.dump_pem_message(data)) == data


@pytest.mark.parametrize("under", ["terminal", "srun"])
def test_a_whole_exec_up_to_the_container_imports_no_heavy_module(tmp_path: Path, under: str) -> None:
    """The CLI's own run of `exec DIR /bin/true` (options, config, image, admission, plan),
    stopped where the namespaces would be made: none of the heavy modules, nor json or
    ipaddress (a launch without --network or --dns has no use for them)."""
    root = tmp_path / "root"
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "home", "root"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "true").write_text("")
    script = f"""
import os, sys
sys.path[:0] = [{str(ROOT)!r}]
before = set(sys.modules)
from sifbox.cli.main import main
import sifbox.runtime.launcher as launcher
def stop(p, hold=None):
    heavy = {HEAVY + ("json", "ipaddress", "argparse", "sifbox.runtime.cni") + NOT_ON_A_PLAIN_LAUNCH!r}
    print("LOADED", " ".join(m for m in heavy if m in sys.modules and m not in before))
    import gc
    print("GC", gc.isenabled())
    return 0
launcher.launch_prepared = stop
os.environ.pop("SIFBOX_DEBUG", None)
if {under!r} == "srun":  # an MPI rank under Slurm: the launcher's mounts and MPI defaults too
    os.environ.update(SLURM_STEP_ID="0", SLURM_PROCID="3", SLURM_JOB_ID="7", PMIX_RANK="3")
main(["exec", {str(root)!r}, "/bin/true"])
"""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                          check=False, timeout=60, cwd=tmp_path)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOADED")]
    assert lines, proc.stdout + proc.stderr
    assert lines[-1].split()[1:] == []
    # No cyclic collection in a launch: ~1.5 ms, and no heap-wide copy in its forked children.
    assert "GC False" in proc.stdout, proc.stdout


@pytest.mark.parametrize("fs,loaded", [("SQUASHFS", []), ("GOCRYPTFS_SQUASHFS", ["sifbox.formats.sif.crypt", "binascii"])])
def test_a_plain_sif_is_opened_without_the_encryption_formats(tmp_path: Path, fs: str, loaded: list[str]) -> None:
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import edit
    from sifbox.formats.sif.layout import partition_extra

    from .sifcorpus import INPUTS

    sif = tmp_path / "img.sif"
    part = edit.ObjectInput(c.DataType.PARTITION, (INPUTS / "root.squashfs").read_bytes(),
                            extra=partition_extra(getattr(c.FsType, fs), c.PartType.PRIMSYS, "amd64"), group_id=1)  # fmt: skip
    with open(sif, "wb+") as fp:
        edit.create(fp, [part], deterministic=True)
    body = f"""
from sifbox.image.source import open_image
src = open_image({str(sif)!r})
assert src.encryption == {None if fs == "SQUASHFS" else "gocryptfs"!r}, src.encryption
src.close()
"""
    watched = ("sifbox.formats.sif.crypt", "binascii")
    assert loaded_after(("sifbox.image.source",), body, watched) == loaded
