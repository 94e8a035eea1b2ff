"""The container's root file system: session, image, overlay stack, mounts,
and the move into it.

Everything is mounted inside the private mount namespace the caller made
(`namespaces.enter`), so all of it goes away with the namespace's last
process. The steps, in the order the launcher calls them:

    session = Session.open(...)         a tmpfs for the container's own files
    lower = session.mount_image(image)  read-only: kernel squashfs on a loop
                                        device (root) or squashfuse_ll (user
                                        namespace); a sandbox through its descriptor
    data = session.mount_data(images)   the images bound with image-src= (read-only
                                        unless asked writable, EXT3 only)
    mounts = mountplan.image_binds(mounts, data, images)  their "image" mounts made binds
    root, persistent = session.stack(lower, layers, points)   the overlay stack
    mountplan.apply(root, mounts, restrict=...)   binds, tmpfs, devpts, proc, masks
    session.bind_text(root, "/etc/passwd", text)
    finish(root, readonly=..., image=...)   read-only root, flags checked
    pivot(root)

Every image, overlay and sandbox mount is nosuid,nodev. The images (main,
overlays and data images) are mounted through the descriptors that were judged
by the site's policy, never looked up again by path. Mount points missing from every layer
are made before the overlay is mounted: in the tmpfs upper, or, when the
upper is a persistent overlay, in a tmpfs layer of their own on top of the
lowers (so that they don't litter the user's overlay).
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # the C module: `signal` itself imports enum, ~5 ms of every launch
import time

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import Helper, LaunchError, Layer, RootImage, fail
from sifbox.util.errors import describe_os_error
from sifbox.util.paths import chase, chase_existing, which

SESSION_DIRS = ("/var/lib/sifbox/mnt/session", "/mnt", "/media")
_RESTRICT = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
#: statvfs f_flag bits
_ST_RDONLY, _ST_NOSUID, _ST_NODEV = 1, 2, 4
#: MS_* flags a legacy remount must repeat (statvfs bit -> MS bit)
_ST_TO_MS = ((2, sc.MS_NOSUID), (4, sc.MS_NODEV), (8, sc.MS_NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))
FUSE2FS_WAIT = 30.0  # seconds fuse2fs may take to write a file system back


class Session:
    """A tmpfs in the container's mount namespace that holds the mount points
    of the image and layers, the staged files and the helpers' logs; plus the
    helper processes started for the container."""

    __slots__ = ("fuse_threads", "gid", "helpers", "image", "notes", "path", "squashfuse", "uid", "userns")

    def __init__(self, path: str, *, image: str, uid: int, gid: int, userns: bool, squashfuse: str | None,
                 fuse_threads: bool = False) -> None:  # fmt: skip
        self.path, self.image, self.uid, self.gid = path, image, uid, gid
        #: squashfuse_ll serves with its multithreaded server (if it has one) when `fuse_threads`.
        self.userns, self.squashfuse, self.fuse_threads = userns, squashfuse, fuse_threads
        self.helpers: list[Helper] = []
        #: What was mounted how (drivers), for the caller to report at -v.
        self.notes: list[str] = []

    @classmethod
    def open(cls, *, image: str, size_mib: int, slave: bool, uid: int, gid: int, userns: bool,
             squashfuse: str | None, fuse_threads: bool = False) -> Session:  # fmt: skip
        """`slave`: host mounts made later still show inside (`mount slave = yes`)."""
        try:
            sc.mount(None, "/", None, sc.MS_REC | (sc.MS_SLAVE if slave else sc.MS_PRIVATE))
            path = next((d for d in SESSION_DIRS if os.path.isdir(d)), None)
            if path is None:
                raise OSError(errno.ENOENT, "none of " + ", ".join(SESSION_DIRS) + " exists")
            size = f"{size_mib}m" if size_mib > 0 else "64m"
            sc.mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=755,size={size}")
        except OSError as err:
            raise fail("can't set up the session directory", err, image) from None
        return cls(path, image=image, uid=uid, gid=gid, userns=userns, squashfuse=squashfuse, fuse_threads=fuse_threads)

    # --- the image and the layers -----------------------------------------------------------

    def mount_image(self, image: RootImage, *, writable: bool = False, shared: int | None = None) -> str:
        """Mount the root image read-only (a sandbox: writable if asked) in the
        session; return where. `shared`: an O_PATH descriptor of the image already
        mounted by a node mount holder (`join.open_mounted`), bound instead of
        mounting it again; if that mount no longer answers (its FUSE server died),
        the image is mounted here, as without it."""
        target = os.path.join(self.path, "image")
        os.mkdir(target)
        if image.kind == "dir":
            self._bind_fd(image.fd, target, writable=writable, what="the sandbox")
            return target
        if image.kind == "gocryptfs":
            from sifbox.runtime.sandbox import crypt

            first = len(self.helpers)
            try:
                self.notes.append(f"image driver: {crypt.mount_root(self, image, target)}, offset {image.offset}")
            except BaseException:
                # A wrong key is an error the caller reports and exits on: its helpers go first, reaped.
                stop_helpers(self.helpers[first:])
                del self.helpers[first:]
                raise
            return target
        if shared is not None:
            try:
                sc.mount(f"/proc/self/fd/{shared}", target, None, sc.MS_BIND)
                try:
                    set_flags(target, sc.MOUNT_ATTR_RDONLY | _RESTRICT)
                    os.stat(os.path.join(target, "."))  # ENOTCONN when its server is gone
                except OSError:
                    sc.umount(target, sc.MNT_DETACH)
                    raise
                self.notes.append(f"image driver: shared node mount, offset {image.offset}")
                return target
            except OSError as err:
                if image.fd < 0:  # its descriptor was closed once it was joined
                    raise LaunchError(f"can't start a container from `{self.image}`: its node mount ended as it "
                                      f"was joined ({describe_os_error(err)})", hint="run it again") from None
                self.notes.append(f"shared node mount unusable ({describe_os_error(err)}): mounting the image here")
        driver = self.mount_squashfs(image.fd, image.offset, image.size, target, "the image")
        self.notes.append(f"image driver: {driver}, offset {image.offset}")
        return target

    def _bind_fd(self, fd: int, target: str, *, writable: bool, what: str) -> None:
        """Bind the directory open at `fd` (what the policy judged) on `target`, nosuid,nodev.

        `fd` was opened before this mount namespace existed, and the kernel binds
        only mounts of the caller's namespace: the directory is opened again here,
        by its path, and must be the same directory (device and inode) or nothing
        is mounted."""
        try:
            here = reopen_dir(fd)
        except OSError as err:
            raise fail(f"can't bind {what}", err, self.image) from None
        if here is None:
            raise LaunchError(f"can't start a container from `{self.image}`: can't bind {what}: "
                              "it was replaced while the container started")  # fmt: skip
        try:
            sc.mount(f"/proc/self/fd/{here}", target, None, sc.MS_BIND | sc.MS_REC)
            set_flags(target, _RESTRICT | (0 if writable else sc.MOUNT_ATTR_RDONLY), recursive=True)
        except OSError as err:
            raise fail(f"can't bind {what}", err, self.image) from None
        finally:
            os.close(here)

    def mount_squashfs(self, fd: int, offset: int, size: int, target: str, what: str) -> str:
        """Mount the SquashFS at `offset` of `fd` read-only on `target`; return the driver's name."""
        if self.squashfuse:
            # -s (libfuse's own option) keeps a multithreaded build on one thread; a
            # single-threaded build ignores it (sifbox.runtime.mountpath.fuse_args).
            args = [] if self.fuse_threads else ["-s"]
            self.fuse_server(self.squashfuse, [*args, "-o", f"offset={offset}", f"/proc/self/fd/{fd}"], target,
                             keep=(fd,), flags=sc.MS_RDONLY, what=f"read {what}")  # fmt: skip
            return f"squashfuse_ll{', multithreaded' if self.fuse_threads else ''} (user namespace)"
        try:
            dev, loop_fd = sc.attach_loop(fd, offset, size)
            try:
                sc.mount(dev, target, "squashfs", sc.MS_RDONLY | sc.MS_NODEV | sc.MS_NOSUID)
            finally:
                os.close(loop_fd)
        except OSError as err:
            raise fail(f"can't mount the SquashFS of {what}", err, self.image) from None
        return f"kernel squashfs on {dev}"

    def mount_ext3(self, fd: int, offset: int, size: int, target: str, writable: bool, what: str) -> str:
        """Mount the EXT3 file system at `offset` of `fd` on `target`."""
        if self.userns:
            tool = which("fuse2fs")
            if tool is None:
                raise LaunchError(f"can't start a container from `{self.image}`: fuse2fs is not installed, "
                                  f"so {what} can't be mounted", hint="install the Debian package `fuse2fs`")  # fmt: skip
            self._fuse2fs(tool, fd, offset, target, writable, what)
            return "fuse2fs (user namespace)"
        flags = sc.MS_NODEV | sc.MS_NOSUID | (0 if writable else sc.MS_RDONLY)
        try:
            dev, loop_fd = sc.attach_loop(fd, offset, size, writable=writable)
            try:
                try:
                    sc.mount(dev, target, "ext3", flags)
                except OSError:
                    sc.mount(dev, target, "ext4", flags)
            finally:
                os.close(loop_fd)
        except OSError as err:
            raise fail(f"can't mount the EXT3 file system of {what}", err, self.image) from None
        return f"kernel ext3 on {dev}"

    def mount_data(self, images: list[Layer] | tuple[Layer, ...]) -> list[tuple[str, str]]:
        """Mount the data images (`--bind IMAGE:DEST:image-src=...`) in the
        session: SquashFS read-only, EXT3 read-write when `writable`; return
        where each went, and the driver that mounted it."""
        found = []
        for i, d in enumerate(images):
            target = os.path.join(self.path, f"data{i}")
            os.mkdir(target)
            what = f"the bound image `{d.path}`"
            if d.kind == "squashfs":
                driver = self.mount_squashfs(d.fd, d.offset, d.size, target, what)
            else:
                driver = self.mount_ext3(d.fd, d.offset, d.size, target, d.writable, what)
            found.append((target, driver))
        return found

    def stack(self, lower: str, layers: list[Layer] | tuple[Layer, ...], points: list[tuple[str, bool]],
              overlay_mode: str, files: list[tuple[str, bytes, int]] | None = None) -> tuple[str, bool]:  # fmt: skip
        """Mount the layers and the overlay stack on `session/root`; `files` (path, bytes,
        mode) are put in the container's own layer, over the image's (an OCI-SIF's
        `/.singularity.d`).

        Returns the root and whether it is persistently writable (a writable
        layer). `overlay_mode` is `enable overlay` of sifbox.conf.
        """
        session = self.path
        lowers: list[str] = []
        upper = work = None
        kernel = True  # the kernel's overlayfs can't take a FUSE upper layer (fuse2fs)
        for i, layer in enumerate(layers):
            top = os.path.join(session, f"overlay{i}")
            os.mkdir(top)
            what = f"overlay `{layer.path}`"
            if layer.kind == "dir":
                self._bind_fd(layer.fd, top, writable=layer.writable, what=what)
                driver = "directory"
            elif layer.kind == "squashfs":
                driver = self.mount_squashfs(layer.fd, layer.offset, layer.size, top, what)
            else:
                driver = self.mount_ext3(layer.fd, layer.offset, layer.size, top, layer.writable, what)
            self.notes.append(f"overlay {layer.path}: {driver}{'' if layer.writable else ', read-only'}")
            if layer.writable:
                kernel = not (layer.kind == "ext3" and self.userns)
                upper, work = os.path.join(top, "upper"), os.path.join(top, "work")
                for d in (upper, work):
                    try:
                        os.makedirs(d, exist_ok=True)
                    except OSError as err:
                        raise fail(f"can't use overlay `{layer.path}`", err, self.image) from None
            else:
                up = os.path.join(top, "upper")
                lowers.append(up if layer.kind != "squashfs" and os.path.isdir(up) else top)
        persistent = upper is not None
        if upper is None or work is None:
            upper, work = os.path.join(session, "upper"), os.path.join(session, "work")
            os.mkdir(upper)
            os.mkdir(work)
            made_in = upper
        else:
            made_in = os.path.join(session, "points")
            os.mkdir(made_in)
        _make_points(points, made_in, [upper, *lowers, lower] if persistent else [*lowers, lower])
        for path, data, mode in files or ():
            _write_file(made_in, path, data, mode)
        root = os.path.join(session, "root")
        os.mkdir(root)
        stack_lowers = ([made_in] if persistent else []) + lowers + [lower]
        esc = ":".join(_escape(p) for p in stack_lowers)
        self._mount_overlay(root, f"lowerdir={esc},upperdir={_escape(upper)},workdir={_escape(work)}",
                            overlay_mode, kernel=kernel, work=work)  # fmt: skip
        return root, persistent

    def _mount_overlay(self, root: str, options: str, mode: str, *, kernel: bool, work: str) -> None:
        kernel_error: OSError | None = None
        if mode != "driver" and kernel:  # `enable overlay = yes|try`: the kernel's overlayfs first
            # In a user namespace the kernel keeps its own data (opaque directories,
            # whiteouts of directories) in user.overlay.* attributes (Linux 5.11):
            # without them, removing a directory of a lower layer fails.
            for extra in (",userxattr", "") if self.userns else ("",):
                try:
                    sc.mount("overlay", root, "overlay", sc.MS_NOSUID | sc.MS_NODEV, options + extra)
                    return
                except OSError as err:
                    kernel_error = err
                # A refused mount may leave its own work/work (mode 000) behind,
                # which another attempt could not open.
                for d in ("work", "index"):
                    try:
                        os.rmdir(os.path.join(work, d))
                    except OSError:
                        pass
        tool = which("fuse-overlayfs")
        if tool is None:
            if kernel_error is not None:
                raise fail("can't mount the overlay on the image", kernel_error, self.image) from None
            raise LaunchError(f"can't start a container from `{self.image}`: fuse-overlayfs is not installed",
                              hint="install the Debian package `fuse-overlayfs`, or set `enable overlay = yes`")
        self.notes.append("overlay: fuse-overlayfs" + ("" if kernel_error is None else " (the kernel refused overlayfs)"))
        # noxattrs: squashfuse_ll answers xattr queries with ENOTSUP, which
        # fuse-overlayfs would pass on as errors for every lookup.
        self.fuse_server(tool, ["-o", options + ",noxattrs=1"], root, keep=(), flags=0, what="mount the overlay")

    # --- FUSE servers ------------------------------------------------------------------------

    def fuse_server(self, binary: str, args: list[str], mountpoint: str, *, keep: tuple[int, ...],
                    flags: int, what: str) -> None:  # fmt: skip
        """Mount a FUSE file system served by `binary` (squashfuse_ll, fuse-overlayfs).

        This process opens /dev/fuse and mounts it (it holds CAP_SYS_ADMIN in
        its user namespace; the helper, once exec'd as the user, would not),
        then hands the descriptor to the helper as `/dev/fd/N`. The mount exists
        before the helper runs, so there is nothing to poll; the first access
        waits for the helper to answer.
        """
        name = os.path.basename(binary)
        try:
            fuse = os.open("/dev/fuse", os.O_RDWR)
            sc.mount(name, mountpoint, f"fuse.{name}", sc.MS_NOSUID | sc.MS_NODEV | flags,
                     f"fd={fuse},rootmode=40000,user_id={self.uid},group_id={self.gid}")  # fmt: skip
        except OSError as err:
            raise fail(f"can't mount FUSE for {name}", err, self.image) from None
        logfile = self._spawn(binary, [binary, "-f", *args, f"/dev/fd/{fuse}"], (fuse, *keep))
        os.close(fuse)
        try:
            os.stat(mountpoint)
        except OSError:
            raise self._helper_failed(name, what, logfile) from None

    def _fuse2fs(self, binary: str, fd: int, offset: int, target: str, writable: bool, what: str) -> None:
        """fuse2fs is built on libfuse 2, which can't take a mounted /dev/fuse:
        it mounts by itself, with this user namespace's CAP_SYS_ADMIN kept
        across its exec, and the mount is awaited.

        It runs chrooted in a bind copy of the host's root: pivot_root moves
        every process whose root is the old root into the container, and
        fuse2fs, looking up paths through a root that holds its own mount,
        could wait on itself forever when it shuts down. The session directory
        is shared with its copy while fuse2fs mounts, so the mount shows here.
        """
        copy = os.path.join(self.path, f"hostroot-{os.path.basename(target)}")
        os.mkdir(copy)
        try:
            sc.mount(None, self.path, None, sc.MS_SHARED)
            sc.mount("/", copy, None, sc.MS_BIND | sc.MS_REC)
        except OSError as err:
            raise fail("can't prepare fuse2fs", err, self.image) from None
        try:
            opts = f"offset={offset}" + ("" if writable else ",ro")
            before = os.stat(target).st_dev
            # SIGTERM when the container's supervisor dies: fuse2fs then writes its
            # cached blocks back and closes the file system cleanly.
            logfile = self._spawn(binary, [binary, f"/proc/self/fd/{fd}", target, "-f", "-o", opts], (fd,),
                                  ambient_admin=True, stop=signal.SIGTERM, root=copy, wait=FUSE2FS_WAIT)  # fmt: skip
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if os.stat(target).st_dev != before:
                        return
                except OSError:
                    pass
                time.sleep(0.002)
            raise self._helper_failed("fuse2fs", f"mount {what}", logfile)
        finally:
            # pivot_root refuses a shared parent mount.
            sc.mount(None, self.path, None, sc.MS_PRIVATE)

    def _spawn(self, binary: str, argv: list[str], keep: tuple[int, ...], ambient_admin: bool = False,
               stop: int = signal.SIGKILL, root: str | None = None, wait: float = 2.0,
               stdin: int | None = None, as_ids: tuple[int, int] | None = None) -> str:  # fmt: skip
        """Start a helper that gets `stop` when its parent dies, and is stopped
        with it (and waited for) by `stop_helpers`; `stdin`: a descriptor for its
        standard input (a pipe holding a key), else /dev/null; `as_ids`: (uid, gid)
        it runs as, without any capability (root's gocryptfs), else this process's."""
        name = os.path.basename(binary)
        logfile = os.path.join(self.path, f"{name}.{len(os.listdir(self.path))}.log")
        pid = os.fork()
        if pid == 0:  # the FUSE server
            try:
                sc.set_parent_death_signal(stop)
                if ambient_admin:
                    sc.raise_ambient(sc.CAP_SYS_ADMIN)
                log = os.open(logfile, os.O_WRONLY | os.O_CREAT, 0o600)
                if as_ids is not None:  # the log is open: the IDs go, and every capability with them
                    os.setgroups([])
                    os.setresgid(as_ids[1], as_ids[1], as_ids[1])
                    os.setresuid(as_ids[0], as_ids[0], as_ids[0])
                    sc.set_no_new_privs()
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull if stdin is None else stdin, 0)
                os.dup2(devnull, 1)
                os.dup2(log, 2)
                low = 3
                for fd in sorted(set(keep)):
                    os.set_inheritable(fd, True)
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 1 << 20)
                if root is not None:
                    os.chroot(root)
                    os.chdir("/")
                os.execv(binary, argv)
            except BaseException as err:  # noqa: BLE001
                os.write(2, f"{name}: {err}\n".encode())
            os._exit(127)
        self.helpers.append(Helper(pid, name, stop, wait))
        return logfile

    def _helper_failed(self, name: str, what: str, logfile: str) -> LaunchError:
        try:
            with open(logfile, errors="replace") as f:
                detail = f.read().strip().splitlines()
        except OSError:
            detail = []
        reason = detail[-1] if detail else "it stopped without a message"
        return LaunchError(f"can't start a container from `{self.image}`: {name} could not {what}: {reason}")

    # --- files of the container --------------------------------------------------------------

    def bind_text(self, root: str, target: str, text: str) -> bool:
        """Put a file holding `text` at `target` of the root (a read-only bind
        of a file staged in the session). False when the image has no place for it."""
        staged = os.path.join(self.path, "staged-" + target.strip("/").replace("/", "-"))
        with open(staged, "w") as f:
            f.write(text)
        try:
            where = chase(root, target, create="file")
            sc.mount(staged, where, None, sc.MS_BIND)  # nosuid,nodev as the session's tmpfs it binds
        except OSError:
            return False
        return True


