"""The launch path: one request in, one container out.

Every container sifbox starts goes through here: `exec|run|shell|test`
(`run`), `instance start|run` (`run` with an instance name), commands that
join an instance (`instance://NAME`), and a build's %post/%test
(`run_build_container`). The CLI parses the command line into a `Launch`; the
rest reads top to bottom:

    prepare        site configuration, identity, environment, image, overlays
                   and bound images opened and admitted (one admission path), devices,
                   Slurm, the mount plan, the capabilities -> `Prepared`
    namespaces     user+mount (or mount) namespace, then PID/IPC/UTS/net; with a
                   PID namespace the rest runs in its PID 1
    root           session tmpfs, image, bound images, overlay stack, identity
                   files, mounts
    payload        what to run, decided by looking at the finished root
    lock-down      root read-only and nosuid,nodev (checked), pivot_root,
                   no_new_privs, capabilities
    supervise      the payload exec'd through the sealed trampoline, signals
                   forwarded, helpers reaped, its status returned

Only `sifbox.runtime.sandbox` calls unshare, mount, pivot_root or setns; this
module hands it data. Everything used after pivot_root is imported before it.
"""

from __future__ import annotations

import os
import sys

from sifbox.runtime import images
from sifbox.util.errors import ExitStatus, SifboxError, UsageError, report
from sifbox.util.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from sifbox.hpc.devices import Request
    from sifbox.runtime.spec import ContainerSpec, Host

STARTSCRIPT = "/.singularity.d/startscript"

#: A container to launch, as the command line asked for it.
#:   action     exec, run, shell, test; start (an instance's startscript)
#:   words      the command and arguments (exec), or the arguments (run, test, start)
#:   caps       (keep_privs, no_privs, add, drop) of --keep-privs, --no-privs, --add-caps, --drop-caps
#:   devices    the GPU/CDI options (hpc.devices.Request) or None
#:   config     -c/--config (else SIFBOX_CONFIG_FILE, else /etc/sifbox/sifbox.conf)
#:   instance   the name, for `instance start|run`; pid_file its --pid-file
#:   options    sifbox.runtime.options.LaunchOptions (--security uid/gid, --runscript-timeout,
#:              --ignore-subuid, --ignore-userns, --disable-cache, --no-https), or None
#:   no_env     host variables not to pass (--no-env); no_eval, no_umask, no_init: those options
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from sifbox.config.sysconf import Config
    from sifbox.image.source import ImageSource
    from sifbox.runtime.instances import State
    from sifbox.runtime.options import LaunchOptions
    from sifbox.runtime.plan import Site

    class Launch(NamedTuple):
        action: str
        spec: ContainerSpec
        words: tuple[str, ...] = ()
        app: str | None = None
        env_files: tuple[str, ...] = ()
        env_opts: tuple[str, ...] = ()
        caps: tuple[bool, bool, str, str] = (False, False, "", "")
        devices: Request | None = None
        config: str | None = None
        instance: str | None = None
        pid_file: str | None = None
        options: LaunchOptions | None = None
        no_env: tuple[str, ...] = ()
        no_eval: bool = False
        no_umask: bool = False
        no_init: bool = False

    class Payload(NamedTuple):
        argv: list[str] | None = None
        env: dict[str, str] | None = None
        message: str = ""
        status: int = 0

else:
    Launch = record(
        "Launch",
        "action spec words app env_files env_opts caps devices config instance pid_file options no_env no_eval "
        "no_umask no_init",
        defaults=((), None, (), (), (False, False, "", ""), None, None, None, None, None, (), False, False, False),
    )
    #: What runs in the container: `argv` with `env` (None: nothing to run; `message`
    #: says why, `status` is the exit status).
    Payload = record("Payload", "argv env message status", defaults=(None, None, "", 0))


