"""Match an image's packages against an offline OSV database.

The database is a directory of OSV JSON files (https://ossf.github.io/osv-schema/),
searched recursively, e.g. the unpacked `all.zip` of the Debian and PyPI
ecosystems. A package is affected by an entry when an `affected[]` item has
its ecosystem and name and either lists its version in `versions` or has a
range (`ECOSYSTEM` or `SEMVER`) whose events (`introduced`, `fixed`,
`last_affected`) put the version inside, in the ecosystem's own order (dpkg
for Debian and Ubuntu, PEP 440 for PyPI, apk for Alpine; see
`sifbox.security.versions`). Packages of other ecosystems are reported as
not scanned.

Debian and Alpine entries name source packages: a binary package is looked up
under its source name (and version, for Debian) from the `upstream` qualifier
of its purl when it has one.

Severity: the highest of `database_specific.severity`,
`affected[].ecosystem_specific.severity` (words such as HIGH or MODERATE) and
CVSS v3 base scores computed from `severity[]` vectors; `unknown` when none.

Pure: loading reads files; matching makes no system calls.
"""

from __future__ import annotations

import json
import math
import os
from collections import namedtuple

from sifbox.security import versions
from sifbox.util.errors import SifboxError

#: Severity levels, lowest first.
LEVELS = ("unknown", "low", "medium", "high", "critical")
_WORDS = {
    "negligible": "low", "unimportant": "low", "low": "low",
    "medium": "medium", "moderate": "medium",
    "high": "high", "important": "high",
    "critical": "critical",
}  # fmt: skip

Package = namedtuple("Package", "ecosystem name version purl")
Package.__doc__ = "A package to match: OSV ecosystem (`Debian:12`, `PyPI`), name, version, purl."

Finding = namedtuple("Finding", "id package version severity fixed summary aliases purl")


class ScanError(SifboxError):
    reference = "scan-error"


# -- database -----------------------------------------------------------------------------------


class Database:
    """OSV entries indexed by (base ecosystem, package name)."""

    def __init__(self) -> None:
        self.by_package: dict[tuple[str, str], list[dict]] = {}  # type: ignore[type-arg]
        self.entries = 0

    def add(self, entry: dict) -> None:  # type: ignore[type-arg]
        seen = set()
        for aff in entry.get("affected") or ():
            pkg = aff.get("package") or {}
            eco, name = pkg.get("ecosystem"), pkg.get("name")
            if not isinstance(eco, str) or not isinstance(name, str):
                continue
            key = (eco.split(":", 1)[0], _norm(eco, name))
            if key not in seen:
                seen.add(key)
                self.by_package.setdefault(key, []).append(entry)
        self.entries += 1

    def candidates(self, ecosystem: str, name: str) -> list[dict]:  # type: ignore[type-arg]
        return self.by_package.get((ecosystem.split(":", 1)[0], _norm(ecosystem, name)), [])


def _norm(ecosystem: str, name: str) -> str:
    if ecosystem.startswith("PyPI"):
        import re

        return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503
    return name


def load_db(directory: str) -> Database:
    """Read every `*.json` OSV file under `directory`."""
    if not os.path.isdir(directory):
        raise ScanError(f"can't read vulnerability database `{directory}`: not a directory",
                        hint="give a directory of OSV JSON files (e.g. an unpacked all.zip)")  # fmt: skip
    db = Database()
    for top, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".json"):
                continue
            path = os.path.join(top, name)
            try:
                with open(path, "rb") as f:
                    entry = json.loads(f.read())
            except (OSError, ValueError) as err:
                raise ScanError(f"can't read vulnerability database `{directory}`: "
                                f"`{path}`: {err}") from None  # fmt: skip
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                db.add(entry)
    return db


# -- matching -----------------------------------------------------------------------------------


