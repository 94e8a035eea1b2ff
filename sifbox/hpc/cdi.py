"""Container Device Interface (CDI): `--device VENDOR/CLASS=NAME` and `--cdi-dirs`.

A CDI spec (JSON or YAML, in `/etc/cdi` and `/var/run/cdi` unless
`--cdi-dirs` names other directories) has a `kind` (`vendor.com/class`),
`devices` (each with a `name` and `containerEdits`) and spec-wide
`containerEdits` applied whenever one of its devices is used. The edits
sifbox applies:

* `env`          `KEY=VALUE` strings, set in the container (over the image's),
* `deviceNodes`  `path` in the container, from `hostPath` (default: `path`),
* `mounts`       `hostPath` bound at `containerPath` (`ro` in `options`: read-only),
* `hooks`        recorded; sifbox's runtime runs no OCI hooks, so each is
                 reported with a warning (`createContainer` hooks such as
                 `nvidia-ctk hook update-ldcache` are not needed with
                 `/.singularity.d/libs` on LD_LIBRARY_PATH).

Parsing and planning are pure; `load_specs` reads the directories.
"""

from __future__ import annotations

import json
import os
import re
from collections import namedtuple

from sifbox.runtime.sandbox.ops import Mount
from sifbox.util.errors import SifboxError, UsageError

DEFAULT_DIRS = ("/etc/cdi", "/var/run/cdi")  # later directories take precedence
_VENDOR = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_CLASS = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"
_DEVICE = re.compile(rf"({_VENDOR}/{_CLASS})=({_NAME})\Z")
_KIND = re.compile(rf"{_VENDOR}/{_CLASS}\Z")

#: What applying devices adds to a container.
Edits = namedtuple("Edits", "mounts env hooks")
#: One spec: where it came from, its kind, {device name: edits dict}, spec-wide edits dict.
Spec = namedtuple("Spec", "path kind devices edits")


class CdiError(SifboxError):
    reference = "cdi-error"


def parse_device_name(text: str) -> tuple[str, str]:
    """`vendor.com/class=name` -> (kind, name)."""
    m = _DEVICE.match(text)
    if m is None:
        raise UsageError(f"can't use --device `{text}`: not a CDI device name",
                         hint="CDI device names look like vendor.com/class=name")  # fmt: skip
    return m.group(1), m.group(2)


def parse_spec(text: str, path: str) -> Spec:
    """A CDI spec file's text (JSON, or YAML for `.yaml`/`.yml`)."""
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parser's error is the file's fault
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CdiError(f"can't read CDI spec `{path}`: {reason}") from None
    if not isinstance(data, dict):
        raise CdiError(f"can't read CDI spec `{path}`: the top level is not a mapping")
    if "cdiVersion" not in data:
        raise CdiError(f"can't read CDI spec `{path}`: `cdiVersion` is missing")
    kind = data.get("kind")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise CdiError(f"can't read CDI spec `{path}`: `kind` must look like vendor.com/class")
    devices = {}
    for i, dev in enumerate(data.get("devices") or []):
        name = dev.get("name") if isinstance(dev, dict) else None
        if not isinstance(name, str) or not re.match(_NAME + r"\Z", name):
            raise CdiError(f"can't read CDI spec `{path}`: device {i} has no valid `name`")
        devices[name] = _edits_dict(dev.get("containerEdits"), path, f"device `{name}`")
    return Spec(path, kind, devices, _edits_dict(data.get("containerEdits"), path, "containerEdits"))


