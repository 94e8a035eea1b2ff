"""`sifbox remote`: remote endpoints, their keyservers and logins, as Apptainer's.

    sifbox remote add [-g] [-i] [--no-login] [-n] NAME URI
    sifbox remote remove [-g] NAME
    sifbox remote use [-g] [-e] NAME
    sifbox remote list
    sifbox remote login [-u USER] [-p PASSWORD | --password-stdin] [-i] docker://HOST | oras://HOST | KEYSERVER-URI
    sifbox remote logout docker://HOST | oras://HOST | KEYSERVER-URI
    sifbox remote status [NAME]
    sifbox remote get-login-password [docker://HOST | oras://HOST]

Endpoints live in the user's remote.yaml (sifbox.config.remotes) and, with --global (root),
in the system one beside sifbox.conf. Registry logins go where `sifbox registry login` keeps
them (docker-config.json, read by pull and push); remote.yaml records that they exist, as
Apptainer's does. sifbox has no library service: an endpoint serves for its keyservers.
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import NotAvailableError, SifboxError, UsageError

REGISTRY_SCHEMES = ("docker://", "oras://")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sifbox.cli.commands.keyserver import add_change_arguments, add_config_argument

    add_config_argument(p, "path to the file holding remote endpoint configurations")
    sub = p.add_subparsers(dest="remote_command", metavar="SUBCOMMAND", title="subcommands")
    sub.required = True
    s = sub.add_parser("add", help="Add a new sifbox remote endpoint", description="Add a new sifbox remote endpoint.")
    s.add_argument("-i", "--insecure", action="store_true", help="allow connection to an insecure http remote.")
    s.add_argument("--no-login", action="store_true", help="skip automatic login step")
    s.add_argument("-n", "--no-default", action="store_true", help="do not make the new remote the default one")
    s.add_argument("--tokenfile", default=None, help=argparse.SUPPRESS)
    s.add_argument("name", metavar="NAME")
    s.add_argument("uri", metavar="URI")
    s = sub.add_parser("remove", help="Remove an existing sifbox remote endpoint",
                       description="Remove an existing sifbox remote endpoint.")
    s.add_argument("name", metavar="NAME")
    s = sub.add_parser("use", help="Set a sifbox remote endpoint to be actively used",
                       description="Set a sifbox remote endpoint to be actively used (the default one).")
    s.add_argument("-e", "--exclusive", action="store_true", help="set the endpoint as exclusive (root user only, "
                   "implies --global)")
    s.add_argument("name", metavar="NAME")
    for name in ("add", "remove", "use"):
        sub.choices[name].add_argument("-g", "--global", dest="global_", action="store_true",
                                       help="edit the list of globally configured remote endpoints (root)")
    sub.add_parser("list", help="List all sifbox remote endpoints, keyservers, and OCI credentials that are configured",
                   description="List all sifbox remote endpoints, keyservers, and OCI credentials that are "
                   "configured.")  # fmt: skip
    s = sub.add_parser("login", help="Login to a sifbox remote endpoint, an OCI/Docker registry or a keyserver "
                       "using credentials", description="Login to a sifbox remote endpoint, an OCI/Docker registry "
                       "or a keyserver using credentials (docker://HOST, oras://HOST, or a keyserver URI).")  # fmt: skip
    from sifbox.cli.commands.keyserver import add_login_arguments

    add_login_arguments(s, "allow insecure login (plain HTTP registry)")
    s.add_argument("--tokenfile", default=None, help=argparse.SUPPRESS)
    s.add_argument("target", metavar="NAME|URI", nargs="?")
    s = sub.add_parser("logout", help="Log out from a registry or keyserver", description="Forget a login.")
    s.add_argument("target", metavar="NAME|URI", nargs="?")
    s = sub.add_parser("status", help="Check the status of the sifbox services at an endpoint",
                       description="Check the status of the sifbox services at an endpoint (its keyservers).")
    s.add_argument("name", metavar="NAME", nargs="?")
    s = sub.add_parser("get-login-password", help="Retrieves the cli secret for the currently logged in user",
                       description="Print the password of the registry login stored for the active remote "
                       "endpoint's host (or for the registry named), for `docker login --password-stdin`.")  # fmt: skip
    s.add_argument("target", metavar="URI", nargs="?")
    s = sub.add_parser("add-keyserver", help="Add a keyserver (as `keyserver add`)",
                       description="Add a keyserver to an endpoint, as `sifbox keyserver add`.")
    add_change_arguments(s, add=True)
    s = sub.add_parser("remove-keyserver", help="Remove a keyserver (as `keyserver remove`)",
                       description="Remove a keyserver from an endpoint, as `sifbox keyserver remove`.")
    add_change_arguments(s, add=False)


def _conf(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None)


def _user(args: argparse.Namespace) -> str:
    from sifbox.cli.commands.keyserver import user_file

    return user_file(args)


def _file(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(path, mode, config) of the file this command changes: the system's with --global."""
    from sifbox.config import remotes
    from sifbox.formats import remoteconf as rc

    if getattr(args, "global_", False) or getattr(args, "exclusive", False):
        if os.geteuid() != 0:
            raise SifboxError("can't change the global remote endpoints: not root user",
                              hint="leave out --global (and --exclusive) to change your own")  # fmt: skip
        path = remotes.system_path(_conf(args))
        return path, 0o644, remotes.read(path) or rc.default_config()
    path = _user(args)
    return path, 0o600, remotes.read(path, create=True) or rc.RemoteConfig()


