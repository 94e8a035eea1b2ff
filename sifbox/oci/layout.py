"""Read OCI images from local transports, verifying every blob while it streams.

Transports, as Apptainer and skopeo name them:

    oci:DIR[:TAG|@DIGEST]          an OCI image layout directory
    oci-archive:FILE[:TAG]         the same layout in a tar file (`skopeo copy ... oci-archive:`)
    docker-archive:FILE[:REF]      `docker save` output (legacy `manifest.json` form, or the
                                   OCI layout that Docker 25 and later write)

An index or manifest list is resolved to one image by platform (default: this machine's).
Every blob is checked against its digest (and, for `docker-archive`, each layer against the
config's `diff_ids`) while it is read; a mismatch is an error once the blob ends, before
anything built from it is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable

# The media types as the pure formats name them (an OCI-SIF holds the same documents).
from sifbox.formats.sif.oci import INDEX_TYPES, MANIFEST_TYPES, SQUASHFS_LAYER
from sifbox.formats.sif.oci import OCI_INDEX as MT_OCI_INDEX
from sifbox.formats.sif.oci import OCI_MANIFEST as MT_OCI_MANIFEST
from sifbox.util.errors import SifboxError, UsageError, describe_os_error
from sifbox.util.messages import shown

TRANSPORTS = ("oci", "oci-archive", "docker-archive")

REF_NAME = "org.opencontainers.image.ref.name"

_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
#: Largest JSON document (index, manifest, config) read into memory.
MAX_JSON = 32 << 20
CHUNK = 1 << 20


class DigestMismatch(SifboxError):
    reference = "digest-mismatch"


class ImageSourceError(SifboxError):
    reference = "oci-image-source"


# -- references and platforms ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SourceRef:
    """A local image reference: transport, path, and optional tag or digest."""

    transport: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else (f":{self.tag}" if self.tag else "")
        return f"{self.transport}:{self.path}{suffix}"


def parse_source(text: str) -> SourceRef:
    """Parse `oci:DIR[:TAG|@DIGEST]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REF]`."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise UsageError(f"can't read image `{text}`: not a local image reference",
                         hint="use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE")  # fmt: skip
    if not rest:
        raise UsageError(f"can't read image `{text}`: no path after `{transport}:`")
    digest = tag = None
    if "@" in rest:
        path, _, digest = rest.rpartition("@")
        if not _DIGEST.match(digest):
            raise UsageError(f"can't read image `{text}`: `{digest}` is not a valid digest")
    else:
        path, tag = _split_tag(transport, rest)
    return SourceRef(transport, path, tag, digest)


def _split_tag(transport: str, rest: str) -> tuple[str, str | None]:
    """Split `PATH[:REF]`. A path may hold `:` and a docker reference too
    (`img.tar:busybox:latest`), so an existing path wins; else the first `:`
    after which no `/` follows (a reference may hold `/`, a tag may not)."""
    if os.path.exists(rest) or ":" not in rest:
        return rest, None
    parts = rest.split(":")
    for i in range(1, len(parts)):
        head, tail = ":".join(parts[:i]), ":".join(parts[i:])
        if os.path.exists(head) and tail:
            return head, tail
    head, _, tail = rest.rpartition(":")
    if transport == "docker-archive":
        head, _, tail = rest.partition(":")
    if head and tail and (transport == "docker-archive" or "/" not in tail):
        return head, tail
    return rest, None


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386",
                 "armhf": "arm", "armel": "arm", "ppc64el": "ppc64le"}  # fmt: skip


def host_platform() -> Platform:
    from sifbox.formats.sif.constants import MACHINE_ARCH

    machine = os.uname().machine
    arch = MACHINE_ARCH.get(machine, machine)
    return Platform("linux", arch, _DEFAULT_VARIANTS.get(arch, ""))


def parse_platform(text: str | None, arch: str | None = None) -> Platform:
    """`--platform os/arch[/variant]` and/or `--arch arch[/variant]`, defaulting to the host."""
    host = host_platform()
    if text:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"can't use platform `{text}`: expected OS/ARCH[/VARIANT]",
                             hint="for example --platform linux/arm64")  # fmt: skip
        a = _ARCH_ALIASES.get(parts[1], parts[1])
        return Platform(parts[0], a, parts[2] if len(parts) == 3 else _DEFAULT_VARIANTS.get(a, ""))
    if arch:
        a, _, variant = arch.partition("/")
        a = _ARCH_ALIASES.get(a, a)
        return Platform("linux", a, variant or _DEFAULT_VARIANTS.get(a, ""))
    return host


