"""What a container should be: the request, as plain immutable data.

The CLI turns flags into a `ContainerSpec`; `plan` turns it into mounts and
`env` into an environment, all without touching the system.

Bind options, as Apptainer reads them:

    --bind SRC[:DEST[:OPTS]][,SRC2...]   OPTS: ro, rw, image-src=PATH, id=N, comma-separated
                                          (`a\\,b` and `a\\:b` are a comma and a colon of a path)
    --mount type=bind,src=SRC,dst=DEST[,ro][,image-src=PATH][,id=N][,nonested]
                                          CSV: a field may be quoted ("src=/a,b"); one mount a line

A bind with `image-src=` or `id=` mounts a directory of an image file (SquashFS,
EXT3, or a partition of a SIF) instead of binding the file itself.
"""

from __future__ import annotations

from sifbox.util.records import record as namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NamedTuple

    class BindMount(NamedTuple):
        """A bind mount: host `source` at container `target`; with `image_src`
        (a path in the image) or `part_id` (a SIF descriptor), `source` is an
        image file whose file system is mounted. `nested`: listed for the
        containers started inside this one (`--mount ...,nonested` is not)."""

        source: str
        target: str
        readonly: bool = False
        image_src: str | None = None
        part_id: int | None = None
        nested: bool = True

    class Host(NamedTuple):
        """The calling user and host facts the plan depends on."""

        uid: int
        gid: int
        user: str
        home: str
        cwd: str
        is_root: bool

    class ContainerSpec(NamedTuple):
        image: str
        action: str
        command: list[str] | tuple[str, ...] = ()
        binds: tuple[BindMount, ...] = ()
        home_source: str | None = None
        home_target: str | None = None
        no_home: bool = False
        contain: bool = False
        cleanenv: bool = False
        writable_tmpfs: bool = False
        userns: bool = False
        pwd: str | None = None
        env_overrides: tuple[tuple[str, str], ...] = ()
        no_mount: frozenset[str] = frozenset()
        shell: str | None = None
        fakeroot: bool = False
        pid: bool = False
        ipc: bool = False
        uts: bool = False
        hostname: str | None = None
        net: bool = False
        writable: bool = False
        overlays: tuple[str, ...] = ()
        identity_files: bool = True
        #: -W/--workdir: the host directory behind /tmp, /var/tmp (and the home
        #: directory) with --contain, and behind the --scratch directories
        workdir: str | None = None
        #: -S/--scratch: container directories that start empty
        scratch: tuple[str, ...] = ()
        #: --network names (empty: the default, bridge for root, none for users), --network-args, --dns
        network: tuple[str, ...] = ()
        network_args: tuple[str, ...] = ()
        dns: tuple[str, ...] = ()
        #: --netns-path: an existing network namespace to join (with `net` set)
        netns_path: str | None = None


# Plain records at run time: `typing` costs start-up time on every launch.
BindMount = namedtuple(  # type: ignore[misc]
    "BindMount", "source target readonly image_src part_id nested", defaults=(False, None, None, True)
)
Host = namedtuple("Host", "uid gid user home cwd is_root")  # type: ignore[misc]
ContainerSpec = namedtuple(  # type: ignore[misc]
    "ContainerSpec",
    "image action command binds home_source home_target no_home contain cleanenv "
    "writable_tmpfs userns pwd env_overrides no_mount shell fakeroot pid ipc uts hostname net writable overlays "
    "identity_files workdir scratch network network_args dns netns_path",
    defaults=((), (), None, None, False, False, False, False, False, None, (), frozenset(), None, False,
              False, False, False, None, False, False, (), True, None, (), (), (), (), None),
)  # fmt: skip

ACTIONS = ("exec", "run", "shell", "test")
#: `--no-mount` names (plus any absolute container path of a bind).
NO_MOUNT_NAMES = frozenset(
    {"proc", "sys", "dev", "devpts", "home", "tmp", "hostfs", "cwd", "bind-paths",
     "/etc/hosts", "/etc/resolv.conf", "/etc/localtime"}
)  # fmt: skip

#: The options of a --bind: flags, and options that take a value.
BIND_FLAGS = ("ro", "rw")
BIND_VALUES = ("image-src", "id")
BIND_OPTIONS_HINT = "ro, rw, image-src=PATH or id=N"


