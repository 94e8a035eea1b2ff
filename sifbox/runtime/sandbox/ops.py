"""What the sandbox is asked to do: its operation types, as plain data.

The sandbox is the bottom layer of sifbox: the launcher (sifbox.runtime.launcher)
plans a container as these records and hands them over; the sandbox
(`namespaces`, `rootfs`, `process`, `join`) turns them into namespaces, mounts
and processes. Nothing here imports anything above sifbox.util.
"""

from __future__ import annotations

from sifbox.util.errors import ExitStatus, SifboxError, describe_os_error
from sifbox.util.records import record

#: One mount of the plan, applied inside the container root in order.
#:
#: kind      what to mount on `target` (a container path):
#:   "rbind"    the host tree `source`, recursively (readonly: the whole tree)
#:   "bind"     the host file or directory `source`, alone
#:   "tmpfs"    a new tmpfs (`options`: its mount data)
#:   "devpts"   a new devpts instance, with the /dev/ptmx, fd, stdin... links
#:   "proc"     a new proc (done by PID 1 of a new PID namespace)
#:   "sysfs"    a new sysfs (in a user namespace without a network namespace of its
#:              own, which can't have one: the host's /sys, read-only)
#:   "mqueue"   a new mqueue file system (of the container's IPC namespace)
#:   "mask"     hide `target`: /dev/null over a file, an empty read-only tmpfs
#:              over a directory; nothing when the target does not exist
#:   "readonly" make the existing tree at `target` read-only (bound on itself)
#:   "image"    the directory `options` of a data image (`image-src=`): `source`
#:              is the image's index among the data images (Session.mount_data,
#:              image_binds make it a "bind" before the mounts are applied)
#: file      the mount point is a file (created as one when missing)
#: policy    when the mount point is missing, or the mount fails:
#:   ""         the mount point is made (in the container's own layer; in the
#:              image itself when the root is written in place); failures are errors
#:   "asked"    asked for by the caller (--bind, --mount, --scratch): when the root
#:              is written in place (a --writable sandbox), its mount point must
#:              exist in the image, or lie in a host directory mounted before it
#:   "home"     the home directory: when the root is written in place and it is
#:              missing, it is made in a tmpfs over its deepest existing parent
#:   "site"     a mount of the site's (`bind path`, /tmp, /var/tmp, /etc/resolv.conf):
#:              skipped when a symlink of the image leads it onto a place that
#:              another mount of the plan has taken (/var/tmp -> /tmp), and, with a
#:              warning, when the root is written in place and it is missing there
#:   "optional" as "site", and also skipped, with a warning, when the mount fails
#:              (`bind path` /etc/hosts and /etc/localtime, as Apptainer)
#:   "if-present"  (the current directory) skipped when the root is written in
#:              place and its mount point is missing from the image
#: noexec    no program of the mount may be exec'd (bind, rbind, tmpfs; the others always are)
Mount = record("Mount", "kind source target readonly options file policy noexec",
               defaults=(False, None, False, "", False))  # fmt: skip

#: The image that becomes the container's root file system.
#: kind "squashfs": the SquashFS at `offset` (`size` bytes) of the open file `fd`;
#: kind "dir": the directory open at `fd` (O_PATH), a sandbox;
#: kind "gocryptfs": Apptainer's encrypted SquashFS (SIF fstype 6) at `offset` of `fd`,
#: decrypted by gocryptfs (`tool`) with the key read from the pipe `key_fd` (sandbox.crypt).
RootImage = record("RootImage", "kind fd offset size path key_fd tool", defaults=(0, 0, "", None, None))

#: A layer of the overlay stack (`--overlay`, a SIF's overlay partition), or a
#: data image bound into the container (`--bind IMAGE:DEST:image-src=PATH`).
#: kind "dir" (open at `fd`, O_PATH), "ext3" or "squashfs" (at `offset`, `size`
#: bytes of the open file `fd`); `writable`: the overlay layer that takes the
#: changes (one at most), or a data image mounted read-write.
Layer = record("Layer", "path kind fd offset size writable")

#: The namespaces to create.
#:   user       a user namespace (always for unprivileged callers)
#:   uid, gid   the caller's IDs outside
#:   maps       None: map the caller to `inside` only; else ((uid lines), (gid lines)),
#:              each line (inside, outside, count), written by newuidmap/newgidmap
#:   inside     the uid/gid the caller has inside when mapped alone
#:   tools      (newuidmap, newgidmap) paths for `maps`
#:   pid ipc uts net   new namespaces of those kinds; hostname for the UTS one
#:   net_fd     a network namespace made beforehand (CNI networks), joined instead of a new one
#:   join       existing namespaces to enter after those: ((CLONE_NEW* flag, open fd), ...)
Namespaces = record(
    "Namespaces",
    "user uid gid maps inside tools pid ipc uts net hostname net_fd join",
    defaults=(None, None, None, False, False, False, False, None, None, ()),
)

#: A helper process the sandbox started (a FUSE server): stopped with `signal`
#: and waited for, `wait` seconds at most, before the container's supervisor exits.
Helper = record("Helper", "pid name signal wait")


class LaunchError(SifboxError):
    """The container could not be built or entered."""

    reference = "cannot-launch"
    exit_status = ExitStatus.CANNOT_LAUNCH


def fail(what: str, err: OSError, image: str) -> LaunchError:
    return LaunchError(f"can't start a container from `{image}`: {what}: {describe_os_error(err)}")
