"""`sifbox key`: manage OpenPGP keys in ~/.sifbox/keys, and PEM keys for DSSE.

    sifbox key newpair [-N NAME -E EMAIL -C COMMENT -b BITS]
    sifbox key newpair --pem ed25519|rsa|ecdsa --output KEY.pem
    sifbox key list [--secret]
    sifbox key import FILE
    sifbox key export [--secret] [--armor] [--keyidx N | --fingerprint FPR] FILE
    sifbox key export [--secret] [--armor] FINGERPRINT FILE
    sifbox key remove [--secret] FINGERPRINT
    sifbox key search [-l] [-u URL] NAME|EMAIL|FINGERPRINT
    sifbox key pull [-u URL] FINGERPRINT
    sifbox key push [-u URL] FINGERPRINT

Every subcommand takes `-d/--keysdir DIR`, the keyring directory (default: $SIFBOX_KEYSDIR,
else $APPTAINER_KEYSDIR, else ~/.sifbox/keys), as Apptainer's.
"""

from __future__ import annotations

import argparse
import sys

from sifbox.util.errors import SifboxError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(key_command=None)
    sub = p.add_subparsers(dest="key_command", metavar="SUBCOMMAND", title="subcommands", parser_class=type(p))
    s = sub.add_parser("newpair", help="Create a new key pair",
                       description="Create a new OpenPGP key pair in the local keyrings, or a PEM key pair.")
    s.add_argument("-N", "--name", help="key owner name")
    s.add_argument("-E", "--email", help="key owner email")
    s.add_argument("-C", "--comment", default="", help="key comment")
    s.add_argument("-P", "--password", default=None, help="key passphrase (default: asked; empty = none)")
    s.add_argument("-b", "--bit-length", type=int, default=4096, help="RSA key length (default 4096)")
    s.add_argument("-U", "--push", action="store_true", help="specify to push the public key to the remote keystore")
    s.add_argument("--pem", choices=("ed25519", "rsa", "ecdsa"), help="make a PEM key pair for DSSE signing instead")
    s.add_argument("-o", "--output", help="with --pem: private key file (the public key goes to FILE.pub)")
    s = sub.add_parser("list", help="List keys in the local keyrings", description="List the keys in the local keyrings.")
    s.add_argument("-s", "--secret", action="store_true", help="list the private keys")
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser("import", help="Import a key into the local keyrings",
                       description="Import OpenPGP keys (binary or armored; public or secret) into the local keyrings.")
    s.add_argument("file", metavar="FILE")
    s = sub.add_parser("export", help="Export a key from the local keyrings",
                       description="Export an OpenPGP key to a file: the one FINGERPRINT names, the one "
                       "--keyidx or --fingerprint selects, the only one, or the one you choose.")
    s.add_argument("-s", "--secret", action="store_true", help="export a private key")
    s.add_argument("-a", "--armor", action="store_true", help="ASCII-armored output")
    s.add_argument("--keyidx", type=int, default=None, help="index of the key (as `key list` numbers it)")
    s.add_argument("--fingerprint", default=None, help="fingerprint of the key")
    s.add_argument("target", metavar="FILE", nargs="+",
                   help="the file to write; before it, optionally, the key's FINGERPRINT")
    s.usage = "%(prog)s [-s] [-a] [-d DIR] [--keyidx N | --fingerprint FPR] [FINGERPRINT] FILE"
    s = sub.add_parser("remove", help="Remove a key from the local keyrings", description="Remove a key from the local keyrings.")
    s.add_argument("-s", "--secret", action="store_true", help="also remove the private key")
    s.add_argument("fingerprint", metavar="FINGERPRINT")
    s = sub.add_parser("search", help="Search for keys on a keyserver",
                       description="Search a keyserver (HKP) for keys matching a name, email address or fingerprint.")
    s.add_argument("-l", "--long-list", action="store_true", help="output long list when searching for keys")
    s.add_argument("query", metavar="NAME|EMAIL|FINGERPRINT")
    s = sub.add_parser("pull", help="Download a public key from a keyserver",
                       description="Download the public key of a fingerprint (or key ID) from a keyserver into "
                       "the local public keyring.")
    s.add_argument("fingerprint", metavar="FINGERPRINT")
    s = sub.add_parser("push", help="Upload a public key to a keyserver",
                       description="Upload a public key of the local keyring to a keyserver.")
    s.add_argument("fingerprint", metavar="FINGERPRINT")
    for name in ("search", "pull", "push"):
        sub.choices[name].add_argument(
            "-u", "--url", default=None, metavar="URL",
            help="specify the key server URL (default: $SIFBOX_URL, $APPTAINER_URL, the default remote's keyservers)")
    for name in ("import", "export", "list", "pull", "push", "remove"):
        sub.choices[name].add_argument(
            "-g", "--global", dest="global_", action="store_true",
            help="manage the global public keyring (global-pgp-public beside sifbox.conf; changing it needs root)")
    for name in ("newpair", "list", "import", "export", "remove", "pull", "push"):
        sub.choices[name].add_argument(
            "-d", "--keysdir", default=None, metavar="DIR",
            help="the local keyring directory (default: $SIFBOX_KEYSDIR, $APPTAINER_KEYSDIR, ~/.sifbox/keys)")


