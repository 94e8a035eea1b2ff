"""Apptainer's gocryptfs-encrypted SquashFS (SIF fstype 6): mounted to run, sealed to build.

An fstype-6 partition is an outer SquashFS holding `gocryptfs.conf` and one
file `squashfs-*`, the inner SquashFS encrypted by gocryptfs. To run it
(`mount_root`), three mounts in the container's mount namespace, nothing
decrypted on disk:

    session/cipher   the outer SquashFS (kernel squashfs for root, squashfuse_ll for users)
    session/plain    gocryptfs -ro over session/cipher (a FUSE server; the key on its stdin)
    target           the inner SquashFS, read through session/plain

To build one (`seal`), a forked child with a mount namespace of its own
mounts gocryptfs over an empty cipher directory, runs mksquashfs writing the
inner SquashFS into the plain side, unmounts and reaps gocryptfs.

The key reaches gocryptfs on its standard input, from a pipe the caller
filled (never on a command line, never in a file). gocryptfs is given the
configuration this module checked, from a sealed memfd (`-config`), not the
file of the image a second time.
"""

from __future__ import annotations

import json
import os
import stat
import time

from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.ops import LaunchError, fail
from sifbox.util.errors import ExitStatus, SifboxError, describe_os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _sig

    from sifbox.runtime.sandbox.ops import RootImage
    from sifbox.runtime.sandbox.rootfs import Session
else:
    import _signal as _sig  # the C module, as sifbox.runtime.sandbox.rootfs

CONF_NAME = "gocryptfs.conf"
INNER_PREFIX = "squashfs-"
MAX_CONF = 64 * 1024
#: The IDs root's gocryptfs runs as (Debian's nobody and nogroup).
NOBODY = 65534
#: gocryptfs's own exit codes (gocryptfs/internal/exitcodes)
EXIT_PASSWORD = 12
EXIT_LOADCONF = 23
#: What a configuration made by `gocryptfs -init -plaintextnames -deterministic-names`
#: (Apptainer's) or by any gocryptfs 2 may ask for; FIDO2 and the like need a device.
KNOWN_FLAGS = frozenset({"PlaintextNames", "DirIV", "EMENames", "GCMIV128", "LongNames", "LongNameMax", "Raw64",
                         "HKDF", "AESSIV", "XChaCha20Poly1305"})  # fmt: skip
#: scrypt's cost: gocryptfs writes 2^16; more than 2^20 would take a GiB of memory and
#: many seconds (a hostile image's way to stall every launch).
MAX_SCRYPT_N = 1 << 20
_MFD_CLOEXEC, _MFD_ALLOW_SEALING = 1, 2
_F_ADD_SEALS = 1033
_SEALS = 0x1 | 0x2 | 0x4 | 0x8  # seal, shrink, grow, write


class WrongKey(SifboxError):
    """The passphrase or the PEM key does not open the image."""

    reference = "wrong-key"
    exit_status = ExitStatus.FAILURE  # as a PEM key that does not decrypt the key message


def check_conf(data: bytes) -> None:
    """Raise ValueError unless `data` is a gocryptfs configuration sifbox may hand
    to gocryptfs: version 2, scrypt within bounds, known feature flags only."""
    if len(data) > MAX_CONF:
        raise ValueError(f"gocryptfs.conf is {len(data)} bytes, more than {MAX_CONF}")
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("gocryptfs.conf is not JSON") from None
    if not isinstance(conf, dict):
        raise ValueError("gocryptfs.conf is not a JSON object")  # noqa: TRY004 - "damaged", as the rest
    if conf.get("Version") != 2:
        raise ValueError(f"gocryptfs.conf has version {conf.get('Version')!r}, not 2")
    flags = conf.get("FeatureFlags")
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ValueError("gocryptfs.conf has no list of feature flags")
    unknown = sorted(set(flags) - KNOWN_FLAGS)
    if unknown:
        raise ValueError(f"gocryptfs.conf asks for feature {', '.join(unknown)}")
    if not isinstance(conf.get("EncryptedKey"), str) or not conf["EncryptedKey"]:
        raise ValueError("gocryptfs.conf has no encrypted key")
    scrypt = conf.get("ScryptObject")
    if not isinstance(scrypt, dict):
        raise ValueError("gocryptfs.conf has no scrypt parameters")  # noqa: TRY004
    n, r, p = scrypt.get("N"), scrypt.get("R"), scrypt.get("P")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
        raise ValueError("gocryptfs.conf has bad scrypt parameters")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if not (2 <= n <= MAX_SCRYPT_N and 1 <= r <= 32 and 1 <= p <= 16):
        raise ValueError(f"gocryptfs.conf asks for scrypt N={n} R={r} P={p}, more than sifbox allows")


