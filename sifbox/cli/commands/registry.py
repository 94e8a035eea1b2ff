"""`sifbox registry`: log in to and out of OCI/Docker registries.

    sifbox registry login [-u USER] [-p PASSWORD | --password-stdin] [--authfile FILE] docker://HOST
    sifbox registry logout [--authfile FILE] docker://HOST
    sifbox registry list [--authfile FILE]

Credentials are checked against the registry, then kept in `~/.sifbox/docker-config.json`
(mode 0600), in the Docker config format that Docker, Podman, skopeo and Apptainer read.
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import SifboxError, UsageError

SCHEMES = ("docker://", "oras://")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="registry_command", metavar="COMMAND", title="commands")
    sub.required = True

    login = sub.add_parser(
        "login",
        help="Log in to an OCI/Docker registry",
        description="Log in to an OCI/Docker registry",
    )
    login.add_argument("-u", "--username", help="username to authenticate with")
    login.add_argument(
        "-p",
        "--password",
        help="password to authenticate with (visible to other users: prefer --password-stdin)",
    )
    login.add_argument(
        "--password-stdin", action="store_true", help="take the password from standard input"
    )
    login.add_argument(
        "--authfile",
        metavar="FILE",
        help="store credentials in FILE instead of ~/.sifbox/docker-config.json",
    )
    login.add_argument(
        "--no-https",
        "--nohttps",
        dest="nohttps",
        action="store_true",
        help="use plain HTTP to check the credentials",
    )
    login.add_argument(
        "uri", metavar="URI", help="registry, e.g. docker://registry.example.org or oras://ghcr.io"
    )

    logout = sub.add_parser(
        "logout",
        help="Log out from an OCI/Docker registry",
        description="Log out from an OCI/Docker registry",
    )
    logout.add_argument("--authfile", metavar="FILE", help="the credentials file to update")
    logout.add_argument("uri", metavar="URI", help="registry, e.g. docker://registry.example.org")

    listing = sub.add_parser(
        "list",
        help="List the registries you are logged in to",
        description="List the registries you are logged in to",
    )
    listing.add_argument("--authfile", metavar="FILE", help="the credentials file to read")


def _key(uri: str) -> str:
    from sifbox.oci.auth import login_key

    if "://" in uri and not uri.startswith(SCHEMES):
        raise UsageError(
            f"can't use registry URI `{uri}`: only docker:// and oras:// registries take a login",
            hint="for example: sifbox registry login -u USER docker://registry.example.org",
        )
    key = login_key(uri)
    if not key:
        raise UsageError(f"can't use registry URI `{uri}`: no host name")
    return key


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None and args.password_stdin:
        raise UsageError("can't log in: --password and --password-stdin exclude each other")
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        data = sys.stdin.readline()
        return data.rstrip("\r\n")
    import getpass

    try:
        return getpass.getpass("Password / Token: ")
    except (EOFError, OSError) as err:
        raise UsageError(
            "can't log in: no password given and no terminal to ask for one",
            hint="pass it with --password-stdin",
        ) from err


def _login(args: argparse.Namespace) -> int:
    from sifbox.oci.auth import Credentials, store_login
    from sifbox.oci.registry import check_login
    from sifbox.util.log import log

    key = _key(args.uri)
    username = args.username
    if username is None:
        if args.password_stdin or not sys.stdin.isatty():
            raise UsageError("can't log in: no username given", hint="pass it with -u/--username")
        username = input("Username: ").strip()
    password = _read_password(args)
    if not password:
        raise UsageError("can't log in: the password is empty")
    creds = Credentials(username, password, source="command line")
    nohttps = args.nohttps or any(
        os.environ.get(f"{p}NOHTTPS", "").lower() in ("1", "yes", "true")
        for p in ("SIFBOX_", "APPTAINER_")
    )
    check_login(key, creds, insecure=nohttps)
    path = store_login(key, creds, args.authfile)
    log.info("Token stored in %s", path)
    return 0


def _logout(args: argparse.Namespace) -> int:
    from sifbox.oci.auth import login_file, remove_login
    from sifbox.util.log import log

    key = _key(args.uri)
    if not remove_login(key, args.authfile):
        raise SifboxError(
            f"can't log out from registry `{key}`: not logged in",
            hint=f"`sifbox registry list` shows the registries in {args.authfile or login_file()}",
        )
    log.info("Logout succeeded")
    return 0


def _list(args: argparse.Namespace) -> int:
    from sifbox.oci.auth import list_logins

    print(f"{'URI':<40} USERNAME")
    for key, user in list_logins(args.authfile):
        print(f"{'docker://' + key:<40} {user}")
    return 0


def main(args: argparse.Namespace) -> int:
    return {"login": _login, "logout": _logout, "list": _list}[args.registry_command](args)
