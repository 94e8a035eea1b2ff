"""Host GPU driver files for a container (`--nv`, `--rocm`), as pure planning.

A library list (`nvliblist.conf`, `rocmliblist.conf`: the format and default
lists of Apptainer's) names binaries (`nvidia-smi`), libraries by their
unversioned name (`libcuda.so`, matched against the dynamic linker cache,
`ldconfig -p`) and absolute files (bound at the same path). What is found
becomes bind mounts for the mount plan:

* libraries  -> `/.singularity.d/libs/<soname>` (on LD_LIBRARY_PATH),
* binaries   -> `/usr/bin/<name>`,
* files      -> the same path,
* device nodes -> `/dev/<name>`, when the container's /dev is not the host's.

Nothing here touches the system: the linker cache text, PATH lookups and
device listings come in as arguments, so that it is tested without a GPU.
"""

from __future__ import annotations

import os
from collections import namedtuple

from sifbox.runtime.sandbox.ops import Mount

LIBS_DIR = "/.singularity.d/libs"
BIN_DIR = "/usr/bin"

#: What a library list names.
LibList = namedtuple("LibList", "binaries libraries files")
#: What was found on the host; `missing` names list entries found nowhere.
Found = namedtuple("Found", "libraries binaries files devices")


def parse_liblist(text: str) -> LibList:
    """`nvliblist.conf` text: one name a line, `#` comments; names ending in
    `.so` (or `.so.N`) are libraries, absolute paths are files, the rest binaries."""
    binaries: list[str] = []
    libraries: list[str] = []
    files: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("/"):
            files.append(os.path.normpath(line))
        elif ".so" in line:
            libraries.append(line)
        elif "/" not in line:
            binaries.append(line)
    return LibList(tuple(binaries), tuple(libraries), tuple(files))


def parse_ldcache(text: str) -> list[tuple[str, str, str]]:
    """`ldconfig -p` output -> [(soname, flags, path)], in cache order."""
    entries = []
    for line in text.splitlines():
        if "=>" not in line or not line.startswith((" ", "\t")):
            continue
        left, _, path = line.partition("=>")
        left = left.strip()
        name, _, flags = left.partition(" (")
        entries.append((name.strip(), flags.rstrip(")").strip(), path.strip()))
    return entries


def _native(flags: str) -> bool:
    """A 64-bit entry (`libc6,x86-64`, `libc6,AArch64`, `libc6,64bit`...):
    32-bit compatibility libraries are not bound (as Apptainer)."""
    return "64" in flags


def match_libraries(wanted: tuple[str, ...], cache: list[tuple[str, str, str]]) -> dict[str, str]:
    """{soname: host path} of the cache entries whose name starts with a
    wanted name: `libcuda.so` matches `libcuda.so.1` and `libcuda.so`, not
    `libcudart.so.12`. The first entry of a name wins (the cache's order)."""
    found: dict[str, str] = {}
    for name, flags, path in cache:
        if name in found or not _native(flags):
            continue
        for want in wanted:
            if name == want or name.startswith(want + "."):
                found[name] = path
                break
    return found


def find(liblist: LibList, ldcache_text: str, which, exists=os.path.exists) -> Found:  # type: ignore[no-untyped-def]
    """Host files named by `liblist`; `which(name)` finds a binary or None."""
    libraries = match_libraries(liblist.libraries, parse_ldcache(ldcache_text))
    binaries = {}
    for name in liblist.binaries:
        path = which(name)
        if path:
            binaries[name] = path
    files = tuple(f for f in liblist.files if exists(f))
    return Found(libraries, binaries, files, ())


def mounts(found: Found, *, dev_is_host: bool, dev_root: str = "/dev", isdir=os.path.isdir) -> list[Mount]:  # type: ignore[no-untyped-def]
    """Bind mounts for `found`, to append to the mount plan."""
    out = [Mount("bind", path, f"{LIBS_DIR}/{name}", readonly=True, file=True)
           for name, path in sorted(found.libraries.items())]  # fmt: skip
    out += [Mount("bind", path, f"{BIN_DIR}/{name}", readonly=True, file=True)
            for name, path in sorted(found.binaries.items())]  # fmt: skip
    out += [Mount("bind", f, f, readonly=True, file=not isdir(f)) for f in found.files]
    out += device_mounts(found.devices, dev_is_host=dev_is_host, dev_root=dev_root, isdir=isdir)
    return out