def in_range(version: str, events: list[dict], compare) -> bool:  # type: ignore[no-untyped-def, type-arg]
    """OSV's range evaluation: is `version` between an `introduced` and the next
    `fixed` (exclusive) or `last_affected` (inclusive), in the order `compare`?"""

    def key_of(ev: dict) -> str:  # type: ignore[type-arg]
        return next(iter(v for k, v in ev.items() if k in ("introduced", "fixed", "last_affected", "limit")), "0")

    def cmp_events(a: dict, b: dict) -> int:  # type: ignore[type-arg]
        ka, kb = key_of(a), key_of(b)
        if ka == kb:
            return 0
        if ka == "0":
            return -1
        if kb == "0":
            return 1
        return compare(ka, kb)

    import functools

    affected = False
    for ev in sorted(events, key=functools.cmp_to_key(cmp_events)):
        if "introduced" in ev:
            intro = ev["introduced"]
            if intro == "0" or compare(version, intro) >= 0:
                affected = True
        elif "fixed" in ev and compare(version, ev["fixed"]) >= 0:
            affected = False
        elif "last_affected" in ev and compare(version, ev["last_affected"]) > 0:
            affected = False
    return affected


def affects(aff: dict, version: str, compare) -> tuple[bool, str | None]:  # type: ignore[no-untyped-def, type-arg]
    """(affected, first fixed version) for one `affected[]` item."""
    fixed = None
    for listed in aff.get("versions") or ():
        try:
            if compare(version, listed) == 0:
                return True, _fixed(aff)
        except ValueError:
            continue
    for rng in aff.get("ranges") or ():
        if rng.get("type") not in ("ECOSYSTEM", "SEMVER"):
            continue
        cmp = versions.semver_compare if rng.get("type") == "SEMVER" else compare
        try:
            if in_range(version, rng.get("events") or [], cmp):
                return True, _fixed(aff)
        except ValueError:
            continue  # a version this ecosystem cannot order: no claim
    return False, fixed


def _fixed(aff: dict) -> str | None:  # type: ignore[type-arg]
    for rng in aff.get("ranges") or ():
        for ev in rng.get("events") or ():
            if "fixed" in ev:
                return str(ev["fixed"])
    return None


def _ecosystem_matches(wanted: str, theirs: str) -> bool:
    """`Debian:12` matches `Debian:12` and `Debian`; `Debian` (release unknown) matches any."""
    wb, _, wr = wanted.partition(":")
    tb, _, tr = theirs.partition(":")
    if wb != tb:
        return False
    return not wr or not tr or wr == tr


def match(db: Database, packages: list[Package]) -> tuple[list[Finding], list[Package]]:
    """Findings for `packages`, and the packages whose ecosystem cannot be ordered."""
    findings: list[Finding] = []
    unsupported: list[Package] = []
    for pkg in packages:
        compare = versions.comparator(pkg.ecosystem)
        if compare is None:
            unsupported.append(pkg)
            continue
        seen = set()
        for entry in db.candidates(pkg.ecosystem, pkg.name):
            if entry.get("withdrawn") or entry["id"] in seen:
                continue
            for aff in entry.get("affected") or ():
                p = aff.get("package") or {}
                if _norm(pkg.ecosystem, str(p.get("name"))) != _norm(pkg.ecosystem, pkg.name):
                    continue
                if not _ecosystem_matches(pkg.ecosystem, str(p.get("ecosystem"))):
                    continue
                hit, fixed = affects(aff, pkg.version, compare)
                if hit:
                    seen.add(entry["id"])
                    findings.append(Finding(
                        entry["id"], pkg.name, pkg.version, severity(entry, aff), fixed,
                        str(entry.get("summary") or entry.get("details") or "")[:200].split("\n")[0],
                        tuple(entry.get("aliases") or ()), pkg.purl,
                    ))  # fmt: skip
                    break
    findings.sort(key=lambda f: (-LEVELS.index(f.severity), f.package, f.id))
    return findings, unsupported


# -- severity -----------------------------------------------------------------------------------


