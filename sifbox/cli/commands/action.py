"""`sifbox exec|run|shell|test IMAGE ...`: run an image without extracting it.

    sifbox exec [options] IMAGE COMMAND [ARGS...]
    sifbox run [options] IMAGE [ARGS...]        the image's runscript
    sifbox shell [options] IMAGE                 an interactive shell
    sifbox test [options] IMAGE                  the image's test script

Every option also reads SIFBOX_<OPTION> (then APPTAINER_<OPTION>,
SINGULARITY_<OPTION>) from the environment, as Apptainer's do.
"""

from __future__ import annotations

import argparse
import os
import sys

from sifbox.util.errors import NotAvailableError, UsageError

ENV_PREFIXES = ("SIFBOX_", "APPTAINER_", "SINGULARITY_")
NOT_YET = ("overlay",)


def flag_env(*names: str) -> str | None:
    """The first of SIFBOX_<NAME>, APPTAINER_<NAME>, SINGULARITY_<NAME> that is set."""
    for prefix in ENV_PREFIXES:
        for name in names:
            value = os.environ.get(prefix + name)
            if value is not None:
                return value
    return None


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def add_arguments(p: argparse.ArgumentParser) -> None:
    action = p.get_default("_command").name
    p.add_argument("image", metavar="IMAGE", help="SIF file, SquashFS file or sandbox directory")
    if action == "exec":
        p.add_argument("command_word", metavar="COMMAND", help="command to run in the container")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments")
    g = p.add_argument_group("mounts")
    g.add_argument("-B", "--bind", action="append", default=[], metavar="SPEC",
                   help="bind mount src[:dest[:ro|rw]], comma-separated, repeatable")
    g.add_argument("--mount", action="append", default=[], metavar="SPEC",
                   help="type=bind,source=...,destination=...[,ro]")
    g.add_argument("-H", "--home", metavar="SRC[:DST]", help="home directory to bind")
    g.add_argument("--no-home", action="store_true", help="do not mount the home directory")
    g.add_argument("--no-mount", action="append", default=[], metavar="LIST",
                   help="disable default mounts: proc,sys,dev,devpts,home,tmp,cwd,bind-paths,/etc/hosts,...")
    g.add_argument("--writable-tmpfs", action="store_true", help="make the root writable, changes vanish at exit")
    g.add_argument("-w", "--writable", action="store_true", help="write into a sandbox directory image")
    g.add_argument("-o", "--overlay", action="append", default=[], help=argparse.SUPPRESS)
    g = p.add_argument_group("isolation")
    g.add_argument("-c", "--contain", action="store_true", help="minimal /dev, private /tmp and home")
    g.add_argument("-C", "--containall", action="store_true", help="--contain plus --cleanenv (and PID/IPC namespaces)")
    g.add_argument("-e", "--cleanenv", action="store_true", help="do not pass the host environment")
    g.add_argument("--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    g.add_argument("--env-file", action="append", default=[], metavar="FILE", help="read environment variables from a file")
    g.add_argument("--pwd", "--cwd", dest="pwd", metavar="DIR", help="initial working directory")
    g.add_argument("--app", metavar="NAME", help="run an app of a SCIF image (/scif/apps/NAME)")
    g.add_argument("-u", "--userns", action="store_true", help="run in a user namespace even as root")
    g.add_argument("-p", "--pid", action="store_true", help="run in a new PID namespace")
    g.add_argument("-i", "--ipc", action="store_true", help="run in a new IPC namespace")
    g.add_argument("--uts", action="store_true", help="run in a new UTS namespace")
    g.add_argument("--hostname", metavar="NAME", help="set the container hostname (implies --uts)")
    g.add_argument("-n", "--net", action="store_true", help="run in a new network namespace")
    g.add_argument("--network", metavar="TYPES", help="network types with --net (only `none`: loopback only)")
    g.add_argument("-f", "--fakeroot", action="store_true",
                   help="run as root in a user namespace (subuid/subgid ranges when configured)")
    g.add_argument("--keep-privs", action="store_true", help="root: keep capabilities in the container")
    g.add_argument("--no-privs", action="store_true", help="drop all capabilities (the default)")
    g.add_argument("--add-caps", metavar="CAPS", help="root: keep these capabilities (comma list)")
    g.add_argument("--drop-caps", metavar="CAPS", help="root: with --keep-privs, drop these capabilities")
    if action == "shell":
        p.add_argument("-s", "--shell", metavar="PATH", help="shell to run (default /bin/bash, else /bin/sh)")
    g = p.add_argument_group("GPUs and devices")
    g.add_argument("--nv", action="store_true", help="bind the host's NVIDIA driver files and devices (nvliblist.conf)")
    g.add_argument("--nvccli", action="store_true", help="set up NVIDIA GPUs with nvidia-container-cli")
    g.add_argument("--rocm", action="store_true", help="bind the host's AMD ROCm driver files and devices (rocmliblist.conf)")
    g.add_argument("--device", action="append", default=[], metavar="VENDOR/CLASS=NAME",
                   help="add a CDI device (repeatable, comma-separated)")
    g.add_argument("--cdi-dirs", metavar="DIRS", help="CDI spec directories (comma list; default /etc/cdi,/var/run/cdi)")
    g = p.add_argument_group("not available yet")
    for name in NOT_YET:
        if name in ("writable", "overlay"):
            continue
        g.add_argument(f"--{name}", action="store_true", help=argparse.SUPPRESS)


def build_spec(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sifbox.runtime.spec import NO_MOUNT_NAMES, ContainerSpec, parse_bind, parse_mount

    for name in NOT_YET:
        if getattr(args, name, None):
            raise NotAvailableError(f"can't use --{name}: not available in this version of sifbox yet")
    binds = []
    env_binds = flag_env("BIND", "BINDPATH")
    for text in ([env_binds] if env_binds else []) + args.bind:
        binds += parse_bind(text)
    binds += [parse_mount(m) for m in args.mount]
    no_mount = set()
    for item in args.no_mount + ([flag_env("NO_MOUNT")] if flag_env("NO_MOUNT") else []):
        for name in filter(None, item.split(",")):
            if name not in NO_MOUNT_NAMES and not name.startswith("/"):
                raise UsageError(f"can't use --no-mount `{name}`: unknown mount",
                                 hint="one of " + ", ".join(sorted(NO_MOUNT_NAMES)) + ", or a bind destination")
            no_mount.add(name)
    fakeroot = args.fakeroot or _truthy(flag_env("FAKEROOT"))
    home = args.home or flag_env("HOME")
    home_source = home_target = None
    if home:
        parts = home.split(":")
        if len(parts) > 2 or not parts[0]:
            raise UsageError(f"can't use --home `{home}`: expected SRC[:DEST]")
        home_source = parts[0]
        home_target = parts[1] if len(parts) == 2 and parts[1] else home_source
    containall = args.containall or _truthy(flag_env("CONTAINALL"))
    return ContainerSpec(
        image=args.image,
        action=args.command,
        command=[],
        binds=tuple(binds),
        home_source=home_source,
        home_target=home_target,
        no_home=args.no_home or _truthy(flag_env("NO_HOME")),
        contain=args.contain or containall or _truthy(flag_env("CONTAIN")),
        cleanenv=args.cleanenv or containall or _truthy(flag_env("CLEANENV")),
        writable_tmpfs=args.writable_tmpfs or _truthy(flag_env("WRITABLE_TMPFS")),
        writable=args.writable or _truthy(flag_env("WRITABLE")),
        userns=args.userns or _truthy(flag_env("USERNS")),
        pwd=args.pwd or flag_env("PWD", "TARGET_PWD") or None,
        no_mount=frozenset(no_mount),
        shell=getattr(args, "shell", None) or flag_env("SHELL") if args.command == "shell" else None,
        fakeroot=fakeroot,
        pid=args.pid or containall or _truthy(flag_env("PID", "UNSHARE_PID")),
        ipc=args.ipc or containall or _truthy(flag_env("IPC", "UNSHARE_IPC")),
        uts=args.uts or _truthy(flag_env("UTS", "UNSHARE_UTS")),
        hostname=args.hostname or flag_env("HOSTNAME") or None,
        net=_net(args),
        caps=_caps(args),
    )


def _check_namespaces_allowed(spec, cfg) -> None:  # type: ignore[no-untyped-def]
    for wanted, directive in ((spec.pid, "allow pid ns"), (spec.ipc, "allow ipc ns"),
                              (spec.uts or spec.hostname, "allow uts ns")):  # fmt: skip
        if wanted and not cfg.get_bool(directive):
            raise UsageError(f"can't run `{spec.image}`: `{directive} = no` in the site's sifbox.conf")
    if os.getuid() != 0 and not cfg.get_bool("allow user ns"):
        raise UsageError(f"can't run `{spec.image}`: `allow user ns = no` in the site's sifbox.conf",
                         hint="unprivileged users run containers in user namespaces; ask the site's admins")


def _caps(args: argparse.Namespace) -> frozenset[int]:
    from sifbox.runtime import caps

    add = args.add_caps or flag_env("ADD_CAPS")
    drop = args.drop_caps or flag_env("DROP_CAPS")
    keep_privs = args.keep_privs or _truthy(flag_env("KEEP_PRIVS"))
    no_privs = args.no_privs or _truthy(flag_env("NO_PRIVS"))
    if os.getuid() != 0 and (add or keep_privs):
        raise UsageError(
            f"can't use {'--add-caps' if add else '--keep-privs'}: only root can keep capabilities in a container",
            hint="--fakeroot gives root's capabilities inside a user namespace",
        )
    return frozenset(caps.kept(keep_privs=keep_privs, no_privs=no_privs,
                               add=caps.parse(add or ""), drop=caps.parse(drop or "")))  # fmt: skip


def _net(args: argparse.Namespace) -> bool:
    network = args.network or flag_env("NETWORK")
    net = args.net or _truthy(flag_env("NET", "UNSHARE_NET")) or bool(network)
    if network and network != "none":
        raise NotAvailableError(
            f"can't use --network `{network}`: only `none` (loopback only) is available in this version",
        )
    return net


def main(args: argparse.Namespace) -> int:
    import pwd

    from sifbox.image.source import ImageKind, open_image
    from sifbox.runtime import env as envmod
    from sifbox.runtime.plan import default_mounts
    from sifbox.runtime.sandbox.setup import LaunchError, enter
    from sifbox.runtime.spec import Host
    from sifbox.util.paths import chase

    action = args.command
    spec = build_spec(args)
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
    host = Host(uid, gid, user, home, cwd, uid == 0)
    if spec.fakeroot and uid != 0 and spec.home_target is None and not spec.no_home:
        # As Apptainer: under --fakeroot the caller's home is root's home.
        spec = spec._replace(home_source=home, home_target="/root")

    env_files: dict[str, str] = {}
    for path in args.env_file + ([flag_env("ENV_FILE")] if flag_env("ENV_FILE") else []):
        try:
            with open(path) as f:
                env_files.update(envmod.parse_env_file(f.read(), path))
        except OSError as err:
            raise UsageError(f"can't read env file `{path}`: {err.strerror}") from None
    overrides = envmod.user_overrides(os.environ, env_files, envmod.parse_env_option(args.env))
    from sifbox.config import sysconf
    from sifbox.runtime.plan import site_from_config

    cfg = sysconf.load(getattr(args, "config", None))
    if cfg.warnings:
        from sifbox.util import log

        for warning in cfg.warnings:
            log.log.warning("%s", warning)
    _check_namespaces_allowed(spec, cfg)
    site = site_from_config(cfg)
    mounts = default_mounts(spec, host, site=site)
    devices = _device_request(args, cfg)
    prepare = None
    if devices is not None:
        mounts, overrides, prepare = _add_devices(devices, args, cfg, spec, site, mounts, overrides)
    launched = "PMIX_RANK" in os.environ or "PMI_RANK" in os.environ or "SLURM_STEP_ID" in os.environ
    if launched:
        from sifbox.hpc import mpi, slurm

        mounts = mounts + slurm.launcher_mounts(os.environ, mounts)
        overrides = {**mpi.env_defaults(os.environ, own_userns=uid != 0 or spec.userns), **overrides}
    source = open_image(spec.image, verb=action)
    if spec.writable and source.kind is not ImageKind.SANDBOX:
        source.close()
        raise NotAvailableError(
            f"can't {action} `{spec.image}` with --writable: only sandbox directories can be written yet",
            hint="--writable-tmpfs gives a writable root whose changes vanish at exit",
        )
    env = envmod.container_env(
        os.environ, cleanenv=spec.cleanenv, image=source.path,
        home=spec.home_target or home, overrides=overrides,
        shell_prompt="Sifbox> " if action == "shell" else None, action=action,
    )  # fmt: skip
    if action == "exec":
        words = [args.command_word, *args.args]
    elif action == "shell":
        words = [spec.shell or "", *args.args]
    else:
        words = list(args.args)

    app = args.app or flag_env("APP")
    if app:
        if "/" in app or app in (".", ".."):
            raise UsageError(f"can't use --app `{app}`: not an app name")
        env["SCIF_APPNAME"] = app

    def payload(root: str):  # type: ignore[no-untyped-def]
        def present(path: str) -> bool:
            try:
                chase(root, path)
                return True
            except OSError:
                return False

        if prepare is not None:
            prepare(root)
        if launched and os.environ.get("PMIX_RANK", os.environ.get("SLURM_PROCID")) == "0":
            from sifbox.hpc import mpi

            hint = mpi.mismatch_hint(os.environ, present)
            if hint:
                from sifbox.util import log

                log.log.warning("%s", hint)
        if app and not present(f"/scif/apps/{app}"):
            raise LaunchError(f"can't {action} app `{app}` of `{spec.image}`: the image has no such app",
                              hint=f"`sifbox inspect --list-apps {spec.image}` lists its apps")  # fmt: skip

        if present("/bin/sh"):
            return ["/bin/sh", "-c", envmod.PRELUDE, "sifbox", action, *words], env
        # No shell: no env scripts either; run what can run directly.
        direct = envmod.apply_overrides_directly(env, overrides)
        if action == "exec":
            return words, direct
        script = {"run": "/.singularity.d/runscript", "test": "/.singularity.d/test"}.get(action)
        if action == "test" and not present(script):
            return None, "No test script found in container, exiting"
        if script and present(script):
            return [script, *words], direct
        raise LaunchError(f"can't {action} `{spec.image}`: the image has no /bin/sh",
                          hint="`sifbox exec IMAGE /path/to/program` runs a program directly")

    status = enter(spec, host, source, mounts, payload, log=_verbose_log(), site=site)
    # The payload is gone and its status known: skip the interpreter's
    # teardown (~10 ms on every launch, which counts once per MPI rank).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _device_request(args: argparse.Namespace, cfg):  # type: ignore[no-untyped-def]
    """The GPU/CDI request of the options, variables and sifbox.conf; None when none."""
    nvccli = args.nvccli or _truthy(flag_env("NVCCLI")) or cfg.get_bool("use nvidia-container-cli")
    nv = args.nv or _truthy(flag_env("NV")) or cfg.get_bool("always use nv")
    rocm = args.rocm or _truthy(flag_env("ROCM")) or cfg.get_bool("always use rocm")
    devices = [d for item in args.device + ([flag_env("DEVICE")] if flag_env("DEVICE") else [])
               for d in item.split(",") if d]  # fmt: skip
    if not (nv or nvccli or rocm or devices):
        return None
    if cfg.get_bool("use nvidia-container-cli") and nv and not args.nvccli:
        nvccli = True  # as Apptainer: the directive turns --nv into --nvccli
    cdi_dirs = args.cdi_dirs or flag_env("CDI_DIRS")
    from sifbox.hpc.devices import Request

    return Request(nv and not nvccli, nvccli, rocm, tuple(devices),
                   tuple(d for d in (cdi_dirs or "").split(",") if d))  # fmt: skip


def _add_devices(request, args, cfg, spec, site, mounts, overrides):  # type: ignore[no-untyped-def]
    from sifbox.config import sysconf
    from sifbox.hpc import devices

    conf = getattr(args, "config", None) or os.environ.get(sysconf.ENV_VAR) or sysconf.DEFAULT_PATH
    dev_is_host = site.mount_dev == "yes" and not spec.contain and "dev" not in spec.no_mount
    env = dict(os.environ)
    env.update(overrides)
    extra = devices.plan(request, cfg=cfg, conf_dir=os.path.dirname(os.path.abspath(conf)),
                         dev_is_host=dev_is_host, env=env)  # fmt: skip
    if extra.warnings:
        from sifbox.util import log

        for warning in extra.warnings:
            log.log.warning("%s", warning)
    return mounts + extra.mounts, {**extra.env, **overrides}, extra.prepare


def _verbose_log():  # type: ignore[no-untyped-def]
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
