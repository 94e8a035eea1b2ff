"""`sifbox capability add|drop|list|avail`: the capabilities root grants in capability.json.

    sifbox capability add  (--user USER | --group GROUP) CAPS    root only
    sifbox capability drop (--user USER | --group GROUP) CAPS    root only
    sifbox capability list [USER|GROUP] [--user U] [--group G] [--all]   root only
    sifbox capability avail [CAPS] [--desc]

CAPS is a comma list (`CAP_NET_RAW,CAP_CHOWN`, `net_raw`, or `all`). The file lives beside
sifbox.conf (the one of -c/--config, else SIFBOX_CONFIG_FILE, else /etc/sifbox): see
sifbox.runtime.capfile for what sifbox does with it.
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import SifboxError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cap_command", metavar="COMMAND", parser_class=type(p))
    for verb, what in (("add", "Add authorized capabilities for a given user/group"),
                       ("drop", "Remove authorized capabilities for a given user/group")):  # fmt: skip
        s = sub.add_parser(verb, help=what, description=what + " (root only).")
        s.add_argument("caps", metavar="CAPS", help="comma-separated capabilities, or `all`")
        s.add_argument("-u", "--user", help=f"{verb} capabilities for a user")
        s.add_argument("-g", "--group", help=f"{verb} capabilities for a group")
    s = sub.add_parser("list", help="List authorized capabilities for the given user/group",
                       description="List the capabilities granted to USER or GROUP, or all of them (root only).")  # fmt: skip
    s.add_argument("name", nargs="?", metavar="USER|GROUP", help="a user or group name")
    s.add_argument("-u", "--user", help="list the capabilities of a user")
    s.add_argument("-g", "--group", help="list the capabilities of a group")
    s.add_argument("-a", "--all", action="store_true", help="list every user's and group's (the default)")
    s = sub.add_parser("avail", help="Show description for available capabilities",
                       description="Describe CAPS, or every capability.")  # fmt: skip
    s.add_argument("caps", nargs="?", metavar="CAPS", help="comma-separated capabilities (default: all)")
    s.add_argument("-d", "--desc", action="store_true", help="describe them (always done; as Apptainer)")


def main(args: argparse.Namespace) -> int:
    from sifbox.runtime import capfile

    verb = args.cap_command
    if verb is None:
        raise UsageError("can't run `sifbox capability`: a command is needed",
                         hint="one of add, drop, list, avail; see `sifbox capability --help`")  # fmt: skip
    if verb == "avail":
        sys.stdout.write(capfile.describe(capfile.names(args.caps) if args.caps else []))
        return 0
    if os.getuid() != 0:
        raise SifboxError(f"can't {verb} capabilities: only root can manage capabilities",
                          hint="capability.json decides what root grants; ask the site's admins")  # fmt: skip
    conf_dir = os.path.dirname(capfile.path_for(_conf_path(args)))
    if verb == "list":
        return _list(args, conf_dir)
    if not args.user and not args.group:
        raise UsageError(f"can't {verb} capabilities: name a user (--user) or a group (--group)")
    wanted = capfile.names(args.caps)
    from sifbox.util.log import log

    for kind, name in (("users", args.user), ("groups", args.group)):
        if not name:
            continue
        _check_exists(kind, name, verb)
        capfile.edit(conf_dir, add=verb == "add", kind=kind, name=name, wanted=wanted, warn=log.warning)
        if verb == "add" and name != "root":
            log.warning("%s `%s` has no capability outside its user namespace in sifbox: only root's entries "
                        "take effect, with `root default capabilities = file`", kind[:-1], name)  # fmt: skip
    return 0


def _conf_path(args: argparse.Namespace) -> str:
    from sifbox.config import sysconf

    return getattr(args, "config", None) or os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH


def _check_exists(kind: str, name: str, verb: str) -> None:
    import grp
    import pwd

    try:
        (pwd.getpwnam if kind == "users" else grp.getgrnam)(name)
    except KeyError:
        raise SifboxError(f"can't {verb} capabilities of {kind[:-1]} `{name}`: {kind[:-1]} does not exist") from None


def _list(args: argparse.Namespace, conf_dir: str) -> int:
    from sifbox.runtime import capfile, caps

    doc = caps.read_capability_file(conf_dir)
    user = args.user or args.name
    group = args.group or args.name
    if args.all or (not user and not group):
        sys.stdout.write(capfile.listing(doc))
        return 0
    import grp
    import pwd

    found = False
    for name, lookup in ((user, pwd.getpwnam), (group, grp.getgrnam)):
        if name:
            try:
                lookup(name)
                found = True
            except KeyError:
                pass
    if not found:
        raise SifboxError(f"can't list capabilities of `{args.name or user or group}`: no such user or group")
    sys.stdout.write(capfile.listing(doc, user=user, group=group))
    return 0
