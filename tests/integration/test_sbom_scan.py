"""`sifbox sbom` and `sifbox scan` on SIF, SquashFS and sandbox images, as root and as the
test user, without mounting anything."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.images import make_sif, mksquashfs

pytestmark = pytest.mark.integration

STATUS = (
    "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\nSource: openssl\n"
    "Version: 3.0.11-1~deb12u2\n\nPackage: bash\nStatus: install ok installed\n"
    "Architecture: amd64\nVersion: 5.2.15-2+b2\n"
)
METADATA = "Metadata-Version: 2.1\nName: Jinja2\nVersion: 2.10.1\n"
OSV = [
    {"id": "DSA-1", "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
     "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u3"}]}]}],
     "database_specific": {"severity": "medium"}},
    # Fixed by a version that sorts *below* ours only with dpkg's `~` rule: not a finding.
    {"id": "DSA-2", "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
     "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u1"}]}]}],
     "database_specific": {"severity": "critical"}},
    {"id": "PYSEC-1", "affected": [{"package": {"ecosystem": "PyPI", "name": "jinja2"},
     "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.10.2"}]}]}],
     "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]},
    {"id": "PYSEC-2", "affected": [{"package": {"ecosystem": "PyPI", "name": "Jinja2"},
     "versions": ["2.10"]}]},
]  # fmt: skip


@pytest.fixture(scope="module")
def images(sifbox_cli: str) -> Iterator[dict[str, Path]]:
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs is not installed (Debian package squashfs-tools)")
    base = Path(tempfile.mkdtemp(prefix="sifbox-sbom-images-", dir="/tmp"))
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    dist = root / "usr/lib/python3/dist-packages/Jinja2-2.10.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(METADATA)
    sqfs = mksquashfs(root, base / "img.sqfs")
    sif = make_sif(sifbox_cli, sqfs, base / "img.sif")
    db = base / "osv"
    db.mkdir()
    for e in OSV:
        (db / f"{e['id']}.json").write_text(json.dumps(e))
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    yield {"sif": sif, "sqfs": sqfs, "sandbox": root, "db": db, "base": base}
    shutil.rmtree(base, ignore_errors=True)


PURLS = {
    "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl%403.0.11-1~deb12u2",
    "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12",
    "pkg:pypi/jinja2@2.10.1",
}


@pytest.mark.parametrize("kind", ["sif", "sqfs", "sandbox"])
def test_sbom_formats(run_as, as_who, sifbox_cli, images, kind) -> None:  # type: ignore[no-untyped-def]
    proc = run_as(as_who, [sifbox_cli, "sbom", str(images[kind])])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["bomFormat"] == "CycloneDX"
    assert {c["purl"] for c in doc["components"]} == PURLS
    proc = run_as(as_who, [sifbox_cli, "sbom", "--format", "spdx-json", str(images[kind])])
    doc = json.loads(proc.stdout)
    assert doc["spdxVersion"] == "SPDX-2.3"
    refs = {r["referenceLocator"] for p in doc["packages"] for r in p.get("externalRefs", [])}
    assert refs == PURLS


def test_sbom_in_the_sif_is_shown_as_is(run_as, as_who, sifbox_cli, images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    sif = shared_tmp / "with-sbom.sif"
    shutil.copy(images["sif"], sif)
    stored = shared_tmp / "stored.json"
    stored.write_text('{"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}\n')
    subprocess.run([sifbox_cli, "sif", "add", str(sif), str(stored), "--datatype", "9",
                    "--sbomformat", "cyclonedx-json"], check=True, capture_output=True)  # fmt: skip
    sif.chmod(0o644)
    proc = run_as(as_who, [sifbox_cli, "sbom", str(sif)])
    assert proc.returncode == 0 and proc.stdout == stored.read_text()
    # --generate reads the package databases anyway.
    proc = run_as(as_who, [sifbox_cli, "sbom", "--generate", str(sif)])
    assert {c["purl"] for c in json.loads(proc.stdout)["components"]} == PURLS
    out = shared_tmp / f"out-{as_who.name}.json"
    proc = run_as(as_who, [sifbox_cli, "sbom", str(images["sif"]), "--output", str(out)])
    assert proc.returncode == 0 and proc.stdout == "" and json.loads(out.read_text())["components"]


def test_scan_orders_versions_and_sets_exit_status(run_as, as_who, sifbox_cli, images) -> None:  # type: ignore[no-untyped-def]
    argv = [sifbox_cli, "scan", str(images["sif"]), "--db", str(images["db"])]
    proc = run_as(as_who, [*argv, "--json"])
    assert proc.returncode == 1, proc.stderr  # PYSEC-1 is critical, default threshold high
    report = json.loads(proc.stdout)
    assert sorted(f["id"] for f in report["findings"]) == ["DSA-1", "PYSEC-1"]
    assert report["threshold_crossed"] is True
    proc = run_as(as_who, [*argv, "--severity-threshold", "critical"])
    assert proc.returncode == 1
    assert "PYSEC-1" in proc.stdout and "CRITICAL" in proc.stdout
    assert "2 vulnerabilities in 3 packages; 1 at or above critical" in proc.stderr
    # With only the Debian entries, nothing reaches `high`.
    only_debian = images["db"].parent / "osv-debian"
    if not only_debian.exists():
        only_debian.mkdir()
        for name in ("DSA-1.json", "DSA-2.json"):
            shutil.copy(images["db"] / name, only_debian / name)
        subprocess.run(["chmod", "-R", "a+rX", str(only_debian)], check=True)
    proc = run_as(as_who, [sifbox_cli, "scan", str(images["sqfs"]), "--db", str(only_debian)])
    assert proc.returncode == 0, proc.stderr
    assert "DSA-1" in proc.stdout and "DSA-2" not in proc.stdout


def test_bad_input(run_as, as_who, sifbox_cli, images, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    proc = run_as(as_who, [sifbox_cli, "sbom", str(shared_tmp / "nope.sif")])
    assert proc.returncode == 255
    assert proc.stderr.startswith("sifbox: error: can't read the SBOM of `") and "no such file" in proc.stderr
    proc = run_as(as_who, [sifbox_cli, "scan", str(images["sif"]), "--db", str(shared_tmp / "nodb")])
    assert proc.returncode == 255 and "can't read vulnerability database" in proc.stderr
    bad = shared_tmp / "bad"
    bad.mkdir()
    (bad / "x.json").write_text("{")
    bad.chmod(0o755)
    (bad / "x.json").chmod(0o644)
    proc = run_as(as_who, [sifbox_cli, "scan", str(images["sif"]), "--db", str(bad)])
    assert proc.returncode == 255 and "x.json" in proc.stderr and "Traceback" not in proc.stderr