def main(args: argparse.Namespace) -> int:
    if args.key_command is None:
        args._parser._subparsers._group_actions[0].choices[args.command].print_help()
        return 0
    from sifbox.security.pgp import PgpError

    if args.key_command == "export":
        _export_operands(args)

    try:
        return int(HANDLERS[args.key_command](args))
    except PgpError as err:
        msg = str(err)
        raise SifboxError(msg if msg.startswith("can't") else f"can't {args.key_command} key: {msg}") from err


def _keyring(args: argparse.Namespace | None = None):  # type: ignore[no-untyped-def]
    from sifbox.security.keys import GlobalKeyring, Keyring, global_keyring_path

    if getattr(args, "global_", False):
        if getattr(args, "secret", False):
            raise UsageError("can't use --secret with --global: the global keyring holds public keys only")
        if getattr(args, "keysdir", None):
            raise UsageError("can't use --keysdir with --global")
        return GlobalKeyring(global_keyring_path(getattr(args, "config", None)))
    return Keyring(getattr(args, "keysdir", None) or None)


def _export_operands(args: argparse.Namespace) -> None:
    """`export FILE` (Apptainer's) or `export FINGERPRINT FILE` (Singularity's first form)."""
    if len(args.target) > 2:
        raise UsageError("can't export a key: expected FILE or FINGERPRINT FILE, got "
                         + " ".join(f"`{t}`" for t in args.target))  # fmt: skip
    args.file = args.target[-1]
    if len(args.target) == 2:
        fpr = args.target[0]
        if args.fingerprint and _norm(args.fingerprint) != _norm(fpr):
            raise UsageError(f"can't export a key: fingerprint `{fpr}` and --fingerprint "
                             f"`{args.fingerprint}` differ")  # fmt: skip
        if args.keyidx is not None:
            raise UsageError("can't export a key: give a FINGERPRINT or --keyidx, not both")
        args.fingerprint = fpr


def _norm(fingerprint: str) -> str:
    return fingerprint.upper().replace(" ", "").removeprefix("0X")