class Prepared:
    """Everything the container needs, decided before any namespace exists."""

    __slots__ = (
        "action",
        "app",
        "attached",
        "caps",
        "cfg",
        "cgroups",
        "conf_path",
        "contained",
        "data",
        "env",
        "fixed",
        "host",
        "identity",
        "image",
        "inner",
        "joining",
        "keep_fds",
        "launched",
        "layers",
        "log",
        "mounts",
        "network",
        "no_init",
        "ns",
        "opened",
        "options",
        "overrides",
        "prepare_root",
        "seccomp",
        "share",
        "shared_fd",
        "site",
        "source",
        "spec",
        "squashfuse",
        "userns",
        "words",
    )  # fmt: skip
    action: str
    app: str | None
    attached: Any  # sifbox.runtime.network.Attached: the namespace of CNI networks, with its keeper
    caps: frozenset[int]
    cfg: Config
    cgroups: Any  # sifbox.hpc.cgroups.Cgroups of --memory, --cpus...: joined before pivot_root
    conf_path: str
    contained: bool
    data: list[Any]
    env: dict[str, str]
    fixed: tuple[list[str], dict[str, str]] | None
    host: Host
    identity: bool
    image: Any
    inner: Host
    joining: State | None
    keep_fds: frozenset[int]
    launched: bool
    layers: list[Any]
    log: Callable[..., None] | None
    mounts: list[Any]
    network: Any  # sifbox.runtime.network.Plan of --net/--network, or None
    no_init: bool
    ns: Any
    opened: images.Opened
    options: LaunchOptions | None
    overrides: dict[str, str]
    prepare_root: Callable[[str], None] | None
    seccomp: bytes | None  # a BPF program loaded before the payload's exec
    share: Any
    shared_fd: int | None
    source: ImageSource | None
    spec: ContainerSpec
    squashfuse: str | None
    site: Site
    userns: bool
    words: list[str]

    def __init__(self, **values: object) -> None:
        for name in self.__slots__:
            setattr(self, name, values.get(name))


# --- the request --------------------------------------------------------------------------------


def run(launch: Launch) -> int:
    """Launch the container; return the payload's exit status."""
    temporary = None
    if "://" in launch.spec.image and not launch.spec.image.startswith("instance://"):
        launch, temporary = _fetch_uri(launch)  # docker://REF: pulled to the cache, run from there
    try:
        p = prepare(launch)
    finally:
        if temporary is not None:  # the image is open: its temporary copy can go
            import shutil

            shutil.rmtree(temporary, ignore_errors=True)
    if p.joining is not None:
        return _join(p)
    if p.image is not None and p.image.kind == "squashfs":
        from sifbox.runtime import nodemount

        p.share = nodemount.for_launch(p, instance=launch.instance)
    started = sys.modules.get("sifbox.runtime.borrow")
    if started is not None:
        started.release_start()  # the holder this launch started runs: others may join it
    if launch.instance is not None:
        from sifbox.runtime import holder

        name = launch.instance
        return holder.start_instance(p, name, launch.pid_file, images.instance_record(p.spec, p.opened),
                                     launch=lambda hold: holder.limited(p, name, lambda: launch_prepared(p, hold)))  # fmt: skip
    try:
        return launch_prepared(p)
    finally:
        if p.cgroups is not None:
            p.cgroups.remove()


def _fetch_uri(launch: Launch) -> tuple[Launch, str | None]:
    """The launch with its image URI replaced by the SIF fetched for it, and the directory
    of a temporary SIF (cache disabled) to remove once the image is open."""
    from sifbox.runtime import imageuri

    image, options = launch.spec.image, launch.options
    if not imageuri.is_uri(image):
        return launch, None
    path, temporary = imageuri.fetch(image, verb=launch.action, writable=launch.spec.writable,
                                     disable_cache=bool(options and options.disable_cache),
                                     no_https=bool(options and options.no_https), config=launch.config)  # fmt: skip
    return launch._replace(spec=launch.spec._replace(image=path)), temporary


