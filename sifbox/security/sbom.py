"""Software bill of materials of an image, read from its package databases.

Read straight from the SquashFS (one `unsquashfs -lls` listing and one
extraction of just the database files, see `sifbox.image.files`), without
root and without mounting:

* dpkg: `/var/lib/dpkg/status` and `/var/lib/dpkg/status.d/*` (distroless)
* apk: `/lib/apk/db/installed`
* RPM: `rpmdb.sqlite` (`/var/lib/rpm`, `/usr/lib/sysimage/rpm`), read with
  sqlite3 from a temporary copy; headers decoded here
* Python: `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` (or an `.egg-info` file)
* conda: `conda-meta/*.json`

Each package gets a purl (`pkg:deb/debian/NAME@VER?arch=A&distro=debian-12`,
with `upstream=SRC@VER` when a Debian binary package comes from another
source package, `pkg:pypi/NAME@VER`, ...). The documents are CycloneDX 1.6 JSON or
SPDX 2.3 JSON, both written here to their published schemas.

A hostile image can hold a decompression bomb: the databases are read within a budget
(`sifbox.image.files.ReadBudget`, checked against the listing's sizes before anything is
extracted), at most `MAX_PACKAGES` packages are parsed, and every parser and document
writer is linear in its input.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import namedtuple
from collections.abc import Iterable

from sifbox.util.errors import SifboxError

FORMATS = ("cyclonedx-json", "spdx-json")

Component = namedtuple("Component", "kind name version purl license arch source")
Component.__doc__ = """One package: kind (deb, apk, rpm, pypi, conda), name, version, purl,
license (or ""), architecture (or ""), and where it was found (the database path)."""

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_STATUS_D = "/var/lib/dpkg/status.d/"
APK_INSTALLED = "/lib/apk/db/installed"
RPM_DBS = ("/var/lib/rpm/rpmdb.sqlite", "/usr/lib/sysimage/rpm/rpmdb.sqlite")
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")

#: Most packages read out of one image: a big one has a few thousand. Each costs time and
#: memory; a few megabytes of database (a few kilobytes compressed) can list millions.
MAX_PACKAGES = 50_000
_STANZA_DPKG = re.compile(rb"^package:", re.IGNORECASE | re.MULTILINE)
_STANZA_APK = re.compile(rb"^P:", re.MULTILINE)
_PY_META = re.compile(r"/[^/]+\.dist-info/METADATA$|/[^/]+\.egg-info/PKG-INFO$|/[^/]+\.egg-info$")
_CONDA = re.compile(r"/conda-meta/[^/]+\.json$")


class SbomError(SifboxError):
    reference = "sbom-error"


# -- what to read -------------------------------------------------------------------------------


def wanted_entries(entries: Iterable[tuple[str, str, int, str]]) -> list[tuple[str, str, int, str]]:
    """The entries of a listing (`files.iter_entries`) that hold package data."""
    fixed = {DPKG_STATUS, APK_INSTALLED, *RPM_DBS, *OS_RELEASE}
    out = []
    for entry in entries:
        path, kind = entry[0], entry[1]
        if kind not in ("-", "l"):
            continue
        in_status_d = path.startswith(DPKG_STATUS_D) and "/" not in path[len(DPKG_STATUS_D):]
        if in_status_d and path.endswith(".md5sums"):
            continue  # distroless keeps the file lists beside the stanzas
        if (path in fixed or in_status_d
                or (_PY_META.search(path) and kind == "-") or _CONDA.search(path)):  # fmt: skip
            out.append(entry)
    return out


def wanted_paths(entries: Iterable[tuple[str, str, int, str]]) -> list[str]:
    """The files of a listing (`files.walk`) that hold package data."""
    out = [e[0] for e in wanted_entries(entries)]
    for path in OS_RELEASE:
        if path not in out:
            out.append(path)
    return out


def components_from_files(files: dict[str, bytes], max_packages: int = MAX_PACKAGES) -> list[Component]:
    """Every package found in the database files `files` (path -> content); SbomError past
    `max_packages` packages (0: no limit), counted before the databases are parsed."""
    distro = parse_os_release(files.get("/etc/os-release") or files.get("/usr/lib/os-release") or b"")
    comps: list[Component] = []
    count = 0

    def room(n: int) -> int:
        nonlocal count
        count += n
        if max_packages and count > max_packages:
            raise SbomError(f"can't read the packages of the image: more than {max_packages} "
                            "packages (a limit against hostile images)")  # fmt: skip
        return max_packages - count + 1 if max_packages else 0

    for path in sorted(files):
        data = files[path]
        if path == DPKG_STATUS or path.startswith(DPKG_STATUS_D):
            room(len(_STANZA_DPKG.findall(data)))
            comps += parse_dpkg_status(data, distro, path)
        elif path == APK_INSTALLED:
            room(len(_STANZA_APK.findall(data)))
            comps += parse_apk_installed(data, distro, path)
        elif path in RPM_DBS:
            found = parse_rpmdb_sqlite(data, distro, path, limit=room(0))
            room(len(found))
            comps += found
        elif _PY_META.search(path):
            room(1)
            comp = parse_python_metadata(data, path)
            if comp is not None:
                comps.append(comp)
        elif _CONDA.search(path):
            room(1)
            comp = parse_conda_meta(data, path)
            if comp is not None:
                comps.append(comp)
    seen, unique = set(), []
    for comp in comps:
        if comp.purl not in seen:
            seen.add(comp.purl)
            unique.append(comp)
    return unique


# -- parsers ------------------------------------------------------------------------------------


def parse_os_release(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            out[key.strip()] = value.strip().strip("\"'")
    return out


def _purl(kind: str, namespace: str | None, name: str, version: str, quals: dict[str, str]) -> str:
    from packageurl import PackageURL

    quals = {k: v for k, v in quals.items() if v}
    return PackageURL(type=kind, namespace=namespace, name=name, version=version or None,
                      qualifiers=quals or None).to_string()  # fmt: skip


def _distro_qualifier(distro: dict[str, str], fallback: str) -> tuple[str, str]:
    ident = (distro.get("ID") or fallback).lower()
    release = distro.get("VERSION_ID", "")
    return ident, f"{ident}-{release}" if release else ""


def _paragraphs(text: str) -> list[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status): field -> value (continuations folded in).

    Linear in the size of `text`: a value's lines are joined once, at the end of its
    stanza (adding each continuation line to a string would copy the value again for
    every line, hours for a few megabytes of description)."""
    out: list[dict[str, str]] = []
    cur: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in text.split("\n"):
        if not line.strip():
            if cur:
                out.append({k: "\n".join(v) for k, v in cur.items()})
            cur, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                last.append(line.strip())
        else:
            key, sep, value = line.partition(":")
            if sep:
                last = cur[key.strip().lower()] = [value.strip()]
    if cur:
        out.append({k: "\n".join(v) for k, v in cur.items()})
    return out


