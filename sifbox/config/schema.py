"""The one table of sifbox.conf directives.

Each `Directive` has its name as written in apptainer.conf, a type, a default
and a one-line help text; the parser (`sifbox.config.sysconf`), the shipped
default file (`sifbox/data/sifbox.conf`) and any generated help or docs come
from this table. Defaults are Apptainer's, except where sifbox differs and the
help text says so (`allow setuid`).

Types and the Python values they give:

========  ============================================  =====================
kind      written as                                    value
========  ============================================  =====================
bool      `yes` / `no` (any case)                       `bool`
int       a whole number, 0 or more                     `int`
string    any text; `None` when unset                   `str | None`
enum      one of `choices` (any case)                   `str` (lower case)
list      repeatable, and/or comma-separated            `tuple[str, ...]`
========  ============================================  =====================

`absolute=True` means the value (or each item of a list) must be an absolute
path; for `bind path` that is the source of `src[:dst]`.
"""

from __future__ import annotations

from sifbox.util.records import record as namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple, TypeAlias

    #: A directive's value (see the table in the module docstring).
    Value: TypeAlias = bool | int | str | tuple[str, ...] | None

BOOL = "bool"
INT = "int"
STRING = "string"
ENUM = "enum"
LIST = "list"
KINDS = (BOOL, INT, STRING, ENUM, LIST)

#: Whole numbers are bounded so that a stray long number is an error, not a huge int.
INT_MAX = 2**63 - 1

if TYPE_CHECKING:

    class _DirectiveFields(NamedTuple):
        name: str
        kind: str
        default: Value
        help: str
        choices: tuple[str, ...] = ()
        absolute: bool = False


# A plain namedtuple at run time: `typing` costs start-up time on every run.
_DirectiveFields = namedtuple(  # type: ignore[no-redef]
    "_DirectiveFields", "name kind default help choices absolute", defaults=((), False)
)


class Directive(_DirectiveFields):
    """One directive of sifbox.conf (an immutable record)."""

    __slots__ = ()

    @property
    def attr(self) -> str:
        """The name as a Python attribute: `mount home` -> `mount_home`."""
        return self.name.replace(" ", "_").replace("-", "_")

    @property
    def syntax(self) -> str:
        """What the value looks like, for help texts: `yes|no`, `integer`, ..."""
        if self.kind == BOOL:
            return "yes|no"
        if self.kind == ENUM:
            return "|".join(self.choices)
        if self.kind == INT:
            return "integer"
        what = "absolute path" if self.absolute else "string"
        return f"list of {what}s, repeatable" if self.kind == LIST else what

    def parse(self, raw: str) -> Value:
        """The value of `raw` (already trimmed, not empty); ValueError(reason) if invalid."""
        if self.kind == BOOL:
            word = raw.lower()
            if word not in ("yes", "no"):
                raise ValueError(f"`{self.name}` must be `yes` or `no`, not `{clip(raw)}`")
            return word == "yes"
        if self.kind == ENUM:
            word = raw.lower()
            if word not in self.choices:
                allowed = ", ".join(f"`{c}`" for c in self.choices)
                raise ValueError(f"`{self.name}` must be one of {allowed}, not `{clip(raw)}`")
            return word
        if self.kind == INT:
            # isascii: str.isdigit also accepts digits of other scripts ("١٢").
            # The length check comes first: int() refuses over 4300 digits with its own error.
            ok = raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= INT_MAX
            if not ok:
                raise ValueError(
                    f"`{self.name}` must be a whole number (0 or more), not `{clip(raw)}`"
                )
            return int(raw)
        if self.kind == LIST:
            items = tuple(item.strip() for item in raw.split(",") if item.strip())
            for item in items:
                self._check_path(item)
            return items
        self._check_path(raw)
        return raw

    def _check_path(self, value: str) -> None:
        if self.absolute and not value.startswith("/"):
            raise ValueError(f"`{self.name}` needs an absolute path, not `{clip(value)}`")

    def format(self, value: Value) -> list[str]:
        """`value` as written in the file, one string per line (none for unset or empty)."""
        if value is None:
            return []
        if isinstance(value, bool):
            return ["yes" if value else "no"]
        if isinstance(value, tuple):
            return list(value)
        return [str(value)]


def clip(text: str, width: int = 60) -> str:
    """`text` shortened for a message: a value may be up to a whole file long."""
    return text if len(text) <= width else text[: width - 3] + "..."


_D = Directive