def prepare(launch: Launch) -> Prepared:
    from sifbox.runtime import env as envmod
    from sifbox.runtime.options import LaunchOptions, limits_cgroup, seccomp_program
    from sifbox.runtime.plan import default_mounts, site_from_config

    spec, action = launch.spec, launch.action
    host = _host()
    options = launch.options or LaunchOptions()
    spec = _apply_options(spec, options, host)
    if spec.fakeroot and not host.is_root and spec.home_target is None and not spec.no_home:
        # As Apptainer: under --fakeroot the caller's home is root's home
        # (with --contain, root's home is an empty one, as anyone's).
        spec = spec._replace(home_source=None if spec.contain else host.home, home_target="/root")
    cfg, conf_path = _config(launch.config)
    site = site_from_config(cfg)
    _check_allowed(spec, cfg, host, site)
    log = verbose_log()
    if launch.no_umask:
        os.umask(0o022)  # as Apptainer's --no-umask: the container gets the default, not the caller's
    overrides = envmod.user_overrides(os.environ, _env_files(launch.env_files, spec.image, launch.words),
                                      envmod.parse_env_option(list(launch.env_opts)),
                                      warn=_warn, note=_note)  # fmt: skip
    fixed: dict[str, str] = {}  # sifbox's own values (MPI defaults, devices): never evaluated
    caps = _root_caps(launch.caps, cfg, conf_path, spec) if host.is_root else frozenset()
    from sifbox.runtime.caps import ALL

    contained = host.is_root and caps != ALL
    launched = "PMIX_RANK" in os.environ or "PMI_RANK" in os.environ or "SLURM_STEP_ID" in os.environ
    if contained and not launched:
        # A root container has PID and IPC namespaces of its own: no process of
        # the host, and no shared memory segment of the host, is in its reach.
        # (Not the ranks of a parallel job: they share memory with their peers.)
        spec = spec._replace(pid=True, ipc=True)
    from sifbox.security.admission import Gate

    gate = Gate.from_config(cfg, conf_path, user=host.user, verb=action)
    p = Prepared(action=action, spec=spec, host=host, cfg=cfg, conf_path=conf_path, site=site, log=log,
                 caps=caps, contained=contained, app=launch.app, words=list(launch.words), layers=[], data=[],
                 mounts=[], identity=spec.identity_files, options=options, seccomp=seccomp_program(options, caps))  # fmt: skip
    if spec.net and not spec.image.startswith("instance://"):
        from sifbox.runtime import network

        p.network = network.plan(spec, cfg, conf_path, host.is_root, host.user, _warn)
    if spec.image.startswith("instance://"):
        from sifbox.runtime import instances

        p.joining = instances.find_running(spec.image, verb=action)
        images.admit_instance(p.joining, gate)
    else:
        mounts = default_mounts(spec, host, site=site, contained=contained, shared_memory=launched)
        _workdir(spec, host)
        if contained:
            mounts += _console(spec)
        if launch.devices is not None or cfg.get_bool("always use nv") or cfg.get_bool("always use rocm"):
            mounts, fixed, p.prepare_root = _add_devices(launch.devices, cfg, conf_path, spec, site, host, mounts,
                                                         overrides, contained)  # fmt: skip
        p.launched = launched
        if p.launched:
            from sifbox.hpc import mpi, slurm

            mounts = mounts + slurm.launcher_mounts(
                os.environ, mounts, steered_ok=site.user_bind_control or host.is_root, uid=host.uid,
                warn=_warn)  # fmt: skip
            fixed = {**mpi.env_defaults(os.environ, own_userns=not host.is_root or spec.userns), **fixed}
        p.mounts = mounts
        from sifbox.runtime.borrow import borrower

        p.opened = opened = images.open_all(spec, host, action, gate, key=options.key,
                                            borrow=borrower(launch, spec, cfg, host.uid, log))  # fmt: skip
        p.source, p.image, p.layers, p.data = opened.source, opened.image, opened.layers, opened.data
    _namespaces_for(p)
    name = p.joining.name if p.joining is not None else launch.instance
    libs_bound = any(m.target == envmod.LIBS or m.target.startswith(envmod.LIBS + "/") for m in p.mounts)
    p.env = envmod.container_env(
        os.environ, cleanenv=spec.cleanenv, image=p.joining.image if p.joining is not None else p.opened.source.path,
        home=spec.home_target or host.home, overrides=overrides, fixed=fixed, no_env=launch.no_env,
        no_eval=launch.no_eval, shell_prompt="Sifbox> " if action == "shell" else None, action=action,
        binds=[b.target for b in spec.binds], ids=(p.inner.uid, p.inner.gid),
        machine=os.uname().machine, libs_bound=libs_bound,
    )  # fmt: skip
    if name is not None:
        for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
            p.env[f"{prefix}_INSTANCE"] = name
    if p.app:
        from sifbox.formats import appenv

        if "/" in p.app or p.app in (".", ".."):
            raise UsageError(f"can't use --app `{p.app}`: not an app name")
        p.env.update(appenv.launch_environment(p.app))
    p.overrides = {**fixed, **overrides}
    p.no_init = launch.no_init
    p.keep_fds = envmod.kept_fds(p.env, os.environ)
    # (an instance's is made by its watcher: sifbox.runtime.launcher._instance)
    p.cgroups = limits_cgroup(options, spec.image) if p.joining is None and launch.instance is None else None
    if p.cgroups is not None:
        p.cgroups.warm()  # the kernel's migration wait, beside the launch: the join then doesn't wait
    return p


