"""`sifbox inspect IMAGE`: show an image's metadata, as Apptainer does.

Labels by default; --deffile, --runscript, --startscript, --test,
--environment, --helpfile, --list-apps; --json for Apptainer's JSON shape;
--all for everything (JSON). Read from the image without mounting it.
"""

from __future__ import annotations

import argparse
import json
import sys

SD = "/.singularity.d"


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


def _text(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", "replace").rstrip("\n")


def gather(src, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    from sifbox.image.files import list_dir, read_file

    everything = args.all
    app = None if everything else args.app
    base = f"/scif/apps/{app}/scif" if app else SD
    default_labels = not (args.helpfile or args.deffile or args.runscript or args.startscript
                          or args.test or args.environment or args.list_apps)  # fmt: skip
    attrs: dict = {}
    apps = [a for a in list_dir(src, "/scif/apps") if read_file(src, f"/scif/apps/{a}/scif/runscript") is not None
            or list_dir(src, f"/scif/apps/{a}/scif")]  # fmt: skip
    target: dict = attrs
    if app:
        target = {}
    if args.labels or default_labels or everything:
        raw = _text(read_file(src, f"{base}/labels.json"))
        if raw:
            try:
                labels = json.loads(raw)
                target["labels"] = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
            except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
                from sifbox.util import log

                log.log.warning("Unable to parse labels of %s", args.image)
    if args.deffile or everything:
        deffile = _sif_deffile(src) or _text(read_file(src, f"{SD}/Singularity"))
        if deffile:
            attrs["deffile"] = deffile.rstrip("\n")
    for flag, name, key in (("helpfile", "runscript.help", "helpfile"), ("runscript", "runscript", "runscript"),
                            ("test", "test", "test")):  # fmt: skip
        if getattr(args, flag) or everything:
            value = _text(read_file(src, f"{base}/{name}"))
            if value:
                target[key] = value
    if (args.startscript or everything) and not app:
        value = _text(read_file(src, f"{SD}/startscript"))
        if value:
            attrs["startscript"] = value
    if args.environment or everything:
        env: dict[str, str] = {}
        envdir = f"{base}/env"
        for name in list_dir(src, envdir):
            if (name.startswith("10-docker") or (name.startswith("9") and name.endswith("-environment.sh"))) and name.endswith(".sh"):
                value = _text(read_file(src, f"{envdir}/{name}"))
                env[f"{envdir}/{name}"] = value
        if env:
            target["environment"] = env
    if args.list_apps or everything:
        attrs["apps"] = {a: {} for a in apps}
    if app:
        attrs.setdefault("apps", {})[app] = target
    return {"data": {"attributes": attrs}, "type": "container"}


def _sif_deffile(src) -> str:  # type: ignore[no-untyped-def]
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage
    from sifbox.image.source import ImageKind

    if src.kind is not ImageKind.SIF:
        return ""
    import os

    with os.fdopen(os.dup(src.fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
            for d in img.objects():
                if d.data_type == c.DataType.DEFFILE:
                    return img.read(d, limit=16 << 20).decode("utf-8", "replace")
        except SifError:
            return ""
    return ""


def go_json(obj: object) -> str:
    """JSON as Go's json.MarshalIndent(v, "", "\\t") writes it."""
    text = json.dumps(obj, indent="\t", sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_text(meta: dict, app: str | None, list_apps: bool) -> str:
    attrs = meta["data"]["attributes"]
    app_attrs = attrs.get("apps", {}).get(app) if app else None
    out = []
    if list_apps:
        out += [f"{a}\n" for a in sorted(attrs.get("apps", {}))]

    def pick(key: str) -> str:
        return attrs.get(key) or (app_attrs or {}).get(key) or ""

    for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
        value = attrs.get(key) if key in ("deffile", "startscript") else pick(key)
        if value:
            out.append(f"{value}\n")
    env = attrs.get("environment") or (app_attrs or {}).get("environment") or {}
    out += [f"=== {k} ===\n{env[k]}\n\n" for k in sorted(env)]
    labels = attrs.get("labels") or (app_attrs or {}).get("labels") or {}
    out += [f"{k}: {labels[k]}\n" for k in sorted(labels)]
    return "".join(out)


def main(args: argparse.Namespace) -> int:
    from sifbox.image.source import open_image

    src = open_image(args.image, verb="inspect")
    try:
        meta = gather(src, args)
    finally:
        src.close()
    if args.json or args.all:
        sys.stdout.write(go_json(meta) + "\n")
    else:
        sys.stdout.write(render_text(meta, args.app, args.list_apps))
    return 0