def _newpair(args: argparse.Namespace) -> int:
    if args.pem:
        return _newpair_pem(args)
    from sifbox.cli.commands import _keyprompt

    if args.name is None:
        if not _keyprompt.interactive():
            raise UsageError("can't create a key pair: --name is required without a terminal")
        args.name = input("Enter your name (e.g., John Doe) : ").strip()
        args.email = input("Enter your email address (e.g., john.doe@example.com) : ").strip()
        args.comment = input("Enter optional comment (e.g., development keys) : ").strip()
    if not args.name:
        raise UsageError("can't create a key pair: the name is empty")
    uid = args.name + (f" ({args.comment})" if args.comment else "") + (f" <{args.email}>" if args.email else "")
    password = args.password
    if password is None:
        password = _keyprompt.passphrase("Enter a passphrase : ", "create a key pair", confirm=True)
    if not 1024 <= args.bit_length <= 4096:
        raise UsageError(f"can't create a key pair: bit length {args.bit_length} not in 1024..4096")
    sys.stdout.write("Generating Entity and OpenPGP Key Pair... ")
    sys.stdout.flush()
    info = _keyring(args).newpair(uid, password, args.bit_length)
    sys.stdout.write("done\n")
    sys.stdout.write(f"Key fingerprint: {info.fingerprint}\n")
    if args.push:
        _push_new(args, info.fingerprint)
    return 0


def _push_new(args: argparse.Namespace, fingerprint: str) -> None:
    """As Apptainer's newpair --push: the key stays made whatever the keyserver says."""
    from sifbox.security import keyserver, pgp

    with pgp.GnuPG(public=_keyring(args).public()) as g:
        armored = g.export_public([fingerprint], armor=True)
    try:
        keyserver.push_key(_keyservers(args), armored, fingerprint)
    except SifboxError as err:
        sys.stdout.write(f"Failed to push newly created key to keystore: {err.message}\n")
    else:
        sys.stdout.write("Key successfully pushed to keystore\n")