def _apply_options(spec: ContainerSpec, options, host: Host) -> ContainerSpec:  # type: ignore[no-untyped-def]
    """--ignore-userns (root: no user namespace, even with -u); --security uid/gid needs root's
    own namespace (the IDs are the host's)."""
    if options.ignore_userns and spec.userns:
        spec = spec._replace(userns=False)
    if options.run_as is not None and (spec.userns or spec.fakeroot):
        raise UsageError("can't use --security uid:/gid: with --userns or --fakeroot: the IDs are the host's",
                         hint="drop --userns/--fakeroot, or the uid:/gid: security options")  # fmt: skip
    return spec


def _console(spec: ContainerSpec) -> list:  # type: ignore[type-arg]
    """The caller's terminal as the container's /dev/console, when its /dev is
    minimal: the host's /dev/pts is not in a contained container."""
    from sifbox.runtime.sandbox.ops import Mount

    if "dev" in spec.no_mount:
        return []
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return [Mount("bind", os.ttyname(fd), "/dev/console", file=True)]
        except OSError:
            continue
    return []


def _host() -> Host:
    import pwd

    from sifbox.runtime.spec import Host

    uid, gid = os.getuid(), os.getgid()
    try:
        entry = pwd.getpwuid(uid)
        user, home = entry.pw_name, entry.pw_dir
    except KeyError:
        user, home = f"uid{uid}", os.environ.get("HOME", "/")
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    return Host(uid, gid, user, home, cwd, uid == 0)


def _config(path: str | None):  # type: ignore[no-untyped-def]
    from sifbox.config import sysconf

    cfg = sysconf.load(path)
    for warning in cfg.warnings:
        _warn(warning)
    return cfg, path or os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH


def _check_allowed(spec: ContainerSpec, cfg, host: Host, site) -> None:  # type: ignore[no-untyped-def]
    for wanted, directive in ((spec.pid, "allow pid ns"), (spec.ipc, "allow ipc ns"),
                              (spec.uts or spec.hostname, "allow uts ns")):  # fmt: skip
        if wanted and not cfg.get_bool(directive):
            raise UsageError(f"can't run `{spec.image}`: `{directive} = no` in the site's sifbox.conf")
    if not host.is_root and not cfg.get_bool("allow user ns"):
        raise UsageError(f"can't run `{spec.image}`: `allow user ns = no` in the site's sifbox.conf",
                         hint="unprivileged users run containers in user namespaces; ask the site's admins")
    if not site.user_bind_control and not host.is_root and spec.home_source and spec.home_target != "/root":
        raise SifboxError(f"can't use --home `{spec.home_source}`: user bind control is disabled by the "
                          "site's sifbox.conf")  # fmt: skip


def _env_files(paths: tuple[str, ...] | list[str], image: str, words: tuple[str, ...]) -> dict[str, str]:
    """What the --env-file files set, each evaluated as Apptainer does (on the host, with
    the host's environment and APPTAINER_IMAGE; later files see and win over earlier ones)."""
    if not paths:
        return {}
    from sifbox.runtime import envfile

    host = {**os.environ, "SIFBOX_IMAGE": image, "APPTAINER_IMAGE": image}
    found: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as err:
            raise UsageError(f"can't read env file `{path}`: {err.strerror}") from None
        found.update(envfile.evaluate(text, path, host, words, assigned=found))
    return found


def _root_caps(request, cfg, conf_path: str, spec: ContainerSpec) -> frozenset[int]:  # type: ignore[no-untyped-def]
    from sifbox.runtime import caps

    keep_privs, no_privs, add, drop = request
    mode = cfg.get("root default capabilities")
    from_file = caps.from_capability_file(os.path.dirname(os.path.abspath(conf_path))) if mode == "file" else frozenset()
    return caps.root_set(mode, keep_privs=keep_privs, no_privs=no_privs, add=caps.parse(add or ""),
                         drop=caps.parse(drop or ""), own_net=bool(spec.net and not spec.netns_path), from_file=from_file)  # fmt: skip


