"""Version ordering of package ecosystems, for vulnerability matching.

* Debian/Ubuntu: dpkg's rules (`dpkg --compare-versions`): `[epoch:]upstream[-revision]`;
  the epoch compares as a number; upstream and revision compare part by part,
  alternating non-digit runs (letters sort before other characters, `~` before
  everything, even the end of the string) and digit runs compared as numbers.
* PyPI: PEP 440, through `packaging.version`.

`compare(ecosystem, a, b)` returns <0, 0 or >0; `ValueError` for a version
that the ecosystem cannot order.
"""

from __future__ import annotations

import functools

# -- dpkg -------------------------------------------------------------------------------------


def _order(c: str) -> int:
    """Weight of one character of a non-digit run (dpkg's `order`); '' is the end."""
    if not c or c.isdigit():
        return 0
    if c.isascii() and c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        # Non-digit runs, character by character.
        while (i < la and not a[i].isdigit()) or (j < lb and not b[j].isdigit()):
            ac = _order(a[i] if i < la else "")
            bc = _order(b[j] if j < lb else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        # Digit runs, as numbers.
        while i < la and a[i] == "0":
            i += 1
        while j < lb and b[j] == "0":
            j += 1
        first_diff = 0
        while i < la and j < lb and a[i].isdigit() and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < la and a[i].isdigit():
            return 1
        if j < lb and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def parse_dpkg(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision) of a Debian version; ValueError if malformed."""
    v = version.strip()
    if not v:
        raise ValueError("empty version")
    epoch = 0
    if ":" in v:
        head, v = v.split(":", 1)
        if not head.isdigit():
            raise ValueError(f"epoch `{head}` of `{version}` is not a number")
        epoch = int(head)
    upstream, _, revision = v.rpartition("-") if "-" in v else (v, "", "")
    if not upstream:
        raise ValueError(f"`{version}` has an empty upstream version")
    if any(ch.isspace() for ch in version.strip()):
        raise ValueError(f"`{version}` contains blanks")
    return epoch, upstream, revision


def dpkg_compare(a: str, b: str) -> int:
    """Compare two Debian versions as `dpkg --compare-versions` does: <0, 0 or >0."""
    ea, ua, ra = parse_dpkg(a)
    eb, ub, rb = parse_dpkg(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# -- PEP 440 ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _pep440(text: str):  # type: ignore[no-untyped-def]
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(f"`{text}` is not a PEP 440 version") from None


def pep440_compare(a: str, b: str) -> int:
    va, vb = _pep440(a), _pep440(b)
    return (va > vb) - (va < vb)


# -- semver -----------------------------------------------------------------------------------


def _semver_key(v: str) -> tuple:  # type: ignore[type-arg]
    core, _, pre = v.lstrip("v").split("+", 1)[0].partition("-")
    nums = []
    for part in core.split("."):
        if not part.isdigit():
            raise ValueError(f"`{v}` is not a semantic version")
        nums.append(int(part))
    while len(nums) < 3:
        nums.append(0)
    # A pre-release sorts before its release; identifiers: numbers before words.
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else None
    return (tuple(nums), pre_key is None, pre_key or ())


def semver_compare(a: str, b: str) -> int:
    ka, kb = _semver_key(a), _semver_key(b)
    return (ka > kb) - (ka < kb)


# -- apk (Alpine) ---------------------------------------------------------------------------

import re as _re

_APK = _re.compile(
    r"^(?P<nums>\d+(?:\.\d+)*)(?P<letter>[a-z]?)(?P<suffixes>(?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)\d*)*)"
    r"(?:~(?P<hash>[0-9a-f]+))?(?:-r(?P<rev>\d+))?$"
)
_APK_SUFFIX = {"alpha": 0, "beta": 1, "pre": 2, "rc": 3, "cvs": 5, "svn": 6, "git": 7, "hg": 8, "p": 9}
_NO_SUFFIX = 4


def _apk_parse(v: str):  # type: ignore[no-untyped-def]
    m = _APK.match(v)
    if m is None:
        raise ValueError(f"`{v}` is not an Alpine package version")
    sufs = [(_APK_SUFFIX[name], int(num or 0))
            for name, num in _re.findall(r"_([a-z]+)(\d*)", m.group("suffixes"))]  # fmt: skip
    return m.group("nums").split("."), m.group("letter"), sufs, int(m.group("rev") or 0)


def apk_compare(a: str, b: str) -> int:
    """Compare two Alpine package versions (apk's rules, after Gentoo's): numbers (a
    later component with a leading zero compares as a decimal fraction), a letter,
    suffixes (`_alpha` < `_beta` < `_pre` < `_rc` < none < `_cvs` < `_svn` < `_git` <
    `_hg` < `_p`), then the `-rN` revision."""
    na, la, sa, ra = _apk_parse(a)
    nb, lb, sb, rb = _apk_parse(b)
    c = (int(na[0]) > int(nb[0])) - (int(na[0]) < int(nb[0]))
    if c:
        return c
    for x, y in zip(na[1:], nb[1:]):
        if x.startswith("0") or y.startswith("0"):
            fx, fy = x.rstrip("0"), y.rstrip("0")
            c = (fx > fy) - (fx < fy)
        else:
            c = (int(x) > int(y)) - (int(x) < int(y))
        if c:
            return c
    if len(na) != len(nb):
        return 1 if len(na) > len(nb) else -1
    if la != lb:
        return 1 if la > lb else -1
    for i in range(max(len(sa), len(sb))):
        x = sa[i] if i < len(sa) else (_NO_SUFFIX, 0)
        y = sb[i] if i < len(sb) else (_NO_SUFFIX, 0)
        if x != y:
            return 1 if x > y else -1
    return (ra > rb) - (ra < rb)


# -- by ecosystem -----------------------------------------------------------------------------

#: OSV ecosystem (before any `:release`) -> comparison function.
COMPARATORS = {
    "Debian": dpkg_compare,
    "Ubuntu": dpkg_compare,
    "PyPI": pep440_compare,
    "Alpine": apk_compare,
}


def comparator(ecosystem: str):  # type: ignore[no-untyped-def]
    """The comparison function of an OSV ecosystem (`Debian:12` -> dpkg), or None."""
    return COMPARATORS.get(ecosystem.split(":", 1)[0])