def _newpair_pem(args: argparse.Namespace) -> int:
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if not args.output:
        raise UsageError("can't create a PEM key pair: --output FILE is required")
    if args.pem == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif args.pem == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=args.bit_length)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    enc = (serialization.BestAvailableEncryption(args.password.encode()) if args.password
           else serialization.NoEncryption())  # fmt: skip
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((args.output, priv, 0o600), (args.output + ".pub", pub, 0o644)):
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        except OSError as err:
            raise SifboxError(f"can't write `{path}`: {err.strerror}") from None
    sys.stdout.write(f"Private key: {args.output}\nPublic key: {args.output}.pub\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    from sifbox.security.keys import format_key

    kr = _keyring(args)
    kr.ensure()  # as Apptainer: listing makes the (empty) keyrings
    keys = kr.list_secret() if args.secret else kr.list_public()
    if args.json:
        import json

        sys.stdout.write(json.dumps([k.as_dict() for k in keys], indent=2) + "\n")
        return 0
    path = kr.secret_path if args.secret else kr.public_path
    kind = "Private" if args.secret else "Public"
    sys.stdout.write(f"{kind} key listing ({path}):\n\n")
    for i, k in enumerate(keys):
        sys.stdout.write(format_key(i, k))
    return 0


def _import(args: argparse.Namespace) -> int:
    from sifbox.security import pgp
    from sifbox.security.keys import describe

    try:
        with open(args.file, "rb") as f:
            data = f.read(64 << 20)
    except OSError as err:
        raise SifboxError(f"can't import `{args.file}`: {err.strerror}") from None
    try:
        binary = pgp.dearmor(data)
        keys = describe(binary)
    except pgp.PgpError as err:
        raise SifboxError(f"can't import `{args.file}`: {err}") from None
    if not keys:
        raise SifboxError(f"can't import `{args.file}`: no OpenPGP key found in it")
    kr = _keyring(args)
    if any(k.secret for k in keys) and args.global_:
        raise SifboxError(f"can't import `{args.file}` into the global keyring: it holds a private key",
                          hint="export the public key (`sifbox key export`) and import that")  # fmt: skip
    if any(k.secret for k in keys):
        binary = _protect_anew(binary, [k.fingerprint for k in keys if k.secret], args.file)
    added = kr.add_secret(binary) if any(k.secret for k in keys) else kr.add_public(binary)
    for k in added:
        sys.stdout.write(f"Key with fingerprint {k.fingerprint} successfully added to the keyring\n")
    return 0


def _protect_anew(binary: bytes, fingerprints: list[str], path: str) -> bytes:
    """As Apptainer imports a secret key at a terminal: its old passphrase (if it has one), then
    a new one for the local keyring, twice. Without a terminal the key is kept as it is."""
    import getpass
    import os

    from sifbox.cli.commands import _keyprompt
    from sifbox.security import pgp

    if not _keyprompt.interactive() or _keyprompt.PASSPHRASE_ENV in os.environ:
        return binary
    what = f"import `{path}`"
    out = b""
    with pgp.GnuPG(secret=binary) as g:
        for fpr in fingerprints:
            old = getpass.getpass("Enter your old password : ") if g.is_protected(fpr) else None
            new = getpass.getpass("Enter a new password for this key : ")
            if getpass.getpass("Retype your passphrase : ") != new:
                raise SifboxError(f"can't {what}: the passphrases do not match")
            try:
                g.change_passphrase(fpr, old, new)
                out += g.export_secret(fpr, new)
            except pgp.BadPassphrase:
                raise SifboxError(f"can't {what}: wrong passphrase for key {fpr}") from None
            except pgp.PgpError as err:
                raise SifboxError(f"can't {what}: {err}") from None
    return out


def _select(args: argparse.Namespace, keys: list, what: str) -> int:  # type: ignore[type-arg]
    from sifbox.cli.commands import _keyprompt
    from sifbox.security.keys import format_key

    if not keys:
        raise SifboxError(f"can't {what}: the keyring is empty", hint="`sifbox key newpair` or `sifbox key import` adds keys")
    if args.fingerprint:
        fpr = _norm(args.fingerprint)
        # the whole fingerprint, or a long or short key ID (its last 16 or 8 digits)
        found = [i for i, k in enumerate(keys)
                 if k.fingerprint == fpr or (len(fpr) in (8, 16) and k.fingerprint.endswith(fpr))]  # fmt: skip
        if len(found) == 1:
            return found[0]
        if found:
            raise SifboxError(f"can't {what}: `{args.fingerprint}` names {len(found)} keys",
                              hint="give the whole fingerprint (`sifbox key list` shows them)")  # fmt: skip
        where = "private keys" if args.secret else "public keys"
        raise SifboxError(f"can't {what}: no key with fingerprint `{args.fingerprint}` in the {where}",
                          hint=f"`sifbox key list{' --secret' if args.secret else ''}` shows them")  # fmt: skip
    if args.keyidx is not None:
        if not 0 <= args.keyidx < len(keys):
            raise SifboxError(f"can't {what}: key index {args.keyidx} out of range (0..{len(keys) - 1})")
        return int(args.keyidx)
    if len(keys) > 1 and _keyprompt.interactive():
        for i, k in enumerate(keys):
            sys.stdout.write(format_key(i, k))
    return _keyprompt.choose(len(keys), "Enter # of key to export : ", what, "pass --keyidx N or --fingerprint FPR")


def _export(args: argparse.Namespace) -> int:
    import os

    from sifbox.security import pgp

    kr = _keyring(args)
    what = f"export to `{args.file}`"
    if args.secret:
        blocks = kr.secret_blocks()
        i = _select(args, [k for k, _ in blocks], what)
        data = blocks[i][1]
        if args.armor:
            with pgp.GnuPG(secret=data) as g:
                data = g.run(["--armor", "--enarmor"], input=data).stdout
                data = _armor_secret(data)
        fpr = blocks[i][0].fingerprint
    else:
        keys = kr.list_public()
        i = _select(args, keys, what)
        fpr = keys[i].fingerprint
        with pgp.GnuPG(public=kr.public()) as g:
            data = g.export_public([fpr], armor=args.armor)
    tmp = f"{args.file}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if args.secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, args.file)
    except OSError as err:
        raise SifboxError(f"can't {what}: {err.strerror}") from None
    sys.stdout.write(f"Key with fingerprint {fpr} successfully exported to file: {args.file}\n")
    return 0


def _armor_secret(enarmored: bytes) -> bytes:
    # gpg --enarmor labels the block "ARMORED FILE"; a key block says what it is.
    return enarmored.replace(b"PGP ARMORED FILE", b"PGP PRIVATE KEY BLOCK").replace(
        b"Comment: Use \"gpg --dearmor\" for unpacking\n", b"")


def _remove(args: argparse.Namespace) -> int:
    fpr = args.fingerprint.upper().replace(" ", "")
    if len(fpr) != 40:
        raise UsageError(f"can't remove key `{args.fingerprint}`: expecting a 40 chars hex fingerprint")
    if not _keyring(args).remove(fpr, secret=args.secret):
        raise SifboxError(f"can't remove key `{fpr}`: no such key in the local keyring")
    return 0


def _keyservers(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import os

    from sifbox.config import remotes
    from sifbox.security import keyserver

    url = getattr(args, "url", None) or os.environ.get("SIFBOX_URL") or os.environ.get("APPTAINER_URL") or None
    return keyserver.configured(remotes.merged(getattr(args, "config", None)), url)


def _selector(text: str, what: str, lengths: tuple[int, ...]) -> str:
    from sifbox.formats import hkp

    try:
        return hkp.key_selector(text, lengths)
    except hkp.HkpError as err:
        raise UsageError(f"can't {what}: {err}") from None


def _search(args: argparse.Namespace) -> int:
    from sifbox.formats import hkp
    from sifbox.security import keyserver
    from sifbox.security.keys import format_time

    try:
        index = keyserver.search(_keyservers(args), args.query)
    except keyserver.NotFound:
        raise SifboxError(f"can't search for `{args.query}`: no matching keys found") from None
    try:
        table = hkp.format_index(index, args.long_list, format_time)
    except hkp.HkpError as err:
        raise SifboxError(f"can't search for `{args.query}`: {err}") from None
    sys.stdout.write(f"Showing {len(index.keys)} results\n\n{table}")
    if index.declared is not None and index.declared != len(index.keys) + index.dropped:
        raise SifboxError(f"can't search for `{args.query}`: the keyserver announced {index.declared} keys "
                          f"and listed {len(index.keys) + index.dropped}")  # fmt: skip
    return 0


def _pull(args: argparse.Namespace) -> int:
    from sifbox.security import keyserver

    sel = _selector(args.fingerprint, f"pull key `{args.fingerprint}`", (8, 16, 40))
    kr = _keyring(args)
    kr.ensure()
    have = {k.fingerprint for k in kr.list_public()}
    binary = keyserver.fetch_key(_keyservers(args), sel)
    from sifbox.security.keys import describe

    new = [k for k in describe(binary) if k.fingerprint not in have]
    if new:
        kr.add_public(binary)
    sys.stdout.write(f"{len(new)} key(s) added to keyring of trust {kr.public_path}\n")
    return 0


def _push(args: argparse.Namespace) -> int:
    from sifbox.security import keyserver, pgp

    what = f"push key `{args.fingerprint}`"
    sel = _selector(args.fingerprint, what, (16, 40))
    kr = _keyring(args)
    found = [k for k in kr.list_public() if k.fingerprint.endswith(sel)]
    if len(found) != 1:
        raise SifboxError(f"can't {what}: " + ("no such key in the local public keyring" if not found
                                               else f"it names {len(found)} keys"),
                          hint="`sifbox key list` shows the keys")  # fmt: skip
    with pgp.GnuPG(public=kr.public()) as g:
        armored = g.export_public([found[0].fingerprint], armor=True)
    keyserver.push_key(_keyservers(args), armored, args.fingerprint)
    sys.stdout.write(f"public key `{args.fingerprint}' pushed to server successfully\n")
    return 0


HANDLERS = {"search": _search, "pull": _pull, "push": _push, "newpair": _newpair, "list": _list, "import": _import, "export": _export, "remove": _remove}
