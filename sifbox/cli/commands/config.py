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

from sifbox.util.errors import SifboxError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="config_command", metavar="COMMAND")
    c = sub.add_parser("check", help="show every directive in force and how strong the policy is")
    c.add_argument("--json", action="store_true", help="print JSON")
    g = sub.add_parser("global", help="Edit the site configuration (sifbox.conf)",
                       description="Set, unset, get or reset one directive of sifbox.conf (the file of "
                       "-c/--config, else SIFBOX_CONFIG_FILE, else /etc/sifbox/sifbox.conf), keeping its other "
                       "lines and comments. Changing it is for root.")  # fmt: skip
    g.add_argument("directive", metavar="DIRECTIVE", help="a directive, e.g. `enable fusemount`")
    g.add_argument("value", nargs="?", metavar="VALUE", help="its value (comma-separated for a list directive)")
    ops = g.add_mutually_exclusive_group()
    ops.add_argument("-s", "--set", action="store_const", const="set", dest="op",
                     help="set value of the configuration directive (for multi-value directives, it will add it)")
    ops.add_argument("-u", "--unset", action="store_const", const="unset", dest="op",
                     help="unset value of the configuration directive (for multi-value directives, it will remove "
                     "matching values)")  # fmt: skip
    ops.add_argument("-g", "--get", action="store_const", const="get", dest="op",
                     help="get value of the configuration directive")
    ops.add_argument("-r", "--reset", action="store_const", const="reset", dest="op",
                     help="reset the configuration directive value to its default value")
    g.add_argument("-d", "--dry-run", action="store_true",
                   help="dump resulting configuration on stdout but doesn't write it to sifbox.conf")
    f = sub.add_parser("fakeroot", help="Manage fakeroot user mappings entries (/etc/subuid, /etc/subgid)",
                       description="Add, remove, enable or disable USER's range of 65536 IDs in /etc/subuid and "
                       "/etc/subgid, which --fakeroot maps. For root.")  # fmt: skip
    f.add_argument("user", metavar="USER", help="the user")
    fops = f.add_mutually_exclusive_group()
    fakeroot_ops = {
        "add": "add a fakeroot mapping entry for the user (a free range of 65536 IDs)",
        "remove": "remove the user's fakeroot mapping entry",
        "enable": "enable the user's (disabled) fakeroot mapping entry",
        "disable": "disable the user's fakeroot mapping entry (--fakeroot then maps root alone)",
    }
    for name, text in fakeroot_ops.items():
        short = "-r" if name == "remove" else f"-{name[0]}"
        fops.add_argument(short, f"--{name}", action="store_const", const=name, dest="op", help=text)


