"""`sifbox doctor` catches a /dev/fuse that users can't open (mode 0600 without udev)."""

from __future__ import annotations

import json
import os
import stat

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def fuse_0600():  # type: ignore[no-untyped-def]
    if not os.path.exists("/dev/fuse") or os.getuid() != 0:
        pytest.skip("needs root and /dev/fuse")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o600)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def test_doctor_passes_here(run_as, as_who, sifbox_cli) -> None:
    proc = run_as(as_who, [sifbox_cli, "doctor", "--json"])
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    assert checks["fuse"]["status"] == "ok"
    assert checks["tool:squashfuse_ll"]["status"] == "ok"
    assert proc.returncode == 0, proc.stdout


def test_doctor_catches_dev_fuse_0600(run_as, as_who, sifbox_cli, fuse_0600) -> None:
    proc = run_as(as_who, [sifbox_cli, "doctor"])
    assert proc.returncode == 1
    line = next(ln for ln in proc.stdout.splitlines() if "/dev/fuse" in ln)
    assert line.strip().startswith("FAIL") and "0600" in line
    assert "chmod 0666 /dev/fuse" in proc.stdout