def parse_dpkg_status(data: bytes, distro: dict[str, str], where: str) -> list[Component]:
    ident, distro_q = _distro_qualifier(distro, "debian")
    namespace = ident if ident in ("debian", "ubuntu") else "debian"
    out = []
    for p in _paragraphs(data.decode("utf-8", "replace")):
        name, version = p.get("package"), p.get("version")
        status = p.get("status", "install ok installed").split()
        if not name or not version or (status and status[-1] != "installed"):
            continue
        arch = p.get("architecture", "")
        quals = {"arch": arch, "distro": distro_q}
        source = p.get("source", "")
        if source:
            src_name, _, rest = source.partition(" ")
            src_version = rest.strip().strip("()") or version
            if src_name != name or src_version != version:
                quals["upstream"] = f"{src_name}@{src_version}"
        out.append(Component("deb", name, version, _purl("deb", namespace, name, version, quals),
                             "", arch, where))  # fmt: skip
    return out


def parse_apk_installed(data: bytes, distro: dict[str, str], where: str) -> list[Component]:
    _ident, distro_q = _distro_qualifier(distro, "alpine")
    out = []
    for block in data.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if len(line) > 2 and line[1] == ":":
                fields.setdefault(line[0], line[2:])
        name, version = fields.get("P"), fields.get("V")
        if not name or not version:
            continue
        arch = fields.get("A", "")
        quals = {"arch": arch, "distro": distro_q}
        origin = fields.get("o")
        if origin and origin != name:
            quals["upstream"] = origin
        out.append(Component("apk", name, version, _purl("apk", "alpine", name, version, quals),
                             fields.get("L", ""), arch, where))  # fmt: skip
    return out


