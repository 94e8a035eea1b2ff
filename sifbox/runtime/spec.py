"""What a container should be: the request, as plain immutable data.

The CLI turns flags into a `ContainerSpec`; `plan` turns it into mounts and
`env` into an environment, all without touching the system.
"""

from __future__ import annotations

from sifbox.util.records import record as namedtuple

#: A bind mount: host `source` at container `target`.
BindMount = namedtuple("BindMount", "source target readonly", defaults=(False,))

#: The calling user and host facts the plan depends on.
Host = namedtuple("Host", "uid gid user home cwd is_root")

ContainerSpec = namedtuple(
    "ContainerSpec",
    "image action command binds home_source home_target no_home contain cleanenv "
    "writable_tmpfs userns pwd env_overrides no_mount shell fakeroot pid ipc uts hostname net writable overlays "
    "identity_files",
    defaults=((), (), None, None, False, False, False, False, False, None, (), frozenset(), None, False,
              False, False, False, None, False, False, (), True),
)

ACTIONS = ("exec", "run", "shell", "test")
#: `--no-mount` names (plus any absolute container path of a bind).
NO_MOUNT_NAMES = frozenset(
    {"proc", "sys", "dev", "devpts", "home", "tmp", "hostfs", "cwd", "bind-paths",
     "/etc/hosts", "/etc/resolv.conf", "/etc/localtime"}
)  # fmt: skip


def parse_bind(text: str) -> list[BindMount]:
    """`src[:dst[:ro|rw]][,src2...]` as Apptainer's --bind takes it."""
    from sifbox.util.errors import UsageError

    binds = []
    for item in text.split(","):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) > 3 or not parts[0]:
            raise UsageError(f"can't use bind `{item}`: expected src[:dest[:ro|rw]]")
        src = parts[0]
        dst = parts[1] if len(parts) > 1 and parts[1] else src
        opts = parts[2] if len(parts) > 2 else "rw"
        if opts not in ("ro", "rw"):
            raise UsageError(f"can't use bind `{item}`: unknown option `{opts}` (use ro or rw)")
        if not dst.startswith("/"):
            raise UsageError(f"can't use bind `{item}`: the destination must be an absolute path")
        binds.append(BindMount(src, dst, opts == "ro"))
    return binds


def parse_mount(text: str) -> BindMount:
    """`--mount type=bind,source=...,destination=...[,ro]` (docker style)."""
    from sifbox.util.errors import UsageError

    fields: dict[str, str] = {}
    readonly = False
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key in ("ro", "readonly") and value in ("", "true", "1"):
            readonly = True
        elif key in ("type", "source", "src", "destination", "dst", "target", "bind-propagation"):
            fields[{"src": "source", "dst": "destination", "target": "destination"}.get(key, key)] = value
        else:
            raise UsageError(f"can't use mount `{text}`: unknown field `{key}`")
    if fields.get("type", "bind") != "bind":
        raise UsageError(f"can't use mount `{text}`: only type=bind is supported")
    if not fields.get("source") or not fields.get("destination"):
        raise UsageError(f"can't use mount `{text}`: source and destination are required")
    if not fields["destination"].startswith("/"):
        raise UsageError(f"can't use mount `{text}`: the destination must be an absolute path")
    return BindMount(fields["source"], fields["destination"], readonly)