def find_inner(names: list[str]) -> str:
    """The one inner SquashFS among the outer SquashFS's entries."""
    found = [n for n in names if n.startswith(INNER_PREFIX) and len(n) > len(INNER_PREFIX)]
    if len(found) != 1:
        raise ValueError("no encrypted SquashFS (`squashfs-*`) in the partition" if not found
                         else f"{len(found)} encrypted SquashFS files in the partition, not one")  # fmt: skip
    if CONF_NAME not in names:
        raise ValueError(f"no {CONF_NAME} in the partition")
    return found[0]


def _read_regular(dirfd: int, name: str, limit: int) -> bytes:
    if not stat.S_ISREG(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
        raise ValueError(f"{name} is not a regular file")  # a link to a file of the host, say
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{name} is not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{name} is {st.st_size} bytes, more than {limit}")
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def _sealed_memfd(data: bytes) -> int:
    fd = os.memfd_create("gocryptfs.conf", _MFD_CLOEXEC | _MFD_ALLOW_SEALING)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    import fcntl

    fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
    return fd


def mount_root(session: Session, image: RootImage, target: str) -> str:
    """Mount the fstype-6 partition `image` (the outer SquashFS at image.offset of
    image.fd; image.key_fd the read end of a pipe holding the key) decrypted on
    `target`; return the drivers' description."""
    where = f"can't start a container from `{session.image}`"
    if not image.tool:
        raise LaunchError(f"{where}: gocryptfs is not installed", hint="install the Debian package `gocryptfs`")
    cipher, plain = os.path.join(session.path, "cipher"), os.path.join(session.path, "plain")
    os.mkdir(cipher, 0o700)
    os.mkdir(plain, 0o700)
    outer = session.mount_squashfs(image.fd, image.offset, image.size, cipher, "the image")
    try:
        dirfd = os.open(cipher, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise fail("can't read the encrypted partition", err, session.image) from None
    try:
        try:
            inner = find_inner(os.listdir(dirfd))
            conf = _read_regular(dirfd, CONF_NAME, MAX_CONF)
            check_conf(conf)
            st = os.stat(inner, dir_fd=dirfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{inner} is not a regular file")
        except ValueError as err:
            raise LaunchError(f"{where}: the encrypted partition is damaged: {err}") from None
        except OSError as err:
            raise fail("can't read the encrypted partition", err, session.image) from None
    finally:
        os.close(dirfd)
    conf_fd = _sealed_memfd(conf)
    fuse = -1
    try:
        fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        sc.mount("gocryptfs", plain, "fuse.gocryptfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_RDONLY,
                 f"fd={fuse},rootmode=40000,user_id={session.uid},group_id={session.gid}")  # fmt: skip
    except OSError as err:
        if fuse >= 0:
            os.close(fuse)
        os.close(conf_fd)
        raise fail("can't mount FUSE for gocryptfs", err, session.image) from None
    argv = [image.tool, "-fg", "-ro", "-q", "-config", f"/dev/fd/{conf_fd}", "--", cipher, f"/dev/fd/{fuse}"]
    # gocryptfs reads what the image holds: for root it runs as nobody, with no capability
    # (it needs none: the FUSE descriptor and its configuration are handed to it).
    as_ids = (NOBODY, NOBODY) if os.getuid() == 0 and not session.userns else None
    logfile = session._spawn(image.tool, argv, (fuse, conf_fd), stdin=image.key_fd, as_ids=as_ids)
    os.close(fuse)
    os.close(conf_fd)
    try:
        os.stat(plain)
        found = os.stat(os.path.join(plain, inner), follow_symlinks=False)
    except OSError:
        raise _gocryptfs_failed(session, logfile, where) from None
    try:
        fd = os.open(os.path.join(plain, inner), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise fail("can't open the decrypted image", err, session.image) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (found.st_dev, found.st_ino):
            raise LaunchError(f"{where}: the encrypted partition is damaged: {inner} is not a regular file")
        try:
            magic = os.pread(fd, 4, 0)
        except OSError as err:
            raise WrongKey(f"{where}: the encrypted SquashFS can't be read: {describe_os_error(err)}",
                           hint="the image is damaged, or was not made with this key") from None  # fmt: skip
        if magic != b"hsqs":
            raise LaunchError(f"{where}: the decrypted partition is not a SquashFS")
        inner_driver = session.mount_squashfs(fd, 0, st.st_size, target, "the decrypted image")
    finally:
        os.close(fd)
    return f"{outer} -> gocryptfs -> {inner_driver}"


def _gocryptfs_failed(session: Session, logfile: str, where: str) -> SifboxError:
    """Why gocryptfs stopped: its exit status (it is reaped here) and its last line."""
    helper = session.helpers[-1]
    code = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(helper.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            code = os.waitstatus_to_exitcode(status)
            session.helpers.pop()
            break
        time.sleep(0.005)
    try:
        with open(logfile, errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        lines = []
    if code == EXIT_PASSWORD:
        return WrongKey(f"{where}: the passphrase or key does not decrypt it",
                        hint="give the image's passphrase (--passphrase, SIFBOX_ENCRYPTION_PASSPHRASE) or "
                        "the private key of its PEM key pair (--pem-path)")  # fmt: skip
    reason = lines[-1] if lines else f"exit status {code}" if code is not None else "it stopped"
    return LaunchError(f"{where}: gocryptfs could not decrypt the image: {reason}")


class SealError(SifboxError):
    """gocryptfs or mksquashfs failed while an encrypted image was built."""

    reference = "build-failed"


def seal(gocryptfs: str, cipher: str, plain: str, key_fd: int, argv: list[str], logfile: str) -> None:
    """Run `argv` (mksquashfs writing into `plain`) with gocryptfs mounted from
    `cipher` (initialized) on `plain`, in a forked child with a mount namespace
    of its own; the key on gocryptfs's stdin from `key_fd`. Every process is
    reaped here; nothing stays mounted (the namespace ends with the child)."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            # Ctrl-C reaches the whole process group: gocryptfs and mksquashfs stop on it, and
            # this child reaps them and goes; the caller raises KeyboardInterrupt then.
            _sig.signal(_sig.SIGINT, _sig.SIG_IGN)
            log = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.dup2(log, 2)
            code = _seal_child(gocryptfs, cipher, plain, key_fd, argv)
        except BaseException as err:  # noqa: BLE001 - reported through the log
            try:
                os.write(2, f"sifbox: {err}\n".encode())
            except OSError:
                pass
        os._exit(code)
    interrupted: list[bool] = []
    status = _wait(pid, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    if status != 0:
        try:
            with open(logfile, errors="replace") as f:
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        except OSError:
            lines = []
        reason = lines[-1] if lines else f"exit status {status}"
        if "No space left" in "\n".join(lines):
            reason = "no space left on the device"
        raise SealError(f"can't encrypt the SquashFS image: {reason}",
                        hint="the fault originates from gocryptfs or mksquashfs")  # fmt: skip


def _wait(pid: int, interrupted: list[bool] | None = None) -> int:
    while True:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:
            return 0
        except KeyboardInterrupt:
            if interrupted is not None:
                interrupted.append(True)
            continue  # the child got it too, and cleans up


def _seal_child(gocryptfs: str, cipher: str, plain: str, key_fd: int, argv: list[str]) -> int:
    sc.set_parent_death_signal(9)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    fuse = os.open("/dev/fuse", os.O_RDWR)
    sc.mount("gocryptfs", plain, "fuse.gocryptfs", sc.MS_NOSUID | sc.MS_NODEV,
             f"fd={fuse},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}")  # fmt: skip
    running: list[int] = []
    try:
        running.append(_spawn([gocryptfs, "-fg", "-q", "--", cipher, f"/dev/fd/{fuse}"], stdin=key_fd, keep=fuse))
        os.close(fuse)
        helper = running[0]
        try:
            os.stat(plain)
        except OSError:
            code = _wait(running.pop())
            os.write(2, f"gocryptfs could not mount the encrypted directory (exit status {code})\n".encode())
            return 71
        running.append(_spawn(argv, stdin=None, keep=-1))
        code = _wait(running.pop())
        # gocryptfs has every block once the file is closed (no write-back cache); it exits when unmounted.
        for _ in range(100):
            try:
                sc.umount(plain)
                break
            except OSError:
                time.sleep(0.05)
        else:
            sc.umount(plain, sc.MNT_DETACH)
            os.kill(helper, 9)
        if _wait(running.pop()) != 0 and code == 0:
            os.write(2, b"gocryptfs stopped with an error\n")
            code = 72
        return code
    finally:
        # Interrupted (Ctrl-C reaches the whole process group): what still runs is stopped
        # and reaped here, not left to PID 1.
        for pid in running:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            _wait(pid)


def _spawn(argv: list[str], *, stdin: int | None, keep: int) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            sc.set_parent_death_signal(9)
            _sig.signal(_sig.SIGINT, _sig.SIG_DFL)
            if stdin is None:
                stdin = os.open(os.devnull, os.O_RDONLY)
            os.dup2(stdin, 0)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            if keep >= 0:
                os.set_inheritable(keep, True)
            os.execv(argv[0], argv)
        except BaseException as err:  # noqa: BLE001
            os.write(2, f"{os.path.basename(argv[0])}: {err}\n".encode())
        os._exit(127)
    return pid
