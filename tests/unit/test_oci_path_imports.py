"""The modules of a `sifbox oci run|create` (what containerd, Slurm and Podman run for every
container: the CLI, the container's watcher and init) import none of the heavy standard-library
modules: `typing` and `re` (through `json` too), `enum` (through `signal` and `socket`),
`collections`, `selectors`; each costs milliseconds of every container's start. Only the
commands that need them (`oci kill`'s signal names, `oci state`'s indented JSON) do."""

from __future__ import annotations

from pathlib import Path

from tests.unit.importcheck import loaded_after

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("typing", "re", "enum", "collections", "socket", "signal", "selectors", "json", "warnings")
OCI_PATH = (
    "sifbox.cli.main",
    "sifbox.cli.commands.oci",
    "sifbox.runtime.ocirun",
    "sifbox.runtime.ocispec",
    "sifbox.runtime.ocistate",
    "sifbox.runtime.ocihooks",
    "sifbox.runtime.holder",
    "sifbox.runtime.launcher",
    "sifbox.runtime.supervisor",
    "sifbox.runtime.identity",
    "sifbox.runtime.nodemount",
    "sifbox.runtime.plan",
    "sifbox.runtime.images",
    "sifbox.runtime.sandbox.namespaces",
    "sifbox.runtime.sandbox.mountplan",
    "sifbox.runtime.sandbox.process",
    "sifbox.runtime.sandbox.rootfs",
    "sifbox.hpc.cgroups",
    "sifbox.config.sysconf",
)


def _loaded_after(body: str) -> list[str]:
    return loaded_after(OCI_PATH, body, HEAVY)


def test_the_oci_run_path_imports_no_heavy_module() -> None:
    body = """
from sifbox.runtime import ocirun
assert ocirun.preserved_fds(2) == frozenset({3, 4})
"""
    assert _loaded_after(body) == []


def test_signal_names_still_parse() -> None:
    body = """
from sifbox.runtime import ocirun
assert [ocirun.parse_signal(s) for s in ("TERM", "sigkill", "usr1", "9")] == [15, 9, 10, 9]
"""
    assert "signal" in _loaded_after(body)