def reopen_dir(fd: int) -> int | None:
    """The directory open at `fd`, opened again by its path in this mount
    namespace (O_PATH); None if that path now leads elsewhere."""
    path = os.readlink(f"/proc/self/fd/{fd}")
    if not path.startswith("/"):
        return None
    here = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    a, b = os.fstat(fd), os.fstat(here)
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        os.close(here)
        return None
    return here


def release(path: str) -> None:
    """Unmount `path` now (a node mount holder's image, as it ends), so that a loop device
    is detached before the holder is seen gone; nothing if it can't be."""
    try:
        sc.umount(path, sc.MNT_DETACH)
    except OSError:
        pass


def stop_helpers(helpers: list[Helper]) -> None:
    """Stop the helpers (FUSE servers) and reap them: none is left to PID 1."""
    for h in helpers:
        try:
            os.kill(h.pid, h.signal)
        except ProcessLookupError:
            pass
    for h in helpers:
        deadline = time.monotonic() + h.wait
        while True:
            try:
                pid, _ = os.waitpid(h.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(h.pid, signal.SIGKILL)
                deadline = float("inf")
                try:
                    os.waitpid(h.pid, 0)
                except ChildProcessError:
                    pass
                break
            time.sleep(0.001)


def set_flags(path: str, attr_set: int, *, recursive: bool = False) -> None:
    """Add per-mount flags (MOUNT_ATTR_*) to the mount at `path` (and below)."""
    try:
        sc.mount_setattr(path, attr_set, recursive=recursive)
        return
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
    # Before Linux 5.12: a remount repeats the flags the mount has (a user
    # namespace refuses to clear locked ones), one mount at a time.
    for point in [path] + (_mounts_below(path) if recursive else []):
        st = os.statvfs(point).f_flag
        keep = 0
        for st_bit, ms_bit in _ST_TO_MS:
            if st & st_bit:
                keep |= ms_bit
        extra = ((sc.MS_RDONLY if attr_set & sc.MOUNT_ATTR_RDONLY else 0)
                 | (sc.MS_NOSUID if attr_set & sc.MOUNT_ATTR_NOSUID else 0)
                 | (sc.MS_NODEV if attr_set & sc.MOUNT_ATTR_NODEV else 0))  # fmt: skip
        sc.mount(None, point, None, sc.MS_BIND | sc.MS_REMOUNT | keep | extra | (sc.MS_RDONLY if st & 1 else 0))


def _mounts_below(path: str) -> list[str]:
    found = []
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found


def exists(root: str, path: str) -> bool:
    """Whether `path` exists in the container root (symlinks resolved inside it)."""
    try:
        chase(root, path)
        return True
    except OSError:
        return False


def read_text(root: str, path: str, limit: int = 1 << 20) -> str:
    """The start of a text file of the container root ('' when missing)."""
    try:
        with open(chase(root, path), errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def _make_points(points: list[tuple[str, bool]], made_in: str, layers: list[str]) -> None:
    """Make the mount points missing from every layer in `made_in` (not one of `layers`, which
    don't change meanwhile: each of their directories is looked at once, for all points)."""
    modes: dict[str, int] = {}
    made: set[str] = set()
    for target, is_file in points:
        target = os.path.normpath("/" + target.lstrip("/"))
        best = None
        for layer in layers:
            try:
                found, missing = chase_existing(layer, target, modes)
            except OSError:
                continue
            if not missing:
                best = None
                break
            if best is None or len(missing) < len(best[2]):
                best = (layer, found, missing)
        if best is None:
            continue  # present in a layer, or reported when the mount is applied
        layer, found, missing = best
        where = os.path.join(made_in, os.path.relpath(found, layer), *missing[:-1])
        if where not in made:
            os.makedirs(where, exist_ok=True)
            made.add(where)
        last = os.path.join(where, missing[-1])
        if is_file:
            os.close(os.open(last, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        elif last not in made:
            os.makedirs(last, exist_ok=True)
            made.add(last)


def _write_file(base: str, path: str, data: bytes, mode: int) -> None:
    """A new file at `path` below `base` (a directory of the session, sifbox's own)."""
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a path for a file of the container: {path!r}")
    where = os.path.join(base, *parts[:-1])
    os.makedirs(where, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(where, parts[-1]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                 | os.O_CLOEXEC, mode & 0o777)  # fmt: skip
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), mode & 0o777)


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


# --- into the root -------------------------------------------------------------------------------


def finish(root: str, *, readonly: bool, image: str) -> None:
    """Make the root read-only (unless it is meant to be written) and check
    that it is nosuid,nodev (and read-only) as it must be."""
    try:
        if readonly:
            set_flags(root, sc.MOUNT_ATTR_RDONLY | _RESTRICT)
        else:
            set_flags(root, _RESTRICT)
        flags = os.statvfs(root).f_flag
    except OSError as err:
        raise fail("can't make the container root read-only", err, image) from None
    want = _ST_NOSUID | _ST_NODEV | (_ST_RDONLY if readonly else 0)
    if flags & want != want:
        raise LaunchError(f"can't start a container from `{image}`: the container root is not "
                          f"{'read-only, ' if readonly else ''}nosuid and nodev (flags {flags:#x})")  # fmt: skip


def pivot(root: str, image: str) -> None:
    """Make `root` the root of this mount namespace; the host's root goes."""
    try:
        os.chdir(root)
        sc.pivot_root(".", ".")
        sc.umount(".", sc.MNT_DETACH)
    except OSError as err:
        raise fail("can't enter the container root", err, image) from None
