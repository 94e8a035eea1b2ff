"""Apptainer's `inspect` acceptance cases (e2e/inspect/inspect.go, on its
e2e/testdata/inspector_container.def): their expected results, our code. The definition
bootstraps busybox from this host instead of pulling `oras://…alpine`, so the two labels
naming the base differ (`deffile.bootstrap` is `busybox`, `deffile.mirrorurl` replaces
`deffile.from`). Used by the unit tests (on the writer's output) and the integration tests
(on images `sifbox build` makes, read back by `sifbox inspect`).
"""

from __future__ import annotations

from typing import Any

INSPECTOR_DEF = r"""Bootstrap: busybox
MirrorURL: {busybox}

%help
This is a e2e test container used for testing the 'inspect'
command. This container "inspector_container.sif" should be placed
in the "e2e/testdata" directory of Apptainer.

%labels
MAINTAINER "WestleyK <westley@sylabs.io>"
e2e awesome
E2E AWESOME
hi "hello world"
HI "HELLO WORLD"

%post
echo "export hello=\"world\"" >> $APPTAINER_ENVIRONMENT
# add labels from post section
k=first; echo "$k.build.labels  $k" >> $APPTAINER_LABELS
k=second; echo "$k.build.labels $k" >> $APPTAINER_LABELS

%test
ls /
test -d /
test -d /etc

%environment
export test="testing"
export e2e="e2e testing"

%runscript
cat /.singularity.d/runscript.help

%startscript
exec "$@"

%apprun hello
echo "hello"

%appstart hello
exec "$@"

%apphelp hello
This is the help for hello!

%applabels hello
HELLOTHISIS hello

%appenv hello
HELLOTHISIS=hello
export HELLOTHISIS

%apptest hello
echo "THIS IS A HELLO TEST"

%apprun world
echo "world"
"""

HELP = ("This is a e2e test container used for testing the 'inspect'\ncommand. This container "
        '"inspector_container.sif" should be placed\nin the "e2e/testdata" directory of Apptainer.')  # fmt: skip


def cases(busybox: str) -> list[tuple[str, str, str | None, tuple[str, ...], Any]]:
    """(name, option, --app, where in data.attributes[.apps.APP], expected value)."""
    labels = [
        ("label maintainer", "MAINTAINER", '"WestleyK <westley@sylabs.io>"'),
        ("label_E2E", "E2E", "AWESOME"),
        ("label_HI", "HI", '"HELLO WORLD"'),
        ("label_e2e", "e2e", "awesome"),
        ("label_hi", "hi", '"hello world"'),
        ("build_label_first", "first.build.labels", "first"),
        ("build_label_second", "second.build.labels", "second"),
        ("label_org.label-schema.usage", "org.label-schema.usage", "/.singularity.d/runscript.help"),
        ("label_deffile.bootstrap", "org.label-schema.usage.singularity.deffile.bootstrap", "busybox"),
        ("label_deffile.mirrorurl", "org.label-schema.usage.singularity.deffile.mirrorurl", busybox),
        ("label_org.label-schema.usage.apptainer.runscript.help",
         "org.label-schema.usage.apptainer.runscript.help", "/.singularity.d/runscript.help"),
    ]  # fmt: skip
    out: list[tuple[str, str, str | None, tuple[str, ...], Any]] = [
        (name, "--labels", None, ("labels", key), value) for name, key, value in labels
    ]
    out += [
        ("runscript", "--runscript", None, ("runscript",), "#!/bin/sh\n\ncat /.singularity.d/runscript.help"),
        ("startscript", "--startscript", None, ("startscript",), '#!/bin/sh\n\nexec "$@"'),
        ("list apps", "--list-apps", None, ("apps",), ["hello", "world"]),
        ("test", "--test", None, ("test",), "#!/bin/sh\n\nls /\ntest -d /\ntest -d /etc"),
        ("helpfile", "--helpfile", None, ("helpfile",), HELP),
        ("environment", "--environment", None, ("environment", "/.singularity.d/env/90-environment.sh"),
         '#!/bin/sh\n# Custom environment shell code should follow\n\n\nexport test="testing"\n'
         'export e2e="e2e testing"'),
        ("environment 91", "--environment", None, ("environment", "/.singularity.d/env/91-environment.sh"),
         'export hello="world"'),
        ("label app hello", "--labels", "hello", ("labels", "HELLOTHISIS"), "hello"),
        ("help app hello", "--helpfile", "hello", ("helpfile",), "This is the help for hello!"),
        ("env app hello", "--environment", "hello", ("environment", "/scif/apps/hello/scif/env/90-environment.sh"),
         "HELLOTHISIS=hello\nexport HELLOTHISIS"),
        ("runscript app hello", "--runscript", "hello", ("runscript",), '#!/bin/sh\n\necho "hello"'),
        ("test app hello", "--test", "hello", ("test",), '#!/bin/sh\n\necho "THIS IS A HELLO TEST"'),
        ("runscript app world", "--runscript", "world", ("runscript",), '#!/bin/sh\n\necho "world"'),
        # not in Apptainer (it has no app startscript attribute): `--startscript --app`
        ("startscript app hello", "--startscript", "hello", ("startscript",), '#!/bin/sh\n\nexec "$@"'),
    ]  # fmt: skip
    return out


def value_at(meta: dict[str, Any], app: str | None, where: tuple[str, ...]) -> Any:
    """The value a case looks at in an `inspect --json` document (None if absent)."""
    node: Any = meta["data"]["attributes"]
    if app is not None:
        node = node.get("apps", {}).get(app, {})
    for key in where:
        node = node.get(key) if isinstance(node, dict) else None
    if where == ("apps",) and isinstance(node, dict):
        return sorted(node)
    return node
