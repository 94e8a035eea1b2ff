"""`sifbox scan IMAGE --db DIR`: known vulnerabilities of an image's packages.

    sifbox scan IMAGE --db DIR [--severity-threshold LEVEL] [--json]

Matches the image's SBOM (the one stored in the SIF, else generated from its
package databases) against an offline OSV database directory; nothing goes
to the network. Debian/Ubuntu versions are ordered by dpkg's rules, PyPI ones
by PEP 440.

Exit status: 0 when no finding reaches the threshold (default `high`; levels
unknown < low < medium < high < critical), 1 when at least one does, 255 or
125 when the scan itself fails (unreadable image or database, bad usage).
"""

from __future__ import annotations

import argparse
import json
import sys

#: Exit status when a finding reaches the severity threshold.
FOUND = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sifbox.security.scan import LEVELS

    p.add_argument("image", metavar="IMAGE", help="SIF file, SquashFS file or sandbox directory")
    p.add_argument("--db", required=True, metavar="DIR", help="OSV database directory (JSON files)")
    p.add_argument("--severity-threshold", choices=LEVELS, default="high", metavar="LEVEL",
                   help="exit with status 1 if a finding has this severity or more "
                        f"({', '.join(LEVELS)}; default: high)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--generate", action="store_true",
                   help="read the package databases even if the SIF holds an SBOM")  # fmt: skip


def scan_image(path: str, db_dir: str, generate: bool = False, verb: str = "scan"):  # type: ignore[no-untyped-def]
    """(findings, packages, unsupported) for image `path` against `db_dir`."""
    from sifbox.cli.commands.sbom import document
    from sifbox.security import sbom, scan

    db = scan.load_db(db_dir)
    purls = sbom.purls_of_document(document(path, None, generate, verb=verb))
    packages = [p for p in (scan.package_from_purl(u) for u in purls) if p is not None]
    findings, unsupported = scan.match(db, packages)
    return findings, packages, unsupported


def main(args: argparse.Namespace) -> int:
    from sifbox.security import scan

    findings, packages, unsupported = scan_image(args.image, args.db, args.generate)
    over = scan.crosses(findings, args.severity_threshold)
    if args.json:
        json.dump({
            "image": args.image,
            "threshold": args.severity_threshold,
            "threshold_crossed": bool(over),
            "packages": len(packages),
            "unsupported_packages": [p.purl for p in unsupported],
            "findings": [f._asdict() | {"aliases": list(f.aliases)} for f in findings],
        }, sys.stdout, indent=2)  # fmt: skip
        sys.stdout.write("\n")
    else:
        if findings:
            rows = [("PACKAGE", "VERSION", "VULNERABILITY", "SEVERITY", "FIXED IN")]
            rows += [(f.package, f.version, f.id, f.severity.upper(), f.fixed or "-") for f in findings]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                print("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        summary = (f"{len(findings)} vulnerabilit{'y' if len(findings) == 1 else 'ies'} "
                   f"in {len(packages)} packages; {len(over)} at or above {args.severity_threshold}")  # fmt: skip
        if unsupported:
            summary += f"; {len(unsupported)} packages of ecosystems without version ordering skipped"
        print(summary, file=sys.stderr)
    return FOUND if over else 0