def _add(args: argparse.Namespace) -> int:
    from sifbox.config import remotes
    from sifbox.formats import remoteconf as rc
    from sifbox.util.log import log

    uri = args.uri.strip().rstrip("/")
    insecure = args.insecure or os.environ.get("SIFBOX_ADD_INSECURE", os.environ.get("APPTAINER_ADD_INSECURE", "")
                                               ).lower() in ("1", "true", "yes")  # fmt: skip
    if uri.startswith("https://") and insecure:
        log.info("--insecure ignored for https remote")
    if uri.startswith("http://") and not insecure:
        raise UsageError(f"can't add remote `{args.name}`: http URI requires --insecure or SIFBOX_ADD_INSECURE=true")
    if args.tokenfile:
        raise NotAvailableError(f"can't add remote `{args.name}` with a token: sifbox has no library service to "
                                "log in to", hint="add it with --no-login")  # fmt: skip
    try:
        rc.check_name(args.name)
    except rc.RemoteConfError as err:
        raise UsageError(f"can't add remote: {err}") from None
    if not uri or any(c.isspace() for c in uri):
        raise UsageError(f"can't add remote `{args.name}`: invalid URI `{args.uri}`")
    path, mode, conf = _file(args)
    if args.name in conf.remotes or args.name in remotes.merged(_conf(args), user_file=_user(args)).remotes:
        raise SifboxError(f"can't add remote `{args.name}`: {args.name} is already a remote")
    conf.remotes[args.name] = rc.Endpoint(uri, system=bool(args.global_))
    if not args.no_default and not any(e.exclusive for e in remotes.system_config(_conf(args)).remotes.values()):
        conf.active = args.name
    remotes.write(path, conf, mode)
    log.info('Remote "%s" added.', args.name)
    return 0


def _remove(args: argparse.Namespace) -> int:
    from sifbox.config import remotes
    from sifbox.util.log import log

    path, mode, conf = _file(args)
    ep = conf.remotes.get(args.name)
    if ep is None:
        if not args.global_ and args.name in remotes.merged(_conf(args), user_file=_user(args)).remotes:
            raise SifboxError(f"can't remove remote `{args.name}`: {args.name} is global and can't be removed")
        raise SifboxError(f"can't remove remote `{args.name}`: {args.name} is not a remote")
    if ep.system and not args.global_:
        raise SifboxError(f"can't remove remote `{args.name}`: {args.name} is global and can't be removed")
    del conf.remotes[args.name]
    if conf.active == args.name:
        conf.active = ""
    remotes.write(path, conf, mode)
    log.info('Remote "%s" removed.', args.name)
    return 0