def severity(entry: dict, aff: dict | None = None) -> str:  # type: ignore[type-arg]
    best = 0
    words = [(entry.get("database_specific") or {}).get("severity")]
    if aff is not None:
        words.append((aff.get("ecosystem_specific") or {}).get("severity"))
        words.append((aff.get("database_specific") or {}).get("severity"))
    for word in words:
        if isinstance(word, str) and word.lower() in _WORDS:
            best = max(best, LEVELS.index(_WORDS[word.lower()]))
    for sev in entry.get("severity") or ():
        score = sev.get("score")
        if sev.get("type") == "CVSS_V3" and isinstance(score, str):
            try:
                best = max(best, LEVELS.index(level_of_score(cvss3_base_score(score))))
            except ValueError:
                pass
    return LEVELS[best]


def level_of_score(score: float) -> str:
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    if score > 0:
        return "low"
    return "unknown"


_W = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
}


def _roundup(x: float) -> float:
    n = round(x * 100000)
    return n / 100000.0 if n % 10000 == 0 else (math.floor(n / 10000) + 1) / 10.0


def cvss3_base_score(vector: str) -> float:
    """The CVSS v3.0/v3.1 base score of a vector `CVSS:3.1/AV:N/AC:L/...`."""
    parts = dict(p.split(":", 1) for p in vector.split("/")[1:] if ":" in p)
    try:
        scope_changed = parts["S"] == "C"
        av, ac, ui = _W["AV"][parts["AV"]], _W["AC"][parts["AC"]], _W["UI"][parts["UI"]]
        pr = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}[parts["PR"]]
        c, i, a = (_W["C"][parts[k]] for k in ("C", "I", "A"))
    except KeyError:
        raise ValueError(f"not a CVSS v3 vector: {vector}") from None
    iss = 1 - (1 - c) * (1 - i) * (1 - a)
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if scope_changed else 6.42 * iss
    exploitability = 8.22 * av * ac * pr * ui
    if impact <= 0:
        return 0.0
    total = (1.08 if scope_changed else 1.0) * (impact + exploitability)
    return _roundup(min(total, 10.0))


def crosses(findings: list[Finding], threshold: str) -> list[Finding]:
    """The findings at or above `threshold` (one of `LEVELS`)."""
    floor = LEVELS.index(threshold)
    return [f for f in findings if LEVELS.index(f.severity) >= floor]


# -- packages from purls ------------------------------------------------------------------------


def package_from_purl(purl: str) -> Package | None:
    """The package to match for a purl of an SBOM (`pkg:deb/debian/x@1?upstream=src%401&distro=debian-12`)."""
    from urllib.parse import parse_qs, unquote

    if not purl.startswith("pkg:"):
        return None
    body, _, _ = purl[4:].partition("#")
    body, _, query = body.partition("?")
    path, _, version = body.rpartition("@")
    if not path:
        return None
    version = unquote(version)
    kind, _, rest = path.partition("/")
    segments = [unquote(s) for s in rest.split("/")]
    quals = {k: v[0] for k, v in parse_qs(query).items()}
    if kind == "pypi":
        return Package("PyPI", segments[-1], version, purl)
    if kind == "deb":
        namespace = segments[0] if len(segments) > 1 else "debian"
        eco = "Ubuntu" if namespace == "ubuntu" else "Debian"
        distro = quals.get("distro", "")
        release = distro.split("-", 1)[1] if "-" in distro else ""
        if release:
            eco = f"{eco}:{release.split('.')[0] if eco == 'Debian' else release}"
        name = segments[-1]
        upstream = quals.get("upstream")
        if upstream:
            src, _, src_version = upstream.partition("@")
            name, version = src or name, src_version or version
        return Package(eco, name, version, purl)
    if kind == "apk":
        release = quals.get("distro", "").partition("-")[2]
        eco = "Alpine:v" + ".".join(release.split(".")[:2]) if release else "Alpine"
        return Package(eco, quals.get("upstream") or segments[-1], version, purl)
    if kind == "rpm":
        return Package("Red Hat", segments[-1], version, purl)
    if kind == "conda":
        return Package("conda", segments[-1], version, purl)
    return Package(kind, segments[-1], version, purl)