def _edits_dict(edits, path: str, where: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    if edits is None:
        return {}
    if not isinstance(edits, dict):
        raise CdiError(f"can't read CDI spec `{path}`: {where}: `containerEdits` is not a mapping")
    for key in ("env", "deviceNodes", "mounts", "hooks"):
        value = edits.get(key)
        if value is not None and not isinstance(value, list):
            raise CdiError(f"can't read CDI spec `{path}`: {where}: `{key}` is not a list")
    return edits


def load_specs(dirs) -> list[Spec]:  # type: ignore[no-untyped-def]
    """Every `*.json`/`*.yaml`/`*.yml` spec in `dirs` (missing directories are skipped)."""
    specs = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except OSError as err:
            raise CdiError(f"can't read CDI spec directory `{d}`: {err.strerror}") from None
        for name in names:
            if not name.endswith((".json", ".yaml", ".yml")):
                continue
            path = os.path.join(d, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read(1 << 22)
            except OSError as err:
                raise CdiError(f"can't read CDI spec `{path}`: {err.strerror}") from None
            specs.append(parse_spec(text, path))
    return specs


def resolve(names, specs: list[Spec], dirs) -> Edits:  # type: ignore[no-untyped-def]
    """The edits of the devices `names`; later specs override earlier ones
    for the same device (as /var/run/cdi overrides /etc/cdi)."""
    env: dict[str, str] = {}
    mounts: list[Mount] = []
    hooks: list[dict] = []  # type: ignore[type-arg]
    spec_wide_done: set[str] = set()
    for text in names:
        kind, name = parse_device_name(text)
        spec = next((s for s in reversed(specs) if s.kind == kind and name in s.devices), None)
        if spec is None:
            known = sorted(f"{s.kind}={n}" for s in specs for n in s.devices)
            raise CdiError(
                f"can't use device `{text}`: no CDI spec in {', '.join(dirs)} defines it",
                hint=("known devices: " + ", ".join(known)) if known else "install the vendor's CDI spec, or fix --cdi-dirs",
            )
        for edits in ([] if spec.path in spec_wide_done else [spec.edits]) + [spec.devices[name]]:
            _apply(edits, spec.path, env, mounts, hooks)
        spec_wide_done.add(spec.path)
    return Edits(mounts, env, hooks)


def _apply(edits: dict, path: str, env: dict, mounts: list, hooks: list) -> None:  # type: ignore[type-arg]
    for item in edits.get("env") or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise CdiError(f"can't read CDI spec `{path}`: env entry `{item}` is not KEY=VALUE")
        env[key] = value
    for node in edits.get("deviceNodes") or []:
        target = node.get("path") if isinstance(node, dict) else None
        if not isinstance(target, str) or not target.startswith("/"):
            raise CdiError(f"can't read CDI spec `{path}`: a device node has no absolute `path`")
        source = node.get("hostPath") or target
        mounts.append(("device", source, target, False))
    for m in edits.get("mounts") or []:
        if not isinstance(m, dict) or not m.get("hostPath") or not str(m.get("containerPath", "")).startswith("/"):
            raise CdiError(f"can't read CDI spec `{path}`: a mount needs `hostPath` and an absolute `containerPath`")
        options = [str(o) for o in m.get("options") or []]
        mounts.append(("mount", m["hostPath"], m["containerPath"], "ro" in options))
    for h in edits.get("hooks") or []:
        if not isinstance(h, dict) or not h.get("path"):
            raise CdiError(f"can't read CDI spec `{path}`: a hook has no `path`")
        hooks.append(h)


def plan_mounts(edits: Edits, *, dev_is_host: bool, exists=os.path.exists, isdir=os.path.isdir) -> list[Mount]:  # type: ignore[no-untyped-def]
    """Mounts for the mount plan. With the host's /dev in the container, a
    device node at its host path is there already; one at another path
    under /dev needs a minimal /dev (`--contain`)."""
    out = []
    for what, source, target, readonly in edits.mounts:
        if not exists(source):
            noun = "device node" if what == "device" else "mount source"
            raise CdiError(f"can't use CDI {noun} `{source}`: it does not exist on this host")
        target = os.path.normpath(target)
        if what == "device" and (target == "/dev" or target.startswith("/dev/")) and dev_is_host:
            if os.path.normpath(source) == target:
                continue
            raise CdiError(
                f"can't add CDI device node `{target}`: the container shares the host's /dev",
                hint="use --contain (or `mount dev = minimal`) so that sifbox builds /dev",
            )
        out.append(Mount("rbind" if isdir(source) else "bind", source, target,
                         readonly=readonly, file=not isdir(source)))  # fmt: skip
    return out