def _use(args: argparse.Namespace) -> int:
    from sifbox.config import remotes
    from sifbox.util.log import log

    path, mode, conf = _file(args)
    system = args.global_ or args.exclusive
    known = conf.remotes if system else remotes.merged(_conf(args), user_file=_user(args)).remotes
    if args.name not in known:
        raise SifboxError(f"can't use remote `{args.name}`: {args.name} is not a remote")
    if not system:
        excl = [n for n, e in remotes.system_config(_conf(args)).remotes.items() if e.exclusive]
        if excl and excl[0] != args.name:
            raise SifboxError(f"can't use remote `{args.name}`: remote {excl[0]} has been set exclusive by the "
                              "system administrator")  # fmt: skip
    else:
        old = conf.remotes.get(conf.active)
        if old is not None and conf.active != args.name and args.exclusive:
            old.exclusive = False
        conf.remotes[args.name].exclusive = bool(args.exclusive)
    conf.active = args.name
    remotes.write(path, conf, mode)
    log.info('Remote "%s" now in use.', args.name)
    return 0


def _list(args: argparse.Namespace) -> int:
    from sifbox.config import remotes
    from sifbox.formats.hkp import tabwrite

    conf = remotes.merged(_conf(args), create=True, user_file=_user(args))
    yes = {True: "YES", False: "NO"}
    out = sys.stdout
    out.write("Cloud Services Endpoints\n========================\n\n")
    rows = [["NAME", "URI", "ACTIVE", "GLOBAL", "EXCLUSIVE"]]
    for name in sorted(conf.remotes):
        ep = conf.remotes[name]
        rows.append([name, ep.uri, yes[bool(conf.active) and conf.active == name], yes[ep.system], yes[ep.exclusive]])
    out.write(tabwrite(rows))
    ep = conf.remotes.get(conf.active)
    servers = ep.active_keyservers() if ep is not None else []
    if servers:
        out.write("\nKeyservers\n==========\n\n")
        rows = [["URI", "GLOBAL", "INSECURE", "ORDER"]]
        rows += [[k.uri, "YES", yes[k.insecure], f"{i}{'' if k.external else '*'}"] for i, k in enumerate(servers, 1)]
        out.write(tabwrite(rows))
        out.write("\n* Active cloud services keyserver\n")
    if conf.credentials:
        out.write("\nAuthenticated Logins\n=================================\n\n")
        rows = [["URI", "INSECURE"]] + [[c.uri, yes[c.insecure]] for c in conf.credentials]
        out.write(tabwrite(rows))
    return 0


def _record(path: str, uri: str, insecure: bool, keep: bool) -> None:
    """Add (keep) or drop the login record of a registry in the user's remote.yaml."""
    from sifbox.config import remotes
    from sifbox.formats import remoteconf as rc

    user = remotes.read(path, create=keep) or rc.RemoteConfig()
    user.credentials = [c for c in user.credentials if c.uri.rstrip("/") != uri.rstrip("/")]
    if keep:
        user.credentials.append(rc.Credential(uri, "", insecure))
    remotes.write(path, user, 0o600)


def _login(args: argparse.Namespace) -> int:
    from sifbox.cli.commands.keyserver import keyserver_login, read_password

    target = args.target or ""
    if args.tokenfile:
        raise NotAvailableError("can't log in with a token file: sifbox has no library service")
    if target.startswith(REGISTRY_SCHEMES):
        from sifbox.oci.auth import Credentials, login_key, store_login
        from sifbox.oci.registry import check_login
        from sifbox.util.log import log

        key = login_key(target)
        if not key:
            raise UsageError(f"can't log in to `{target}`: no host name")
        if not args.username:
            raise UsageError(f"can't log in to `{target}`: Docker/OCI registry requires a username",
                             hint="pass it with -u/--username")  # fmt: skip
        creds = Credentials(args.username, read_password(args, f"log in to `{target}`"), source="command line")
        check_login(key, creds, insecure=args.insecure)
        path = store_login(key, creds)
        _record(_user(args), target, args.insecure, keep=True)
        log.info("Token stored in %s", path)
        return 0
    if target.startswith(("hkp://", "hkps://", "http://", "https://")):
        keyserver_login(args, target, _conf(args), _user(args))
        return 0
    raise NotAvailableError(f"can't log in to remote `{target or 'the default remote'}`: sifbox has no library "
                            "service; log in to a registry (docker://HOST, oras://HOST) or a keyserver URI",
                            hint="for example: sifbox remote login -u USER --password-stdin docker://HOST")  # fmt: skip


