"""What `inspect` shows of an image, in Apptainer's JSON shape (pure).

    {"data": {"attributes": {"apps": {NAME: {...}}, "environment": {PATH: TEXT},
     "labels": {...}, "runscript": ..., "test": ..., "helpfile": ..., "deffile": ...,
     "startscript": ...}}, "type": "container"}

Keys are written in the order of Apptainer's Go structures and left out when empty.
`collect` builds everything (`inspect --all`, and the `inspect-metadata.json` object of a
built SIF) from the image's metadata files; `select` keeps what the options ask for;
`render_json`/`render_text` print it as Apptainer does. Values lose their trailing
newlines. App attributes carry `startscript` too (Apptainer has no such key; its readers
ignore it), so that `inspect --startscript --app NAME` shows the app's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from sifbox.formats.metajson import go_json, parse_labels, valid_text

SD = "/.singularity.d"

CONTAINER = "container"
ATTRIBUTE_ORDER = ("apps", "environment", "labels", "runscript", "test", "helpfile", "deffile", "startscript")
APP_ORDER = ("environment", "labels", "runscript", "test", "helpfile", "startscript")
_FILES = {"runscript": "runscript", "test": "test", "helpfile": "runscript.help", "startscript": "startscript"}

#: Where the metadata lies (`*` matches one path component): what a reader extracts.
PATTERNS = (
    f"{SD}/labels.json", f"{SD}/runscript", f"{SD}/startscript", f"{SD}/test", f"{SD}/runscript.help",
    f"{SD}/Singularity", f"{SD}/env/10-docker*.sh", f"{SD}/env/9*-environment.sh",
    "/scif/apps/*/scif/labels.json", "/scif/apps/*/scif/runscript", "/scif/apps/*/scif/startscript",
    "/scif/apps/*/scif/test", "/scif/apps/*/scif/runscript.help", "/scif/apps/*/scif/env/9*-environment.sh",
)  # fmt: skip
#: Directories whose presence makes an app (`/scif/apps/NAME/scif`).
APP_PATTERN = "/scif/apps/*/scif"

Metadata = dict[str, Any]


def _text(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", "replace").rstrip("\n")


def _environment(files: Mapping[str, bytes], env_dir: str, docker: bool) -> dict[str, str]:
    out = {}
    for path in sorted(files):
        directory, _, name = path.rpartition("/")
        if directory != env_dir or not name.endswith(".sh"):
            continue
        if fnmatch.fnmatchcase(name, "9*-environment.sh") or (docker and name.startswith("10-docker")):
            out[path] = _text(files[path])
    return out


def _labels(data: bytes | None, warn: list[str], where: str) -> dict[str, str]:
    labels, problem = parse_labels(data)
    if problem:
        warn.append(f"Unable to parse labels of {where}: {problem}")
    return labels


def collect(files: Mapping[str, bytes], apps: Iterable[str], deffile: str | None = None,
            warnings: list[str] | None = None) -> Metadata:  # fmt: skip
    """All the metadata: `files` maps paths (those PATTERNS match) to contents, `apps`
    names the apps, `deffile` is the SIF's definition object if any (it wins over
    /.singularity.d/Singularity, as in Apptainer)."""
    warn = warnings if warnings is not None else []
    attrs: dict[str, Any] = {
        "labels": _labels(files.get(f"{SD}/labels.json"), warn, "the image"),
        "environment": _environment(files, f"{SD}/env", docker=True),
        "deffile": (deffile if deffile is not None else _text(files.get(f"{SD}/Singularity"))).rstrip("\n"),
    }
    for key, name in _FILES.items():
        attrs[key] = _text(files.get(f"{SD}/{name}"))
    attrs["apps"] = {}
    for app in sorted(set(apps)):
        base = f"/scif/apps/{app}/scif"
        one: dict[str, Any] = {
            "environment": _environment(files, f"{base}/env", docker=False),
            "labels": _labels(files.get(f"{base}/labels.json"), warn, f"app {app}"),
        }
        for key, name in _FILES.items():
            one[key] = _text(files.get(f"{base}/{name}"))
        attrs["apps"][app] = one
    return {"data": {"attributes": attrs}, "type": CONTAINER}


def apps_of(dirs: Iterable[str]) -> list[str]:
    """App names from the `/scif/apps/NAME/scif` directories found."""
    out = set()
    for d in dirs:
        parts = d.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["scif", "apps"] and parts[3] == "scif":
            out.add(parts[2])
    return sorted(out)


class Request:
    """The options of `inspect`."""

    __slots__ = ("all", "app", "deffile", "environment", "helpfile", "labels", "list_apps", "runscript",
                 "startscript", "test")  # fmt: skip

    def __init__(self, *, labels: bool = False, deffile: bool = False, runscript: bool = False,
                 startscript: bool = False, test: bool = False, environment: bool = False, helpfile: bool = False,
                 list_apps: bool = False, app: str | None = None, all: bool = False) -> None:  # noqa: A002  # fmt: skip
        self.labels, self.deffile, self.runscript, self.startscript = labels, deffile, runscript, startscript
        self.test, self.environment, self.helpfile, self.list_apps = test, environment, helpfile, list_apps
        self.app, self.all = app, all

    @property
    def default_labels(self) -> bool:
        """Labels are shown when no other section is asked for."""
        return not (self.helpfile or self.deffile or self.runscript or self.startscript or self.test
                    or self.environment or self.list_apps)  # fmt: skip


def parse(obj: object) -> Metadata | None:
    """A metadata document from JSON (an `inspect-metadata.json` object), normalised; None
    if it is not one."""
    if not isinstance(obj, dict):
        return None
    data = obj.get("data")
    attrs = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attrs, dict):
        return None

    def strings(value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            return {}
        return {valid_text(str(k)): valid_text(str(v)) for k, v in value.items()}

    def one(src: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in keys:
            value = src.get(key)
            out[key] = strings(value) if key in ("labels", "environment") else (
                valid_text(value) if isinstance(value, str) else "")  # fmt: skip
        return out

    out = one(attrs, [k for k in ATTRIBUTE_ORDER if k != "apps"])
    apps = attrs.get("apps")
    out["apps"] = {valid_text(str(k)): one(v, APP_ORDER) for k, v in apps.items() if isinstance(v, dict)} \
        if isinstance(apps, dict) else {}  # fmt: skip
    return {"data": {"attributes": out}, "type": CONTAINER}


def select(full: Metadata, req: Request) -> Metadata:
    """What `inspect` with the options `req` shows of `full` (see `collect`)."""
    attrs = full["data"]["attributes"]
    if req.all:
        return full
    out: dict[str, Any] = {}
    app_attrs = attrs["apps"].get(req.app) if req.app else None
    target: dict[str, Any] | None = {} if app_attrs is not None else (None if req.app else out)
    wanted = {"labels": req.labels or req.default_labels, "helpfile": req.helpfile, "runscript": req.runscript,
              "test": req.test, "environment": req.environment, "startscript": req.startscript}  # fmt: skip
    for key, on in wanted.items():
        if on and target is not None:
            target[key] = (app_attrs if app_attrs is not None else attrs).get(key)
    if req.deffile:
        out["deffile"] = attrs.get("deffile", "")
    if req.list_apps:
        out["apps"] = {name: {} for name in attrs["apps"]}
    if app_attrs is not None and target is not None:
        out.setdefault("apps", {})[req.app] = target
    return {"data": {"attributes": out}, "type": CONTAINER}


def _ordered(attrs: Mapping[str, Any], order: Iterable[str]) -> dict[str, Any]:
    """Keys in `order`, empty values left out (Go's omitempty)."""
    out: dict[str, Any] = {}
    for key in order:
        value = attrs.get(key)
        if not value:
            continue
        if key == "apps":
            value = {name: _ordered(a, APP_ORDER) for name, a in sorted(value.items())}
        elif isinstance(value, dict):
            value = dict(sorted(value.items()))
        out[key] = value
    return out


def to_json_obj(meta: Metadata) -> dict[str, Any]:
    return {"data": {"attributes": _ordered(meta["data"]["attributes"], ATTRIBUTE_ORDER)}, "type": CONTAINER}


def render_json(meta: Metadata, *, indent: bool = True) -> str:
    """As Apptainer prints `inspect --json` (Go's json.MarshalIndent with tabs: struct
    fields in their order, map keys sorted), without the final newline; `indent=False`:
    compact, as Apptainer stores it in a SIF (json.Marshal)."""

    def dump(value: Any, level: int) -> str:
        if isinstance(value, dict):
            if not value:
                return "{}"
            if not indent:
                return "{" + ",".join(f"{go_json(str(k))}:{dump(v, 0)}" for k, v in value.items()) + "}"
            inner = "\t" * (level + 1)
            items = [f"{inner}{go_json(str(k))}: {dump(v, level + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + "\t" * level + "}"
        return go_json(value)

    return dump(to_json_obj(meta), 0)


def render_text(meta: Metadata, req: Request) -> str:
    """The plain output of `inspect` (Apptainer's order: apps, deffile, runscript,
    startscript, test, helpfile, environment, labels)."""
    attrs = meta["data"]["attributes"]
    app = attrs.get("apps", {}).get(req.app) if req.app else None
    out = []
    if req.list_apps:
        out += [f"{name}\n" for name in sorted(attrs.get("apps", {}))]
    for key in ("deffile", "runscript", "startscript", "test", "helpfile"):
        value = attrs.get(key) or (None if key == "deffile" else (app or {}).get(key))
        if value:
            out.append(f"{value}\n")
    env = attrs.get("environment") or (app or {}).get("environment") or {}
    out += [f"=== {k} ===\n{env[k]}\n\n" for k in sorted(env)]
    labels = attrs.get("labels") or (app or {}).get("labels") or {}
    out += [f"{k}: {labels[k]}\n" for k in sorted(labels)]
    return "".join(out)