#: Every directive sifbox knows, in the order of the shipped sifbox.conf.
SCHEMA: tuple[Directive, ...] = (
    # Privileges and namespaces
    _D("allow setuid", BOOL, False,
       "sifbox has no setuid mode: only `no` is supported (`yes` warns and acts as `no`)"),
    _D("allow pid ns", BOOL, True, "let users request a PID namespace (--pid)"),
    _D("allow ipc ns", BOOL, True, "let users request an IPC namespace (--ipc)"),
    _D("allow uts ns", BOOL, True, "let users request a UTS namespace (--uts, --hostname)"),
    _D("allow user ns", BOOL, True,
       "let containers run in a user namespace (the unprivileged mode needs it)"),
    _D("root default capabilities", ENUM, "default",
       "root containers' capabilities: bounded (default), capability.json, none, all (NOT contained)",
       ("default", "full", "file", "no")),
    # Loop devices (root's kernel mounts of images)
    _D("max loop devices", INT, 256, "most loop devices sifbox attaches images to"),
    _D("shared loop devices", BOOL, False,
       "let containers of the same image file share one loop device"),
    # Files generated in the container
    _D("config passwd", BOOL, True, "add the calling user to the container's /etc/passwd"),
    _D("config group", BOOL, True, "add the calling user's groups to the container's /etc/group"),
    _D("config resolv_conf", BOOL, True, "bind the host's /etc/resolv.conf into the container"),
    # System mounts
    _D("mount proc", BOOL, True, "mount /proc in the container"),
    _D("mount sys", BOOL, True, "mount /sys in the container"),
    _D("mount dev", ENUM, "yes",
       "bind the host's /dev (yes), only null, zero, random, urandom and shm (minimal), or none",
       ("yes", "no", "minimal")),
    _D("mount devpts", BOOL, True, "mount a new devpts instance when /dev is minimal (--contain)"),
    _D("mount home", BOOL, True, "bind the calling user's home directory"),
    _D("mount tmp", BOOL, True, "bind the host's /tmp and /var/tmp"),
    _D("mount hostfs", BOOL, False, "bind every file system mounted on the host"),
    _D("mount slave", BOOL, True, "propagate host mount events (autofs) into containers"),
    # Binds
    _D("bind path", LIST, ("/etc/localtime", "/etc/hosts"),
       "host path bound into every container, as `src[:dst]`; repeat the line for more",
       absolute=True),
    _D("user bind control", BOOL, True,
       "let users add binds (--bind, --home, --scratch, --workdir)"),
    _D("enable fusemount", BOOL, True, "let users mount FUSE file systems (--fusemount)"),
    _D("enable overlay", ENUM, "yes",
       "overlays: kernel then fuse-overlayfs (yes, try), fuse-overlayfs only (driver), none (no)",
       ("yes", "no", "try", "driver")),
    _D("enable underlay", ENUM, "yes",
       "create missing bind targets by underlay when overlay is off (preferred: always)",
       ("yes", "no", "preferred")),
    _D("share image mounts", BOOL, True,
       "one mount of an image per user and node that containers join (sifbox's own; no: per container)"),
    _D("share image idle timeout", INT, 60,
       "seconds a shared image mount stays after its last container ended (sifbox's own)"),
    _D("mount service", BOOL, False,
       "first ask the root mount service (`sifbox mounts serve`) to mount admitted images"),
    _D("mount service socket", STRING, "/run/sifbox-mount/mount.sock",
       "Unix socket of the mount service; its directory holds the service's mounts", absolute=True),
    _D("mount service idle timeout", INT, 60,
       "seconds the mount service keeps an image mounted after its last container ended"),
    _D("mount service max clients", INT, 64,
       "most connections the mount service serves at once (at least 1)"),
    _D("mount service max clients per user", INT, 8,
       "most connections of one user the mount service serves at once (at least 1)"),
    _D("squashfuse threads", ENUM, "auto",
       "multithreaded squashfuse_ll if it has it: auto (node mounts), yes (all), no (sifbox's own)",
       ("auto", "yes", "no")),
    _D("sessiondir max size", INT, 64,
       "size in MiB of the in-memory session directory used with --contain"),
    _D("memory fs type", ENUM, "tmpfs",
       "file system of the session directory and --writable-tmpfs", ("tmpfs", "ramfs")),
    # Which images may run
    _D("limit container owners", LIST, (),
       "run only images owned by these users (empty: any owner)"),
    _D("limit container groups", LIST, (),
       "run only images owned by these groups (empty: any group)"),
    _D("limit container paths", LIST, (),
       "run only images under these directories, whole path components (empty: anywhere)",
       absolute=True),
    _D("allow container sif", BOOL, True, "allow unencrypted SIF images"),
    _D("allow container encrypted", BOOL, True, "allow encrypted SIF images"),
    _D("allow container squashfs", BOOL, True, "allow bare SquashFS images"),
    _D("allow container extfs", BOOL, True, "allow ext2/3/4 images"),
    _D("allow container dir", BOOL, True, "allow sandbox (directory) images"),
    _D("limit container store", BOOL, False,
       "run only images admitted to the caller's own directory of the admission store"),
    # Admission store (`sifbox store serve`)
    _D("store path", STRING, None,
       "admission store directory, one subdirectory per user (unset: /var/lib/sifbox/store)",
       absolute=True),
    _D("store socket", STRING, "/run/sifbox/store.sock",
       "Unix socket of the admission store daemon", absolute=True),
    _D("store user", STRING, "sifbox-store", "system user the admission store daemon runs as"),
    _D("store max images", INT, 20, "most images one user may keep in the store (0: no limit)"),
    _D("store max size", INT, 16384,
       "largest image admitted, in MiB, checked before the image is copied (0: no limit)"),
    _D("store max total size", INT, 0, "most MiB one user's images may take (0: no limit)"),
    _D("store require signature", BOOL, False,
       "admit only images with a signature that `sifbox verify` accepts"),
    _D("store signers", LIST, (),
       "with `store require signature`: fingerprints of the keys that may sign (empty: any)"),
    _D("store sbom", BOOL, True,
       "generate an SBOM and append it to the image when it has none"),
    _D("store sbom max size", INT, 256,
       "most MiB of package databases read out of one image; more refuses it (0: no limit)"),
    _D("store sbom max files", INT, 20000,
       "most package database files read out of one image; more refuses it (0: no limit)"),
    _D("store vulnerability db", STRING, None,
       "offline OSV database directory to scan admitted images against (unset: no scan)",
       absolute=True),
    _D("store severity threshold", ENUM, "high",
       "refuse images with a known vulnerability of this severity or above",
       ("unknown", "low", "medium", "high", "critical")),
    _D("store scanner command", STRING, None,
       "external scanner run with the candidate image's path appended; non-zero refuses it"),
    _D("store audit log", STRING, "/var/log/sifbox/store.log",
       "append-only JSON-lines log of every decision of the admission store", absolute=True),
    _D("store max clients", INT, 64,
       "most connections the admission store serves at once (at least 1)"),
    _D("store max clients per user", INT, 8,
       "most connections of one user the admission store serves at once (at least 1)"),
    _D("store client timeout", INT, 10,
       "seconds a client of the admission store has to send its request, and to read the reply"),
    # GPUs
    _D("always use nv", BOOL, False, "act as if --nv were always given"),
    _D("use nvidia-container-cli", BOOL, False,
       "set up NVIDIA GPUs with nvidia-container-cli (as --nvccli)"),
    _D("always use rocm", BOOL, False, "act as if --rocm were always given"),
    # Networks
    _D("allow net users", LIST, (), "users who may join the networks of `allow net networks`"),
    _D("allow net groups", LIST, (), "groups whose members may join those networks"),
    _D("allow net networks", LIST, (), "administrator's networks those users and groups may join"),
    _D("allow netns paths", LIST, (), "network namespaces (paths) those users and groups may join with --netns-path",
       absolute=True),
    _D("cni configuration path", STRING, None,
       "CNI network configurations (unset: `network` beside sifbox.conf, else those shipped)", absolute=True),
    _D("cni plugin path", LIST, (), "directories of the CNI plugins (unset: /usr/lib/cni, /opt/cni/bin)",
       absolute=True),
    # Tools
    _D("mksquashfs procs", INT, 0, "processors mksquashfs may use (0: all)"),
    _D("mksquashfs mem", STRING, None, "memory limit for mksquashfs, such as 1G (unset: none)"),
    _D("mksquashfs compression", STRING, "zstd:3",
       "compression of built images, NAME[:LEVEL] (zstd:3, gzip:9, xz, lz4)"),
    _D("mksquashfs path", STRING, None, "mksquashfs program (unset: search PATH)", absolute=True),
    _D("unsquashfs path", STRING, None, "unsquashfs program (unset: search PATH)", absolute=True),
    _D("ldconfig path", STRING, None, "host ldconfig program (unset: search PATH)", absolute=True),
    _D("nvidia-container-cli path", STRING, None,
       "nvidia-container-cli program (unset: search PATH)", absolute=True),
    _D("cryptsetup path", STRING, None, "cryptsetup program (unset: search PATH)",
       absolute=True),
    # Cgroups
    _D("systemd cgroups", BOOL, True, "manage cgroups through systemd, not cgroupfs directly"),
    # Messages
    _D("message format", ENUM, "sifbox",
       "messages as sifbox's (`sifbox: error:`) or Apptainer's (`FATAL:`, `INFO:`)",
       ("sifbox", "apptainer")),
)  # fmt: skip

BY_NAME: dict[str, Directive] = {d.name: d for d in SCHEMA}
#: Attribute spelling -> directive name (`mount_home` -> `mount home`).
BY_ATTR: dict[str, str] = {d.attr: d.name for d in SCHEMA}

#: Directives of apptainer.conf or singularity.conf that sifbox does not
#: implement: a file copied from Apptainer gets a precise warning for them.
APPTAINER_ONLY = frozenset(
    {
        "allow setuid-mount encrypted",
        "allow setuid-mount squashfs",
        "allow setuid-mount extfs",
        "allow kernel squashfs",
        "allow kernel extfs",
        "sync writable extfs",
        "download concurrency",
        "download part size",
        "download buffer size",
        "binary path",
        "suidbinary path",
        "image driver",
        "go path",
        "root search path",
        "user search path",
        "sif fuse",
        "oci mode",
        "tmp sandbox",
        "allow monitoring",
        "apptheus communication socket path",
    }
)

assert len(BY_NAME) == len(SCHEMA) == len(BY_ATTR), "directive names must be unique"
assert not APPTAINER_ONLY & BY_NAME.keys()
