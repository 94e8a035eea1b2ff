"""OSV matching (sifbox.security.scan): ranges, version lists, ecosystems, severities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sifbox.security import scan
from sifbox.security.scan import Package, in_range
from sifbox.security.versions import dpkg_compare, pep440_compare


def entry(id_: str, eco: str, name: str, events=None, versions=None, **extra):  # type: ignore[no-untyped-def]
    aff = {"package": {"ecosystem": eco, "name": name}}
    if events is not None:
        aff["ranges"] = [{"type": "ECOSYSTEM", "events": events}]
    if versions is not None:
        aff["versions"] = versions
    return {"id": id_, "affected": [aff], **extra}


def test_in_range_introduced_fixed() -> None:
    ev = [{"introduced": "0"}, {"fixed": "1.2-3"}]
    assert in_range("1.2-2", ev, dpkg_compare)
    assert in_range("1.2~rc1-3", ev, dpkg_compare)
    assert not in_range("1.2-3", ev, dpkg_compare)
    assert not in_range("1:0.1-1", ev, dpkg_compare)  # epoch wins


def test_in_range_last_affected_and_several_windows() -> None:
    ev = [{"introduced": "1.0"}, {"last_affected": "1.5"}, {"introduced": "2.0"}, {"fixed": "2.3"}]
    assert not in_range("0.9", ev, pep440_compare)
    assert in_range("1.5", ev, pep440_compare)
    assert not in_range("1.6", ev, pep440_compare)
    assert in_range("2.2.post1", ev, pep440_compare)
    assert not in_range("2.3", ev, pep440_compare)
    # Events given out of order are sorted first.
    assert in_range("2.1", list(reversed(ev)), pep440_compare)


def test_match_debian_source_names_and_releases() -> None:
    db = scan.Database()
    db.add(entry("DSA-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.15-1~deb12u1"}],
                 database_specific={"severity": "high"}))
    db.add(entry("DSA-2", "Debian:11", "openssl", [{"introduced": "0"}, {"fixed": "9.9"}]))
    pkg = scan.package_from_purl(
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12&upstream=openssl%403.0.11-1~deb12u2"
    )
    assert pkg == Package("Debian:12", "openssl", "3.0.11-1~deb12u2", pkg.purl)
    findings, unsupported = scan.match(db, [pkg])
    assert [f.id for f in findings] == ["DSA-1"] and findings[0].severity == "high"
    assert findings[0].fixed == "3.0.15-1~deb12u1" and not unsupported
    fixed = pkg._replace(version="3.0.15-1~deb12u1")
    assert scan.match(db, [fixed])[0] == []


def test_match_pypi_versions_list_and_normalised_names() -> None:
    db = scan.Database()
    db.add(entry("PYSEC-1", "PyPI", "Jinja2", versions=["2.10", "2.10.1"]))
    db.add(entry("GHSA-x", "PyPI", "jinja2", [{"introduced": "0"}, {"fixed": "3.1.4"}],
                 severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]))
    pkg = scan.package_from_purl("pkg:pypi/jinja2@2.10.0")
    found, _ = scan.match(db, [pkg])
    assert {f.id for f in found} == {"PYSEC-1", "GHSA-x"}
    assert {f.id: f.severity for f in found}["GHSA-x"] == "critical"
    assert [f.id for f in scan.match(db, [pkg._replace(version="3.1.4")])[0]] == []


def test_unsupported_ecosystems_are_reported_not_matched() -> None:
    _, unsupported = scan.match(scan.Database(), [Package("npm", "x", "1", "pkg:npm/x@1")])
    assert [p.name for p in unsupported] == ["x"]


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N", 5.5),
        ("CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),
        ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H", 9.9),
    ],
)
def test_cvss3_base_scores(vector: str, score: float) -> None:
    assert scan.cvss3_base_score(vector) == score


def test_thresholds() -> None:
    f = [scan.Finding("A", "p", "1", sev, None, "", (), "") for sev in scan.LEVELS]
    assert [x.severity for x in scan.crosses(f, "high")] == ["high", "critical"]
    assert len(scan.crosses(f, "unknown")) == 5


def test_load_db_reads_json_tree_and_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "Debian").mkdir()
    (tmp_path / "Debian" / "DSA-1.json").write_text(json.dumps(entry("DSA-1", "Debian", "a", versions=["1"])))
    (tmp_path / "README").write_text("not json")
    db = scan.load_db(str(tmp_path))
    assert db.entries == 1 and db.candidates("Debian:12", "a")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(scan.ScanError, match="bad.json"):
        scan.load_db(str(tmp_path))
    with pytest.raises(scan.ScanError, match="not a directory"):
        scan.load_db(str(tmp_path / "nope"))


def test_match_alpine_by_origin_and_release() -> None:
    db = scan.Database()
    db.add(entry("ALPINE-1", "Alpine:v3.19", "openssl", [{"introduced": "0"}, {"fixed": "3.1.4-r6"}]))
    db.add(entry("ALPINE-2", "Alpine:v3.18", "openssl", [{"introduced": "0"}, {"fixed": "9.9-r0"}]))
    pkg = scan.package_from_purl("pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64&distro=alpine-3.19.1&upstream=openssl")
    assert (pkg.ecosystem, pkg.name) == ("Alpine:v3.19", "openssl")
    assert [f.id for f in scan.match(db, [pkg])[0]] == ["ALPINE-1"]
    assert scan.match(db, [pkg._replace(version="3.1.4-r6")])[0] == []
