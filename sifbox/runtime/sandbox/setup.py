"""Build the container in the calling process, then exec the payload.

`enter` runs in a process that has never started a thread: it unshares the
user and mount namespaces (only the mount namespace for root), mounts the
image read-only (squashfuse_ll inside the namespaces for unprivileged users,
the kernel's squashfs on an auto-clearing loop device for root), puts a
tmpfs overlay on top so that missing mount points can be created, applies
the mount plan, pivots into the new root and execs the payload. The process
itself becomes the payload: its exit status and signals are the payload's.
Everything mounted lives in the private mount namespace and goes away with
its last process; squashfuse gets SIGKILL when its parent dies.
"""

from __future__ import annotations

import os

from sifbox.image.source import ImageKind, ImageSource

# Everything used after pivot_root must be imported before it: the host's
# file system (and sifbox's own modules) is gone from view afterwards.
from sifbox.runtime import supervisor
from sifbox.runtime.plan import DEFAULT_SITE, Mount, Site, merge_group, merge_passwd
from sifbox.runtime.sandbox import layers
from sifbox.runtime.sandbox import syscalls as sc
from sifbox.runtime.sandbox.layers import LaunchError
from sifbox.runtime.spec import ContainerSpec, Host
from sifbox.util.errors import ExitStatus, SifboxError, describe_os_error
from sifbox.util.paths import chase, which

SESSION_DIRS = ("/var/lib/sifbox/mnt/session", "/mnt", "/media")
SESSION_SIZE = "64m"  # `sessiondir max size`

_ST_TO_MS = ((2, sc.MS_NOSUID), (4, sc.MS_NODEV), (8, sc.MS_NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))


_fail = layers.fail


def enter(spec: ContainerSpec, host: Host, source: ImageSource, mounts: list[Mount],
          payload, log=None, site: Site = DEFAULT_SITE, overlays=(), hold=None) -> int:  # fmt: skip  # type: ignore[no-untyped-def]
    """Build the container, run `payload(root)` -> (argv, env) in it under
    the supervisor, and return its exit status.

    `payload` is called with the host path of the finished root, before
    entering it, so that it can look at the image (is there a /bin/sh?).
    It may return (None, message) when there is nothing to run.

    With `hold` (instances), the container is built in a child of this
    process, as with --pid, and `hold(start)` replaces the supervisor there:
    `start` (None when the argv is empty) runs the payload.
    """
    userns = not host.is_root or spec.userns
    fakeroot = spec.fakeroot and not host.is_root
    inner = host._replace(uid=0, gid=0, user="root", home="/root") if fakeroot else host
    squashfuse = None
    if userns and (source.kind is not ImageKind.SANDBOX or any(o.kind == "squashfs" for o in overlays)):
        squashfuse = which("squashfuse_ll")
        if squashfuse is None:
            raise LaunchError(f"can't start a container from `{spec.image}`: squashfuse_ll is not installed",
                              hint="install the Debian package `squashfuse`")  # fmt: skip
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise LaunchError(f"can't start a container from `{spec.image}`: /dev/fuse is not usable by this user",
                              hint="as root: `chmod 0666 /dev/fuse`; `sifbox doctor` checks this")  # fmt: skip
    extra = (
        (sc.CLONE_NEWPID if spec.pid else 0)
        | (sc.CLONE_NEWIPC if spec.ipc else 0)
        | (sc.CLONE_NEWUTS if spec.uts or spec.hostname else 0)
        | (sc.CLONE_NEWNET if spec.net else 0)
    )
    try:
        if fakeroot:
            _enter_fakeroot(host, log)
        elif userns:
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            _write_id_maps(host)
        else:
            sc.unshare(sc.CLONE_NEWNS)
        if extra:
            # In a second step: the new namespaces belong to the user
            # namespace made above, so its root may set them up.
            sc.unshare(extra)
        if spec.hostname:
            sc.sethostname(spec.hostname)
        if spec.net:
            sc.loopback_up()
    except OSError as err:
        raise LaunchError(
            f"can't start a container from `{spec.image}`: can't create namespaces: {describe_os_error(err)}",
            hint="unprivileged user namespaces may be disabled; `sifbox doctor` checks this",
        ) from None
    if spec.pid or hold is not None:
        # The rest runs in PID 1 of the new PID namespace: /proc of that
        # namespace can only be mounted from inside it, and (in a user
        # namespace) only while the host's /proc is still in view.
        return supervisor.run(lambda: _run_as_init(spec, source, mounts, payload, log, inner, squashfuse, host, site,
                                                          overlays, hold))  # fmt: skip
    return _build_and_run(spec, source, mounts, payload, log, inner, squashfuse, host, userns, site, overlays)


