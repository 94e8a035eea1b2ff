"""`sifbox sif`: the SIF toolbox, with the commands and output of `siftool`.

    sifbox sif header IMAGE        sifbox sif new IMAGE
    sifbox sif list IMAGE          sifbox sif add IMAGE FILE --datatype N ...
    sifbox sif info ID IMAGE       sifbox sif del ID IMAGE
    sifbox sif dump ID IMAGE       sifbox sif setprim ID IMAGE
"""

from __future__ import annotations

import argparse
import sys

from sifbox.util.errors import SifboxError, UsageError

DATATYPES = {
    1: 0x4001, 2: 0x4002, 3: 0x4003, 4: 0x4004, 5: 0x4005, 6: 0x4006,
    7: 0x4007, 8: 0x4008, 9: 0x4009, 10: 0x400A, 11: 0x400B,
}  # fmt: skip
ARCHES = (
    "386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "mips", "mipsle",
    "mips64", "mips64le", "s390x", "riscv64", "loong64",
)  # fmt: skip
SBOM_FORMATS = {
    "cyclonedx-json": 1, "cyclonedx-xml": 2, "github-json": 3, "github": 3,
    "spdx-json": 4, "spdx-rdf": 5, "spdx-tag-value": 6, "spdx-yaml": 7, "syft-json": 8,
}  # fmt: skip

ADD_EPILOG = """\
datatypes: 1-Deffile 2-EnvVar 3-Labels 4-Partition 5-Signature 6-GenericJSON
           7-Generic 8-CryptoMessage 9-SBOM 10-OCI.RootIndex 11-OCI.Blob
partfs:    1-Squash 2-Ext3 3-ImmuObj 4-Raw
parttype:  1-System 2-PrimSys 3-Data 4-Overlay
partarch:  1-386 2-amd64 3-arm 4-arm64 5-ppc64 6-ppc64le 7-mips 8-mipsle
           9-mips64 10-mips64le 11-s390x 12-riscv64 13-loong64
signhash:  1-SHA256 2-SHA384 3-SHA512 4-BLAKE2s_256 5-BLAKE2b_256

examples:
  sifbox sif add image.sif recipe.def --datatype 1
  sifbox sif add image.sif rootfs.squashfs --datatype 4 --parttype 1 --partfs 1 --partarch 2
  sifbox sif add image.sif signature.bin --datatype 5 \\
      --signentity 433FE984155206BD962725E20E8713472A879943 --signhash 1
"""


def _object_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid object ID `{text}`") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"invalid object ID `{text}`")
    return value


def _uint32(text: str) -> int:
    value = _object_id(text)
    return value