# RPM header tags and types (the header format of rpm's `lib/header.c`).
_RPM_TAGS = {1000: "name", 1001: "version", 1002: "release", 1003: "epoch", 1014: "license",
             1022: "arch", 1044: "sourcerpm"}  # fmt: skip


def parse_rpm_header(blob: bytes) -> dict[str, object]:
    """Name, version, release, epoch, license, arch of one header blob of an rpmdb."""
    if len(blob) < 8:
        raise ValueError("short RPM header")
    il, dl = struct.unpack_from(">ii", blob, 0)
    if il < 0 or dl < 0 or 8 + 16 * il + dl > len(blob):
        raise ValueError("bad RPM header sizes")
    store = 8 + 16 * il
    out: dict[str, object] = {}
    for i in range(il):
        tag, typ, off, count = struct.unpack_from(">iiii", blob, 8 + 16 * i)
        name = _RPM_TAGS.get(tag)
        if name is None or not 0 <= off < dl:
            continue
        pos = store + off
        if typ in (6, 9, 8):  # STRING, I18NSTRING, STRING_ARRAY: first string
            end = blob.find(b"\0", pos, store + dl)
            if end >= 0:
                out[name] = blob[pos:end].decode("utf-8", "replace")
        elif typ == 4 and count >= 1 and pos + 4 <= store + dl:  # INT32
            out[name] = struct.unpack_from(">i", blob, pos)[0]
    return out


def parse_rpmdb_sqlite(data: bytes, distro: dict[str, str], where: str, limit: int = 0) -> list[Component]:
    """The packages of an rpmdb.sqlite (at most `limit` rows read, 0: all)."""
    import sqlite3
    import tempfile

    ident, distro_q = _distro_qualifier(distro, "rpm")
    out = []
    with tempfile.NamedTemporaryFile(prefix="sifbox-rpmdb-", suffix=".sqlite",
                                     dir=os.environ.get("SIFBOX_TMPDIR")) as tmp:  # fmt: skip
        tmp.write(data)
        tmp.flush()
        try:
            con = sqlite3.connect(f"file:{tmp.name}?mode=ro&immutable=1", uri=True)
            try:
                query = "SELECT blob FROM Packages" + (f" LIMIT {int(limit)}" if limit > 0 else "")
                rows = con.execute(query).fetchall()
            finally:
                con.close()
        except sqlite3.Error as err:
            raise SbomError(f"can't read the RPM database `{where}`: {err}") from None
    for (blob,) in rows:
        try:
            h = parse_rpm_header(bytes(blob))
        except (ValueError, struct.error):
            continue
        name, version = h.get("name"), h.get("version")
        if not name or not version or name == "gpg-pubkey":
            continue
        full = f"{version}-{h['release']}" if h.get("release") else str(version)
        quals = {"arch": str(h.get("arch", "")), "distro": distro_q}
        if h.get("epoch") not in (None, 0):
            quals["epoch"] = str(h["epoch"])
        out.append(Component("rpm", str(name), full, _purl("rpm", ident, str(name), full, quals),
                             str(h.get("license", "")), str(h.get("arch", "")), where))  # fmt: skip
    return out


