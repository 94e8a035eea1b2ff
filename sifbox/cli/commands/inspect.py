"""`sifbox inspect IMAGE`: show an image's metadata, as Apptainer does.

Labels by default; --deffile, --runscript, --startscript, --test, --environment,
--helpfile, --list-apps, each for one app with --app NAME; --json for Apptainer's JSON
shape; --all for everything (JSON). A SIF's `inspect-metadata.json` object is used
when it has one (as Apptainer does); otherwise the metadata files are read from the
image without mounting it (one unsquashfs run). An OCI-SIF shows what its image config
gives (labels, ENV, the ENTRYPOINT/CMD runscript), as a pull of the image to SIF has it.
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.inspectmeta import Metadata
    from sifbox.image.source import ImageSource

#: Largest `inspect-metadata.json` or definition object read from a SIF.
MAX_OBJECT = 16 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-l", "--labels", action="store_true", help="show the labels for the image (default)")
    p.add_argument("-d", "--deffile", action="store_true", help="show the definition file used to build the image")
    p.add_argument("-r", "--runscript", action="store_true", help="show the runscript for the image")
    p.add_argument("-s", "--startscript", action="store_true", help="show the startscript for the image")
    p.add_argument("-t", "--test", action="store_true", help="show the test script for the image")
    p.add_argument("-e", "--environment", action="store_true", help="show the environment settings for the image")
    p.add_argument("-H", "--helpfile", action="store_true", help="show the runscript help file, if it exists")
    p.add_argument("--list-apps", action="store_true", help="list all apps in a container")
    p.add_argument("--app", metavar="NAME", help="inspect a specific app")
    p.add_argument("-j", "--json", action="store_true", help="print structured json instead of sections")
    p.add_argument("--all", action="store_true", help="show all available data (implies --json)")


def request(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sifbox.formats.inspectmeta import Request

    return Request(labels=args.labels, deffile=args.deffile, runscript=args.runscript,
                   startscript=args.startscript, test=args.test, environment=args.environment,
                   helpfile=args.helpfile, list_apps=args.list_apps, app=None if args.all else args.app,
                   all=args.all)  # fmt: skip


def gather(src: ImageSource, warnings: list[str]) -> Metadata:
    """Everything `inspect --all` shows of the opened image `src`."""
    from sifbox.formats import inspectmeta
    from sifbox.formats.sif.oci import own_metadata
    from sifbox.image.files import read_glob

    if src.oci is not None and not own_metadata(src.oci.config):  # what its image config gives, as a SIF has it
        from fnmatch import fnmatchcase

        from sifbox.formats.sif.oci import singularity_files

        files = {p: d for p, d, _ in singularity_files(src.oci.config)
                 if any(fnmatchcase(p, pat) for pat in inspectmeta.PATTERNS)}  # fmt: skip
        return inspectmeta.collect(files, [], None, warnings)
    stored, deffile = _sif_objects(src, warnings)
    encryption = getattr(src, "encryption", None)
    if encryption is not None:
        from sifbox.util import log

        log.log.info("`%s` is encrypted (%s): its metadata is read from its unencrypted objects", src.path,
                     "gocryptfs" if encryption == "gocryptfs" else "LUKS2")  # fmt: skip
    if stored is not None:
        if deffile is not None:
            stored["data"]["attributes"]["deffile"] = deffile.rstrip("\n")
        return stored
    if encryption is not None:
        from sifbox.util.errors import SifboxError

        raise SifboxError(f"can't inspect `{src.path}`: it is encrypted and holds no inspect-metadata.json "
                          "object, so its metadata can't be read without decrypting it",
                          hint="`sifbox exec --passphrase IMAGE cat /.singularity.d/labels.json` reads it "
                          "with the key")  # fmt: skip
    files, dirs = read_glob(src, list(inspectmeta.PATTERNS), [inspectmeta.APP_PATTERN])
    return inspectmeta.collect(files, inspectmeta.apps_of(dirs), deffile, warnings)


def _sif_objects(src: ImageSource, warnings: list[str]) -> tuple[Metadata | None, str | None]:
    """A SIF's inspect-metadata.json (parsed) and definition, when it has them."""
    import json
    import os

    from sifbox.formats import inspectmeta
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage
    from sifbox.image.source import ImageKind

    if src.kind is not ImageKind.SIF or src.fd is None:
        return None, None
    meta = deffile = None
    with os.fdopen(os.dup(src.fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
            for d in img.objects():
                if d.data_type == c.DataType.DEFFILE and deffile is None:
                    deffile = img.read(d, limit=MAX_OBJECT).decode("utf-8", "replace")
                elif d.data_type == c.DataType.GENERIC_JSON and d.name == "inspect-metadata.json" and meta is None:
                    raw = img.read(d, limit=MAX_OBJECT)
                    try:
                        meta = inspectmeta.parse(json.loads(raw))
                    except (ValueError, RecursionError):
                        meta = None
                    if meta is None:
                        warnings.append("Unable to read the inspect-metadata.json object of the image: not "
                                        "Apptainer's metadata; reading the image's files instead")  # fmt: skip
        except SifError:
            return None, None
    return meta, deffile


def main(args: argparse.Namespace) -> int:
    from sifbox.formats import inspectmeta
    from sifbox.image.source import open_image
    from sifbox.util import log

    req = request(args)
    warnings: list[str] = []
    src = open_image(args.image, verb="inspect")
    try:
        meta = inspectmeta.select(gather(src, warnings), req)
    finally:
        src.close()
    for w in warnings:
        log.log.warning("%s", w)
    if args.json or args.all:
        sys.stdout.write(inspectmeta.render_json(meta) + "\n")
    else:
        sys.stdout.write(inspectmeta.render_text(meta, req))
    return 0