def _workdir(spec: ContainerSpec, host: Host) -> None:
    """Make the directories of --workdir the container needs, as the caller;
    one that exists is used as it is (as Apptainer), unless it is no directory
    (a link planted there would lead the bind elsewhere)."""
    import stat

    from sifbox.runtime.plan import workdir_dirs
    from sifbox.util.errors import describe_os_error

    for path, mode in workdir_dirs(spec, host):
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            try:
                os.mkdir(path, 0o700)
                os.chmod(path, mode)  # not masked by the umask
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise SifboxError(f"can't use --workdir `{spec.workdir}`: `{path}` is not a directory",
                                      hint="remove it, or choose another --workdir") from None  # fmt: skip
        except OSError as err:
            raise SifboxError(f"can't use --workdir `{spec.workdir}`: can't make `{path}`: "
                              f"{describe_os_error(err)}") from None  # fmt: skip


def _add_devices(request: Request | None, cfg: Config, conf_path: str, spec: ContainerSpec, site: Site, host: Host,
                 mounts: list[Any], overrides: dict[str, str],
                 contained: bool) -> tuple[list[Any], dict[str, str], Callable[[str], None] | None]:  # fmt: skip
    from sifbox.hpc import devices

    if request is not None and request.cdi_dirs and not site.user_bind_control and not host.is_root:
        raise SifboxError("can't use --cdi-dirs: user bind control is disabled by the site's sifbox.conf",
                          hint="the CDI specs of /etc/cdi and /var/run/cdi are used without it")  # fmt: skip
    request = devices.with_config(request or devices.Request(False, False, False, (), ()), cfg)
    if request is None:
        return mounts, {}, None
    dev_is_host = site.mount_dev == "yes" and not spec.contain and "dev" not in spec.no_mount and not contained
    env = dict(os.environ)
    env.update(overrides)
    extra = devices.plan(request, cfg=cfg, conf_dir=os.path.dirname(os.path.abspath(conf_path)),
                         dev_is_host=dev_is_host, env=env)  # fmt: skip
    found: Any = extra
    for warning in found.warnings:
        _warn(warning)
    return mounts + list(found.mounts), dict(found.env), found.prepare


def _namespaces_for(p: Prepared) -> None:
    """The namespaces to create, and the identity inside (`p.inner`)."""
    from sifbox.runtime import identity
    from sifbox.runtime.sandbox.ops import Namespaces
    from sifbox.util.paths import which

    spec, host = p.spec, p.host
    p.userns = not host.is_root or spec.userns
    fakeroot = spec.fakeroot and not host.is_root
    p.inner = host._replace(uid=0, gid=0, user="root", home="/root") if fakeroot else host
    extra = {"pid": spec.pid, "ipc": spec.ipc, "uts": spec.uts, "net": spec.net, "hostname": spec.hostname}
    if fakeroot:
        p.ns = identity.fakeroot_namespaces(host, use_subids=p.options is None or p.options.subuid, **extra)
    else:
        p.ns = Namespaces(p.userns, host.uid, host.gid, **extra)
    if p.joining is not None or not p.userns:
        return
    if p.image.kind != "dir" or any(layer.kind == "squashfs" for layer in [*p.layers, *p.data]):
        p.squashfuse = which("squashfuse_ll")
        if p.squashfuse is None:
            raise SifboxError(f"can't start a container from `{spec.image}`: squashfuse_ll is not installed",
                              hint="install the Debian package `squashfuse`", exit_status=ExitStatus.CANNOT_LAUNCH)
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise SifboxError(f"can't start a container from `{spec.image}`: /dev/fuse is not usable by this user",
                              hint="as root: `chmod 0666 /dev/fuse`; `sifbox doctor` checks this",
                              exit_status=ExitStatus.CANNOT_LAUNCH)  # fmt: skip


# --- the container ------------------------------------------------------------------------------


def launch_prepared(p: Prepared, hold=None) -> int:  # type: ignore[no-untyped-def]
    """Create the namespaces, then build and run the container. With `hold`
    (an instance), `hold(payload, trampoline, helpers)` keeps it. The CNI networks
    are joined first (the keeper of their namespace runs DEL once the launch ends)."""
    if p.network is None:
        return _launch(p, hold)
    from sifbox.runtime import network

    return network.launch_with(p, hold, _launch)


