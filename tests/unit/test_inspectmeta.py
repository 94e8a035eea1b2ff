"""`inspect`'s metadata (sifbox.formats.inspectmeta): Apptainer's e2e expectations on the
tree the writer makes for its inspector definition; JSON shape and key order; the plain
output; hostile `inspect-metadata.json` objects."""

from __future__ import annotations

import json

import pytest

from sifbox.formats import inspectmeta as im
from sifbox.formats import singularityd as sd
from sifbox.formats.deffile import parse_deffile
from tests.inspect_e2e import INSPECTOR_DEF, cases, value_at

DEF = INSPECTOR_DEF.format(busybox="/bin/busybox")
POST_LABELS = "first.build.labels  first\nsecond.build.labels second\n"


@pytest.fixture(scope="module")
def full() -> im.Metadata:
    """`inspect --all` of the image a build of the inspector definition makes."""
    base = sd.base_tree()
    existing = sd.Existing({e.path: e.data for e in base if e.path in sd.EXISTING}, POST_LABELS)
    meta = sd.ImageMeta.from_stage(parse_deffile(DEF).final, DEF)
    rest, warnings = sd.finish(meta, existing, sd.BuildInfo("amd64", 0, "1.0"))
    assert warnings == []
    files = sd.files_of(sd.merge(base, rest))
    files[sd.ENVIRONMENT_SCRIPT] = b'export hello="world"\n'  # what %post appended
    dirs = [e.path for e in rest if e.kind is sd.Kind.DIR]
    wanted = {p: d for p, d in files.items() if any(_match(p, pat) for pat in im.PATTERNS)}
    return im.collect(wanted, im.apps_of(dirs))


def _match(path: str, pattern: str) -> bool:
    import fnmatch

    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(map(fnmatch.fnmatchcase, a, b))


def request(option: str, app: str | None) -> im.Request:
    return im.Request(**{option.removeprefix("--").replace("-", "_"): True}, app=app)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "option", "app", "where", "want"), cases("/bin/busybox"),
                         ids=[c[0] for c in cases("/bin/busybox")])  # fmt: skip
def test_apptainer_e2e_case(full: im.Metadata, name: str, option: str, app: str | None,
                            where: tuple[str, ...], want: object) -> None:  # fmt: skip
    shown = json.loads(im.render_json(im.select(full, request(option, app))))
    assert value_at(shown, app, where) == want
    assert shown["type"] == "container"
    if app is None and option != "--list-apps":
        assert "apps" not in shown["data"]["attributes"]  # only the app asked for, or none
    everything = json.loads(im.render_json(im.select(full, im.Request(all=True, app="ignored"))))
    assert value_at(everything, app, where) == want


def test_json_shape_and_order_as_go_writes_it(full: im.Metadata) -> None:
    text = im.render_json(im.select(full, im.Request(all=True)))
    keys = [line.strip().split('"')[1] for line in text.splitlines() if line.startswith('\t\t\t"')]
    assert keys == ["apps", "environment", "labels", "runscript", "test", "helpfile", "deffile", "startscript"]
    app_keys = [line.strip().split('"')[1] for line in text.splitlines() if line.startswith('\t\t\t\t\t"')]
    assert app_keys[:6] == ["environment", "labels", "runscript", "test", "helpfile", "startscript"]
    assert text.startswith('{\n\t"data": {\n\t\t"attributes": {\n') and text.endswith('\n\t},\n\t"type": "container"\n}')
    assert "\\u003cwestley@sylabs.io\\u003e" in text
    # `world` has no environment, test, help or startscript: the keys are left out
    assert json.loads(text)["data"]["attributes"]["apps"]["world"] == {
        "labels": {"SCIF_APP_NAME": "world"}, "runscript": '#!/bin/sh\n\necho "world"'}  # fmt: skip
    compact = im.render_json(im.select(full, im.Request(all=True)), indent=False)
    assert "\n\t" not in compact and json.loads(compact) == json.loads(text)


