"""`sifbox build --oci OUT.oci.sif app.def`: a definition-file build as an OCI-SIF.

The build runs as any other (every section, as root or fakeroot) into a bare SquashFS beside
the output; that SquashFS, `/.singularity.d` included, is the OCI-SIF's one layer. The image
config says what the definition says, for OCI tools and `inspect`:

* `Entrypoint` `["/.singularity.d/actions/run"]`: Apptainer's run action, which sources the
  image's environment scripts (`%environment`, a base image's ENV) and runs `%runscript`
  with the container's arguments, in sifbox and in other OCI runtimes alike (`push
  --layer-format tar`); sifbox keeps the layer's own `/.singularity.d` for such an image
  (startscript, test, apps, help), rather than generating one from the config;
* `Env`: PATH, then the `%environment` lines that are plain assignments (`[export]
  NAME=VALUE`, the value literal or quoted without expansions); the others take effect
  through the run action only;
* `Labels`: the image's labels.json (`%labels` and the build labels);
* `WorkingDir` `/`, `created` the build time (SOURCE_DATE_EPOCH for a reproducible image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from typing import Any, BinaryIO

from sifbox.util.errors import SifboxError, describe_os_error

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*?)\s*$")
_BARE = re.compile(r"^[A-Za-z0-9_./:,+=@%-]*$")
_MAX_META = 1 << 20


def env_of(environment: str) -> list[str]:
    """`NAME=VALUE` of the plain assignments of a `%environment` section, in order (the last
    of a name wins): `[export ]NAME=VALUE` where VALUE is 'single-quoted', "double-quoted"
    without `$`, backquote or backslash, or bare word characters. Others are left out."""
    found: dict[str, str] = {}
    for line in environment.splitlines():
        m = _ASSIGN.match(line)
        if m is None:
            continue
        name, raw = m.groups()
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        bad = "'" if raw[:1] == "'" else '"$`\\'
        if quoted and not any(c in raw[1:-1] for c in bad):
            value = raw[1:-1]
        elif _BARE.match(raw):
            value = raw
        else:
            continue
        found.pop(name, None)
        found[name] = value
    return [f"{k}={v}" for k, v in found.items()]


def image_config(*, arch: str, created: str, environment: str, labels: dict[str, str], layer_digest: str,
                 source: str) -> bytes:  # fmt: skip
    """The image config of a definition-file build (go-containerregistry's field order)."""
    from sifbox import __version__
    from sifbox.formats.sif import oci

    env = env_of(environment)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    inner: dict[str, Any] = {"Env": env, "Entrypoint": list(oci.DEFFILE_ENTRYPOINT), "WorkingDir": "/"}
    if labels:
        inner["Labels"] = dict(sorted(labels.items()))
    doc = {
        "architecture": arch,
        "created": created,
        "history": [{"created": created, "created_by": f"sifbox {__version__} build",
                     "comment": f"built from {os.path.basename(source)}"}],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": inner,
    }  # fmt: skip
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _cat(sqfs: str, path: str) -> bytes:
    """A file of the SquashFS `sqfs` (bounded), or b"" when it has none."""
    try:
        proc = subprocess.run(["unsquashfs", "-cat", sqfs, path], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return b""
    return proc.stdout[:_MAX_META] if proc.returncode == 0 else b""


def build_oci_sif(req: Any) -> None:
    """Build the definition `req.source` into the OCI-SIF `req.output` (a BuildRequest whose
    fmt is ignored), atomically."""
    from sifbox.build import pipeline
    from sifbox.build.assemble import machine_arch
    from sifbox.formats.sif import oci
    from sifbox.image.sif_file import write_atomically

    out = req.output
    directory = os.path.dirname(os.path.abspath(out))
    try:
        fd, sqfs = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".sqfs", dir=directory)
        os.close(fd)
        os.unlink(sqfs)  # the build makes it
    except OSError as err:
        raise SifboxError(f"can't build `{out}`: {describe_os_error(err)}") from None
    try:
        pipeline.build(dataclasses.replace(req, output=sqfs, fmt="squashfs", force=True, update=False,
                                           shown_as=f"the layer of {out}"))
        labels = _labels(_cat(sqfs, "/.singularity.d/labels.json"))
        environment = _cat(sqfs, "/.singularity.d/env/90-environment.sh").decode("utf-8", "replace")
        when = req.epoch if req.epoch is not None else int(time.time())
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        with open(sqfs, "rb") as layer:
            h = hashlib.sha256()
            for chunk in iter(lambda: layer.read(1 << 20), b""):
                h.update(chunk)
            size, digest = layer.tell(), "sha256:" + h.hexdigest()
            config = image_config(arch=machine_arch(), created=created, environment=environment, labels=labels,
                                  layer_digest=digest, source=req.source)  # fmt: skip
            manifest = oci.manifest_for(config, [(digest, size)])

            def write(fp: BinaryIO) -> None:
                layer.seek(0)
                oci.write(fp, [(layer, size, digest), config, manifest], oci.index_for([manifest]),
                          spare=oci.SPARE_DESCRIPTORS)  # fmt: skip

            write_atomically(out, write, verb="write", mode=0o777)
        pipeline.Steps(req.quiet)(f"wrote OCI-SIF {out}")
    except OSError as err:
        raise SifboxError(f"can't write `{out}`: {describe_os_error(err)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(sqfs)


def _labels(data: bytes) -> dict[str, str]:
    try:
        doc = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): str(v) for k, v in doc.items() if isinstance(v, str | int | float)}