def _launch(p: Prepared, hold) -> int:  # type: ignore[no-untyped-def]
    from sifbox.runtime import supervisor
    from sifbox.runtime.sandbox import mountplan, namespaces, process  # noqa: F401 - before any fork (_container's)

    if p.share is not None:  # one mount per node (a holder's, or the mount service's), bound here
        from sifbox.runtime import nodemount

        p.shared_fd = nodemount.enter(p)
        if p.shared_fd is not None and p.image.kind == "squashfs" and hold is None:
            # Joined: the image is mounted already. Its descriptor goes now (an instance
            # keeps it, to be judged again as it is joined: `images.admit_instance`), before any
            # fork, so that no helper or payload carries a copy (on a file server each
            # close of one is a request); its overlay layers hold copies of their own.
            p.opened.source.close()
            p.image = p.image._replace(fd=-1)
    else:
        namespaces.enter(p.ns, image=p.spec.image)
    if p.attached is not None:
        p.attached.close_fd()
    if p.host.is_root:
        # Not before: newuidmap and the id maps need this process's /proc files.
        # (A user's container runs as the user, who may open their own processes'.)
        process.seal_self()
    if p.ns.pid or hold is not None:
        # The rest runs in PID 1 of the new PID namespace: its /proc can only be
        # mounted from inside it (and, in a user namespace, only while the
        # host's /proc is still in view). The processes of the namespace that
        # outlive its PID 1 (with --no-init, the payload is PID 1 and the FUSE
        # helpers its children) come to this process, which reaps them.
        from sifbox.runtime.sandbox import syscalls

        if p.ns.pid:
            syscalls.set_child_subreaper()
        status = supervisor.run(lambda: _exit(_as_init(p, hold)))
        if p.attached is not None:
            p.attached.release()  # the keeper runs DEL, and is reaped below
        if p.ns.pid:  # the kernel killed the namespace's processes with its PID 1
            supervisor.reap_all()
        return status
    return _container(p, hold)


def _as_init(p: Prepared, hold) -> int:  # type: ignore[no-untyped-def]
    try:
        return _container(p, hold)
    except SifboxError as err:
        return report(err)


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _container(p: Prepared, hold) -> int:  # type: ignore[no-untyped-def]
    from sifbox.runtime import identity, supervisor
    from sifbox.runtime.sandbox import mountplan, process, rootfs

    spec, image = p.spec, p.spec.image
    session = rootfs.Session.open(image=image, size_mib=p.site.session_mib, slave=p.site.mount_slave,
                                  uid=p.inner.uid, gid=p.inner.gid, userns=p.userns, squashfuse=p.squashfuse,
                                  fuse_threads=p.shared_fd is None and _fuse_threads(p))  # fmt: skip
    writable_sandbox = spec.writable and p.image.kind == "dir"
    lower = session.mount_image(p.image, writable=writable_sandbox, shared=p.shared_fd)
    if p.shared_fd is not None:
        os.close(p.shared_fd)
    mounts = _bound_images(p, session) if p.data else p.mounts
    if writable_sandbox:  # written in place: only mount points in place of the plan's own are made
        root, persistent = lower, True
    else:
        points = [(m.target, m.file) for m in mounts if m.kind not in ("mask", "readonly")]
        if p.identity:
            points += [("/etc/passwd", True), ("/etc/group", True)]
        if spec.dns:
            points.append(("/etc/resolv.conf", True))
        root, persistent = session.stack(lower, p.layers, points, p.site.overlay, images.oci_files(p.opened.source))
    if p.log:
        for note in session.notes:
            p.log("%s", note)
    if p.identity:
        identity.identity_files(session, root, p.inner, p.cfg)
    if spec.dns:  # --dns: the container's own resolv.conf
        from sifbox.runtime.cni import resolv_conf

        session.bind_text(root, "/etc/resolv.conf", resolv_conf(spec.dns))
    # A build's root is written in place too, and its mount points are made in
    # it, as a build makes them; a --writable run has the mounts that fit.
    in_place = writable_sandbox and p.fixed is None
    for warning in mountplan.apply(root, mounts, image=image, restrict=p.contained, in_place=in_place):
        _warn(warning)
    payload = _payload(p, root)
    if p.prepare_root is not None:
        p.prepare_root(root)
    tramp = process.Trampoline.create(p.keep_fds, image) if payload.argv else None
    if p.cgroups is not None:
        p.cgroups.join()
    rootfs.finish(root, readonly=not spec.writable_tmpfs and not persistent, image=image)
    if p.squashfuse:
        from sifbox.runtime import prefetch
    rootfs.pivot(root, image)
    _chdir(spec, p.host, workdir=images.oci_workdir(p.source))
    if hold is None:
        p.opened.close(keep_writable=True)  # a writable layer holds its lock
    if p.squashfuse and payload.argv and payload.argv[0].startswith("/"):
        prefetch.program(payload.argv[0])
    process.lock_down(keep_caps=p.caps if p.host.is_root or p.contained else None, run_as=p.options.run_as if p.options else None)
    argv, env = payload.argv, payload.env
    if argv is None or env is None or tramp is None:
        if hold is not None:  # an instance without a startscript: it holds its namespaces
            return int(hold(None, None, "", session.helpers))
        return _say(payload)
    path = process.find_program(argv[0], env)
    if path is None:
        return report(process.exec_error(argv[0], 2))
    exec_with = tramp

    def start() -> None:
        process.exec_payload(exec_with, path, argv, env, p.keep_fds, p.seccomp)

    if p.no_init and p.ns.pid and hold is None:
        # --no-init: the payload itself is PID 1 of its PID namespace (this process); its
        # helpers end with the namespace, and a failed exec with status 127.
        start()
        return 127
    if hold is not None:
        return int(hold(start, tramp, argv[0], session.helpers))
    return supervisor.run(start, tramp=tramp, name=argv[0], helpers=session.helpers,
                          prelude_timeout=_prelude_timeout(p, payload))  # fmt: skip