def platform_matches(want: Platform, have: dict[str, object]) -> bool:
    arch = str(have.get("architecture", ""))
    arch = _ARCH_ALIASES.get(arch, arch)
    if str(have.get("os", "")) != want.os or arch != want.architecture:
        return False
    variant = str(have.get("variant", "") or _DEFAULT_VARIANTS.get(arch, ""))
    return not want.variant or not variant or variant == want.variant


# -- verified reading --------------------------------------------------------------------
def check_digest(digest: str, what: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageSourceError(f"can't read {what}: `{digest}` is not a valid digest")
    return digest


class VerifiedReader(io.RawIOBase):
    """Reads a blob, hashing it; at its end, checks the size and digest.

    `finish()` reads what is left (without decompressing anything) and checks.
    """

    def __init__(self, fp: io.RawIOBase | io.BufferedIOBase, digest: str | None, size: int | None,
                 what: str):  # fmt: skip
        self._fp = fp
        self.digest = digest
        self.size = size
        self.what = what
        algo = digest.partition(":")[0] if digest else "sha256"
        self._hash = hashlib.new(algo)
        self._count = 0
        self._done = False
        self.on_read: Callable[[int], None] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done:
            return 0
        view = memoryview(buf)
        n = self._fp.readinto(view)  # type: ignore[attr-defined]
        if not n:
            self._check()
            return 0
        self._hash.update(view[:n])
        self._count += n
        if self.on_read is not None:
            self.on_read(n)
        if self.size is not None and self._count > self.size:
            raise DigestMismatch(f"can't read {self.what}: it is larger than the {self.size} bytes "
                                 "its descriptor declares")  # fmt: skip
        return n

    def _check(self) -> None:
        self._done = True
        if self.size is not None and self._count != self.size:
            raise DigestMismatch(f"can't read {self.what}: it has {self._count} bytes, its "
                                 f"descriptor declares {self.size}")  # fmt: skip
        if self.digest is not None:
            got = f"{self._hash.name}:{self._hash.hexdigest()}"
            if got != self.digest:
                raise DigestMismatch(f"can't read {self.what}: digest mismatch, expected "
                                     f"`{self.digest}`, got `{got}`",
                                     hint="the image is corrupt or was modified; fetch it again")  # fmt: skip

    def finish(self) -> None:
        buf = bytearray(CHUNK)
        while not self._done:
            self.readinto(buf)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._fp.close()
        super().close()


# -- images ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer: the blob (its digest may be unknown for legacy docker archives) and,
    when known, the digest of its uncompressed tar (`diff_id`)."""

    digest: str | None
    size: int | None
    media_type: str
    diff_id: str | None = None
    locator: str = ""  # path of the blob inside its source

    @property
    def label(self) -> str:
        d = self.digest or self.diff_id or self.locator
        return d.split(":")[-1][:12] if d else "?"


@dataclasses.dataclass
class Image:
    """A resolved image: its config and layers, and the store that serves its blobs."""

    source: str
    store: BlobStore
    config: dict
    config_bytes: bytes
    config_digest: str
    layers: list[Layer]
    manifest_digest: str | None = None
    manifest_bytes: bytes | None = None
    ref_name: str | None = None
    #: called with the number of blob bytes read, for progress displays
    on_read: Callable[[int], None] | None = None

    @property
    def platform(self) -> Platform:
        return Platform(str(self.config.get("os", "linux")), str(self.config.get("architecture", "")),
                        str(self.config.get("variant", "")))  # fmt: skip

    def open_layer(self, layer: Layer) -> VerifiedReader:
        what = f"layer {layer.label} of `{self.source}`"
        reader = VerifiedReader(self.store.open(layer.locator or str(layer.digest)),
                                layer.digest, layer.size, what)  # fmt: skip
        reader.on_read = self.on_read
        return reader


class BlobStore:
    """Where blobs come from: a directory or a tar file."""

    def __init__(self, source: str):
        self.source = source

    def open(self, name: str) -> io.RawIOBase:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def read_json(self, name: str, digest: str | None, size: int | None, what: str) -> tuple[dict, bytes]:
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ImageSourceError(f"can't read {what} of `{self.source}`: invalid size `{size}` "
                                   "in its descriptor")  # fmt: skip
        if size is not None and size > MAX_JSON:
            raise ImageSourceError(f"can't read {what} of `{self.source}`: {size} bytes is too large")
        try:
            with VerifiedReader(self.open(name), digest, size, f"{what} of `{self.source}`") as r:
                data = r.read(MAX_JSON + 1)
                r.finish()
        except FileNotFoundError:
            raise ImageSourceError(f"can't read {what} of `{self.source}`: `{name}` is missing") from None
        except OSError as err:
            raise ImageSourceError(f"can't read {what} of `{self.source}`: {describe_os_error(err)}") from err
        if len(data) > MAX_JSON:
            raise ImageSourceError(f"can't read {what} of `{self.source}`: it is too large")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise ImageSourceError(f"can't read {what} of `{self.source}`: invalid JSON ({err})") from None
        except RecursionError:
            raise ImageSourceError(f"can't read {what} of `{self.source}`: JSON nested too deeply"
                                   ) from None  # fmt: skip
        if not isinstance(doc, dict):
            raise ImageSourceError(f"can't read {what} of `{self.source}`: not a JSON object")
        return doc, data

    def blob_name(self, digest: str) -> str:
        algo, _, hexa = check_digest(digest, f"a blob of `{self.source}`").partition(":")
        return f"blobs/{algo}/{hexa}"


class DirStore(BlobStore):
    def __init__(self, root: str, source: str):
        super().__init__(source)
        self.root = root

    def open(self, name: str) -> io.RawIOBase:
        fd = os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        return io.FileIO(fd, "rb", closefd=True)

    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.root, name))


class TarStore(BlobStore):
    """Blobs read in place from a tar file (nothing is extracted)."""

    def __init__(self, path: str, source: str):
        super().__init__(source)
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open while the store lives
            self.members = {}
            for m in self.tar:
                if m.isreg():
                    self.members[_clean(m.name)] = m
                self.tar.members = []  # keep memory flat for big archives
        except FileNotFoundError:
            raise ImageSourceError(f"can't read image `{source}`: `{path}` does not exist") from None
        except (tarfile.TarError, EOFError, ValueError) as err:  # ValueError: a PAX number that is not one
            raise ImageSourceError(f"can't read image `{source}`: `{path}` is not a tar archive ({err})") from None
        except OSError as err:
            raise ImageSourceError(f"can't read image `{source}`: {describe_os_error(err)}") from err

    def open(self, name: str) -> io.RawIOBase:
        m = self.members.get(_clean(name))
        if m is None:
            raise FileNotFoundError(name)
        f = self.tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def exists(self, name: str) -> bool:
        return _clean(name) in self.members

    def close(self) -> None:
        self.tar.close()


def _clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


# -- resolution ----------------------------------------------------------------------
def open_image(ref: SourceRef, platform: Platform | None = None) -> Image:
    """Resolve `ref` to one image for `platform` (default: the host's)."""
    want = platform or host_platform()
    src = str(ref)
    if ref.transport == "oci":
        if not os.path.isdir(ref.path):
            what = "does not exist" if not os.path.exists(ref.path) else "is not a directory"
            raise ImageSourceError(f"can't read image `{src}`: `{ref.path}` {what}")
        store: BlobStore = DirStore(ref.path, src)
    else:
        if os.path.isdir(ref.path):
            raise ImageSourceError(f"can't read image `{src}`: `{ref.path}` is a directory, not a tar file",
                                   hint=f"use oci:{ref.path} for an OCI layout directory")  # fmt: skip
        store = TarStore(ref.path, src)
    try:
        if ref.transport == "docker-archive" and store.exists("manifest.json"):
            return _docker_archive(store, ref, want)
        return _oci_layout(store, ref, want)
    except BaseException:
        store.close()
        raise


def _oci_layout(store: BlobStore, ref: SourceRef, want: Platform) -> Image:
    src = str(ref)
    if not store.exists("index.json"):
        raise ImageSourceError(f"can't read image `{src}`: no `index.json`, not an OCI image layout")
    index, _ = store.read_json("index.json", None, None, "the index")
    manifests = _descriptors(index, src)
    if ref.digest:
        chosen = _find_digest(store, manifests, ref.digest, src)
    else:
        if ref.tag:
            chosen_list = [d for d in manifests if _ref_name(d) == ref.tag]
            if not chosen_list:
                tags = sorted({n for d in manifests if (n := _ref_name(d))})
                raise ImageSourceError(f"can't read image `{src}`: no image tagged `{ref.tag}`",
                                       hint=("tags: " + ", ".join(tags)) if tags else None)  # fmt: skip
        else:
            chosen_list = manifests
        if len(chosen_list) != 1 and ref.tag is None:
            names = sorted({n for d in chosen_list if (n := _ref_name(d))})
            if len(names) > 1:
                raise ImageSourceError(f"can't read image `{src}`: the layout holds {len(chosen_list)} images",
                                       hint="name one: " + ", ".join(f"{src}:{n}" for n in names))  # fmt: skip
        if not chosen_list:
            raise ImageSourceError(f"can't read image `{src}`: the index lists no image")
        chosen = _by_platform(store, chosen_list, want, src) if len(chosen_list) > 1 else chosen_list[0]
    ref_name = _ref_name(chosen) or ref.tag
    # Follow nested indexes (a manifest list tagged in index.json) down to one manifest.
    for _ in range(8):
        mt = chosen.get("mediaType")
        if mt in MANIFEST_TYPES:
            break
        if mt not in INDEX_TYPES:
            raise ImageSourceError(f"can't read image `{src}`: unsupported media type `{mt}`")
        digest = check_digest(str(chosen.get("digest")), f"image `{src}`")
        sub, _ = store.read_json(store.blob_name(digest), digest, chosen.get("size"), "an image index")
        chosen = _by_platform(store, _descriptors(sub, src), want, src)
    else:
        raise ImageSourceError(f"can't read image `{src}`: indexes nested too deeply")
    return _load_manifest(store, chosen, src, ref_name)


def _ref_name(descriptor: dict) -> str | None:
    """The `org.opencontainers.image.ref.name` annotation of a descriptor, if it is a string."""
    annotations = descriptor.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def _descriptors(index: dict, src: str) -> list[dict]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
        raise ImageSourceError(f"can't read image `{src}`: the index has no valid `manifests` list")
    return manifests


def _find_digest(store: BlobStore, manifests: list[dict], digest: str, src: str) -> dict:
    for d in manifests:
        if d.get("digest") == digest:
            return d
    # A digest of an image inside a listed index.
    for d in manifests:
        if d.get("mediaType") in INDEX_TYPES:
            dg = check_digest(str(d.get("digest")), f"image `{src}`")
            sub, _ = store.read_json(store.blob_name(dg), dg, d.get("size"), "an image index")
            for s in _descriptors(sub, src):
                if s.get("digest") == digest:
                    return s
    # Any manifest blob in the layout, as skopeo accepts.
    name = store.blob_name(digest)
    if store.exists(name):
        doc, _ = store.read_json(name, digest, None, "a manifest")
        mt = doc.get("mediaType") or (MT_OCI_INDEX if "manifests" in doc else MT_OCI_MANIFEST)
        return {"mediaType": mt, "digest": digest}
    raise ImageSourceError(f"can't read image `{src}`: no image with digest `{digest}`")


def _by_platform(store: BlobStore, manifests: list[dict], want: Platform, src: str) -> dict:
    candidates = [d for d in manifests if isinstance(d.get("platform"), dict)
                  and platform_matches(want, d["platform"])]  # fmt: skip
    if candidates:
        return candidates[0]
    without = [d for d in manifests if not isinstance(d.get("platform"), dict)]
    if len(without) == 1 and len(manifests) == 1:
        return without[0]
    have = sorted({str(Platform(str(d["platform"].get("os", "")), str(d["platform"].get("architecture", "")),
                                str(d["platform"].get("variant", ""))))
                   for d in manifests if isinstance(d.get("platform"), dict)})  # fmt: skip
    raise ImageSourceError(f"can't read image `{src}`: no image for platform `{want}`",
                           hint=("available: " + ", ".join(have) + "; choose one with --platform")
                           if have else None)  # fmt: skip


def _load_manifest(store: BlobStore, desc: dict, src: str, ref_name: str | None) -> Image:
    digest = check_digest(str(desc.get("digest")), f"image `{src}`")
    manifest, raw = store.read_json(store.blob_name(digest), digest, desc.get("size"), "the manifest")
    cfg = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(cfg, dict) or not isinstance(layers, list):
        raise ImageSourceError(f"can't read image `{src}`: the manifest has no config or layers")
    cdigest = check_digest(str(cfg.get("digest")), f"the config of `{src}`")
    config, cbytes = store.read_json(store.blob_name(cdigest), cdigest, cfg.get("size"), "the image config")
    out = []
    for ld in layers:
        if not isinstance(ld, dict):
            raise ImageSourceError(f"can't read image `{src}`: invalid layer descriptor")
        ldg = check_digest(str(ld.get("digest")), f"a layer of `{src}`")
        size = ld.get("size")
        out.append(Layer(ldg, size if isinstance(size, int) else None, str(ld.get("mediaType", "")),
                         locator=store.blob_name(ldg)))  # fmt: skip
    _check_layer_types(out, src)
    return Image(src, store, config, cbytes, cdigest, out, digest, raw, ref_name)


def _check_layer_types(layers: list[Layer], src: str) -> None:
    check_layer_types([(layer.label, layer.media_type) for layer in layers], src)


def check_layer_types(layers: list[tuple[str, str]], src: str) -> None:
    """Raise ImageSourceError unless every (label, media type) of an image's `layers` is an
    image layer sifbox reads: tar (plain, gzip, zstd; OCI or Docker), or all SquashFS."""
    if layers and all(mt == SQUASHFS_LAYER for _, mt in layers):
        return  # an OCI-SIF's image: for `pull --oci` alone (sifcache.convert_to_sif)
    for label, mt in layers:
        if "nondistributable" in mt or "foreign" in mt:
            continue
        if mt and not mt.startswith(("application/vnd.oci.image.layer.v1.tar",
                                     "application/vnd.docker.image.rootfs")):  # fmt: skip
            raise ImageSourceError(f"can't read image `{src}`: layer {label} has media type `{shown(mt, 80)}`, "
                                   "not a tar layer")  # fmt: skip
        if mt.endswith("+encrypted"):
            raise ImageSourceError(f"can't read image `{src}`: layer {label} is encrypted")


def _docker_archive(store: BlobStore, ref: SourceRef, want: Platform) -> Image:
    """`docker save` format: manifest.json lists config file and layer files per image."""
    src = str(ref)
    with store.open("manifest.json") as f:
        data = f.read(MAX_JSON + 1)
    try:
        entries = json.loads(data)
    except ValueError as err:
        raise ImageSourceError(f"can't read image `{src}`: invalid manifest.json ({err})") from None
    except RecursionError:
        raise ImageSourceError(f"can't read image `{src}`: invalid manifest.json "
                               "(nested too deeply)") from None  # fmt: skip
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ImageSourceError(f"can't read image `{src}`: manifest.json lists no image")
    if ref.tag or ref.digest:
        wanted = ref.tag if not ref.digest else None
        picked = [e for e in entries if wanted and _tag_matches(wanted, _repo_tags(e))]
        if ref.digest:
            picked = [e for e in entries if str(e.get("Config", "")).endswith(ref.digest.split(":")[1])
                      or str(e.get("Config", "")).endswith(ref.digest.split(":")[1] + ".json")]  # fmt: skip
        if not picked:
            raise ImageSourceError(f"can't read image `{src}`: no image `{ref.tag or ref.digest}` in the archive")
        entry = picked[0]
    else:
        if len(entries) > 1:
            tags = [t for e in entries for t in _repo_tags(e)]
            raise ImageSourceError(f"can't read image `{src}`: the archive holds {len(entries)} images",
                                   hint=("name one: " + ", ".join(tags)) if tags else None)  # fmt: skip
        entry = entries[0]
    cname = str(entry.get("Config", ""))
    hexa = os.path.basename(cname).removesuffix(".json")
    cdigest = f"sha256:{hexa}" if re.fullmatch(r"[0-9a-f]{64}", hexa) else None
    config, cbytes = store.read_json(cname, cdigest, None, "the image config")
    if cdigest is None:
        cdigest = "sha256:" + hashlib.sha256(cbytes).hexdigest()
    rootfs = config.get("rootfs")
    diff_ids = (rootfs.get("diff_ids") if isinstance(rootfs, dict) else None) or []
    files = entry.get("Layers") or []
    if not isinstance(files, list) or not isinstance(diff_ids, list):
        raise ImageSourceError(f"can't read image `{src}`: no list of layer files or diff_ids")
    if len(files) != len(diff_ids):
        raise ImageSourceError(f"can't read image `{src}`: {len(files)} layer files but "
                               f"{len(diff_ids)} diff_ids in the config")  # fmt: skip
    layers = []
    for name, diff_id in zip(files, diff_ids, strict=True):
        name = str(name)
        check_digest(str(diff_id), f"a layer of `{src}`")
        m = re.fullmatch(r"blobs/(sha256)/([0-9a-f]{64})", _clean(name))
        digest = f"{m.group(1)}:{m.group(2)}" if m else None
        if not store.exists(name):
            raise ImageSourceError(f"can't read image `{src}`: layer file `{name}` is missing")
        layers.append(Layer(digest, None, "", str(diff_id), locator=name))
    tags = _repo_tags(entry)
    img = Image(src, store, config, cbytes, cdigest, layers, None, None, tags[0] if tags else ref.tag)
    return img


def _repo_tags(entry: dict) -> list[str]:
    tags = entry.get("RepoTags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _tag_matches(wanted: str, tags: list[str]) -> bool:
    for t in tags:
        if t == wanted or t.endswith("/" + wanted) or t.split("/")[-1] == wanted:
            return True
        if ":" not in wanted and t.rsplit(":", 1)[0].split("/")[-1] == wanted:
            return True
    return False

