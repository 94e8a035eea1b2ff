"""SBOM extraction (sifbox.security.sbom) from a test SquashFS, without mounting it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("packageurl", reason="sifbox's dependencies are not installed (pip install .)")
pytest.importorskip("cyclonedx", reason="sifbox's dependencies are not installed (pip install .)")

from sifbox.image.source import open_image
from sifbox.security import sbom, scan

DPKG_STATUS = """\
Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.11-1~deb12u2
Description: TLS library

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Source: bash (5.2.15-2)
Description: shell
 more text: with a colon

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
"""
DISTROLESS = "Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4+deb12u5\n"
APK = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\no:musl\n\nC:Q1def=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n"
METADATA = "Metadata-Version: 2.1\nName: Jinja2\nVersion: 2.10\nLicense: BSD-3-Clause\n\nlong text\n"
PKG_INFO = "Metadata-Version: 1.0\nName: old_egg\nVersion: 0.1\n"
CONDA = {"name": "numpy", "version": "1.26.4", "build": "py311h64a7726_0",
         "channel": "https://conda.anaconda.org/conda-forge/linux-64", "subdir": "linux-64", "license": "BSD-3-Clause"}


def rpm_header(fields: dict[int, tuple[int, object]]) -> bytes:
    """An RPM header blob as rpmdb stores it (no lead, no magic)."""
    index, store = b"", b""
    for tag, (typ, value) in fields.items():
        if typ == 4:
            while len(store) % 4:
                store += b"\0"
            off = len(store)
            store += struct.pack(">i", value)
        else:
            off = len(store)
            store += str(value).encode() + b"\0"
        index += struct.pack(">iiii", tag, typ, off, 1)
    return struct.pack(">ii", len(fields), len(store)) + index + store


def make_root(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "var/lib/dpkg/status.d").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    (root / "var/lib/dpkg/status.d/base").write_text(DISTROLESS)
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "lib/apk/db/installed").write_text(APK)
    site = root / "usr/lib/python3/dist-packages"
    (site / "Jinja2-2.10.dist-info").mkdir(parents=True)
    (site / "Jinja2-2.10.dist-info/METADATA").write_text(METADATA)
    (site / "old_egg-0.1.egg-info").mkdir()
    (site / "old_egg-0.1.egg-info/PKG-INFO").write_text(PKG_INFO)
    (root / "opt/conda/conda-meta").mkdir(parents=True)
    (root / "opt/conda/conda-meta/numpy-1.26.4-py311h64a7726_0.json").write_text(json.dumps(CONDA))
    (root / "var/lib/rpm").mkdir(parents=True)
    con = sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite")
    con.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    blob = rpm_header({1000: (6, "zlib"), 1001: (6, "1.2.13"), 1002: (6, "3.el9"), 1003: (4, 1),
                       1014: (6, "zlib and Boost"), 1022: (6, "x86_64")})
    con.execute("INSERT INTO Packages (blob) VALUES (?)", (blob,))
    con.commit()
    con.close()
    # A symlink in the image pointing at a host file must not be followed.
    (root / "var/lib/dpkg/status.d/evil").symlink_to("/etc/hostname")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None:
        pytest.skip("squashfs-tools is not installed")
    base = tmp_path_factory.mktemp("sbom")
    root = make_root(base / "root")
    sqfs = base / "img.sqfs"
    subprocess.run(["mksquashfs", str(root), str(sqfs), "-quiet", "-no-progress", "-all-root"],
                   check=True, capture_output=True)
    return root, sqfs


EXPECTED = {
    "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl%403.0.11-1~deb12u2",
    "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12&upstream=bash%405.2.15-2",
    "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=amd64&distro=debian-12",
    "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64&distro=debian-12",
    "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64&distro=debian-12&upstream=openssl",
    "pkg:pypi/jinja2@2.10",
    "pkg:pypi/old-egg@0.1",
    "pkg:conda/numpy@1.26.4?build=py311h64a7726_0&channel=linux-64&subdir=linux-64",
    "pkg:rpm/debian/zlib@1.2.13-3.el9?arch=x86_64&distro=debian-12&epoch=1",
}


@pytest.mark.parametrize("kind", ["squashfs", "sandbox"])
def test_components_of_image(images: tuple[Path, Path], kind: str) -> None:
    root, sqfs = images
    src = open_image(str(sqfs if kind == "squashfs" else root), verb="read")
    try:
        comps = sbom.components_of_image(src)
    finally:
        src.close()
    assert {c.purl for c in comps} == EXPECTED
    by_name = {c.name: c for c in comps}
    assert by_name["Jinja2"].license == "BSD-3-Clause"
    assert by_name["zlib"].license == "zlib and Boost"
    assert "removed-thing" not in by_name


def test_documents_carry_the_purls(images: tuple[Path, Path]) -> None:
    comps = sbom.components_from_files({"/var/lib/dpkg/status": DPKG_STATUS.encode()})
    cdx = sbom.render(comps, "cyclonedx-json", "img.sif")
    doc = json.loads(cdx)
    assert doc["bomFormat"] == "CycloneDX" and doc["metadata"]["component"]["type"] == "container"
    spdx = sbom.render(comps, "spdx-json", "img.sif")
    assert json.loads(spdx)["spdxVersion"] == "SPDX-2.3"
    assert sorted(sbom.purls_of_document(cdx.encode())) == sorted(sbom.purls_of_document(spdx.encode()))
    assert len(sbom.purls_of_document(cdx.encode())) == 2


def test_scan_uses_source_package_of_debian_binaries() -> None:
    comps = sbom.components_from_files({
        "/var/lib/dpkg/status": DPKG_STATUS.encode(),
        "/etc/os-release": b"ID=debian\nVERSION_ID=12\n",
    })
    pkgs = [scan.package_from_purl(c.purl) for c in comps]
    assert ("Debian:12", "openssl", "3.0.11-1~deb12u2") in [(p.ecosystem, p.name, p.version) for p in pkgs]


def test_rpm_header_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        sbom.parse_rpm_header(b"\0\0\0\x10\0\0\0\x10")


def test_cyclonedx_document_is_valid_against_the_schema(images: tuple[Path, Path]) -> None:
    pytest.importorskip("jsonschema", reason="jsonschema (test extra) is not installed")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    root, _ = images
    src = open_image(str(root), verb="read")
    try:
        text = sbom.render(sbom.components_of_image(src), "cyclonedx-json", "img.sif")
    finally:
        src.close()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
