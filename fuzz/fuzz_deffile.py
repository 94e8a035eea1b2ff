"""Fuzz target: definition files (`sifbox.formats.deffile`), build arguments included, and the
`/.singularity.d` tree a build derives from them (`sifbox.formats.singularityd`).

    python fuzz/fuzz_deffile.py -max_total_time=60

One input is a definition file, optionally followed by `fuzzlib.SEP` and a build-arg file
(`--build-arg-file`, UTF-8 or refused) and by another `fuzzlib.SEP` and `--build-arg
NAME=VALUE` items, one a line (any bytes, as the command line gives them). The text is decoded
as the builder reads it (UTF-8, surrogateescape), parsed with the build arguments, then
everything the builder derives without a file system is computed: each script's argv, each
app's skeleton, and the files `singularityd.finish` writes for the final stage (help, labels,
definition, environment, scripts, SCIF apps) over a new root's `base_tree`, for every section
and for `--section none`; the result is then read back as `inspect` reads a built image
(`inspectmeta.collect`, rendered as text and JSON). Every generated path must be absolute and
normal (no `..`, nothing outside the image). A `DeffileError` is a clean rejection; any other
exception is a crash.
"""

from __future__ import annotations

import posixpath

import fuzzlib

with fuzzlib.instrumented(__name__, ("shlex",)):
    from sifbox.formats import deffile, inspectmeta
    from sifbox.formats import singularityd as sd
    from sifbox.formats.deffile import DeffileError

BUILD = sd.BuildInfo("amd64", 0, "fuzz")
#: What a new root holds of the files `finish` reads (a scratch or busybox base).
BASE = sd.files_of(e for e in sd.base_tree() if e.path in sd.EXISTING)
ALL, NONE = frozenset({"all"}), frozenset({"none"})


def _check(entries: list[sd.Entry]) -> None:
    for e in entries:
        if not e.path.startswith("/") or posixpath.normpath(e.path) != e.path:
            raise AssertionError(f"generated path {e.path!r} is not a normal absolute path")


def _use(definition: deffile.Definition) -> None:
    for stage in definition.stages:
        for name in ("setup", "post", "runscript", "startscript", "test"):
            script = getattr(stage, name)
            if script is not None:
                script.argv()
        for app in stage.apps.values():
            for script in (app.install, app.run, app.start, app.test):
                if script is not None:
                    script.argv()
            _check(sd.skeleton(app.name))
    final = definition.final
    for sections in (ALL, NONE):
        meta = sd.ImageMeta.from_stage(final, definition.text, sections)
        entries, _warnings = sd.finish(meta, sd.Existing(BASE), BUILD)
        _check(entries)
        tree = sd.merge(sd.base_tree(), entries)
        for e in tree:
            if e.kind is sd.Kind.FILE and not isinstance(e.data, bytes):
                raise AssertionError(f"{e.path}: data is not bytes")
        # What `inspect` shows of the built image (it reads the files the patterns match).
        warnings: list[str] = []
        full = inspectmeta.collect(sd.files_of(tree), list(final.apps), None, warnings)
        inspectmeta.render_json(full)
        inspectmeta.render_json(full, indent=False)
        for req in (inspectmeta.Request(), inspectmeta.Request(all=True)):
            inspectmeta.render_text(inspectmeta.select(full, req), req)
        for name in final.apps:
            req = inspectmeta.Request(runscript=True, environment=True, app=name)
            inspectmeta.render_text(inspectmeta.select(full, req), req)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    parts = data.split(fuzzlib.SEP, 2)
    text = parts[0].decode("utf-8", "surrogateescape")
    try:
        build_args: dict[str, str] = {}
        if len(parts) > 1:  # the build reads the file as UTF-8 (else a usage error)
            build_args.update(deffile.parse_build_arg_file(parts[1].decode("utf-8"), "args"))
        if len(parts) > 2:  # the command line: any bytes, as os.fsdecode gives them
            items = parts[2].decode("utf-8", "surrogateescape").split("\n")
            build_args.update(deffile.parse_build_args(items))
        definition = deffile.parse_deffile(text, "fuzz.def", build_args)
    except (DeffileError, UnicodeDecodeError):
        return
    _use(definition)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="deffile")
