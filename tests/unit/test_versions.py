"""Version ordering for vulnerability matching: dpkg rules checked against
`dpkg --compare-versions` itself, PEP 440 through `packaging`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sifbox.security.versions import (
    comparator,
    dpkg_compare,
    parse_dpkg,
    pep440_compare,
    semver_compare,
)

DPKG = shutil.which("dpkg")


def sign(n: int) -> int:
    return (n > 0) - (n < 0)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "1.0-0", 0),
        ("1.0~rc1", "1.0", -1),
        ("1.0~~", "1.0~", -1),
        ("1.0~", "1.0", -1),
        ("1.0", "1.0a", -1),
        ("1.0a", "1.0+", -1),
        ("1:0.1", "2.0", 1),
        ("0:2.0", "2.0", 0),
        ("2.0-1", "2.0-1+deb12u1", -1),
        ("1.10", "1.9", 1),
        ("1.001", "1.1", 0),
        ("3.0.11-1~deb12u2", "3.0.11-1", -1),
        ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", -1),
        ("1.2-3-4", "1.2-3-5", -1),
    ],
)
def test_dpkg_known_pairs(a: str, b: str, expected: int) -> None:
    assert sign(dpkg_compare(a, b)) == expected
    assert sign(dpkg_compare(b, a)) == -expected


def test_parse_dpkg() -> None:
    assert parse_dpkg("1:2.3-4-5") == (1, "2.3-4", "5")
    assert parse_dpkg("2.3") == (0, "2.3", "")
    with pytest.raises(ValueError):
        parse_dpkg("x:1.0")
    with pytest.raises(ValueError):
        parse_dpkg("")


_UP = st.text(alphabet="0123456789.+~abzAZ", min_size=0, max_size=6)
_REV = st.text(alphabet="0123456789.+~abz", min_size=1, max_size=5)


@st.composite
def dpkg_versions(draw: st.DrawFn) -> str:
    epoch = draw(st.one_of(st.just(""), st.integers(0, 3).map(lambda n: f"{n}:")))
    upstream = draw(st.integers(0, 12).map(str)) + draw(_UP)
    revision = draw(st.one_of(st.just(""), _REV.map(lambda r: "-" + r)))
    return epoch + upstream + revision


def dpkg_says(a: str, op: str, b: str) -> bool:
    proc = subprocess.run([DPKG, "--compare-versions", a, op, b], capture_output=True, check=False)
    return proc.returncode == 0


@pytest.mark.skipif(DPKG is None, reason="dpkg is not installed")
@settings(max_examples=200, deadline=None)
@given(dpkg_versions(), dpkg_versions())
def test_dpkg_compare_agrees_with_dpkg(a: str, b: str) -> None:
    ours = sign(dpkg_compare(a, b))
    theirs = -1 if dpkg_says(a, "lt", b) else (0 if dpkg_says(a, "eq", b) else 1)
    assert ours == theirs, (a, b)


@settings(max_examples=200, deadline=None)
@given(dpkg_versions(), dpkg_versions(), dpkg_versions())
def test_dpkg_compare_is_a_total_order(a: str, b: str, c: str) -> None:
    assert sign(dpkg_compare(a, b)) == -sign(dpkg_compare(b, a))
    if dpkg_compare(a, b) <= 0 and dpkg_compare(b, c) <= 0:
        assert dpkg_compare(a, c) <= 0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0", "1.0.0", 0),
        ("1.0rc1", "1.0", -1),
        ("1.0.dev1", "1.0a1", -1),
        ("1.0.post1", "1.0", 1),
        ("1!0.1", "2.0", 1),
        ("2.31.0", "2.4.0", 1),
        ("1.0+local", "1.0", 1),
    ],
)
def test_pep440(a: str, b: str, expected: int) -> None:
    assert pep440_compare(a, b) == expected


def test_pep440_invalid_is_value_error() -> None:
    with pytest.raises(ValueError):
        pep440_compare("not a version!", "1.0")


def test_semver() -> None:
    assert semver_compare("1.0.0-alpha", "1.0.0") < 0
    assert semver_compare("1.0.0-alpha.1", "1.0.0-alpha.beta") < 0
    assert semver_compare("v1.2.10", "1.2.9") > 0


def test_comparator_by_ecosystem() -> None:
    assert comparator("Debian:12") is dpkg_compare
    assert comparator("PyPI") is pep440_compare
    assert comparator("npm") is None


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.2.4-r2", "1.2.4-r10", -1),
        ("3.1.4-r5", "3.1.4-r5", 0),
        ("1.0_rc1", "1.0", -1),
        ("1.0_p1", "1.0", 1),
        ("1.0a", "1.0", 1),
        ("1.0", "1.0.1", -1),
        ("1.01", "1.1", -1),
        ("1.10", "1.9", 1),
        ("2.0_alpha", "2.0_beta", -1),
        ("1.0_git20200101", "1.0_p1", -1),
        ("1.0_rc1_p2", "1.0_rc1", 1),
    ],
)
def test_apk(a: str, b: str, expected: int) -> None:
    from sifbox.security.versions import apk_compare

    assert apk_compare(a, b) == expected
    assert apk_compare(b, a) == -expected