def parse_python_metadata(data: bytes, where: str) -> Component | None:
    from email.parser import BytesHeaderParser

    msg = BytesHeaderParser().parsebytes(data)
    name, version = msg.get("Name"), msg.get("Version")
    if not name or not version:
        return None
    name, version = str(name).strip(), str(version).strip()
    lic = str(msg.get("License-Expression") or msg.get("License") or "").strip()
    if "\n" in lic or len(lic) > 100:
        lic = ""  # a whole license text, not a name
    purl = _purl("pypi", None, re.sub(r"[-_.]+", "-", name).lower(), version, {})
    return Component("pypi", name, version, purl, lic, "", where)


def parse_conda_meta(data: bytes, where: str) -> Component | None:
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(meta, dict):
        return None
    name, version = meta.get("name"), meta.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        return None
    channel = str(meta.get("channel") or "").rstrip("/").rsplit("/", 1)[-1]
    quals = {"build": str(meta.get("build") or ""), "channel": channel,
             "subdir": str(meta.get("subdir") or "")}  # fmt: skip
    return Component("conda", name, version, _purl("conda", None, name, version, quals),
                     str(meta.get("license") or ""), str(meta.get("subdir") or ""), where)  # fmt: skip


# -- documents ----------------------------------------------------------------------------------


def _tool_version() -> str:
    from sifbox import __version__

    return __version__


def cyclonedx_json(components: list[Component], image_name: str, digest: str = "") -> str:
    """A CycloneDX 1.6 JSON document (https://cyclonedx.org/docs/1.6/json/), valid against
    its published schema. Written here, in time linear in the number of packages: the
    model of `cyclonedx-python-lib` searches its dependency list once per component (20 s
    for 5,000 packages, hours for tens of thousands)."""
    import datetime
    import uuid

    root: dict[str, object] = {"bom-ref": "image", "name": image_name, "type": "container"}
    if digest:
        root["version"] = digest
    seen: set[str] = set()
    comps = []
    for comp in components:
        if comp.purl in seen:
            continue
        seen.add(comp.purl)
        entry: dict[str, object] = {
            "bom-ref": comp.purl, "name": comp.name, "purl": comp.purl,
            "type": "application" if comp.kind == "pypi" else "library", "version": comp.version,
        }  # fmt: skip
        if comp.license:
            entry["licenses"] = [{"license": {"name": comp.license}}]
        comps.append(entry)
    refs = [c["bom-ref"] for c in comps]
    doc = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "tools": {"components": [{"type": "application", "name": "sifbox",
                                      "version": _tool_version()}]},  # fmt: skip
            "component": root,
        },
        "components": comps,
        "dependencies": [{"ref": "image", **({"dependsOn": refs} if refs else {})},
                         *({"ref": r} for r in refs)],  # fmt: skip
    }
    return json.dumps(doc, indent=2) + "\n"


def spdx_json(components: list[Component], image_name: str, digest: str = "") -> str:
    """An SPDX 2.3 JSON document (https://spdx.github.io/spdx-spec/v2.3/)."""
    import datetime
    import uuid

    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    packages = [{
        "name": image_name, "SPDXID": "SPDXRef-Image", "versionInfo": digest or "NOASSERTION",
        "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION", "primaryPackagePurpose": "CONTAINER",
    }]  # fmt: skip
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": "SPDXRef-Image"}]  # fmt: skip
    for i, comp in enumerate(components, 1):
        ref = f"SPDXRef-Package-{comp.kind}-{i}"
        packages.append({
            "name": comp.name, "SPDXID": ref, "versionInfo": comp.version,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "comment": f"found in {comp.source}" + (f"; license: {comp.license}" if comp.license else ""),
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": comp.purl}],
        })  # fmt: skip
        relationships.append({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS",
                              "relatedSpdxElement": ref})  # fmt: skip
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_name,
        "documentNamespace": f"https://sifbox.invalid/spdx/{image_name}-{uuid.uuid4()}",
        "creationInfo": {"created": created, "creators": [f"Tool: sifbox-{_tool_version()}"]},
        "packages": packages,
        "relationships": relationships,
    }
    return json.dumps(doc, indent=2) + "\n"