def _logout(args: argparse.Namespace) -> int:
    from sifbox.cli.commands.keyserver import keyserver_logout
    from sifbox.util.log import log

    target = args.target or ""
    if target.startswith(REGISTRY_SCHEMES):
        from sifbox.oci.auth import login_key, remove_login

        if not remove_login(login_key(target)):
            raise SifboxError(f"can't log out from `{target}`: not logged in")
        _record(_user(args), target, False, keep=False)
    elif target.startswith(("hkp://", "hkps://", "http://", "https://")):
        if not keyserver_logout(target, _user(args)):
            raise SifboxError(f"can't log out from `{target}`: not logged in")
    else:
        raise NotAvailableError(f"can't log out from remote `{target or 'the default remote'}`: sifbox has no "
                                "library service; log out from a registry or keyserver URI")  # fmt: skip
    log.info("Logout succeeded")
    return 0


def _status(args: argparse.Namespace) -> int:
    from sifbox.config import remotes
    from sifbox.formats.hkp import tabwrite
    from sifbox.security import keyserver

    conf = remotes.merged(_conf(args), user_file=_user(args))
    name = args.name or conf.active
    ep = conf.remotes.get(name)
    if ep is None:
        raise SifboxError(f"can't check the status of remote `{name}`: {name or 'no default remote'} is not a remote")
    if not ep.active_keyservers():
        raise SifboxError(f"can't check the status of remote `{name}`: it has no keyserver, and sifbox has no "
                          "library service to ask")  # fmt: skip
    sys.stdout.write(f"Checking status of remote: {name}\n\n")
    rows = [["SERVICE", "STATUS", "URI"]]
    failed = 0
    for ks in keyserver.configured(conf) if name == conf.active else [keyserver.Keyserver(k.uri, k.insecure)
                                                                    for k in ep.active_keyservers()]:  # fmt: skip
        try:
            keyserver.request([ks], "GET", "/pks/lookup", {"op": "stats"}, limit=keyserver.MAX_OTHER,
                              what="check the keyserver")  # fmt: skip
            state = "OK"
        except SifboxError as err:
            failed += 1
            state = "N/A (" + str(err).rsplit(": ", 1)[-1] + ")"
        rows.append(["Keyserver", state, ks.uri])
    sys.stdout.write(tabwrite(rows))
    if failed:
        raise SifboxError(f"can't reach {failed} keyserver(s) of remote `{name}`")
    return 0


def _get_login_password(args: argparse.Namespace) -> int:
    """The password of the stored registry login for the active endpoint's host (Apptainer asks
    the endpoint's library service for a CLI secret; sifbox has none, its logins are the
    registry logins `remote login docker://HOST` stores)."""
    from sifbox.config import remotes
    from sifbox.oci.auth import auth_files, login_key, lookup_file

    target = args.target or ""
    if target and not target.startswith(REGISTRY_SCHEMES):
        raise UsageError(f"can't get the login password of `{target}`: not a docker:// or oras:// URI")
    if not target:
        conf = remotes.merged(_conf(args), user_file=_user(args))
        ep = conf.remotes.get(conf.active)
        if ep is None or not ep.uri:
            raise SifboxError("can't get the login password: no active remote endpoint",
                              hint="`sifbox remote use NAME`, or name the registry: "
                              "sifbox remote get-login-password docker://HOST")  # fmt: skip
        target = ep.uri
        what = f"remote `{conf.active}`"
    else:
        what = f"`{target}`"
    host = login_key(target if "://" in target else "https://" + target)
    if not host:
        raise UsageError(f"can't get the login password of {what}: no host name")
    for path in auth_files():
        found = lookup_file(path, host, "")
        if found is not None and found.password:
            sys.stdout.write(found.password + "\n")
            return 0
    raise SifboxError(f"can't get the login password of {what}: not logged in to `{host}`",
                      hint=f"sifbox remote login -u USER --password-stdin docker://{host}")  # fmt: skip


def _keyserver_change(args: argparse.Namespace) -> int:
    from sifbox.cli.commands.keyserver import change

    args.keyserver_command = "add" if args.remote_command == "add-keyserver" else "remove"
    return change(args)


def main(args: argparse.Namespace) -> int:
    handlers = {"add": _add, "remove": _remove, "use": _use, "list": _list, "login": _login, "logout": _logout,
                "status": _status, "get-login-password": _get_login_password, "add-keyserver": _keyserver_change, "remove-keyserver": _keyserver_change}
    return handlers[args.remote_command](args)
