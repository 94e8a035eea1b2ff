"""`sifbox sign`: add signature(s) to a SIF image, as `apptainer sign`.

With no key option the image is signed with an OpenPGP key from
~/.sifbox/keys/pgp-secret (`--keyidx` picks one); with `--key` a PEM
private key makes a DSSE signature. One signature per object group.
"""

from __future__ import annotations

import argparse
import sys

from sifbox.util.errors import SifboxError, UsageError


def _id(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid ID `{text}`") from None
    if not 0 < v <= 0x0FFFFFFF:
        raise argparse.ArgumentTypeError(f"invalid ID `{text}`")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-k", "--keyidx", type=int, default=None, help="private key to use (index from `key list --secret`)")
    p.add_argument("--key", metavar="PEM", default=None, help="path to the private key file (DSSE signature)")
    p.add_argument("-g", "--group-id", "--groupid", dest="group_id", type=_id, default=None,
                   help="sign objects with the specified group ID")
    p.add_argument("-i", "--sif-id", "--id", dest="sif_id", type=_id, default=None, help="sign object with the specified ID")
    p.add_argument("-a", "--all", action="store_true", help="sign all objects")


def main(args: argparse.Namespace) -> int:
    from sifbox.formats.sif.image import SifError
    from sifbox.image.sif_file import open_sif
    from sifbox.security import pgp
    from sifbox.security.integrity import IntegrityError
    from sifbox.security.sign import sign_image
    from sifbox.util import log

    verb = "sign"
    groups = [args.group_id] if args.group_id else []
    objects = [args.sif_id] if args.sif_id else []
    try:
        signer, cleanup = _signer(args)
    except pgp.PgpError as err:  # the secret key does not import, gpg does not sign
        raise SifboxError(f"can't sign `{args.image}`: {err}") from err
    try:
        with open_sif(args.image, verb=verb, write=True) as img:
            try:
                sign_image(img, signer, groups=groups, objects=objects)
            except (IntegrityError, SifError) as err:
                raise SifboxError(f"can't sign `{args.image}`: {err}") from err
            except pgp.BadPassphrase as err:
                raise SifboxError(f"can't sign `{args.image}`: wrong passphrase ({err})") from err
            except pgp.PgpError as err:
                raise SifboxError(f"can't sign `{args.image}`: {err}") from err
    finally:
        cleanup()
    log.log.info("Signature created and applied to image '%s'", args.image)
    return 0


def _signer(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sifbox.util import log

    if args.key:
        from cryptography.exceptions import UnsupportedAlgorithm

        from sifbox.security import dsse
        from sifbox.security.sign import dsse_signer

        log.log.info("Signing image with key material from '%s'", args.key)
        try:
            with open(args.key, "rb") as f:
                data = f.read(1 << 20)
        except OSError as err:
            raise SifboxError(f"can't sign `{args.image}`: can't read key `{args.key}`: {err.strerror}") from None
        try:
            key = dsse.load_private_key(data)
        except TypeError:
            from sifbox.cli.commands import _keyprompt

            pw = _keyprompt.passphrase("Enter key passphrase : ", f"sign `{args.image}`")
            try:
                key = dsse.load_private_key(data, pw.encode())
            except (ValueError, TypeError):
                raise SifboxError(f"can't sign `{args.image}`: wrong passphrase for `{args.key}`") from None
        except (ValueError, UnsupportedAlgorithm):
            raise SifboxError(
                f"can't sign `{args.image}`: `{args.key}` is not a PEM private key (Ed25519, RSA or ECDSA)"
            ) from None
        return dsse_signer([key]), lambda: None
    return _pgp_signer(args)


def _pgp_signer(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sifbox.cli.commands import _keyprompt
    from sifbox.formats.sif.edit import now
    from sifbox.security import pgp
    from sifbox.security.keys import Keyring, format_key
    from sifbox.security.sign import pgp_signer
    from sifbox.util import log

    log.log.info("Signing image with PGP key material")
    kr = Keyring()
    blocks = kr.secret_blocks()
    if not blocks:
        raise SifboxError(f"can't sign `{args.image}`: no private key in `{kr.secret_path}`",
                          hint="`sifbox key newpair` creates one; `sifbox key import` adds yours")
    if args.keyidx is not None:
        if not 0 <= args.keyidx < len(blocks):
            raise UsageError(f"can't sign `{args.image}`: key index {args.keyidx} out of range (0..{len(blocks) - 1})")
        i = args.keyidx
    else:
        if len(blocks) > 1 and _keyprompt.interactive():
            for n, (k, _) in enumerate(blocks):
                sys.stdout.write(format_key(n, k))
        i = _keyprompt.choose(len(blocks), "Enter # of private key to use : ", f"sign `{args.image}`",
                              "pass --keyidx N (see `sifbox key list --secret`)")
    info, block = blocks[i]
    when = now()
    gpg = pgp.GnuPG(secret=block)
    try:
        # Try without a passphrase first: unprotected keys need none.
        gpg.sign_detached_text(b"", info.fingerprint, "", when)
        passphrase = ""
    except pgp.BadPassphrase:
        try:
            passphrase = _keyprompt.passphrase("Enter key passphrase : ", f"sign `{args.image}`")
        except BaseException:
            gpg.close()
            raise
    except BaseException:
        gpg.close()
        raise
    return pgp_signer(gpg, info.fingerprint, passphrase, when), gpg.close