def _run_as_init(spec, source, mounts, payload, log, inner, squashfuse, host, site, overlays, hold=None) -> None:  # type: ignore[no-untyped-def]
    import sys

    try:
        status = _build_and_run(spec, source, mounts, payload, log, inner, squashfuse, host,
                                not host.is_root or spec.userns, site, overlays, hold)  # fmt: skip
    except SifboxError as err:
        sys.stderr.write(f"sifbox: error: {err.message}\n")
        if err.hint:
            sys.stderr.write(f"hint: {err.hint}\n")
        status = int(err.exit_status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _build_and_run(spec, source, mounts, payload, log, inner, squashfuse, host, userns, site, overlays, hold=None) -> int:  # type: ignore[no-untyped-def]
    try:
        # `mount slave = yes`: host mounts made later still show inside.
        sc.mount(None, "/", None, sc.MS_REC | (sc.MS_SLAVE if site.mount_slave else sc.MS_PRIVATE))
        session = _session()
        size = f"{site.session_mib}m" if site.session_mib > 0 else SESSION_SIZE
        sc.mount("tmpfs", session, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode=755,size={size}")
    except OSError as err:
        raise _fail("can't set up the session directory", err, spec.image) from None
    ctx = layers.Ctx(host=inner, image=spec.image, log=log, session=session, squashfuse=squashfuse, userns=userns)
    lower = _mount_image(spec, source, ctx)
    persistent = False
    if spec.writable and source.kind is ImageKind.SANDBOX:  # written in place: mount points are made in it as needed
        root = os.path.join(session, "root")
        os.mkdir(root)
        try:
            sc.mount(lower, root, None, sc.MS_BIND | sc.MS_REC)
        except OSError as err:
            raise _fail("can't bind the sandbox", err, spec.image) from None
        persistent = True
    else:
        points = [(m.target, m.file) for m in mounts] + [("/etc/passwd", True), ("/etc/group", True)]
        root, persistent = layers.stack(ctx, lower, overlays, points, site)
    if spec.identity_files:  # not for builds: %post may edit /etc/passwd (useradd)
        _identity_files(root, session, inner)
    for m in mounts:
        _apply(root, m, spec.image)
    argv, env = payload(root)
    try:
        if not spec.writable_tmpfs and not persistent:
            sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
        os.chdir(root)
        sc.pivot_root(".", ".")
        sc.umount(".", sc.MNT_DETACH)
    except OSError as err:
        raise _fail("can't enter the container root", err, spec.image) from None
    _chdir(spec, host)
    source.close()
    if ctx.squashfuse and argv and argv[0].startswith("/"):
        from sifbox.runtime.sandbox import prefetch

        prefetch.program(argv[0])
    sc.set_no_new_privs()
    if not userns:
        sc.drop_all_capabilities(spec.caps)
    if argv is None:
        import sys

        sys.stderr.write(env + "\n")
        return 0
    # In a PID namespace this process is its PID 1: it supervises the
    # payload rather than becoming it (PID 1 ignores unhandled signals and
    # must reap orphans).
    if hold is not None:
        return int(hold((lambda: _exec_or_exit(argv, env)) if argv else None))
    return supervisor.run(lambda: _exec_or_exit(argv, env))


def _exec_or_exit(argv: list[str], env: dict[str, str]) -> None:
    """In the payload process: exec, or say why not and exit."""
    import sys

    try:
        _exec(argv, env, "")
    except SifboxError as err:
        sys.stderr.write(f"sifbox: error: {err.message}\n")
        sys.stderr.flush()
        os._exit(int(err.exit_status))


def _write_id_maps(host: Host, inside: int | None = None) -> None:
    """Map the caller to itself (or to `inside`, e.g. 0 for fakeroot)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{host.uid if inside is None else inside} {host.uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{host.gid if inside is None else inside} {host.gid} 1")


def _enter_fakeroot(host: Host, log) -> None:  # type: ignore[no-untyped-def]
    """Unshare a user namespace in which the caller is root.

    With subordinate ID ranges, newuidmap/newgidmap (setuid helpers from the
    `uidmap` package) must write the maps from outside the namespace: a
    forked helper waits until this process has unshared, then runs them on
    its pid. Without ranges, the process maps root to itself.
    """
    from sifbox.runtime import idmap

    subuid = idmap.read_subid("/etc/subuid", host.user, host.uid)
    subgid = idmap.read_subid("/etc/subgid", host.user, host.uid)
    tools = which("newuidmap"), which("newgidmap")
    if subuid is None or subgid is None or None in tools:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
        _write_id_maps(host, inside=0)
        if log:
            log("fakeroot: root mapped to uid %d only (no subuid/subgid range or no newuidmap)", host.uid)
        return
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper stays outside the new namespace
        status = 1
        try:
            os.close(go_w)
            os.close(done_r)
            os.read(go_r, 1)
            target = str(os.getppid())
            status = 0
            for tool, own, sub in ((tools[0], host.uid, subuid), (tools[1], host.gid, subgid)):
                args = [str(n) for line in idmap.fakeroot_maps(own, sub) for n in line]
                child = os.fork()
                if child == 0:
                    os.execv(tool, [tool, target, *args])  # type: ignore[list-item]
                _, st = os.waitpid(child, 0)
                if os.waitstatus_to_exitcode(st) != 0:
                    status = 2
                    break
        finally:
            os.write(done_w, bytes([status]))
            os._exit(0)
    os.close(go_r)
    os.close(done_w)
    try:
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        result = os.read(done_r, 1)
        os.close(done_r)
        os.waitpid(pid, 0)
    if result != b"\0":
        raise LaunchError("can't start a fakeroot container: newuidmap/newgidmap could not map the ID ranges",
                          hint=f"check the ranges of `{host.user}` in /etc/subuid and /etc/subgid")  # fmt: skip
    if log:
        log("fakeroot: root plus %d subordinate uids (from %d) via newuidmap", subuid[1], subuid[0])


#: For `sifbox build`: become root of a new user namespace (with the
#: caller's subordinate ID ranges when configured).
enter_fakeroot = _enter_fakeroot


def _session() -> str:
    for d in SESSION_DIRS:
        if os.path.isdir(d):
            return d
    raise OSError(2, "none of " + ", ".join(SESSION_DIRS) + " exists")


def _mount_image(spec: ContainerSpec, source: ImageSource, ctx: layers.Ctx) -> str:
    if source.kind is ImageKind.SANDBOX:
        return source.path
    lower = os.path.join(ctx.session, "image")
    os.mkdir(lower)
    assert source.fd is not None
    driver = layers.mount_squashfs(ctx, source.fd, source.offset, source.size, lower, "the image")
    if ctx.log:
        ctx.log("image driver: %s, offset %d", driver, source.offset)
    return lower


def _identity_files(root: str, session: str, host: Host) -> None:
    """/etc/passwd and /etc/group of the image, with the caller added."""
    import grp

    try:
        group_name = grp.getgrgid(host.gid).gr_name
    except KeyError:
        group_name = host.user
    for name, merge in (("passwd", lambda t: merge_passwd(t, host)), ("group", lambda t: merge_group(t, host, group_name))):
        try:
            with open(chase(root, f"/etc/{name}")) as f:
                text = f.read(1 << 20)
        except OSError:
            text = ""
        staged = os.path.join(session, name)
        with open(staged, "w") as f:
            f.write(merge(text))
        try:
            target = chase(root, f"/etc/{name}", create="file")
            sc.mount(staged, target, None, sc.MS_BIND)
        except OSError:
            pass  # an image without a usable /etc: run without the identity files


def _apply(root: str, m: Mount, image: str) -> None:
    try:
        target = chase(root, m.target, create="file" if m.file else "dir")
    except OSError as err:
        raise _fail(f"can't create the mount point `{m.target}`", err, image) from None
    if m.kind == "proc":  # this process is PID 1 of the container's PID namespace
        try:
            sc.mount("proc", target, "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
        except OSError as err:
            raise _fail("can't mount /proc of the PID namespace", err, image) from None
        return
    try:
        if m.kind in ("bind", "rbind"):
            flags = sc.MS_BIND | (sc.MS_REC if m.kind == "rbind" else 0)
            sc.mount(m.source, target, None, flags)
            if m.readonly:
                st = os.statvfs(target).f_flag
                keep = 0
                for st_bit, ms_bit in _ST_TO_MS:
                    if st & st_bit:
                        keep |= ms_bit
                sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | keep)
        elif m.kind == "tmpfs":
            sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, m.options)
        elif m.kind == "devpts":
            sc.mount("devpts", target, "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, m.options)
            dev = os.path.dirname(target)
            for link, to in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
                if not os.path.lexists(os.path.join(dev, link)):
                    os.symlink(to, os.path.join(dev, link))
    except OSError as err:
        what = f"can't bind `{m.source}` to `{m.target}`" if m.source else f"can't mount {m.kind} on `{m.target}`"
        raise _fail(what, err, image) from None


def _chdir(spec: ContainerSpec, host: Host, doing: str | None = None) -> None:
    """Into --pwd (which must exist), else the caller's directory, home or /."""
    for d in (spec.pwd, host.cwd, spec.home_target or host.home, "/"):
        if d:
            try:
                os.chdir(d)
                return
            except OSError:
                if d == spec.pwd:
                    doing = doing or f"start a container from `{spec.image}`"
                    raise LaunchError(f"can't {doing}: --pwd `{d}` does not exist in the container") from None


def _close_host_fds(env: dict[str, str]) -> None:
    """Close every descriptor above stderr, so none of the host's leaks into
    the container; a launcher's PMI descriptor (PMI_FD) stays open."""
    keep = set()
    for var in ("PMI_FD", "SIFBOX_KEEP_FDS"):
        for item in env.get(var, "").split(","):
            if item.strip().isdigit():
                keep.add(int(item))
    low = 3
    for fd in sorted(keep) + [1 << 20]:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1


def _exec(argv: list[str], env: dict[str, str], image: str) -> None:
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    _close_host_fds(env)
    try:
        if "/" in argv[0]:
            os.execve(argv[0], argv, env)
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise SifboxError(f"can't run `{argv[0]}` in the container: command not found",
                          exit_status=ExitStatus.NOT_FOUND) from None  # fmt: skip
    except PermissionError:
        raise SifboxError(f"can't run `{argv[0]}` in the container: permission denied",
                          exit_status=ExitStatus.CANNOT_LAUNCH) from None  # fmt: skip
    except OSError as err:
        raise SifboxError(f"can't run `{argv[0]}` in the container: {describe_os_error(err)}",
                          exit_status=ExitStatus.CANNOT_LAUNCH) from None  # fmt: skip