def device_mounts(devices, *, dev_is_host: bool, dev_root: str = "/dev", isdir=os.path.isdir) -> list[Mount]:  # type: ignore[no-untyped-def]
    """Binds of device nodes (host paths under `dev_root`) into /dev.

    When the container shares the host's /dev (the default) the host's
    nodes are there already; binds are only needed in a minimal /dev
    (`--contain`, `mount dev = minimal`) or with a device root elsewhere
    (see `dev_mounts_needed`).
    """
    if dev_is_host:
        return []
    return [Mount("rbind", path, "/dev/" + os.path.relpath(path, dev_root), file=not isdir(path))
            for path in devices]  # fmt: skip


def read_ldcache(ldconfig: str | None) -> tuple[str, str | None]:
    """(`ldconfig -p` output, None) or ("", why it failed)."""
    import subprocess

    prog = ldconfig or _find_ldconfig()
    if prog is None:
        return "", "ldconfig not found"
    try:
        proc = subprocess.run([prog, "-p"], capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except OSError as err:
        return "", f"could not execute {prog}: {err.strerror}"
    except subprocess.TimeoutExpired:
        return "", f"{prog} -p did not answer within 60 s"
    if proc.returncode != 0:
        return "", f"{prog} -p failed with exit status {proc.returncode}"
    return proc.stdout, None


def _find_ldconfig() -> str | None:
    from sifbox.util.paths import which

    return which("ldconfig", os.environ.get("PATH", "") + ":/sbin:/usr/sbin")


def load_liblist(name: str, conf_dir: str) -> tuple[str | None, str]:
    """(text, where) of the site's `name` next to sifbox.conf, else the one
    shipped with sifbox; (None, reason) when neither can be read."""
    site = os.path.join(conf_dir, name)
    for path in (site, os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", name)):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(1 << 20), path
        except FileNotFoundError:
            continue
        except OSError as err:
            return None, f"can't read `{path}`: {err.strerror}"
    return None, f"`{site}` does not exist"


def list_devices(dev_root: str, names) -> list[str]:  # type: ignore[no-untyped-def]
    """Entries of `dev_root` for which `names(entry)` is true, sorted."""
    try:
        entries = os.listdir(dev_root)
    except OSError:
        return []
    return [os.path.join(dev_root, e) for e in sorted(entries) if names(e)]


#: A GPU vendor's driver set-up: its library list, its device nodes, the word
#: in Apptainer's "Could not find any <word> files on this host!" warning.
Vendor = namedtuple("Vendor", "name liblist word device_filter")


def gather(vendor: Vendor, *, conf_dir: str, ldconfig: str | None, dev_root: str,  # type: ignore[no-untyped-def]
           visible=None, warn) -> Found:  # fmt: skip
    """Find `vendor`'s driver files on this host (reads the library list, runs
    `ldconfig -p`, lists `dev_root`). Problems are warnings, as Apptainer's:
    the container still starts, without the driver."""
    from sifbox.util.paths import which

    text, where = load_liblist(vendor.liblist, conf_dir)
    if text is None:
        warn(f"While finding {vendor.word} bind points: {where}")
        liblist = LibList((), (), ())
    else:
        liblist = parse_liblist(text)
    cache, why = read_ldcache(ldconfig) if liblist.libraries else ("", None)
    if why:
        warn(f"While finding {vendor.word} bind points: could not retrieve ld cache: {why}")
    path = os.environ.get("PATH", "") + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    found = find(liblist, cache, lambda name: which(name, path))
    if not found.libraries and not found.binaries and not found.files:
        warn(f"Could not find any {vendor.word} files on this host!")
    devices = list_devices(dev_root, vendor.device_filter)
    if visible is not None:
        devices = visible(devices)
    return found._replace(devices=tuple(devices))
