"""Apptainer's e2e/inspect/inspect.go: `inspect --json` of the image built from
e2e/testdata/inspector_container.def, as SIF, bare SquashFS and sandbox.

Each check reads Apptainer's JSON document (pkg/inspect/metadata.go):
{"data": {"attributes": {"labels", "apps": {NAME: {...}}, "runscript", ...}}, "type": "container"}.
The image is bootstrapped from busybox here, not from oras:// alpine, so the two labels that
record the definition file's header say `busybox` and name its MirrorURL.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.e2e.apptainer.cases import mark_xfail

pytestmark = pytest.mark.integration

Meta = dict[str, object]


def attrs(meta: Meta, app: str = "") -> dict[str, object]:
    """meta.Attributes, or meta.Attributes.Apps[app] (empty when missing, as Go's zero values)."""
    a = meta.get("data", {}).get("attributes", {}) if isinstance(meta, dict) else {}  # type: ignore[union-attr]
    if app:
        a = (a.get("apps") or {}).get(app) or {}
    return a if isinstance(a, dict) else {}


def label(name: str, want: str, app: str = "") -> Callable[[Meta], str | None]:
    def check(meta: Meta) -> str | None:
        got = (attrs(meta, app).get("labels") or {}).get(name, "")
        return None if got == want else f"label {name}: got {got!r} instead of {want!r}"

    return check


def field(key: str, want: str, app: str = "") -> Callable[[Meta], str | None]:
    def check(meta: Meta) -> str | None:
        got = attrs(meta, app).get(key, "")
        return (
            None
            if got == want
            else f"{app + ' ' if app else ''}{key}: got {got!r} instead of {want!r}"
        )

    return check


def env_file(path: str, want: str, app: str = "") -> Callable[[Meta], str | None]:
    def check(meta: Meta) -> str | None:
        got = (attrs(meta, app).get("environment") or {}).get(path, "")
        return None if got == want else f"environment {path}: got {got!r} instead of {want!r}"

    return check


def apps(want: list[str]) -> Callable[[Meta], str | None]:
    def check(meta: Meta) -> str | None:
        got = sorted(attrs(meta).get("apps") or {})
        return None if got == want else f"apps: got {got} instead of {want}"

    return check


def both(*checks: Callable[[Meta], str | None]) -> Callable[[Meta], str | None]:
    def check(meta: Meta) -> str | None:
        problems = [p for p in (c(meta) for c in checks) if p]
        return "; ".join(problems) or None

    return check


HELP = (
    "This is a e2e test container used for testing the 'inspect'\ncommand. This container "
    '"inspector_container.sif" should be placed\nin the "e2e/testdata" directory of Apptainer.'
)
ENV90 = '#!/bin/sh\n# Custom environment shell code should follow\n\n\nexport test="testing"\nexport e2e="e2e testing"'

# (name, inspect flag, --app, check, xfail theme)
TESTS = [
    ("label maintainer", "--labels", "", label("MAINTAINER", '"WestleyK <westley@sylabs.io>"'), None),
    ("label_E2E", "--labels", "", label("E2E", "AWESOME"), None),
    ("label_HI", "--labels", "", label("HI", '"HELLO WORLD"'), None),
    ("label_e2e", "--labels", "", label("e2e", "awesome"), None),
    ("label_hi", "--labels", "", label("hi", '"hello world"'), None),
    ("build_label_first", "--labels", "", label("first.build.labels", "first"), None),
    ("build_label_second", "--labels", "", label("second.build.labels", "second"), None),
    ("label_org.label-schema.usage", "--labels", "",
     label("org.label-schema.usage", "/.singularity.d/runscript.help"), None),
    ("label_org.label-schema.usage.singularity.deffile.bootstrap[busybox]", "--labels", "",
     label("org.label-schema.usage.singularity.deffile.bootstrap", "busybox"), None),
    ("label_org.label-schema.usage.singularity.deffile.from[mirrorurl]", "--labels", "",
     label("org.label-schema.usage.singularity.deffile.mirrorurl", "/bin/busybox"), None),
    ("label_org.label-schema.usage.apptainer.runscript.help", "--labels", "",
     label("org.label-schema.usage.apptainer.runscript.help", "/.singularity.d/runscript.help"), None),
    ("runscript", "--runscript", "", field("runscript", "#!/bin/sh\n\ncat /.singularity.d/runscript.help"), None),
    ("startscript", "--startscript", "", field("startscript", '#!/bin/sh\n\nexec "$@"'), None),
    ("list apps", "--list-apps", "", apps(["hello", "world"]), None),
    ("test", "--test", "", field("test", "#!/bin/sh\n\nls /\ntest -d /\ntest -d /etc"), None),
    ("helpfile", "--helpfile", "", field("helpfile", HELP), None),
    ("environment", "--environment", "", both(env_file("/.singularity.d/env/90-environment.sh", ENV90),
                                              env_file("/.singularity.d/env/91-environment.sh",
                                                       'export hello="world"')), None),
    ("label app hello", "--labels", "hello", label("HELLOTHISIS", "hello", "hello"), None),
    ("help app hello", "--helpfile", "hello", field("helpfile", "This is the help for hello!", "hello"), None),
    ("env app hello", "--environment", "hello",
     env_file("/scif/apps/hello/scif/env/90-environment.sh", "HELLOTHISIS=hello\nexport HELLOTHISIS", "hello"),
     None),
    ("runscript app hello", "--runscript", "hello", field("runscript", '#!/bin/sh\n\necho "hello"', "hello"), None),
    ("test app hello", "--test", "hello", field("test", '#!/bin/sh\n\necho "THIS IS A HELLO TEST"', "hello"),
     None),
    ("runscript app world", "--runscript", "world", field("runscript", '#!/bin/sh\n\necho "world"', "world"), None),
]  # fmt: skip
KINDS = {"SIF": "inspector_sif", "Squash": "inspector_sqfs", "Sandbox": "inspector_sandbox"}


#: One `inspect` per (user, image, flag, app): the checks that read the same output share it.
_OUTPUTS: dict[tuple[str, str, str, str], object] = {}


def parse(stdout: str) -> Meta:
    try:
        meta = json.loads(stdout)
    except ValueError as err:
        pytest.fail(f"unable to parse json output: {err}\n{stdout}")
    return meta if isinstance(meta, dict) else {}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    ("flag", "app", "check", "theme"),
    [pytest.param(*t[1:], id=f"inspect.go:apptainerInspect/{t[0]}") for t in TESTS],
)
def test_inspect(request, sb, e2e_images, kind, flag, app, check, theme) -> None:  # type: ignore[no-untyped-def]
    mark_xfail(request, theme, sb.kind)
    image = getattr(e2e_images, KINDS[kind])
    key = (sb.who.name, str(image), flag, app)
    if key not in _OUTPUTS:
        _OUTPUTS[key] = sb.run(
            ["inspect", "--json", flag, *(("--app", app) if app else ()), str(image)]
        )
    res = _OUTPUTS[key]
    assert res.status == 0, res
    problem = check(parse(res.stdout))
    assert problem is None, f"{problem}\n{res}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_inspect_all(request, sb, e2e_images, kind) -> None:  # type: ignore[no-untyped-def]
    """inspect.go:apptainerInspect/<kind>/all: `inspect --all` (JSON) passes every check above,
    those with a theme of their own aside."""
    res = sb.run(["inspect", "--all", str(getattr(e2e_images, KINDS[kind]))])
    assert res.status == 0, res
    meta = parse(res.stdout)
    problems = [p for t in TESTS if t[4] is None for p in [t[3](meta)] if p]
    assert not problems, "\n".join(problems) + f"\n{res}"