def parse_bind(text: str) -> list[BindMount]:
    """`src[:dst[:opts]][,src2...]` as Apptainer's --bind takes it.

    Binds are separated by commas, and so are the options of a bind: after
    `src:dst:opt`, a comma-separated item that is an option (`ro`, `rw`,
    `image-src=...`, `id=...`) belongs to that bind; anything else starts
    the next bind. A backslash makes the comma or colon after it part of a path.
    """
    binds: list[BindMount] = []
    current: list[str] | None = None  # the fields of the bind being read, its options last
    for item in _split(text, ","):
        item = item.strip()
        if current is not None and len(current) >= 3 and _is_option(item):
            current.append(item)
            continue
        if current is not None:
            binds.append(_bind(current))
            current = None
        if not item:
            continue
        fields = _split(item, ":")
        if len(fields) > 3 or not fields[0]:
            raise _bind_error(item, "expected src[:dest[:options]]")
        current = fields
    if current is not None:
        binds.append(_bind(current))
    return binds


def _split(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` that no backslash escapes (escapes kept)."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",:":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(path: str) -> str:
    return path.replace("\\,", ",").replace("\\:", ":")


def _is_option(item: str) -> bool:
    return item in BIND_FLAGS or any(item.startswith(name + "=") for name in BIND_VALUES)


def _bind_error(item: str, reason: str) -> Exception:
    from sifbox.util.errors import UsageError

    return UsageError(f"can't use bind `{item}`: {reason}")


def _bind(fields: list[str]) -> BindMount:
    """The bind of `src`, `dst` (may be empty) and its options, as read by parse_bind."""
    shown = ":".join(fields[:3]) + "".join("," + o for o in fields[3:])
    src = _unescape(fields[0])
    dst = _unescape(fields[1]) if len(fields) > 1 and fields[1] else src
    readonly, image_src, part_id = False, None, None
    for opt in fields[2:]:
        if not opt:
            continue
        name, eq, value = opt.partition("=")
        if opt == "ro":
            readonly = True
        elif opt == "rw":
            pass
        elif eq and name == "image-src":
            image_src = value or "/"
        elif eq and name == "id":
            part_id = _part_id(value, shown)
        else:
            raise _bind_error(shown, f"unknown option `{opt}` (use {BIND_OPTIONS_HINT})")
    if not dst.startswith("/"):
        raise _bind_error(shown, "the destination must be an absolute path")
    return BindMount(src, dst, readonly, image_src, part_id)


def _part_id(value: str, shown: str) -> int:
    if not value.isdigit() or int(value) == 0:
        raise _bind_error(shown, f"`id={value}`: the descriptor ID is a number from 1")
    return int(value)


#: --mount keys (lower case) and the field each sets.
MOUNT_KEYS = {"type": "type", "source": "source", "src": "source", "destination": "destination",
              "dst": "destination", "dest": "destination", "target": "destination"}  # fmt: skip


def parse_mount(text: str) -> list[BindMount]:
    """`--mount type=bind,source=...,destination=...[,ro][,image-src=...][,id=N][,nonested]`.

    Docker's syntax, with Apptainer's image fields: each line is one mount,
    its fields separated by commas and quoted as in CSV (`"src=/a,b"`)."""
    import csv

    from sifbox.util.errors import UsageError

    def error(reason: str, hint: str | None = None) -> UsageError:
        return UsageError(f"can't use mount `{text}`: {reason}", hint=hint)

    try:
        rows = [row for row in csv.reader(text.splitlines(), strict=True) if row]
    except csv.Error as err:
        raise error(f"bad quoting ({err})") from None
    if not rows:
        raise error("source and destination are required")
    return [_mount(row, error) for row in rows]


def _mount(row: list[str], error: Callable[..., Exception]) -> BindMount:
    fields: dict[str, str] = {}
    readonly, nested, image_src, part_id = False, True, None, None
    for item in row:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key in ("ro", "readonly"):
            if value.lower() not in ("", "true", "1", "false", "0"):
                raise error(f"`{item}`: expected ro, ro=true or ro=false")
            readonly = value.lower() in ("", "true", "1")
        elif key == "nonested" and value.lower() in ("", "true", "1"):
            nested = False
        elif key == "image-src" and eq:
            if not value:
                raise error("image-src can't be empty")
            image_src = value
        elif key == "id" and eq:
            if not value.isdigit() or int(value) == 0:
                raise error(f"`id={value}`: the descriptor ID is a number from 1")
            part_id = int(value)
        elif key == "bind-propagation":
            raise error("bind-propagation is not set per mount",
                        hint="`mount slave` of sifbox.conf sets the propagation of every mount")
        elif key in MOUNT_KEYS and eq:
            fields[MOUNT_KEYS[key]] = value
        else:
            raise error(f"unknown field `{key}`")
    if fields.get("type", "bind") != "bind":
        raise error("only type=bind is supported")
    if not fields.get("source") or not fields.get("destination"):
        raise error("source and destination are required")
    if not fields["destination"].startswith("/"):
        raise error("the destination must be an absolute path")
    return BindMount(fields["source"], fields["destination"], readonly, image_src, part_id, nested)
