"""User namespace ID maps for --fakeroot (pure: parsing and planning).

With a range in /etc/subuid and /etc/subgid (and newuidmap/newgidmap
installed), the caller becomes root and the range fills uids 1..N, so
package managers that chown to other users work. Without one, only root is
mapped (to the caller), as Apptainer's "root-mapped user namespace" mode.
"""

from __future__ import annotations


def subid_range(text: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first `start, count` of `user` (by name or uid) in a subid file."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0 and start >= 0:
            return start, count
    return None


def read_subid(path: str, user: str, uid: int) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            return subid_range(f.read(1 << 20), user, uid)
    except OSError:
        return None


def fakeroot_maps(host_id: int, sub: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    """(inside, outside, count) lines: root -> caller, then 1.. -> the range."""
    maps = [(0, host_id, 1)]
    if sub is not None:
        maps.append((1, sub[0], sub[1]))
    return maps


# --- `sifbox config fakeroot`: the entries of /etc/subuid and /etc/subgid --------------------------

#: The range Apptainer gives a user (and that `config fakeroot --add` allocates).
RANGE = 65536
#: Allocated starts: from the top of the 32-bit ID space down, never below RANGE.
START_MAX = 2**32 - 2 * RANGE
START_MIN = RANGE
DISABLED = "!"  # a line starting with it is a disabled entry (Apptainer's)


def _entry(line: str, uid_of) -> tuple[int, int, int, bool] | None:  # type: ignore[no-untyped-def]
    """(uid, start, count, disabled) of a subid line, or None for a line that is not one."""
    parts = line.strip().split(":")
    if len(parts) != 3 or not parts[0] or parts[0] == DISABLED:
        return None
    disabled = parts[0].startswith(DISABLED)
    who = parts[0].removeprefix(DISABLED)
    try:
        start, count = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if start < 0 or count <= 0:
        return None
    uid = int(who) if who.isdigit() else uid_of(who)
    return (-1 if uid is None else uid, start, count, disabled)


def _find(lines: list[str], uid: int, uid_of) -> int | None:  # type: ignore[no-untyped-def]
    """The index of `uid`'s fakeroot entry (a range of RANGE IDs), enabled or not."""
    for i, line in enumerate(lines):
        e = _entry(line, uid_of)
        if e is not None and e[0] == uid and e[2] == RANGE:
            return i
    return None


def edit_subids(text: str, op: str, uid: int, uid_of, where: str, who: str = "") -> str:  # type: ignore[no-untyped-def]
    """`text` of a subid file with `uid`'s fakeroot entry added (`add`: a free range of RANGE
    IDs, allocated from the top; nothing when it has one), removed (`remove`), enabled or
    disabled (`enable`, `disable`: a `!` before the line). `uid_of(name)` resolves the names
    of other lines; `where` names the file and `who` the user in errors. Other lines stay as
    they are."""
    from sifbox.util.errors import SifboxError

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = _find(lines, uid, uid_of)
    who = f"`{who}`" if who else f"uid {uid}"
    if op == "add":
        if i is not None:
            return text
        taken = [(e[1], e[1] + e[2]) for e in (_entry(ln, uid_of) for ln in lines) if e is not None]
        start = START_MAX
        while start >= START_MIN and any(a < start + RANGE and start < b for a, b in taken):
            start -= RANGE
        if start < START_MIN:
            raise SifboxError(f"can't add a fakeroot range for {who} to `{where}`: no range of {RANGE} IDs left")
        lines.append(f"{uid}:{start}:{RANGE}")
    elif i is None:
        raise SifboxError(f"can't {op} the fakeroot mapping of {who}: no mapping entry found in `{where}`",
                          hint="`sifbox config fakeroot --add USER` adds one")  # fmt: skip
    elif op == "remove":
        del lines[i]
    elif op == "enable":
        lines[i] = lines[i].lstrip().removeprefix(DISABLED)
    elif op == "disable":
        if not lines[i].lstrip().startswith(DISABLED):
            lines[i] = DISABLED + lines[i].lstrip()
    else:
        raise ValueError(op)
    return "\n".join(lines) + "\n" if lines else ""