def main(args: argparse.Namespace) -> int:
    if args.config_command is None:
        raise UsageError("can't run `sifbox config`: a command is needed",
                         hint="`sifbox config check` shows the configuration in force")  # fmt: skip
    if args.config_command == "global":
        return _global(args)
    if args.config_command == "fakeroot":
        return _fakeroot(args)
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
    facts, bypass = _machine()
    containment = _root_containment(cfg)
    report = {
        "file": cfg.source,
        "directives": rows,
        "image limits": limits,
        "limits active": policy.active(cfg),
        "enforcement": policy.STRENGTH,
        "root containers contained": cfg.get("root default capabilities") != "full",
        "root containers": containment,
        "this machine": facts,
        "unprivileged bypass possible": bypass,
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
    out += ["", _wrap(policy.STRENGTH), "", "On this machine:"]
    import textwrap

    out += [textwrap.fill(f, 78, initial_indent="  ", subsequent_indent="    ") for f in facts]
    if bypass:
        verdict = ("So: any user here can bypass the image limits by mounting images by hand; "
                   "they are policy, not enforcement.")  # fmt: skip
    else:
        verdict = ("So: users here cannot mount images by hand as far as sifbox can tell; "
                   "the limits decide what sifbox runs, and images the users cannot read "
                   "stay out of their reach.")  # fmt: skip
    out += ["", _wrap(verdict), "", "Root's containers:", _wrap(containment)]
    print("\n".join(out))
    return 0


def _root_containment(cfg) -> str:  # type: ignore[no-untyped-def]
    """What `root default capabilities` makes of a container root starts."""
    mode = cfg.get("root default capabilities")
    if mode == "full":
        return ("NOT CONTAINED: `root default capabilities = full` gives a container started by root "
                "every capability, the host's /dev, /proc and /sys writable and the host's files "
                "writable, as Apptainer's root containers: an image run by root can take over this "
                "machine. `default` contains them (see the README's security section).")  # fmt: skip
    caps = {"default": "a bounded set (Docker's default without MKNOD)", "file": "those of capability.json",
            "no": "none"}[mode]  # fmt: skip
    return (f"contained: capabilities: {caps}; /proc/sys and /sys read-only, sensitive /proc files "
            "masked, a minimal /dev, the host's files read-only but for what root binds, own PID "
            "and IPC namespaces; `--keep-privs` (or `full`) gives up containment for one container.")


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine() -> tuple[list[str], bool]:
    """What lets an unprivileged user here mount an image without sifbox."""
    import os
    import shutil
    import stat

    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    userns = clone != "0" and max_ns not in ("0",)
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1"
    userns = userns and not apparmor
    try:
        mode = os.stat("/dev/fuse").st_mode
        fuse = bool(mode & stat.S_IROTH and mode & stat.S_IWOTH)
    except OSError:
        fuse = False
    tools = [t for t in ("squashfuse", "squashfuse_ll") if shutil.which(t)]
    fusermount = [t for t in ("fusermount3", "fusermount") if _setuid(shutil.which(t))]
    facts = [
        f"unprivileged user namespaces: {'enabled' if userns else 'disabled'}",
        f"/dev/fuse usable by every user: {'yes' if fuse else 'no'}",
        f"setuid FUSE mount helper: {', '.join(fusermount) if fusermount else 'none'}",
        f"squashfuse installed: {', '.join(tools) if tools else 'no (users may bring their own)'}",
        (
            "any user who can read an image file can also unpack it (unsquashfs) and run its "
            "programs without a container"
        ),
    ]
    # A user can bring their own squashfuse: only the kernel and setuid helpers decide.
    return facts, bool(userns or (fuse and fusermount))


def _setuid(path: str | None) -> bool:
    import os
    import stat

    try:
        return path is not None and bool(os.stat(path).st_mode & stat.S_ISUID)
    except OSError:
        return False


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


def _global(args: argparse.Namespace) -> int:
    """`config global --set|--unset|--get|--reset [--dry-run] DIRECTIVE [VALUE]`."""
    import os

    from sifbox.config import edit, sysconf

    if args.op is None:
        raise UsageError("can't run `sifbox config global`: you must specify an option (eg: --set/--unset)",
                         hint="one of --set, --unset, --get, --reset")  # fmt: skip
    path = getattr(args, "config", None) or os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH
    values = [args.value] if args.value is not None else []
    edit.directive(args.directive)  # an unknown directive is a usage error, whoever asks
    if args.op == "get":
        value = edit.get(edit.read_file(path), args.directive)
        if value:
            print(value)
        return 0
    if os.getuid() != 0 and not args.dry_run:
        raise SifboxError(f"can't {args.op} `{args.directive}`: only root can change the site configuration",
                          hint="--dry-run shows the result without writing it")  # fmt: skip
    real = os.path.realpath(path)  # a link is followed: its target is the configuration
    with edit.locked(real):
        text = edit.read_file(real)
        new = edit.edit(text, args.op, args.directive, values)
        if args.dry_run:
            sys.stdout.write(new)
        elif new != text:
            edit.write_file(real, new)
    return 0


def _fakeroot(args: argparse.Namespace) -> int:
    """`config fakeroot --add|--remove|--enable|--disable USER`."""
    import os

    if args.op is None:
        raise UsageError("can't run `sifbox config fakeroot`: you must specify an option (eg: --add/--remove)",
                         hint="one of --add, --remove, --enable, --disable")  # fmt: skip
    if os.getuid() != 0:
        raise SifboxError(f"can't {args.op} the fakeroot mapping of `{args.user}`: only root can edit "
                          "/etc/subuid and /etc/subgid")  # fmt: skip
    from sifbox.runtime import fakerootconf

    fakerootconf.configure(args.user, args.op)
    return 0
