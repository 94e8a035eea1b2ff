"""OCI image config -> the generated `/.singularity.d` entries of a pull or an OCI bootstrap.

The files themselves come from `sifbox.formats.singularityd` (the one writer of the tree,
shared with definition builds); this module turns them into tar entries merged on top of
the image's layers:

* `Env` -> `env/10-docker2singularity.sh`, `Entrypoint`/`Cmd` -> `runscript`, `Labels` ->
  `labels.json`, with the base environment, `actions/`, mount points and root links;
* for a pull, also what a build of `Bootstrap: SCHEME / From: REF` adds: the build labels
  and the definition (`Singularity`).

`WorkingDir` and `User` are not applied at run time (as in Apptainer's native mode): the
runscript does not change directory and the container runs as the caller. They are kept in
the image config stored in the SIF and reported by `notes()`.
"""

from __future__ import annotations

import tarfile

from sifbox.formats import singularityd as sd
from sifbox.oci.layers import Extra


def tree(config: dict, *, arch: str, source: str, epoch: int, version: str,
         finish: bool = True) -> list[sd.Entry]:  # fmt: skip
    """The generated tree: for a pull (`finish`) everything, for an OCI bootstrap only what
    the image config gives (the build adds the definition's part)."""
    oci = sd.OciConfig.from_config(config)
    if finish:
        return sd.pull_tree(oci, source, sd.BuildInfo(arch, epoch, version))
    return sd.replacing(sd.merge(sd.base_tree(), sd.oci_tree(oci)))


def deffile(source: str) -> str:
    """The definition an image pulled from `source` records: `bootstrap:` and `from:`."""
    return sd.uri_deffile(source)


def notes(config: dict) -> list[str]:
    """What the image asks for that the runtime does not apply (said once on pull)."""
    inner = config.get("config")
    if not isinstance(inner, dict):  # untrusted: a wrong type counts as absent
        return []
    out = []
    user = inner.get("User")
    if user and str(user) not in ("0", "root", "0:0", "root:root"):
        out.append(f"the image sets USER `{user}`; containers run as the calling user")
    workdir = inner.get("WorkingDir")
    if workdir and workdir != "/":
        out.append(f"the image sets WORKDIR `{workdir}`; use `--pwd {workdir}` to start there")
    return out


def _info(name: str, type_: bytes, mode: int, mtime: int, linkname: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = type_
    t.mode = mode
    t.mtime = mtime
    t.linkname = linkname
    return t


def extras(entries: list[sd.Entry], epoch: int) -> list[Extra]:
    """Tar entries (owned by root, times `epoch`) of a generated tree."""
    out = []
    for e in entries:
        name = e.path.lstrip("/")
        if e.kind is sd.Kind.DIR:
            out.append(Extra(_info(name, tarfile.DIRTYPE, e.mode, epoch), if_absent=True))
        elif e.kind is sd.Kind.SYMLINK:
            out.append(Extra(_info(name, tarfile.SYMTYPE, 0o777, epoch, e.target), if_absent=True))
        else:
            info = _info(name, tarfile.REGTYPE, e.mode, epoch)
            info.size = len(e.data)
            out.append(Extra(info, e.data, if_absent=e.keep_existing))
    return out


def entries(config: dict, *, arch: str, source: str, epoch: int, version: str,
            finish: bool = True) -> list[Extra]:  # fmt: skip
    """Every generated entry, to merge on top of the image's layers."""
    generated = tree(config, arch=arch, source=source, epoch=epoch, version=version, finish=finish)
    return extras(generated, epoch)