def _fuse_threads(p: Prepared) -> bool:
    """A per-container squashfuse_ll's server: multithreaded or not (no squashfuse, no import)."""
    if not p.squashfuse:
        return False
    from sifbox.runtime import nodemount

    return nodemount.squashfuse_threads(p, shared=False)


def _bound_images(p: Prepared, session) -> list:  # type: ignore[no-untyped-def,type-arg]
    """Mount the images bound with image-src= in the session; the plan's mounts
    with their "image" mounts made binds of their directories."""
    from sifbox.runtime.sandbox import mountplan

    mounted = session.mount_data(p.data)
    if p.log:
        for d, (_, driver) in zip(p.data, mounted):
            p.log("bound image %s: %s%s", d.path, driver, "" if d.writable else ", read-only")
    return mountplan.image_binds(p.mounts, [where for where, _ in mounted], p.data)


def _join(p: Prepared) -> int:
    """Run the payload in a running instance: its namespaces and root."""
    from sifbox.runtime import supervisor
    from sifbox.runtime.sandbox import join, process

    if p.host.is_root:
        process.seal_self()
    tramp = process.Trampoline.create(p.keep_fds, p.spec.image)  # before joining: needs the host's /proc
    joining = p.joining
    assert joining is not None
    if getattr(joining, "cgroup", False):  # an instance's limits (sifbox.runtime.options.limits_cgroup)
        from sifbox.hpc.cgroups import join_of

        join_of(joining.pid, f"sifbox-{os.getuid()}-{joining.name}", f"instance `{joining.name}`")
    joined = join.enter(joining.pid, joining.name)
    if p.log:
        p.log("joined the %s namespaces of instance %s (pid %d)", ", ".join(joined) or "no", joining.name,
              joining.pid)  # fmt: skip
    _chdir(p.spec, p.host, "join instance")
    if p.prepare_root is not None:  # in the joined root (sifbox oci exec --tty: its pty)
        p.prepare_root("/")
    payload = _payload(p, "/")
    process.lock_down(keep_caps=p.caps if p.host.is_root or p.contained else None, run_as=p.options.run_as if p.options else None)
    argv, env = payload.argv, payload.env
    if argv is None or env is None:
        return _say(payload)
    path = process.find_program(argv[0], env)
    if path is None:
        return report(process.exec_error(argv[0], 2))
    return supervisor.run(lambda: process.exec_payload(tramp, path, argv, env, p.keep_fds, p.seccomp),
                          tramp=tramp, name=argv[0], prelude_timeout=_prelude_timeout(p, payload))  # fmt: skip