def render(components: list[Component], fmt: str, image_name: str, digest: str = "") -> str:
    if fmt == "spdx-json":
        return spdx_json(components, image_name, digest)
    return cyclonedx_json(components, image_name, digest)


def purls_of_document(data: bytes) -> list[str]:
    """The package purls of a CycloneDX or SPDX JSON document (an SBOM stored in a SIF)."""
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise SbomError(f"can't read the image's SBOM: not JSON: {err}") from None
    except RecursionError:
        raise SbomError("can't read the image's SBOM: not JSON: nested too deeply") from None
    out = []
    if isinstance(doc, dict) and doc.get("bomFormat") == "CycloneDX":
        stack = _dicts(doc.get("components"))
        while stack:
            c = stack.pop()
            if isinstance(c.get("purl"), str):
                out.append(c["purl"])
            stack += _dicts(c.get("components"))
    elif isinstance(doc, dict) and "spdxVersion" in doc:
        for p in _dicts(doc.get("packages")):
            for ref in _dicts(p.get("externalRefs")):
                if ref.get("referenceType") == "purl" and isinstance(ref.get("referenceLocator"), str):
                    out.append(ref["referenceLocator"])
    else:
        raise SbomError("can't read the image's SBOM: neither CycloneDX nor SPDX JSON")
    return out


def _dicts(value: object) -> list[dict]:  # type: ignore[type-arg]
    """The objects of a JSON array (nothing when `value` is not an array)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


# -- images -------------------------------------------------------------------------------------


def components_of_image(source, budget=None) -> list[Component]:  # type: ignore[no-untyped-def]
    """Every package of an opened image (`sifbox.image.source.open_image`), its package
    databases read within `budget` (a `files.ReadBudget`; default: its defaults). Past
    it, `files.BudgetExceeded`: nothing is read beyond the budget, and nothing is cut (a
    cut database would hide the packages after the cut)."""
    from sifbox.image import files

    if getattr(source, "encryption", None):
        from sifbox.util.errors import SifboxError

        raise SifboxError(f"can't list the packages of `{source.path}`: it is encrypted, and its packages "
                          "can't be read without its key",
                          hint="an SBOM stored in the image at build time is shown as it is")  # fmt: skip
    budget = budget or files.ReadBudget()
    wanted = wanted_entries(files.iter_entries(source, budget))
    # The listing gives the sizes: a bomb is refused before anything is extracted.
    budget.check(len(wanted), sum(e[2] for e in wanted if e[1] == "-"))
    paths = [e[0] for e in wanted] + [p for p in OS_RELEASE if p not in {e[0] for e in wanted}]
    return components_from_files(files.read_many(source, paths, budget))


def stored_sbom_format(fd: int) -> str | None:
    """The format name of the newest SBOM object of the SIF open as `fd`, None when it has
    none (nothing of the object is read)."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage

    with os.fdopen(os.dup(fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
        except SifError:
            return None
        found = [d for d in img.objects() if d.data_type == c.DataType.SBOM]
        if not found:
            return None
        return c.SBOM_FORMAT_NAMES.get(max(found, key=lambda d: d.id).sbom_format(), "unknown")


def stored_sbom(path: str, fd: int) -> tuple[bytes, str] | None:
    """(data, format name) of the SBOM object in a SIF, if any (the newest one)."""
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif.image import SifError, SifImage

    with os.fdopen(os.dup(fd), "rb") as fp:
        try:
            img = SifImage.load(fp)
        except SifError:
            return None
        found = [d for d in img.objects() if d.data_type == c.DataType.SBOM]
        if not found:
            return None
        d = max(found, key=lambda d: d.id)
        fmt = c.SBOM_FORMAT_NAMES.get(d.sbom_format(), "unknown")
        return img.read(d), fmt
