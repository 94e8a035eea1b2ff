"""Fuzz target: definition files (`sifbox.formats.deffile`), build arguments included.

    python fuzz/fuzz_deffile.py -max_total_time=60

One input is a definition file, optionally followed by `fuzzlib.SEP` and a build-arg file
(`--build-arg-file`) and by another `fuzzlib.SEP` and `--build-arg NAME=VALUE` items, one a
line. The text is decoded as the builder reads it (UTF-8, surrogateescape), parsed with the
build arguments, then everything the builder derives without a file system is computed: each
script's argv, the /.singularity.d files and labels of the final stage, each app's files.
A `DeffileError` is a clean rejection; any other exception is a crash.
"""

from __future__ import annotations

import fuzzlib

with fuzzlib.instrumented(__name__, ("shlex",)):
    from sifbox.formats import deffile, imagemeta
    from sifbox.formats.deffile import DeffileError


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
            imagemeta.app_files(app)
            imagemeta.app_dirs(app.name)
    final = definition.final
    labels = imagemeta.default_labels(final, arch="amd64", epoch=0, version="fuzz")
    labels.update(final.labels)
    files = imagemeta.stage_files(final, definition.text, labels)
    imagemeta.inspect_metadata(labels, files, definition.text)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    parts = data.split(fuzzlib.SEP, 2)
    text = parts[0].decode("utf-8", "surrogateescape")
    try:
        build_args: dict[str, str] = {}
        if len(parts) > 1:
            build_args.update(
                deffile.parse_build_arg_file(parts[1].decode("utf-8", "replace"), "args")
            )
        if len(parts) > 2:
            build_args.update(
                deffile.parse_build_args(parts[2].decode("utf-8", "replace").split("\n"))
            )
        definition = deffile.parse_deffile(text, "fuzz.def", build_args)
    except DeffileError:
        return
    _use(definition)


if __name__ == "__main__":
    fuzzlib.main(__file__, TestOneInput, dictionary="deffile")
