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


# -- hostile images: budgets, no silent cut, linear parsing ------------------------------------


def _squashfs(tmp_path: Path, root: Path) -> Path:
    if shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None:
        pytest.skip("squashfs-tools is not installed")
    out = tmp_path / "img.sqfs"
    subprocess.run(["mksquashfs", str(root), str(out), "-quiet", "-no-progress", "-all-root"],
                   check=True, capture_output=True)  # fmt: skip
    return out


def _components(path: Path, budget: object = None) -> list[sbom.Component]:
    src = open_image(str(path), verb="read")
    try:
        return sbom.components_of_image(src, budget)
    finally:
        src.close()


@pytest.mark.parametrize("kind", ["squashfs", "sandbox"])
def test_a_big_database_is_refused_from_its_listed_size(tmp_path: Path, kind: str) -> None:
    from sifbox.image.files import BudgetExceeded, ReadBudget

    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS + ("Description: x\n" + " y\n" * (1 << 20)))
    image = _squashfs(tmp_path, root) if kind == "squashfs" else root
    with pytest.raises(BudgetExceeded) as info:
        _components(image, ReadBudget(max_bytes=1 << 20))
    assert info.value.reason.startswith("3 MiB of package database files (")
    assert info.value.reason.endswith("more than the limit of 1 MiB (a limit against decompression bombs)")
    assert len(_components(image, ReadBudget(max_bytes=4 << 20))) == 2


@pytest.mark.parametrize("kind", ["squashfs", "sandbox"])
def test_no_package_is_cut_off(tmp_path: Path, kind: str) -> None:
    """A package after 17 MiB of another's description is found (a reader that cut files
    at 16 MiB hid it)."""
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    filler = "Package: filler\nStatus: install ok installed\nVersion: 1\nDescription: x\n"
    filler += (" " + "z" * 1023 + "\n") * (17 << 10)
    (root / "var/lib/dpkg/status").write_text(filler + "\n" + DPKG_STATUS)
    image = _squashfs(tmp_path, root) if kind == "squashfs" else root
    names = {c.name for c in _components(image)}
    assert names == {"filler", "libssl3", "bash"}


def test_files_and_entries_budgets(images: tuple[Path, Path]) -> None:
    from sifbox.image.files import BudgetExceeded, ReadBudget

    root, sqfs = images
    for image in (root, sqfs):
        with pytest.raises(BudgetExceeded, match="package database files, more than the limit of 3"):
            _components(image, ReadBudget(max_files=3))
        with pytest.raises(BudgetExceeded, match="more than 5 entries in the image"):
            _components(image, ReadBudget(max_entries=5))


def test_packages_are_capped_before_they_are_parsed() -> None:
    stanzas = "".join(f"Package: p{i}\nStatus: install ok installed\nVersion: 1\n\n" for i in range(11))
    assert len(sbom.components_from_files({sbom.DPKG_STATUS: stanzas.encode()}, max_packages=11)) == 11
    with pytest.raises(sbom.SbomError, match="more than 10 packages"):
        sbom.components_from_files({sbom.DPKG_STATUS: stanzas.encode()}, max_packages=10)
    apk = "".join(f"P:p{i}\nV:1\n\n" for i in range(11)).encode()
    with pytest.raises(sbom.SbomError, match="more than 10 packages"):
        sbom.components_from_files({sbom.APK_INSTALLED: apk}, max_packages=10)


def test_dpkg_continuation_lines_are_parsed_in_linear_time() -> None:
    import time

    text = "Package: a\nStatus: install ok installed\nVersion: 1\nDescription: x\n" + " " + "p" * 100 + "\n"
    text = text + (" " + "p" * 100 + "\n") * (80 << 10)  # 8 MiB of description, 80,000 lines
    started = time.monotonic()
    (comp,) = sbom.parse_dpkg_status(text.encode(), {}, sbom.DPKG_STATUS)
    # Folding line by line into one string took minutes here; joining once, well under a second.
    assert time.monotonic() - started < 5
    assert comp.name == "a"


def test_cyclonedx_document_of_many_or_no_packages_is_valid() -> None:
    pytest.importorskip("jsonschema", reason="jsonschema (test extra) is not installed")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    comps = sbom.components_from_files({sbom.DPKG_STATUS: DPKG_STATUS.encode()}) * 2  # duplicates
    for components in (comps, []):
        text = sbom.cyclonedx_json(components, "img.sif", "sha256:00")
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(sbom.cyclonedx_json(comps, "img.sif"))
    assert [c["bom-ref"] for c in doc["components"]] == [c.purl for c in comps[:2]]
    assert doc["dependencies"][0] == {"ref": "image", "dependsOn": [c.purl for c in comps[:2]]}
