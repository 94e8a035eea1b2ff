"""Which path an image's mount takes, and why: pure planning, no system calls.

An image is mounted one of these ways:

    directory          a sandbox directory, bound as it is
    kernel squashfs    root: the SquashFS on a loop device
    squashfuse_ll      a user: squashfuse_ll in the container's user namespace,
                       multithreaded or not (`fuse_threads`)
    gocryptfs          an encrypted SIF: gocryptfs over the outer SquashFS, per container

and either by a node holder, one mount per user, image and node that every container
of that user joins (sifbox.runtime.nodemount), or per container. The launcher decides
with these functions; `sifbox doctor` explains with the same ones.
"""

from __future__ import annotations

#: `squashfuse threads` of sifbox.conf.
THREADS_AUTO, THREADS_YES, THREADS_NO = "auto", "yes", "no"


def share_refusal(*, kind: str, no_share: bool, share_conf: bool, instance: bool, fakeroot: bool,
                  root_userns: bool, mount_slave: bool, service: bool = False) -> str | None:  # fmt: skip
    """Why an image of `kind` ("squashfs", "dir", "gocryptfs") is mounted per container and
    not by a node holder (or, with `service`, by the root mount service, whose mount is the
    host's and which is asked unless `mount service = no`), or None if it is shared. ""
    means: sharing doesn't apply (no reason worth telling). `instance`: the launch joins a
    running instance, whose mounts it uses."""
    if no_share:
        return "--no-share"
    if not service and not share_conf:
        return "`share image mounts = no` in sifbox.conf"
    if instance:
        return ""
    if kind != "squashfs":
        return ""
    if fakeroot:
        return "--fakeroot"
    if root_userns:
        return "root with a user namespace"
    if not mount_slave and not service:
        # The holder's copy of the host's mounts is as old as the holder: only as a slave
        # does it see what the host mounted since (an automounted /scratch).
        return "`mount slave = no` in sifbox.conf"
    return None


def fuse_threads(setting: str, multithreaded: bool | None, *, shared: bool) -> tuple[bool, str]:
    """Whether squashfuse_ll serves a mount with its multithreaded server, and why.

    `setting` is `squashfuse threads` (auto, yes, no); `multithreaded` what the probe
    found in the binary (None: unknown). auto: a node holder's mount serves every
    container of the user on the node (64 ranks of a job), so it gets the threads; a
    per-container mount serves one container, whose ranks each have their own server
    already (threads there would multiply by the rank count for little gain)."""
    if setting == THREADS_NO:
        return False, "`squashfuse threads = no` in sifbox.conf"
    if multithreaded is False:
        return False, "the installed squashfuse_ll has no multithreaded server"
    if setting == THREADS_YES:
        return True, "`squashfuse threads = yes` in sifbox.conf"
    if multithreaded is None:
        return False, "can't tell whether the installed squashfuse_ll has a multithreaded server"
    if shared:
        return True, "a node mount serves every container of the user on the node"
    return False, "a per-container mount serves one container (`squashfuse threads = yes` changes it)"


def fuse_args(multithreaded: bool) -> list[str]:
    """squashfuse_ll's arguments for its server: `-s` (libfuse's own option) keeps a
    multithreaded build on one thread, and a single-threaded build ignores it."""
    return [] if multithreaded else ["-s"]


class MountPath:
    """How one image is mounted: `driver` (see the module's table), `shared` (by a node
    holder), `threads` (squashfuse_ll: multithreaded or not; None otherwise) and the
    reasons."""

    __slots__ = ("driver", "reasons", "shared", "threads")

    def __init__(self, driver: str, shared: bool, threads: bool | None, reasons: list[str]) -> None:
        self.driver, self.shared, self.threads, self.reasons = driver, shared, threads, reasons

    def describe(self) -> str:
        what = self.driver
        if self.threads is not None:
            what += ", multithreaded" if self.threads else ", single-threaded"
        if self.driver != "directory":
            what += ", one mount per node that containers join (node holder)" if self.shared else ", per container"
        return what + (f" ({'; '.join(r for r in self.reasons if r)})" if any(self.reasons) else "")


def plan(kind: str, *, kernel: bool, refusal: str | None, threads_setting: str,
         multithreaded: bool | None) -> MountPath:  # fmt: skip
    """The mount path of a main image of `kind` ("squashfs": a SIF or a bare SquashFS,
    "dir", "gocryptfs") with kernel mounts (root without a user namespace) or without, given the holder's
    `refusal` (`share_refusal`) and the squashfuse_ll facts."""
    if kind == "dir":
        return MountPath("directory", False, None, ["a sandbox directory is bound, not mounted"])
    if kind == "gocryptfs":
        outer = "kernel squashfs" if kernel else "squashfuse_ll"
        return MountPath(f"gocryptfs over {outer}", False, None, ["an encrypted image is decrypted per container"])
    shared = refusal is None
    reasons = [] if shared else [refusal or ""]
    if kernel:
        return MountPath("kernel squashfs", shared, None, [*reasons, "root mounts the SquashFS on a loop device"])
    threads, why = fuse_threads(threads_setting, multithreaded, shared=shared)
    return MountPath("squashfuse_ll", shared, threads, [*reasons, why])