def test_nothing_to_show_is_an_empty_attributes_object(full: im.Metadata) -> None:
    empty = '{\n\t"data": {\n\t\t"attributes": {}\n\t},\n\t"type": "container"\n}'
    assert im.render_json(im.select(full, im.Request(labels=True, app="nosuch"))) == empty
    shown = json.loads(im.render_json(im.select(full, im.Request(startscript=True, app="world"))))
    assert shown["data"]["attributes"] == {"apps": {"world": {}}}


def test_plain_output(full: im.Metadata) -> None:
    labels = im.render_text(im.select(full, im.Request()), im.Request())
    assert labels.startswith('E2E: AWESOME\nHI: "HELLO WORLD"\nMAINTAINER: "WestleyK <westley@sylabs.io>"\n')
    req = im.Request(runscript=True, test=True)
    assert im.render_text(im.select(full, req), req) == (
        "#!/bin/sh\n\ncat /.singularity.d/runscript.help\n#!/bin/sh\n\nls /\ntest -d /\ntest -d /etc\n"
    )
    req = im.Request(list_apps=True)
    assert im.render_text(im.select(full, req), req) == "hello\nworld\n"
    req = im.Request(environment=True, app="hello")
    assert im.render_text(im.select(full, req), req) == (
        "=== /scif/apps/hello/scif/env/90-environment.sh ===\nHELLOTHISIS=hello\nexport HELLOTHISIS\n\n"
    )
    req = im.Request(app="hello")
    assert im.render_text(im.select(full, req), req) == "HELLOTHISIS: hello\nSCIF_APP_NAME: hello\n"
    req = im.Request(startscript=True, app="hello")
    assert im.render_text(im.select(full, req), req) == '#!/bin/sh\n\nexec "$@"\n'
    req = im.Request(deffile=True, app="hello")
    assert im.render_text(im.select(full, req), req) == DEF.rstrip("\n") + "\n"


def test_a_sif_definition_object_wins_over_the_file() -> None:
    meta = im.collect({f"{sd.SD}/Singularity": b"from the file\n"}, [], "from the SIF\n\n")
    assert meta["data"]["attributes"]["deffile"] == "from the SIF"


@pytest.mark.parametrize(
    "doc",
    [None, [], "x", {"data": []}, {"data": {"attributes": "x"}}, {"data": {"attributes": None}}],
)
def test_hostile_stored_metadata_is_refused(doc: object) -> None:
    assert im.parse(doc) is None


def test_stored_metadata_is_normalised() -> None:
    doc = {"data": {"attributes": {"labels": {"a": 1, "b": None}, "runscript": 5, "environment": ["x"],
                                   "apps": {"x": {"labels": "bad", "test": "t"}, "y": "bad"}, "extra": 1}}}  # fmt: skip
    got = im.parse(doc)
    assert got is not None
    attrs = got["data"]["attributes"]
    assert attrs["labels"] == {"a": "1", "b": "None"} and attrs["runscript"] == "" and attrs["environment"] == {}
    assert attrs["apps"] == {"x": {"environment": {}, "labels": {}, "runscript": "", "test": "t", "helpfile": "",
                                   "startscript": ""}}  # fmt: skip
    assert json.loads(im.render_json(got)) == {"data": {"attributes": {"apps": {"x": {"test": "t"}},
                                               "labels": {"a": "1", "b": "None"}}}, "type": "container"}  # fmt: skip


def test_bad_labels_are_warned_about() -> None:
    warnings: list[str] = []
    meta = im.collect({f"{sd.SD}/labels.json": b"{oops"}, [], None, warnings)
    assert meta["data"]["attributes"]["labels"] == {}
    assert warnings and warnings[0].startswith("Unable to parse labels of the image")


def test_apps_are_the_directories_with_a_scif_directory() -> None:
    assert im.apps_of(["/scif/apps/b/scif", "/scif/apps/a/scif", "/scif/apps/c", "/scif/apps/a/scif/env"]) == ["a", "b"]
