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
    source = stage.get("from")
    if stage.get("fingerprints"):
        raise NotAvailableError(
            f"can't bootstrap from `{source}`: `Fingerprints:` needs signature verification, not available "
            "in this version of sifbox",
            hint="remove the `Fingerprints:` line to build from the image unverified",
        )
    copy_image(source, root, ctx)


def copy_image(source: str, root: str, ctx: BootstrapContext) -> None:
    """Fill `root` with the root file system of the image `source`."""
    from sifbox.image.source import ImageKind, open_image

    if not os.path.exists(source):
        raise BootstrapError(f"can't bootstrap from `{source}`: no such file or directory")
    src = open_image(source, verb="bootstrap from")
    try:
        if src.kind is ImageKind.SANDBOX:
            _run(
                ["cp", "-a", "--", os.path.join(src.path, "."), root],
                f"copy `{source}`",
                quiet=ctx.quiet,
            )
            return
        from sifbox.build.assemble import extract_squashfs

        extract_squashfs(src.path, src.offset, root)
    finally:
        src.close()


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
    _run(argv, f"bootstrap {suite} with debootstrap", quiet=ctx.quiet, env=env)


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
