"""`sifbox keyserver`: the keyservers of remote endpoints, as Apptainer's.

    sifbox keyserver add [-o N] [-i] [NAME] URI     # root: a system endpoint's (system remote.yaml)
    sifbox keyserver remove [NAME] URI              # a user: an endpoint of their own
    sifbox keyserver list [NAME]
    sifbox keyserver login [-u USER] [-p PASSWORD | --password-stdin] URI
    sifbox keyserver logout URI

URIs are `hkp://`, `hkps://`, `http://` or `https://`. Logins are kept in the user's
remote.yaml (mode 0600) and sent as an Authorization header to that keyserver only.
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import SifboxError, UsageError


def add_config_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-c", "--config", dest="remote_config", default=None, metavar="FILE",
                   help=f"{what} (default: remote.yaml in ~/.sifbox, $SIFBOX_CONFIGDIR or $APPTAINER_CONFIGDIR)")


def add_change_arguments(s: argparse.ArgumentParser, add: bool) -> None:
    """The options and operands of `keyserver add|remove` (and `remote add-|remove-keyserver`)."""
    if add:
        s.add_argument("-o", "--order", type=int, default=None, help="define the keyserver order")
        s.add_argument("-i", "--insecure", action="store_true", help="allow insecure connection to keyserver")
    s.add_argument("operands", metavar="[NAME] URI", nargs="+")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p, "path to the file holding keyserver configurations")
    sub = p.add_subparsers(dest="keyserver_command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True
    s = sub.add_parser("add", help="Add a keyserver (root user only, for system endpoints)",
                       description="Add a keyserver to an endpoint (the default one without NAME).")
    add_change_arguments(s, add=True)
    s = sub.add_parser("remove", help="Remove a keyserver", description="Remove a keyserver from an endpoint.")
    add_change_arguments(s, add=False)
    s = sub.add_parser("list", help="List all keyservers that are configured",
                       description="List the keyservers of every endpoint (or of NAME).")
    s.add_argument("name", metavar="NAME", nargs="?")
    s = sub.add_parser("login", help="Log in to a keyserver", description="Log in to an (external) keyserver.")
    add_login_arguments(s, argparse.SUPPRESS)
    s.add_argument("uri", metavar="URI")
    s = sub.add_parser("logout", help="Log out from a keyserver", description="Forget the login to a keyserver.")
    s.add_argument("uri", metavar="URI")


def add_login_arguments(s: argparse.ArgumentParser, insecure_help: str) -> None:
    """The options of `keyserver login` and `remote login` (Apptainer's)."""
    s.add_argument("-u", "--username", default=None, help="username to authenticate with")
    s.add_argument("-p", "--password", default=None, help="password / token to authenticate with")
    s.add_argument("--password-stdin", action="store_true", help="take password from standard input")
    s.add_argument("-i", "--insecure", action="store_true", help=insecure_help)


def _operands(args: argparse.Namespace) -> tuple[str, str]:
    ops = args.operands
    if len(ops) > 2:
        raise UsageError(f"can't {args.keyserver_command} keyserver: expected [NAME] URI, got {len(ops)} operands")
    uri = ops[-1]
    if not uri.strip():
        raise UsageError(f"can't {args.keyserver_command} keyserver: invalid URI: cannot have empty URI")
    from sifbox.formats import hkp

    try:
        hkp.normalize_uri(uri)
    except hkp.HkpError as err:
        raise UsageError(f"can't {args.keyserver_command} keyserver: {err}") from None
    return (ops[0] if len(ops) == 2 else ""), uri


def user_file(args: argparse.Namespace) -> str:
    """The user's remote.yaml: -c/--config FILE, else the configuration directory's."""
    from sifbox.config import remotes

    return getattr(args, "remote_config", None) or remotes.user_path()


def change(args: argparse.Namespace) -> int:
    from sifbox.config import remotes
    from sifbox.formats import hkp
    from sifbox.formats import remoteconf as rc

    verb = args.keyserver_command
    name, uri = _operands(args)
    if verb == "add" and args.order is not None and args.order <= 0:
        raise UsageError("can't add keyserver: order must be > 0")
    if os.geteuid() == 0:
        path, mode = remotes.system_path(getattr(args, "config", None)), 0o644
        conf = remotes.read(path) or rc.default_config()
    else:
        path, mode = user_file(args), 0o600
        conf = remotes.read(path) or rc.RemoteConfig()
        remotes_all = remotes.merged(getattr(args, "config", None), user_file=path)
        if not name:
            name = remotes_all.active
    target = name or conf.active
    ep = conf.remotes.get(target)
    if ep is None:
        if os.geteuid() != 0 and target in remotes_all.remotes:
            raise SifboxError(f"can't {verb} keyserver `{uri}`: `{target}` is a system endpoint: "
                              "only root may change its keyservers",
                              hint="add an endpoint of your own (`sifbox remote add --no-login NAME URI`), or "
                              "name the keyserver with --url")  # fmt: skip
        raise SifboxError(f"can't {verb} keyserver `{uri}`: no endpoint found: `{target}` is not a remote",
                          hint="`sifbox remote list` shows the endpoints")  # fmt: skip
    if os.geteuid() != 0 and ep.system:
        raise SifboxError(f"can't {verb} keyserver `{uri}`: `{target}` is a system endpoint: only root may change "
                          "its keyservers")
    if os.geteuid() == 0 and not ep.system:
        raise SifboxError(f"can't {verb} keyserver `{uri}`: current endpoint is not a system defined endpoint")
    try:
        if verb == "add":
            rc.add_keyserver(ep, uri, args.order or 0, args.insecure, hkp.same_keyserver)
        else:
            rc.remove_keyserver(ep, uri, hkp.same_keyserver)
    except rc.RemoteConfError as err:
        raise SifboxError(f"can't {verb} keyserver `{uri}`: {err}") from None
    remotes.write(path, conf, mode)
    return 0


def _list(args: argparse.Namespace) -> int:
    from sifbox.config import remotes

    conf = remotes.merged(getattr(args, "config", None), user_file=user_file(args))
    if args.name and args.name not in conf.remotes:
        raise SifboxError(f"can't list keyservers: `{args.name}` is not a remote")
    out = sys.stdout
    for name in sorted(conf.remotes):
        if args.name and name != args.name:
            continue
        ep = conf.remotes[name]
        out.write(f"\n{name}{'*' if ep.system else ''}{'^' if name == conf.active else ''}\n")
        from sifbox.formats.hkp import tabwrite

        rows = [[" ", f"#{i}", k.uri, "" if k.insecure else "🔒"]
                for i, k in enumerate(ep.active_keyservers(), 1)]  # fmt: skip
        if rows:
            out.write(tabwrite(rows))
    out.write("\n(* = system endpoint, ^ = default endpoint)\n")
    return 0


def read_password(args: argparse.Namespace, what: str) -> str:
    """-p, --password-stdin (all of stdin, one trailing newline dropped, as Apptainer), or a prompt."""
    if args.password is not None and args.password_stdin:
        raise UsageError(f"can't {what}: --password and --password-stdin exclude each other")
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        data = sys.stdin.read(1 << 16)
        return data.removesuffix("\n").removesuffix("\r")
    import getpass

    try:
        password = getpass.getpass("Password / Token: ")
    except (EOFError, OSError):
        raise UsageError(f"can't {what}: no password given and no terminal to ask for one",
                         hint="pass it with --password-stdin") from None  # fmt: skip
    if not password:
        raise UsageError(f"can't {what}: a password is required")
    return password


def keyserver_login(args: argparse.Namespace, uri: str, sifbox_conf: str | None, path: str) -> None:
    """Check a login to a configured keyserver and keep it in the user's remote.yaml."""
    import base64

    from sifbox.config import remotes
    from sifbox.formats import hkp
    from sifbox.formats import remoteconf as rc
    from sifbox.security import keyserver
    from sifbox.util.log import log

    what = f"log in to keyserver `{uri}`"
    conf = remotes.merged(sifbox_conf, user_file=path)
    ks = next((k for ep in conf.remotes.values() for k in ep.keyservers
               if k.external and hkp.same_keyserver(k.uri, uri)), None)  # fmt: skip
    if ks is None:
        raise SifboxError(f"can't {what}: no external keyserver configuration found for {uri}",
                          hint="`sifbox keyserver list` shows the keyservers")  # fmt: skip
    insecure = ks.insecure  # as Apptainer: the keyserver's setting wins over --insecure
    password = read_password(args, what)
    if args.username:
        auth = "Basic " + base64.b64encode(f"{args.username}:{password}".encode()).decode("ascii")
    else:
        auth = "Bearer " + password
    keyserver.check_login(keyserver.Keyserver(uri, insecure, auth))
    user = remotes.read(path, create=True) or rc.RemoteConfig()
    user.credentials = [c for c in user.credentials if not hkp.same_keyserver(c.uri, uri)]
    user.credentials.append(rc.Credential(uri, auth, insecure))
    remotes.write(path, user, 0o600)
    log.info("Token stored in %s", path)


def keyserver_logout(uri: str, path: str) -> bool:
    from sifbox.config import remotes
    from sifbox.formats import hkp

    user = remotes.read(path)
    if user is None:
        return False
    kept = [c for c in user.credentials if not hkp.same_keyserver(c.uri, uri) and c.uri != uri]
    if len(kept) == len(user.credentials):
        return False
    user.credentials = kept
    remotes.write(path, user, 0o600)
    return True


def _login(args: argparse.Namespace) -> int:
    keyserver_login(args, args.uri, getattr(args, "config", None), user_file(args))
    return 0


def _logout(args: argparse.Namespace) -> int:
    from sifbox.util.log import log

    if not keyserver_logout(args.uri, user_file(args)):
        raise SifboxError(f"can't log out from keyserver `{args.uri}`: not logged in")
    log.info("Logout succeeded")
    return 0


def main(args: argparse.Namespace) -> int:
    handlers = {"add": change, "remove": change, "list": _list, "login": _login, "logout": _logout}
    return handlers[args.keyserver_command](args)