def _int32(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number `{text}`") from None
    if not -(2**31) <= value < 2**31:
        raise argparse.ArgumentTypeError(f"`{text}` is out of range")
    return value


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number `{text}`") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(sif_command=None)
    sub = p.add_subparsers(dest="sif_command", metavar="SUBCOMMAND", title="subcommands",
                           parser_class=type(p))  # fmt: skip

    s = sub.add_parser("header", help="Display global header", description="Display the global header of a SIF image.")
    s.add_argument("image", metavar="IMAGE")
    s = sub.add_parser("list", help="List data objects", description="List the data objects of a SIF image.")
    s.add_argument("image", metavar="IMAGE")
    s = sub.add_parser("info", help="Display data object info", description="Display info about a data object of a SIF image.")
    s.add_argument("id", type=_object_id, metavar="ID")
    s.add_argument("image", metavar="IMAGE")
    s = sub.add_parser("dump", help="Dump data object", description="Write the bytes of a data object to standard output.")
    s.add_argument("id", type=_object_id, metavar="ID")
    s.add_argument("image", metavar="IMAGE")
    s = sub.add_parser("new", help="Create SIF image", description="Create a new, empty SIF image.")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("--deterministic", action="store_true",
                   help="zero image ID and unset times, for byte-reproducible images (sifbox extension)")  # fmt: skip
    s = sub.add_parser(
        "add", help="Add data object", description="Add a data object to a SIF image.",
        epilog=ADD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("object", metavar="FILE", help="file holding the object's data ('-' for standard input)")
    s.add_argument("--datatype", type=_int, help="the type of data to add (required; see below)")
    s.add_argument("--parttype", type=_int32, default=0, help="the type of partition (with --datatype 4)")
    s.add_argument("--partfs", type=_int32, default=0, help="the filesystem used (with --datatype 4)")
    s.add_argument("--partarch", type=_int32, default=0, help="the main architecture used (with --datatype 4)")
    s.add_argument("--signhash", type=_int32, default=0, help="the signature hash used (with --datatype 5)")
    s.add_argument("--signentity", default="", help="the entity that signs, a 40-digit hex fingerprint (with --datatype 5)")
    s.add_argument("--sbomformat", default=None, help="the SBOM format (with --datatype 9)")
    s.add_argument("--groupid", type=_uint32, default=0, help="set groupid [default: 0, no group]")
    s.add_argument("--link", type=_uint32, default=None, help="set link pointer [default: 0]")
    s.add_argument("--alignment", type=_int, default=None,
                   help="set alignment [default: 4096 with --datatype 4-Partition, 0 otherwise]")  # fmt: skip
    s.add_argument("--filename", default=None, help="set logical filename/handle [default: none]")
    s = sub.add_parser("del", help="Delete data object", description="Delete a data object from a SIF image.")
    s.add_argument("id", type=_object_id, metavar="ID")
    s.add_argument("image", metavar="IMAGE")
    s = sub.add_parser("setprim", help="Set primary system partition",
                       description="Set the primary system partition of a SIF image.")  # fmt: skip
    s.add_argument("id", type=_object_id, metavar="ID")
    s.add_argument("image", metavar="IMAGE")


def main(args: argparse.Namespace) -> int:
    if args.sif_command is None:
        args._parser._subparsers._group_actions[0].choices[args.command].print_help()
        return 0
    return int(HANDLERS[args.sif_command](args))


# -- read-only commands ---------------------------------------------------------
def _header(args: argparse.Namespace) -> int:
    from sifbox.formats.sif import render
    from sifbox.image.sif_file import open_sif

    with open_sif(args.image, verb="read the header of") as img:
        sys.stdout.write(render.header_text(img))
    return 0


def _list(args: argparse.Namespace) -> int:
    from sifbox.formats.sif import render
    from sifbox.image.sif_file import open_sif

    with open_sif(args.image, verb="list") as img:
        sys.stdout.write(render.list_text(img))
    return 0


def _info(args: argparse.Namespace) -> int:
    from sifbox.formats.sif import render
    from sifbox.image.sif_file import open_sif

    verb = f"show object {args.id} of"
    with open_sif(args.image, verb=verb) as img:
        d = _get(img, args, verb)
        sys.stdout.write(render.info_text(d))
    return 0


def _dump(args: argparse.Namespace) -> int:
    from sifbox.formats.sif.image import SifError
    from sifbox.image.sif_file import open_sif

    verb = f"dump object {args.id} of"
    with open_sif(args.image, verb=verb) as img:
        d = _get(img, args, verb)
        out = sys.stdout.buffer
        try:
            for chunk in img.iter_chunks(d):
                out.write(chunk)
        except SifError as err:
            raise SifboxError(f"can't {verb} `{args.image}`: {err}") from err
        out.flush()
    return 0


def _get(img, args: argparse.Namespace, verb: str):  # type: ignore[no-untyped-def]
    from sifbox.formats.sif.image import SifError

    try:
        if not img.has_objects:
            raise SifError("no objects in image")
        return img.get(args.id)
    except SifError as err:
        raise SifboxError(f"can't {verb} `{args.image}`: {err}", hint=f"`sifbox sif list {args.image}` shows the object IDs") from err


# -- commands that change images ---------------------------------------------------
def _new(args: argparse.Namespace) -> int:
    from sifbox.formats.sif import edit
    from sifbox.image.sif_file import write_atomically

    write_atomically(
        args.image, lambda fp: edit.create(fp, deterministic=args.deterministic, sync=True),
        verb="create", mode=0o777,  # as siftool's
    )  # fmt: skip
    return 0


def _add_input(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Check the add flags as siftool does and build the ObjectInput (minus data)."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import layout
    from sifbox.formats.sif.edit import ObjectInput

    def bad(reason: str, hint: str | None = None) -> UsageError:
        return UsageError(f"can't add `{args.object}` to `{args.image}`: {reason}",
                          hint=hint or "see `sifbox sif add --help`")  # fmt: skip

    if args.datatype not in DATATYPES:
        raise bad("--datatype is required, a number from 1 to 11")
    dt = DATATYPES[args.datatype]
    extra = None
    if dt == c.DataType.PARTITION:
        if not (args.parttype and args.partfs and args.partarch):
            raise bad("with partition datatype, --partfs, --parttype and --partarch must be passed")
        if not 1 <= args.partarch <= len(ARCHES):
            raise bad(f"unknown architecture number {args.partarch}")
        extra = layout.partition_extra(args.partfs, args.parttype, ARCHES[args.partarch - 1])
    elif dt == c.DataType.SIGNATURE:
        try:
            fp = bytes.fromhex(args.signentity)
        except ValueError:
            raise bad(f"the signing entity `{args.signentity}` is not a hex fingerprint") from None
        if args.signhash not in c.HASH_TYPE_NAMES:
            raise bad(f"invalid hash type: {args.signhash}")
        if len(fp) != 20:
            raise bad(f"invalid signing entity fingerprint length: got {len(fp)}, want 20")
        extra = layout.signature_extra(args.signhash, fp)
    elif dt == c.DataType.SBOM:
        if args.sbomformat not in SBOM_FORMATS:
            raise bad("--sbomformat is required with datatype 9: one of " + ", ".join(
                f for f in SBOM_FORMATS if f != "github"))  # fmt: skip
        extra = layout.sbom_extra(SBOM_FORMATS[args.sbomformat])
    if args.groupid > c.MAX_GROUP:
        raise bad(f"invalid group ID {args.groupid}")
    if args.link == 0:
        raise bad("invalid object ID 0 for --link")
    name = (args.filename or "").encode()
    if len(name) > c.NAME_SIZE:
        raise bad(f"the name is {len(name)} bytes, at most {c.NAME_SIZE} fit")
    return ObjectInput(
        dt, group_id=args.groupid, link=args.link or 0, alignment=args.alignment,
        name=name, extra=extra,
    )  # fmt: skip


def _add(args: argparse.Namespace) -> int:
    import os

    from sifbox.formats.sif import edit
    from sifbox.formats.sif.image import SifError
    from sifbox.image.sif_file import open_sif
    from sifbox.util.errors import describe_os_error

    obj = _add_input(args)
    verb = f"add `{args.object}` to"
    if args.object == "-":
        source = sys.stdin.buffer
    else:
        try:
            source = open(args.object, "rb")  # noqa: SIM115
        except OSError as err:
            raise SifboxError(f"can't add `{args.object}` to `{args.image}`: {describe_os_error(err)}") from err
        if os.path.isdir(args.object):
            raise SifboxError(f"can't add `{args.object}` to `{args.image}`: is a directory")
    with source, open_sif(args.image, verb=verb, write=True) as img:
        obj.data = source
        try:
            edit.add_object(img, obj, sync=True)
        except SifError as err:
            raise SifboxError(f"can't {verb} `{args.image}`: {err}") from err
        except OSError as err:
            raise SifboxError(f"can't {verb} `{args.image}`: {describe_os_error(err)}") from err
    return 0


def _modify(args: argparse.Namespace, verb: str, op) -> int:  # type: ignore[no-untyped-def]
    from sifbox.formats.sif.image import SifError
    from sifbox.image.sif_file import open_sif
    from sifbox.util.errors import describe_os_error

    with open_sif(args.image, verb=verb, write=True) as img:
        _get(img, args, verb)
        try:
            op(img)
        except SifError as err:
            raise SifboxError(f"can't {verb} `{args.image}`: {err}") from err
        except OSError as err:
            raise SifboxError(f"can't {verb} `{args.image}`: {describe_os_error(err)}") from err
    return 0


def _del(args: argparse.Namespace) -> int:
    from sifbox.formats.sif import edit

    return _modify(args, f"delete object {args.id} from",
                   lambda img: edit.delete_object(img, args.id, sync=True))  # fmt: skip


def _setprim(args: argparse.Namespace) -> int:
    from sifbox.formats.sif import edit

    return _modify(args, f"set object {args.id} as primary partition of",
                   lambda img: edit.set_primary(img, args.id, sync=True))  # fmt: skip


HANDLERS = {
    "header": _header, "list": _list, "info": _info, "dump": _dump,
    "new": _new, "add": _add, "del": _del, "setprim": _setprim,
}  # fmt: skip
