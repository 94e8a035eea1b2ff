"""The privileged operations sifbox uses, as thin wrappers over libc.

Each raises OSError with the errno on failure. This is the closed set:
unshare, setns, mount, umount2, pivot_root, prctl, capget/capset, pidfd_getfd,
and the loop device ioctls. Nothing else in sifbox talks to the kernel this way.
"""

from __future__ import annotations

import _ctypes
import errno
import os
import _struct as struct  # the C module: `struct` is a file looked for on sys.path at every launch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# ctypes' C core, used directly: `import ctypes` builds its whole type zoo
# first, ~4 ms of every launch (which counts once per MPI rank).


class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "i"


class _UInt32(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "I"


class _Long(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "l"


class _ULong(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "L"


class _CharP(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "z"


class _Lib:
    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]


class _IntFunction(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _LongFunction(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long


def _function(name: str, restype=_Int, argtypes=None):  # type: ignore[no-untyped-def]
    # One function class per result type, shared: a class per function costs start-up time.
    f = (_LongFunction if restype is _Long else _IntFunction)((name, _Lib))  # type: ignore[arg-type]
    if argtypes is not None:
        f.argtypes = argtypes
    return f


class _Libc:
    mount = _function("mount", argtypes=[_CharP, _CharP, _CharP, _ULong, _CharP])
    umount2 = _function("umount2", argtypes=[_CharP, _Int])
    unshare = _function("unshare", argtypes=[_Int])
    setns = _function("setns", argtypes=[_Int, _Int])
    prctl = _function("prctl", argtypes=[_Int, _ULong, _ULong, _ULong, _ULong])
    prctl_name = _function("prctl", argtypes=[_Int, _CharP, _ULong, _ULong, _ULong])
    syscall = _function("syscall", restype=_Long, argtypes=[_Long, _CharP, _CharP])
    syscall_at = _function("syscall", restype=_Long, argtypes=[_Long, _Int, _CharP, _UInt32, _CharP, _ULong])
    syscall_ints = _function("syscall", restype=_Long, argtypes=[_Long, _Int, _Int, _UInt32])
    sethostname = _function("sethostname")
    capget = _function("capget")
    capset = _function("capset")


_libc = _Libc

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CAP_LAST = 63



def _check(result: int, what: str, path: str | None = None) -> None:
    if result < 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


#: ioctl of a namespace file: its kind, a CLONE_NEW* flag (linux/nsfs.h, Linux 4.11)
NS_GET_NSTYPE = 0xB703


def namespace_type(fd: int) -> int:
    """The kind (CLONE_NEW* flag) of the namespace open at `fd`; OSError (ENOTTY) for a file
    that is no namespace."""
    import fcntl

    return int(fcntl.ioctl(fd, NS_GET_NSTYPE))


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace open at `fd` (a /proc/PID/ns/* file)."""
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine, 155)
    _check(_libc.syscall(nr, _b(new_root), _b(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def loopback_up() -> None:
    """Bring `lo` up in a new network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    import _socket  # not `socket`: it imports enum, some ms of a launch
    import fcntl

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sh14x", b"lo", flags | iff_up))
    finally:
        s.close()


_SYS_PIDFD_GETFD = 438  # the same number on every architecture (generic syscall table)


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy (close-on-exec) of descriptor `fd` of the process `pidfd` refers to: the
    same open file, its offset shared. The kernel allows it as it allows ptrace-attaching
    (same user, no Yama restriction): EPERM otherwise, ESRCH once the process has ended,
    EBADF if it has no such descriptor."""
    got = _libc.syscall_ints(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if got < 0:
        _check(-1, "pidfd_getfd")
    return int(got)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), "prctl")


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    """Orphaned descendants become this process's children (not init's)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_process_name(name: str) -> None:
    """The name `ps` shows (/proc/self/comm, at most 15 bytes)."""
    _check(_libc.prctl_name(PR_SET_NAME, name.encode()[:15], 0, 0, 0), "prctl")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _UShort(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "H"


class _SockFprog(_ctypes.Structure):
    # `filter` points into the bytes object the structure keeps a reference to
    _fields_ = [("len", _UShort), ("filter", _CharP)]


def set_seccomp_filter(program: bytes) -> None:
    """Load a seccomp BPF program (struct sock_filter entries, 8 bytes each) for this
    process and what it execs; no_new_privs must be set."""
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, "not a BPF program")
    prog = _SockFprog(len(program) // 8, program)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, _ctypes.addressof(prog), 0, 0), "prctl(PR_SET_SECCOMP)")


def set_dumpable(on: bool) -> None:
    """A process that is not dumpable has its /proc/PID files owned by root and
    closed to ptrace-mode access (its `exe`, `mem`, `fd`) without CAP_SYS_PTRACE;
    execve makes a process dumpable again."""
    prctl(PR_SET_DUMPABLE, 1 if on else 0)


# -- mount_setattr (Linux 5.12) -------------------------------------------------
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (asm-generic)


def mount_setattr(path: str, attr_set: int, attr_clr: int = 0, *, recursive: bool = False) -> None:
    """Set (and clear) per-mount flags of the mount at `path`, and with
    `recursive` of every mount below it, leaving the other flags as they
    are (unlike a MS_REMOUNT, which replaces them). ENOSYS before Linux 5.12."""
    attr = struct.pack("<QQQQ", attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(_libc.syscall_at(_SYS_MOUNT_SETATTR, AT_FDCWD, _b(path), flags, attr, len(attr)), "mount_setattr", path)


class _CapHeader(_ctypes.Structure):
    _fields_ = [("version", _UInt32), ("pid", _Int)]


class _CapData(_ctypes.Structure):
    _fields_ = [("effective", _UInt32), ("permitted", _UInt32), ("inheritable", _UInt32)]


_CAP_V3 = 0x20080522


def _capget() -> tuple[_CapHeader, Any]:
    hdr = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(_ctypes.byref(hdr), data), "capget")
    return hdr, data


def drop_all_capabilities(keep: frozenset[int] = frozenset()) -> None:
    """Empty the bounding (but for `keep`) and inheritable sets, so that
    execve, even as uid 0, gives the program no other capabilities."""
    for cap in range(CAP_LAST + 1):
        if cap in keep:
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            break  # EINVAL: no such capability on this kernel, nor any above it
    hdr, data = _capget()
    for d in data:
        d.inheritable = 0
    _check(_libc.capset(_ctypes.byref(hdr), data), "capset")


PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_SYS_ADMIN = 21


def raise_ambient(cap: int) -> None:
    """Keep `cap` across execve of a non-root program (inheritable + ambient);
    for a FUSE helper that mounts itself in this user namespace."""
    hdr, data = _capget()
    data[cap // 32].inheritable |= 1 << (cap % 32)
    _check(_libc.capset(_ctypes.byref(hdr), data), "capset")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


# -- loop devices -----------------------------------------------------------------
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64 = struct.Struct("<QQQQQIIII64s64s32sQQ")  # struct loop_info64 (232 bytes)


def attach_loop(image_fd: int, offset: int, size: int, attempts: int = 64,
                writable: bool = False) -> tuple[str, int]:  # fmt: skip
    """Attach an auto-clearing loop device (read-only unless `writable`) to a slice of `image_fd`.

    Returns the device path and an open descriptor of it: keep it open until
    the device is mounted (auto-clear detaches the device at the last close
    once it is not mounted). Safe when many processes race for free
    devices: a device taken between LOOP_CTL_GET_FREE and LOOP_CONFIGURE
    (EBUSY) is simply retried.
    """
    import fcntl

    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(attempts):
            index = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{index}"
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
            try:
                # device, inode, rdevice, offset, sizelimit, number, encrypt
                # type, encrypt key size, flags, file name, crypt name, key, init
                info = _LOOP_INFO64.pack(
                    0, 0, 0, offset, size, 0, 0, 0, (0 if writable else LO_FLAGS_READ_ONLY) | LO_FLAGS_AUTOCLEAR,
                    b"", b"", b"", 0, 0,
                )
                config = struct.pack("<II", image_fd, 0) + info + bytes(64)
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                return path, fd
            except OSError as err:
                os.close(fd)
                if err.errno != errno.EBUSY:
                    raise
        raise OSError(errno.EBUSY, "no free loop device after many attempts")
    finally:
        os.close(ctl)
