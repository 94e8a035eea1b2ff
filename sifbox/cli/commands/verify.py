"""`sifbox verify`: verify the signature(s) of a SIF image, as `apptainer verify`.

Key material: the local and global OpenPGP keyrings (default), a PEM public
key (`--key`), or an X.509 certificate (`--certificate`, checked against
`--certificate-intermediates` and `--certificate-roots`). Exit status 0
when every selected signature verifies, 255 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from sifbox.util.errors import SifboxError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sifbox.cli.commands.sign import _id

    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-l", "--local", action="store_true", help="only verify with local key(s) in keyring")
    p.add_argument("--key", metavar="PEM", default=None, help="path to the public key file")
    p.add_argument("--certificate", default=None, help="path to the certificate")
    p.add_argument("--certificate-intermediates", default=None, help="path to pool of intermediate certificates")
    p.add_argument("--certificate-roots", default=None, help="path to pool of root certificates")
    p.add_argument("-g", "--group-id", "--groupid", dest="group_id", type=_id, default=None,
                   help="verify objects with the specified group ID")
    p.add_argument("-i", "--sif-id", "--id", dest="sif_id", type=_id, default=None, help="verify object with the specified ID")
    p.add_argument("-a", "--all", action="store_true", help="verify all objects")
    p.add_argument("--legacy-insecure", action="store_true", help="enable verification of (insecure) legacy signatures")
    p.add_argument("-j", "--json", action="store_true", help="output json")
    p.add_argument("-u", "--url", default=None, metavar="URL",
                   help="specify a URL for a key server (default: $SIFBOX_URL, the default remote's keyservers)")


def main(args: argparse.Namespace) -> int:
    from sifbox.image.sif_file import open_sif
    from sifbox.security import verify as v
    from sifbox.security.integrity import IntegrityError, ObjectIntegrityError
    from sifbox.util import log

    keys, local_ring, global_ring = _key_material(args)
    groups = [args.group_id] if args.group_id else []
    objects = [args.sif_id] if args.sif_id else []
    legacy_all = bool(args.legacy_insecure and args.all)
    entries: list[dict[str, object]] = []
    count = 0

    with open_sif(args.image, verb="verify") as img:
        if args.legacy_insecure and not groups and not objects and not legacy_all:
            part = img.primary_partition()
            if part is None:
                raise SifboxError(f"can't verify `{args.image}`: get primary system partition: no primary partition")
            objects = [part.id]

        def origin(fpr: str) -> str:
            if fpr and fpr in global_ring:
                return "[GLOBAL]"
            if fpr and fpr in local_ring:
                return "[LOCAL]"
            return "[REMOTE]"

        def show(r: v.Result) -> bool:
            nonlocal count
            count += 1
            # the whole user ID, `Name (comment) <email>`, as Apptainer prints the identity
            name = r.user
            if args.json:
                fp = (r.fingerprint or "").lower()
                base = {"Name": name or "unknown", "Fingerprint": fp, "KeyLocal": bool(fp and fp.upper() in local_ring),
                        "KeyCheck": r.fingerprint is not None}  # fmt: skip
                for d in r.verified:
                    entries.append({"Signer": {"Partition": d.type_name, **base, "DataCheck": True}})
                if isinstance(r.error, ObjectIntegrityError) and r.error.object_id:
                    d = next((o for o in img.objects() if o.id == r.error.object_id), None)
                    if d is not None:
                        entries.append({"Signer": {"Partition": d.type_name, **base, "DataCheck": False}})
                return False
            out = sys.stdout
            if r.fingerprint:
                prefix = origin(r.fingerprint)
                out.write(f"{prefix:<9} Signing entity: {name}\n")
                out.write(f"{prefix:<9} Fingerprint: {r.fingerprint}\n")
            if r.verified:
                out.write("Objects verified:\n")
                out.write(f"{'ID':<4}|{'GROUP':<8}|{'LINK':<8}|TYPE\n")
                out.write("-" * 48 + "\n")
            for d in r.verified:
                group = str(d.group_id) if d.group_id else "NONE"
                target, is_group = d.linked_id
                link = "NONE" if not target else (f"{target} (G)" if is_group else str(target))
                out.write(f"{d.id:<4}|{group:<8}|{link:<8}|{d.type_name}\n")
            if r.error is not None:
                out.write(f"\nError encountered during signature verification: {r.error}\n")
            out.flush()
            return False

        if keys.keyring is not None and not args.local:
            keys.keyring += _remote_keys(args, img, groups, objects, local_ring | global_ring)
        error: IntegrityError | None = None
        try:
            v.verify_image(img, keys, groups=groups, objects=objects, legacy=args.legacy_insecure,
                           legacy_all=legacy_all, callback=show)  # fmt: skip
        except IntegrityError as err:
            error = err
    if args.json:
        import json

        sys.stdout.write(json.dumps({"Signatures": count, "SignerKeys": entries or None}, indent=2) + "\n")
    if error is not None:
        raise SifboxError(f"can't verify `{args.image}`: {error}")
    log.log.info("Verified signature(s) from image '%s'", args.image)
    return 0


def _remote_keys(args: argparse.Namespace, img, groups: list[int], objects: list[int],  # type: ignore[no-untyped-def]
                 have: set[str]) -> bytes:  # fmt: skip
    """The public keys of signers the keyrings lack, fetched from the keyserver(s) (--url, else
    the default remote's), as Apptainer's verify does unless --local. They serve this
    verification only (shown as [REMOTE]); `sifbox key pull` keeps one. A key that can't be
    fetched is left out: its signature then fails as made by an unknown entity."""
    import os

    from sifbox.config import remotes
    from sifbox.security import keyserver
    from sifbox.security import verify as v
    from sifbox.util import log

    _, signers = v.signed_by(img, groups, objects, args.legacy_insecure)
    missing = sorted(signers - have)
    if not missing:
        return b""
    url = args.url or os.environ.get("SIFBOX_URL") or os.environ.get("APPTAINER_URL") or None
    servers = keyserver.configured(remotes.merged(getattr(args, "config", None)), url)
    fetched = b""
    for fpr in missing:
        try:
            fetched += keyserver.fetch_key(servers, fpr, verb="fetch the signer's")
            log.verbose("Key %s fetched from the keyserver", fpr)
        except SifboxError as err:
            log.log.warning("%s", err.message)
    return fetched


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16 << 20)
    except OSError as err:
        raise SifboxError(f"can't load {what} `{path}`: {err.strerror}") from None


def _key_material(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sifbox.security import dsse, keys
    from sifbox.security import verify as v
    from sifbox.util import log

    if args.certificate:
        log.log.info("Verifying image with key material from certificate '%s'", args.certificate)
        from sifbox.security.x509 import load_certificate_key

        key = load_certificate_key(args.certificate, args.certificate_intermediates, args.certificate_roots)
        return v.KeyMaterial(None, [key]), set(), set()
    if args.key:
        from cryptography.exceptions import UnsupportedAlgorithm

        log.log.info("Verifying image with key material from '%s'", args.key)
        try:
            key = dsse.load_public_key(_read(args.key, "key material"))
        except (ValueError, UnsupportedAlgorithm):
            raise SifboxError(f"can't load key material `{args.key}`: not a PEM public key or certificate") from None
        return v.KeyMaterial(None, [key]), set(), set()
    log.log.info("Verifying image with PGP key material")
    kr = keys.Keyring()
    local = kr.public()
    glob = b""
    try:
        with open(keys.GLOBAL_KEYRING, "rb") as f:
            glob = f.read()
    except OSError:
        pass
    local_fps = {k.fingerprint for k in keys.describe(local)} if local else set()
    global_fps = {k.fingerprint for k in keys.describe(glob)} if glob else set()
    return v.KeyMaterial(local + glob), local_fps, global_fps
