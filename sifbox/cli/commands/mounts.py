"""`sifbox mounts`: the node's shared image mounts (sifbox.runtime.nodemount).

    sifbox mounts list [--json] [--user USER | --all]
    sifbox mounts prune [--force] [--user USER | --all]
    sifbox mounts serve                  run the mount service (root; `mount service` in sifbox.conf)

`list` shows the holders of the caller's shared image mounts on this node: their pid,
whether a container uses them, the image. `prune` stops those no container uses (every
one with `--force`: running containers of that image then lose their files) and removes
stale state. Root may name another user (`--user`, as the Slurm epilog does) or `--all`.
`list` also shows the mount service's mounts the caller uses (root: all of them), as
state `service` (sifbox.runtime.mountsvc).
"""

from __future__ import annotations

import argparse
import os

from sifbox.util.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mounts_command", metavar="COMMAND", title="commands")
    sub.required = True
    listing = sub.add_parser("list", help="List the shared image mounts on this node",
                             description="List the shared image mounts on this node")  # fmt: skip
    listing.add_argument("--json", action="store_true", help="print JSON")
    prune = sub.add_parser("prune", help="Stop the shared image mounts no container uses",
                           description="Stop the shared image mounts no container uses, remove stale state")  # fmt: skip
    prune.add_argument("-f", "--force", action="store_true", help="stop them even if containers use them")
    sub.add_parser("serve", help="Run the mount service (root)",
                   description="Run the mount service: one kernel mount per node of each admitted image")  # fmt: skip
    for p in (listing, prune):
        who = p.add_mutually_exclusive_group()
        who.add_argument("-u", "--user", metavar="USER", help="(root) those of USER (a name or a uid)")
        who.add_argument("-a", "--all", action="store_true", help="(root) those of every user")


def _uids(args: argparse.Namespace, verb: str) -> list[int]:
    import pwd

    me = os.getuid()
    if not args.user and not args.all:
        return [me]
    if me != 0:
        raise UsageError(f"can't {verb} the shared mounts of other users: only root can",
                         hint="drop --user/--all to see your own")  # fmt: skip
    if args.all:
        from sifbox.runtime import nodemount

        uids = set(nodemount.holder_pids(None).values())
        for entry in os.listdir("/tmp"):
            if entry.startswith("sifbox-") and entry[7:].isdigit():
                uids.add(int(entry[7:]))
        return sorted(uids | {0})
    try:
        return [int(args.user) if args.user.isdigit() else pwd.getpwnam(args.user).pw_uid]
    except KeyError:
        raise UsageError(f"can't {verb} the shared mounts of `{args.user}`: no such user") from None


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def main(args: argparse.Namespace) -> int:
    from sifbox.runtime import nodemount

    if args.mounts_command == "serve":
        import sys

        from sifbox.config import sysconf
        from sifbox.runtime import mountsvc

        cfg = sysconf.load(getattr(args, "config", None))
        return mountsvc.serve(cfg, getattr(cfg, "path", None), log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.mounts_command == "list":
        uids = _uids(args, "list")
        rows = [row for uid in uids for row in nodemount.listing(uid)] + _service_rows(args, uids)
        if args.json:
            import json

            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'PID':<8} {'USER':<12} {'STATE':<12} {'IN USE':<7} IMAGE")
        for row in rows:
            in_use = "?" if row["in_use"] is None else "yes" if row["in_use"] else "no"
            print(f"{row['pid']!s:<8} {_user(row['uid']):<12} {row['state']:<12} {in_use:<7} {row['image']}")
        return 0
    for uid in _uids(args, "prune"):
        for row in nodemount.prune(uid, force=args.force):
            what = f"holder {row['pid']}" + (f" of {row['image']}" if row["image"] else "")
            print(f"{'removed the stale state of' if row['state'] == 'stale' else 'stopped'} {what}")
    return 0


def _service_rows(args: argparse.Namespace, uids: list[int]) -> list[dict[str, object]]:
    """The mount service's mounts (of `uids`), when `mount service = yes` and it answers."""
    from sifbox.config import sysconf
    from sifbox.runtime import nodemount

    cfg = sysconf.load(getattr(args, "config", None))
    if not cfg.get_bool("mount service"):
        return []
    try:
        reply = nodemount.ask_service(cfg.get_str("mount service socket"), "list", timeout=10)
        pid = nodemount.ask_service(cfg.get_str("mount service socket"), "ping", timeout=10).get("pid")
    except nodemount.Unshared:
        return []
    rows: list[dict[str, object]] = []
    for m in reply.get("mounts") or []:
        if not isinstance(m, dict):
            continue
        for uid in m.get("users") or []:
            if uid in uids or args.all:
                rows.append({"pid": pid, "uid": uid, "image": m.get("image", ""), "key": m.get("digest", ""),
                             "state": "service", "in_use": m.get("in_use"), "dir": "", "mount": m.get("path", "")})  # fmt: skip
    return rows
