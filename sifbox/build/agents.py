"""Bootstrap agents: fill an empty root directory from the header of a stage.

An agent is `function(stage, root, ctx) -> None`, found by name in AGENTS
(`"module:function"`, imported only when used). Every agent runs as root:
real root, or root of the build's fakeroot user namespace.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import tarfile
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sifbox.formats.deffile import Stage

from sifbox.util.errors import NotAvailableError, SifboxError

#: agent name -> "module:function"
AGENTS: dict[str, str] = {
    "scratch": "sifbox.build.agents:scratch",
    "busybox": "sifbox.build.agents:busybox",
    "localimage": "sifbox.build.agents:localimage",
    "debootstrap": "sifbox.build.agents:debootstrap",
    "oci": "sifbox.build.ociagents:oci_image",
    "oci-archive": "sifbox.build.ociagents:oci_image",
    "docker-archive": "sifbox.build.ociagents:oci_image",
    "docker": "sifbox.build.ociagents:oci_image",
    "yum": "sifbox.build.agents:rpm_family",
    "dnf": "sifbox.build.agents:rpm_family",
    "zypper": "sifbox.build.agents:rpm_family",
    "arch": "sifbox.build.agents:rpm_family",
}
#: Agents of other host tools: the tool each needs, and the Debian package if any.
_HOST_TOOLS = {
    "yum": (("yum", "dnf"), None),
    "dnf": (("dnf", "yum"), None),
    "zypper": (("zypper",), None),
    "arch": (("pacstrap",), "arch-install-scripts"),
}


class BootstrapError(SifboxError):
    reference = "bootstrap-failed"


@dataclasses.dataclass
class BootstrapContext:
    """What agents may use besides the stage header."""

    filename: str  # the definition file, for messages
    tmpdir: str  # scratch space of this build
    step: Callable[[str], None]  # progress line
    quiet: bool = False
    extract: Callable[[str, str], None] | None = None  # (image path, dest dir)
    disable_cache: bool = False  # images from registries: no cache read or written
    arch: str | None = None  # `build --arch`: that architecture's image of an index


def bootstrap(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    import importlib

    agent = stage.bootstrap
    target = AGENTS.get(agent)
    if target is None:
        raise NotAvailableError(
            f"can't bootstrap `{ctx.filename}`: the `{agent}` agent is not available in this version of sifbox",
            hint="available agents: " + ", ".join(sorted(AGENTS)),
        )
    module, _, func = target.partition(":")
    getattr(importlib.import_module(module), func)(stage, root, ctx)


def _run(
    argv: list[str], what: str, *, quiet: bool = False, env: dict[str, str] | None = None
) -> None:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, check=False)  # fmt: skip
    except OSError as err:
        raise BootstrapError(f"can't {what}: can't run `{argv[0]}`: {err.strerror}") from None
    if proc.returncode != 0:
        lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        if not quiet and lines:
            import sys

            sys.stderr.write("\n".join(lines[-20:]) + "\n")
        raise BootstrapError(
            f"can't {what}: `{os.path.basename(argv[0])}` failed with status {proc.returncode}"
            + (f": {lines[-1]}" if lines else ""),
            hint=f"the command was `{shlex.join(argv)}`",
        )


def _run_with_progress(argv: list[str], what: str, ctx: BootstrapContext, env: dict[str, str],
                       steps: Callable[[str], str | None], tool: str) -> None:  # fmt: skip
    """Run a long bootstrap tool, showing its progress as it goes: its own lines at -v (as
    Apptainer shows debootstrap's), else the step lines `steps` makes of them; the last
    lines again when it fails."""
    import collections
    import sys

    verbose = int(os.environ.get("SIFBOX_MESSAGELEVEL", "20") or 20) <= 15 and not ctx.quiet
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)  # fmt: skip
    except OSError as err:
        raise BootstrapError(f"can't {what}: can't run `{argv[0]}`: {err.strerror}") from None
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            if verbose:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            elif not ctx.quiet:
                step = steps(line)
                if step:
                    ctx.step(step)
        status = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop it, and wait for it
            proc.terminate()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if status != 0:
        if not ctx.quiet and not verbose and tail:
            sys.stderr.write("\n".join(tail) + "\n")
        raise BootstrapError(
            f"can't {what}: `{tool}` failed with status {status}" + (f": {tail[-1]}" if tail else ""),
            hint=f"the command was `{shlex.join(argv)}`",
        )


class DebootstrapSteps:
    """debootstrap's progress as a few step lines: each phase (`I: Resolving dependencies of
    required packages...`), warnings and errors, and one line where a run of per-package
    lines (`I: Retrieving adduser 3.134`, `I: Extracting adduser...`) starts, then one with
    the count every `every` seconds while it goes on."""

    _RUNS = {"Retrieving": "Retrieving packages", "Validating": "Retrieving packages",
             "Extracting": "Extracting packages", "Unpacking": "Unpacking packages",
             "Configuring": "Configuring packages"}  # fmt: skip

    def __init__(self, every: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        import time

        self.run: str | None = None
        self.count = 0
        self.every = every
        self.clock = clock or time.monotonic
        self.shown = 0.0

    def __call__(self, line: str) -> str | None:
        level, sep, text = line.partition(": ")
        text = text.strip()
        if not sep or level not in ("I", "W", "E"):
            return None  # the output of what debootstrap runs (dpkg, ...): shown at -v
        words = text.split()
        verb = words[0] if words else ""
        per_package = verb in self._RUNS and (
            (len(words) == 3 and verb in ("Retrieving", "Validating"))
            or (len(words) == 2 and text.endswith("..."))
        )
        if per_package:
            run = self._RUNS[verb]
            if verb != "Validating":
                self.count += 1
            if run == self.run:
                if self.clock() - self.shown < self.every:
                    return None
                self.shown = self.clock()
                return f"debootstrap: {run}... ({self.count} so far)"
            self.run, self.count, self.shown = run, 1, self.clock()
            return f"debootstrap: {run}..."
        self.run = None
        kind = {"W": "warning: ", "E": "error: "}.get(level, "")
        return f"debootstrap: {kind}{text}"


# -- scratch ---------------------------------------------------------------------
def scratch(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    """An empty image: what %setup and %files put there."""


# -- busybox ---------------------------------------------------------------------
def _fetch(url: str, dest: str, ctx: BootstrapContext) -> None:
    """MirrorURL: a local path, file:// URL or http(s) URL of a busybox binary."""
    import shutil
    import urllib.parse

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
        try:
            shutil.copyfile(path, dest)
        except OSError as err:
            raise BootstrapError(f"can't bootstrap busybox from `{url}`: {err.strerror}") from None
        return
    if parsed.scheme not in ("http", "https"):
        raise BootstrapError(
            f"can't bootstrap busybox from `{url}`: unsupported URL scheme `{parsed.scheme}`"
        )
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as err:
        raise BootstrapError(f"can't bootstrap busybox: can't download `{url}`: {err}") from None


def busybox(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    """A busybox root: /bin/busybox and a link per applet, /etc basics."""
    from sifbox.util.paths import which

    url = stage.get("mirrorurl")
    if not url:
        url = which("busybox") or ""
        if not url:
            raise BootstrapError(f"can't bootstrap busybox for `{ctx.filename}`: no `MirrorURL:` and no busybox "
                                 "on this host", hint="install the Debian package `busybox-static`, or set "
                                 "`MirrorURL:` to a busybox binary (path or URL)")  # fmt: skip
    for d in (
        "bin",
        "etc",
        "tmp",
        "root",
        "home",
        "dev",
        "proc",
        "sys",
        "var/tmp",
        "usr/bin",
        "sbin",
    ):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    binary = os.path.join(root, "bin", "busybox")
    _fetch(url, binary, ctx)
    os.chmod(binary, 0o755)
    try:
        proc = subprocess.run(
            [binary, "--list"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise BootstrapError(f"can't bootstrap busybox from `{url}`: it does not run on this host ({err})",
                             hint="MirrorURL must name a statically linked busybox for this architecture")  # fmt: skip
    for applet in sorted(set(proc.stdout.decode().split())):
        if "/" in applet or applet in ("busybox", ".", ".."):
            continue
        link = os.path.join(root, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    _write_if_missing(os.path.join(root, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n")
    _write_if_missing(os.path.join(root, "etc", "group"), "root:x:0:\n")
    _write_if_missing(os.path.join(root, "etc", "hosts"), "127.0.0.1\tlocalhost\n")


def _write_if_missing(path: str, text: str) -> None:
    if not os.path.lexists(path):
        with open(path, "w") as f:
            f.write(text)


# -- localimage ------------------------------------------------------------------
def localimage(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    """From: a SIF, bare SquashFS or sandbox directory on this host."""
    source = stage.get("from")  # its `Fingerprints:` are checked before the build (pipeline)
    copy_image(source, root, ctx)


def copy_image(source: str, root: str, ctx: BootstrapContext) -> None:
    """Fill `root` with the root file system of the image `source`."""
    from sifbox.image.source import ImageKind, one_layer, open_image

    if not os.path.exists(source):
        raise BootstrapError(f"can't bootstrap from `{source}`: no such file or directory")
    src = open_image(source, verb="bootstrap from")
    one_layer(src, "bootstrap from")
    try:
        if src.kind is ImageKind.SANDBOX:
            _run(
                ["cp", "-a", "--", os.path.join(src.path, "."), root],
                f"copy `{source}`",
                quiet=ctx.quiet,
            )
            return
        from sifbox.build.assemble import extract_squashfs
        from sifbox.build.fakeroot import in_user_namespace

        if in_user_namespace():
            _extract_in_user_namespace(src.path, src.offset, root, ctx)
        else:
            extract_squashfs(src.path, src.offset, root)
    finally:
        src.close()


#: A device node in `unsquashfs -lln -d ""` output: type, permissions, uid/gid, major, minor, path.
_DEVICE_LINE = r"^([cb])([-rwxsStT]{9}) (\d+)/(\d+) +(\d+), *(\d+) \d{4}-\d\d-\d\d \d\d:\d\d (/.*)$"


def parse_devices(listing: str) -> list[tuple[str, tarfile.TarInfo]]:
    """The device nodes of an `unsquashfs -lln -d ""` listing, as (path without the leading
    `/`, TarInfo with type, mode, owner and device numbers)."""
    import re

    pattern = re.compile(_DEVICE_LINE)
    out = []
    for line in listing.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        kind, perms, uid, gid, major, minor, path = m.groups()
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type = tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE
        info.mode = _mode_bits(perms)
        info.uid, info.gid, info.devmajor, info.devminor = int(uid), int(gid), int(major), int(minor)
        out.append((path.lstrip("/"), info))
    return out


def _mode_bits(perms: str) -> int:
    """`rwsr-xr-T` -> 0o5754: the nine letters of `ls -l` with setuid/setgid/sticky."""
    mode = 0
    for i, ch in enumerate(perms):
        bit = 1 << (8 - i)
        if ch in "rwxst":
            mode |= bit
        if ch in "sS":
            mode |= 0o4000 if i == 2 else 0o2000
        elif ch in "tT":
            mode |= 0o1000
    return mode


def _extract_in_user_namespace(image: str, offset: int, root: str, ctx: BootstrapContext) -> None:
    """unsquashfs as root of a user namespace, which may not create device nodes (a root
    made by debootstrap has a few in /dev) or set system extended attributes: each device
    node becomes an empty file, recorded so that a SIF or SquashFS output gets it back
    (`ociagents.device_pseudo_file`) and a sandbox goes without it, as in Apptainer."""
    import subprocess

    from sifbox.build.assemble import extract_squashfs
    from sifbox.build.ociagents import record_devices
    from sifbox.util.paths import chase, which

    tool = which("unsquashfs") or "unsquashfs"
    proc = subprocess.run([tool, "-lln", "-d", "", "-o", str(offset), image], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="surrogateescape", check=False)  # fmt: skip
    devices = parse_devices(proc.stdout) if proc.returncode == 0 else []
    extra = ["-user-xattrs" if _user_xattrs(ctx.tmpdir) else "-no-xattrs"]
    if devices:
        exclude = os.path.join(ctx.tmpdir, "unsquashfs-devices.exclude")
        with open(exclude, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(path + "\n" for path, _ in devices)
        extra += ["-no-wildcards", "-exclude-file", exclude]
    extract_squashfs(image, offset, root, extra_args=extra)
    for path, _ in devices:
        parent = chase(root, os.path.dirname(path), create="dir")  # never outside `root`
        fd = os.open(os.path.join(parent, os.path.basename(path)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)  # fmt: skip
        os.close(fd)
    if devices:
        record_devices(ctx.tmpdir, root, devices)
        from sifbox.util import log

        log.verbose("%d device nodes of the image are kept as pseudo definitions: %s", len(devices),
                    ", ".join("/" + p for p, _ in devices[:8]) + (", ..." if len(devices) > 8 else ""))  # fmt: skip


def _user_xattrs(directory: str) -> bool:
    """Whether `directory`'s file system takes user.* extended attributes (unsquashfs fails
    on one that does not, when asked to set them)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".xattr-") as f:
            os.setxattr(f.name, "user.sifbox", b"")
        return True
    except OSError:
        return False


# -- debootstrap -----------------------------------------------------------------
def host_mirror(sources_dir: str = "/etc/apt") -> str | None:
    """The Debian mirror this machine's apt uses (first `deb` URI that is not a
    security archive), from sources.list and sources.list.d (both formats)."""
    from sifbox.formats.aptsources import first_mirror

    texts: list[tuple[str, str]] = []
    main = os.path.join(sources_dir, "sources.list")
    paths = [main] if os.path.isfile(main) else []
    d = os.path.join(sources_dir, "sources.list.d")
    if os.path.isdir(d):
        paths += [
            os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith((".list", ".sources"))
        ]
    for path in paths:
        try:
            with open(path) as f:
                texts.append((path, f.read(1 << 20)))
        except OSError:
            continue
    return first_mirror(texts)


def _dpkg_arch() -> str | None:
    try:
        return subprocess.run(["dpkg", "--print-architecture"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              check=True).stdout.decode().strip() or None  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def debootstrap(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    """Debian or Ubuntu with the host's `debootstrap` (OSVersion, MirrorURL, Include)."""
    from sifbox.util.paths import which

    tool = which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap",) if os.path.exists(p)), None
    )
    if tool is None:
        raise BootstrapError("can't bootstrap with debootstrap: `debootstrap` is not installed",
                             hint="install the Debian package `debootstrap`")  # fmt: skip
    suite = stage.get("osversion")
    if not suite:
        raise BootstrapError(
            f"can't bootstrap `{ctx.filename}`: debootstrap needs `OSVersion:` (e.g. bookworm)"
        )
    mirror = stage.get("mirrorurl") or host_mirror()
    if not mirror:
        raise BootstrapError(f"can't bootstrap `{ctx.filename}`: no `MirrorURL:` and no mirror in /etc/apt",
                             hint="set `MirrorURL: http://deb.debian.org/debian`")  # fmt: skip
    argv = [tool, "--variant=minbase"]
    arch = _dpkg_arch()
    if arch:
        argv.append(f"--arch={arch}")
    include = [p for p in stage.get("include").replace(",", " ").split() if p]
    if include:
        argv.append("--include=" + ",".join(include))
    argv += [suite, root, mirror]
    env = dict(os.environ)
    from sifbox.build.fakeroot import in_user_namespace

    if in_user_namespace():
        # No mknod in a user namespace: debootstrap's container mode binds
        # the host's device nodes instead (in the build's own mount namespace).
        env["container"] = "lxc"
    else:
        # Keep debootstrap's /proc and /sys mounts of the target off the host,
        # even when it is interrupted.
        unshare = which("unshare")
        if unshare:
            argv = [unshare, "--mount", "--propagation", "private", "--", *argv]
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if "/sbin" not in env["PATH"]:
        env["PATH"] += ":/usr/sbin:/sbin"
    ctx.step(f"debootstrap {suite} from {mirror}")
    _run_with_progress(argv, f"bootstrap {suite} with debootstrap", ctx, env, DebootstrapSteps(),
                       tool="debootstrap")


# -- agents of other distributions --------------------------------------------------
def rpm_family(stage: Stage, root: str, ctx: BootstrapContext) -> None:
    """yum/dnf/zypper/arch need the distribution's own tools on the host."""
    from sifbox.util.paths import which

    agent = stage.bootstrap
    tools, package = _HOST_TOOLS[agent]
    found = next((t for t in tools if which(t)), None)
    if found is None:
        need = " or ".join(f"`{t}`" for t in tools)
        hint = (f"install the Debian package `{package}`" if package else
                f"{need} is not packaged for Debian; build from a `Bootstrap: docker` or `localimage` "
                "base of that distribution instead")  # fmt: skip
        raise BootstrapError(f"can't bootstrap with `{agent}`: this host has no {need}", hint=hint)
    raise NotAvailableError(f"can't bootstrap with `{agent}`: the agent is not available in this version of sifbox",
                            hint="build from a `Bootstrap: docker` or `localimage` base instead")  # fmt: skip
