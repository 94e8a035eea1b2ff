"""`sifbox config check`: every sifbox.conf directive in force, and how
strongly the site's image limits hold.

    sifbox config check [--json]

Lists each directive with its value and where it comes from (the file's
line, or `default`), then the image limits in force and a plain statement of
their strength for unprivileged users.
"""

from __future__ import annotations

import argparse
import json
import sys

from sifbox.util.errors import NotAvailableError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="config_command", metavar="COMMAND")
    c = sub.add_parser("check", help="show every directive in force and how strong the policy is")
    c.add_argument("--json", action="store_true", help="print JSON")
    for name in ("fakeroot", "global"):
        sub.add_parser(name, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    if args.config_command is None:
        from sifbox.util.errors import UsageError

        raise UsageError("can't run `sifbox config`: a command is needed",
                         hint="`sifbox config check` shows the configuration in force")  # fmt: skip
    if args.config_command != "check":
        raise NotAvailableError(
            f"can't run `sifbox config {args.config_command}`: not available in this version"
        )
    from sifbox.config import schema, sysconf
    from sifbox.security import policy

    cfg = sysconf.load(getattr(args, "config", None))
    from sifbox.util import log

    for warning in cfg.warnings:
        log.log.warning("%s", warning)
    rows = []
    for s in cfg.items():
        d = schema.BY_NAME[s.name]
        origin = f"line {s.line}" if s.origin == sysconf.FROM_FILE else s.origin
        rows.append({"directive": s.name, "value": _show(d, s.value), "origin": origin})
    limits = _limits(cfg)
    report = {
        "file": cfg.source,
        "directives": rows,
        "image limits": limits,
        "limits active": policy.active(cfg),
        "enforcement": policy.STRENGTH,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = [f"Configuration: {cfg.source or 'none read, built-in defaults'}", ""]
    width = max(len(r["directive"]) for r in rows)
    for r in rows:
        origin = r["origin"]
        where = f"{cfg.source}:{origin[5:]}" if origin.startswith("line ") else origin
        out.append(f"{r['directive']:<{width}} = {r['value']}   ({where})")
    out += ["", "Image limits:"]
    out += [f"  {line}" for line in limits] or ["  none: any image may run"]
    out += ["", _wrap(policy.STRENGTH)]
    print("\n".join(out))
    return 0


def _show(d, value) -> str:  # type: ignore[no-untyped-def]
    lines = d.format(value)
    if not lines:
        return "(empty)" if d.kind == "list" else "(unset)"
    return ", ".join(lines)


def _limits(cfg) -> list[str]:  # type: ignore[no-untyped-def]
    from sifbox.security import policy

    out = []
    paths = cfg.get_list("limit container paths")
    if paths:
        out.append("images must lie under: " + ", ".join(paths) + " (whole path components)")
    if cfg.get_bool("limit container store"):
        out.append(f"images must lie in the caller's store directory: {policy.user_dir(cfg, 'USER')}")
    if paths and cfg.get_bool("limit container store"):
        out.append("(either place admits an image)")
    owners = cfg.get_list("limit container owners")
    if owners:
        out.append("image files must be owned by: " + ", ".join(owners))
    groups = cfg.get_list("limit container groups")
    if groups:
        out.append("image files must belong to group: " + ", ".join(groups))
    refused = [k for k in policy.KINDS if not cfg.get_bool(f"allow container {k}")]
    if refused:
        out.append("image kinds refused: " + ", ".join(refused))
    return out


def _wrap(text: str, width: int = 78) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
