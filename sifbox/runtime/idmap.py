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