def _prelude_timeout(p: Prepared, payload: Payload):  # type: ignore[no-untyped-def]
    """(seconds, the prelude's script, image, shown timeout) for --runscript-timeout: how long
    the prelude (the image's environment scripts) may run before the payload proper starts."""
    if p.options is None or p.options.timeout is None or not payload.argv or payload.argv[:2] != ["/bin/sh", "-c"]:
        return None
    return (p.options.timeout, payload.argv[2], p.spec.image, p.options.timeout_text)


def _payload(p: Prepared, root: str) -> Payload:
    """What to run, decided by looking at the finished root (is there a /bin/sh?)."""
    if p.fixed is not None:  # (OCI: no environment scripts to look for, nothing more to import)
        return Payload(*p.fixed)
    from sifbox.runtime import env as envmod
    from sifbox.runtime.sandbox.rootfs import exists

    def present(path: str) -> bool:
        return exists(root, path)

    action, words, env = p.action, p.words, p.env
    if p.launched and os.environ.get("PMIX_RANK", os.environ.get("SLURM_PROCID")) == "0":
        from sifbox.hpc import mpi

        hint = mpi.mismatch_hint(os.environ, present)
        if hint:
            _warn(hint)
    if p.app and not present(f"/scif/apps/{p.app}"):
        # Apptainer exits 1 for a missing app.
        raise SifboxError(f"can't {action} app `{p.app}` of `{p.spec.image}`: the image has no such app",
                          hint=f"`sifbox inspect --list-apps {p.spec.image}` lists its apps", exit_status=1)
    if action == "start" and not p.app and not present(STARTSCRIPT):
        return Payload(None, None, "", 0)  # nothing to start: the instance only holds its namespaces
    if present("/bin/sh"):
        return Payload(["/bin/sh", "-c", envmod.PRELUDE, "sifbox", action, *words], env)
    # No shell: no env scripts either; run what can run directly.
    direct = envmod.apply_overrides_directly(env, p.overrides)
    if action == "exec":
        return Payload(words, direct)
    if action == "start":
        return Payload([STARTSCRIPT, *words], direct)
    script = {"run": "/.singularity.d/runscript", "test": "/.singularity.d/test"}.get(action)
    if script is not None and action == "test" and not present(script):
        from sifbox.formats import appenv

        return Payload(None, None, appenv.NO_TEST, 0)
    if script and present(script):
        return Payload([script, *words], direct)
    raise SifboxError(f"can't {action} `{p.spec.image}`: the image has no /bin/sh",
                      hint="`sifbox exec IMAGE /path/to/program` runs a program directly",
                      exit_status=ExitStatus.CANNOT_LAUNCH)  # fmt: skip


def _say(payload: Payload) -> int:
    if payload.message:
        sys.stderr.write(payload.message + "\n")
    return int(payload.status)


def _chdir(spec: ContainerSpec, host: Host, doing: str | None = None, workdir: str | None = None) -> None:
    """Into --pwd (which must exist), else an OCI image's WORKDIR, the caller's directory
    (not with --contain), home or /."""
    from sifbox.runtime.sandbox.ops import LaunchError

    for d in (spec.pwd, workdir, None if spec.contain else host.cwd, spec.home_target or host.home, "/"):
        if d:
            try:
                os.chdir(d)
                return
            except OSError:
                if d == spec.pwd:
                    doing = doing or f"start a container from `{spec.image}`"
                    raise LaunchError(f"can't {doing}: --pwd `{d}` does not exist in the container") from None


# --- messages -------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    from sifbox.util import log

    log.log.warning("%s", message)


def _note(message: str) -> None:
    from sifbox.util import log

    log.log.info("%s", message)


def verbose_log() -> Callable[..., None] | None:
    """log.verbose when -v/-d asked for it; else None, so that a plain run
    does not pay for importing `logging` (launch time counts per MPI rank)."""
    try:
        level = int(os.environ.get("SIFBOX_MESSAGELEVEL", "20"))
    except ValueError:
        level = 20
    if level > 15:
        return None
    from sifbox.util import log

    return log.verbose
