"""Fuzz target: an image's metadata as `inspect` reads it, and as a build reads its base image
(`sifbox.formats.inspectmeta`, `sifbox.formats.metajson`,
`sifbox.formats.singularityd.finish`).

    python fuzz/fuzz_inspect.py -max_total_time=60

One input is up to eleven parts separated by `fuzzlib.SEP`: a SIF's `inspect-metadata.json`
object; the files of an image at the paths of FILES (labels.json, the definition, scripts,
environment, an app's files; an empty part is a missing file); a SIF's definition object; the
`NAME VALUE` lines %post appended to $SIFBOX_LABELS. The object goes through
`inspectmeta.parse` as `inspect` reads it (JSON that does not parse, or is not Apptainer's
shape, falls back to the files); the files through `inspectmeta.collect`, and both through
`select` and the text and JSON renderers for several option sets. Then a build over this image
as its base runs `singularityd.finish` with the files it reads of it (`Existing`), and
`inspect` reads the result back. Nothing here may raise: a damaged file is a warning.
"""

from __future__ import annotations

import json

import fuzzlib

with fuzzlib.instrumented(__name__):
    from sifbox.formats import inspectmeta
    from sifbox.formats import singularityd as sd

APP = "app"
FILES = (
    sd.LABELS_JSON,
    sd.DEFFILE,
    sd.RUNSCRIPT,
    sd.ENV_90,
    sd.ENV_DOCKER,
    f"/scif/apps/{APP}/scif/labels.json",
    f"/scif/apps/{APP}/scif/runscript",
    sd.HELP,
)
REQUESTS = (
    inspectmeta.Request(),
    inspectmeta.Request(all=True),
    inspectmeta.Request(labels=True, deffile=True, runscript=True, startscript=True, test=True),
    inspectmeta.Request(environment=True, helpfile=True, list_apps=True),
    inspectmeta.Request(runscript=True, environment=True, labels=True, app=APP),
    inspectmeta.Request(list_apps=True, app="missing"),
)
META = sd.ImageMeta(header={"bootstrap": "localimage", "from": "base.sif"},
                    deffile="Bootstrap: localimage\nFrom: base.sif\n", runscript=sd.Section("exec app"),
                    help="help", environment="export A=1", labels={"a": "b"},
                    apps=(sd.App(APP, run="run", env="export B=2"),))  # fmt: skip


def _show(meta: inspectmeta.Metadata) -> None:
    for req in REQUESTS:
        shown = inspectmeta.select(meta, req)
        inspectmeta.render_text(shown, req).encode()  # what a UTF-8 stdout can print
        inspectmeta.render_json(shown).encode()
    inspectmeta.render_json(meta, indent=False).encode()


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    parts = data.split(fuzzlib.SEP, len(FILES) + 2)
    parts += [b""] * (len(FILES) + 3 - len(parts))
    # The SIF's object, as `inspect` reads it.
    try:
        stored = inspectmeta.parse(json.loads(parts[0]))
    except (ValueError, RecursionError):
        stored = None
    if stored is not None:
        _show(stored)
    # The image's files.
    files = {path: part for path, part in zip(FILES, parts[1:]) if part}
    deffile = parts[-2].decode("utf-8", "replace") if parts[-2] else None  # the SIF's object
    warnings: list[str] = []
    _show(inspectmeta.collect(files, [APP], deffile, warnings))
    # A build over this image.
    post_labels = parts[-1].decode("utf-8", "surrogateescape")  # as the build reads the file
    existing = sd.Existing({p: d for p, d in files.items() if p in sd.EXISTING}, post_labels, 1)
    for force in (False, True):
        entries, _ = sd.finish(META, existing, sd.BuildInfo("amd64", 0, "fuzz"), force=force)
        built = sd.files_of(sd.merge(sd.base_tree(), entries))
        _show(inspectmeta.collect(built, [APP], None, []))


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="json")
