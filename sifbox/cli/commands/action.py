"""`sifbox exec|run|shell|test IMAGE ...`: run an image without extracting it.

    sifbox exec [options] IMAGE COMMAND [ARGS...]
    sifbox run [options] IMAGE [ARGS...]        the image's runscript
    sifbox shell [options] IMAGE                 an interactive shell
    sifbox test [options] IMAGE                  the image's test script

Every option also reads SIFBOX_<OPTION> (then APPTAINER_<OPTION>,
SINGULARITY_<OPTION>) from the environment, as Apptainer's do.
"""

from __future__ import annotations

import os
import sys

from sifbox.util.errors import NotAvailableError, UsageError

ENV_PREFIXES = ("SIFBOX_", "APPTAINER_", "SINGULARITY_")
NOT_YET: tuple[str, ...] = ()
STARTSCRIPT = "/.singularity.d/startscript"


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


#: The options of every action: (flags, dest, kind, metavar, help, group). kind is
#: "bool" (store_true), "value" or "append". One table serves argparse (help,
#: unusual command lines) and `fast_parse` (the common case, without argparse).
OPTIONS: tuple[tuple[tuple[str, ...], str, str, str | None, str | None, str], ...] = (
    (("-B", "--bind"), "bind", "append", "SPEC", "bind mount src[:dest[:ro|rw]], comma-separated, repeatable", "mounts"),
    (("--mount",), "mount", "append", "SPEC", "type=bind,source=...,destination=...[,ro]", "mounts"),
    (("-H", "--home"), "home", "value", "SRC[:DST]", "home directory to bind", "mounts"),
    (("--no-home",), "no_home", "bool", None, "do not mount the home directory", "mounts"),
    (("--no-mount",), "no_mount", "append", "LIST",
     "disable default mounts: proc,sys,dev,devpts,home,tmp,hostfs,cwd,bind-paths,/etc/hosts,...", "mounts"),
    (("--writable-tmpfs",), "writable_tmpfs", "bool", None, "make the root writable, changes vanish at exit", "mounts"),
    (("-w", "--writable"), "writable", "bool", None, "write into a sandbox directory, or a SIF's overlay partition",
     "mounts"),
    (("-o", "--overlay"), "overlay", "append", "PATH[:ro]",
     "overlay directory, EXT3 or SquashFS image (writable unless :ro), repeatable", "mounts"),
    (("-c", "--contain"), "contain", "bool", None, "minimal /dev, private /tmp and home", "isolation"),
    (("-C", "--containall"), "containall", "bool", None, "--contain plus --cleanenv (and PID/IPC namespaces)",
     "isolation"),
    (("-e", "--cleanenv"), "cleanenv", "bool", None, "do not pass the host environment", "isolation"),
    (("--env",), "env", "append", "K=V", "set an environment variable", "isolation"),
    (("--env-file",), "env_file", "append", "FILE", "read environment variables from a file", "isolation"),
    (("--pwd", "--cwd"), "pwd", "value", "DIR", "initial working directory", "isolation"),
    (("--app",), "app", "value", "NAME", "run an app of a SCIF image (/scif/apps/NAME)", "isolation"),
    (("-u", "--userns"), "userns", "bool", None, "run in a user namespace even as root", "isolation"),
    (("-p", "--pid"), "pid", "bool", None, "run in a new PID namespace", "isolation"),
    (("-i", "--ipc"), "ipc", "bool", None, "run in a new IPC namespace", "isolation"),
    (("--uts",), "uts", "bool", None, "run in a new UTS namespace", "isolation"),
    (("--hostname",), "hostname", "value", "NAME", "set the container hostname (implies --uts)", "isolation"),
    (("-n", "--net"), "net", "bool", None, "run in a new network namespace", "isolation"),
    (("--network",), "network", "value", "TYPES", "network types with --net (only `none`: loopback only)",
     "isolation"),
    (("-f", "--fakeroot"), "fakeroot", "bool", None,
     "run as root in a user namespace (subuid/subgid ranges when configured)", "isolation"),
    (("--keep-privs",), "keep_privs", "bool", None, "root: keep capabilities in the container", "isolation"),
    (("--no-privs",), "no_privs", "bool", None, "drop all capabilities (the default)", "isolation"),
    (("--add-caps",), "add_caps", "value", "CAPS", "root: keep these capabilities (comma list)", "isolation"),
    (("--drop-caps",), "drop_caps", "value", "CAPS", "root: with --keep-privs, drop these capabilities",
     "isolation"),
    (("--nv",), "nv", "bool", None, "bind the host's NVIDIA driver files and devices (nvliblist.conf)",
     "GPUs and devices"),
    (("--nvccli",), "nvccli", "bool", None, "set up NVIDIA GPUs with nvidia-container-cli", "GPUs and devices"),
    (("--rocm",), "rocm", "bool", None, "bind the host's AMD ROCm driver files and devices (rocmliblist.conf)",
     "GPUs and devices"),
    (("--device",), "device", "append", "VENDOR/CLASS=NAME", "add a CDI device (repeatable, comma-separated)",
     "GPUs and devices"),
    (("--cdi-dirs",), "cdi_dirs", "value", "DIRS", "CDI spec directories (comma list; default /etc/cdi,/var/run/cdi)",
     "GPUs and devices"),
    *((("--" + name,), name, "bool", None, None, "not available yet") for name in NOT_YET),
)
SHELL_OPTION = (("-s", "--shell"), "shell", "value", "PATH", "shell to run (default /bin/bash, else /bin/sh)",
                "isolation")  # fmt: skip


def _options(action: str):  # type: ignore[no-untyped-def]
    return OPTIONS + ((SHELL_OPTION,) if action == "shell" else ())


def add_arguments(p) -> None:  # type: ignore[no-untyped-def]
    import argparse

    action = p.get_default("_command").name
    p.add_argument("image", metavar="IMAGE",
                   help="SIF file, SquashFS file, sandbox directory, or instance://NAME")  # fmt: skip
    if action == "exec":
        p.add_argument("command_word", metavar="COMMAND", help="command to run in the container")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments")
    add_options(p, action)


def add_options(p, action: str) -> None:  # type: ignore[no-untyped-def]
    """The container options (also those of `instance start|run`)."""
    import argparse

    groups = {}
    for flags, dest, kind, metavar, text, group in _options(action):
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        kw = {"dest": dest, "help": text if text is not None else argparse.SUPPRESS}
        if kind == "bool":
            kw["action"] = "store_true"
        else:
            kw["metavar"] = metavar
            if kind == "append":
                kw.update(action="append", default=[])
        groups[group].add_argument(*flags, **kw)


def fast_parse(action: str, argv: list[str]):  # type: ignore[no-untyped-def]
    """The options and operands of an action, or None when the command line
    needs argparse (help, abbreviations, `--`, options after the image of
    `exec`, bad input: argparse then also gives the error message)."""
    by_flag = {}
    values: dict[str, object] = {}
    for option in _options(action):
        flags, dest, kind = option[0], option[1], option[2]
        for flag in flags:
            by_flag[flag] = (dest, kind)
        values[dest] = [] if kind == "append" else (False if kind == "bool" else None)
    i, n = 0, len(argv)
    while i < n:
        arg = argv[i]
        if arg == "--" or "--" in argv[i:]:
            return None
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        spec = by_flag.get(name)
        if spec is None:
            return None
        dest, kind = spec
        if kind == "bool":
            if eq:
                return None
            values[dest] = True
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        elif i + 1 < n and not (argv[i + 1].startswith("-") and argv[i + 1] != "-"):
            value = argv[i + 1]
            i += 2
        else:
            return None
        if kind == "append":
            values[dest].append(value)  # type: ignore[attr-defined]
        else:
            values[dest] = value
    if i >= n:
        return None
    values["image"] = argv[i]
    rest = argv[i + 1 :]
    if action == "exec":
        if not rest or rest[0].startswith("-"):
            return None
        values["command_word"], rest = rest[0], rest[1:]
    values["args"] = rest
    return values


def build_spec(args):  # type: ignore[no-untyped-def]
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
        overlays=tuple(args.overlay + ([flag_env("OVERLAY", "OVERLAYIMAGE")] if flag_env("OVERLAY", "OVERLAYIMAGE") else [])),
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


def policy_configured(cfg) -> bool:  # type: ignore[no-untyped-def]
    """`sifbox.security.policy.active(cfg)` without importing it: no cost per launch
    when sifbox.conf sets no image limit (a unit test keeps the two in step)."""
    return bool(
        cfg.get_list("limit container paths") or cfg.get_list("limit container owners")
        or cfg.get_list("limit container groups") or cfg.get_bool("limit container store")
        or not all(cfg.get_bool(f"allow container {k}")
                   for k in ("sif", "encrypted", "squashfs", "extfs", "dir"))
    )  # fmt: skip


def _caps(args) -> frozenset[int]:  # type: ignore[no-untyped-def]
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


def _net(args) -> bool:  # type: ignore[no-untyped-def]
    network = args.network or flag_env("NETWORK")
    net = args.net or _truthy(flag_env("NET", "UNSHARE_NET")) or bool(network)
    if network and network != "none":
        raise NotAvailableError(
            f"can't use --network `{network}`: only `none` (loopback only) is available in this version",
        )
    return net


def main(args, launch=None) -> int:  # type: ignore[no-untyped-def]
    """Run the action; `launch` (instances) replaces `sandbox.setup.enter`."""
    import pwd

    from sifbox.image.source import open_image
    from sifbox.runtime import env as envmod
    from sifbox.runtime.plan import default_mounts
    from sifbox.runtime.sandbox.setup import LaunchError, enter
    from sifbox.runtime.spec import Host
    from sifbox.util.paths import chase

    action = args.command
    spec = build_spec(args)
    instance = None
    if spec.image.startswith("instance://"):
        from sifbox.runtime import instances

        instance = instances.find_running(spec.image, verb=action)
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
    prepare = None
    launched = "PMIX_RANK" in os.environ or "PMI_RANK" in os.environ or "SLURM_STEP_ID" in os.environ
    if instance is not None:
        # Joining: the instance's mounts and image are already in place.
        mounts, source, image_path, overlays = [], None, instance.image, []
    else:
        mounts = default_mounts(spec, host, site=site)
        devices = _device_request(args, cfg)
        if devices is not None:
            mounts, overrides, prepare = _add_devices(devices, args, cfg, spec, site, mounts, overrides)
        if launched:
            from sifbox.hpc import mpi, slurm

            mounts = mounts + slurm.launcher_mounts(os.environ, mounts)
            overrides = {**mpi.env_defaults(os.environ, own_userns=uid != 0 or spec.userns), **overrides}
        source = open_image(spec.image, verb=action)
        image_path = source.path
        if policy_configured(cfg):
            from sifbox.security import policy

            try:
                policy.check_opened(source, cfg, verb=action, image=spec.image, user=user)
            except BaseException:
                source.close()
                raise
        _check_ecl(source, action, getattr(args, "config", None))
        overlays = _open_overlays(spec, source, action)
    env = envmod.container_env(
        os.environ, cleanenv=spec.cleanenv, image=image_path,
        home=spec.home_target or home, overrides=overrides,
        shell_prompt="Sifbox> " if action == "shell" else None, action=action,
    )  # fmt: skip
    if instance is not None or launch is not None:
        name = instance.name if instance is not None else args.instance_name
        for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
            env[f"{prefix}_INSTANCE"] = name
    if action == "exec":
        words = [args.command_word, *args.args]
    elif action == "start":
        words = [STARTSCRIPT, *args.args]
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

        if action == "start" and not present(STARTSCRIPT):
            return [], env  # nothing to start: the instance only holds its namespaces
        if present("/bin/sh"):
            return ["/bin/sh", "-c", envmod.PRELUDE, "sifbox", "exec" if action == "start" else action, *words], env
        # No shell: no env scripts either; run what can run directly.
        direct = envmod.apply_overrides_directly(env, overrides)
        if action in ("exec", "start"):
            return words, direct
        script = {"run": "/.singularity.d/runscript", "test": "/.singularity.d/test"}.get(action)
        if action == "test" and not present(script):
            return None, "No test script found in container, exiting"
        if script and present(script):
            return [script, *words], direct
        raise LaunchError(f"can't {action} `{spec.image}`: the image has no /bin/sh",
                          hint="`sifbox exec IMAGE /path/to/program` runs a program directly")

    if instance is not None:
        from sifbox.runtime.sandbox import join

        status = join.enter(instance, spec, host, payload, log=_verbose_log())
    elif launch is not None:
        status = launch(spec, host, source, mounts, payload, site, _verbose_log(), overlays)
    else:
        status = enter(spec, host, source, mounts, payload, log=_verbose_log(), site=site, overlays=overlays)
    # The payload is gone and its status known: skip the interpreter's
    # teardown (~10 ms on every launch, which counts once per MPI rank).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _open_overlays(spec, source, action: str):  # type: ignore[no-untyped-def]
    """The --overlay images, plus the SIF's own overlay partition with --writable."""
    if not spec.overlays and not spec.writable and source.overlay is None:
        return []
    from sifbox.image import overlay
    from sifbox.image.source import ImageKind

    try:
        if spec.writable and source.kind is ImageKind.SQUASHFS:
            raise UsageError(
                f"can't {action} `{spec.image}` with --writable: a SquashFS image is read-only",
                hint="--overlay DIR keeps changes in DIR; --writable-tmpfs gives a writable root whose changes vanish",
            )
        found = overlay.open_overlays(list(spec.overlays), verb=action)
        if spec.writable and source.kind is ImageKind.SIF:
            if any(o.writable for o in found):
                overlay.close(found)
                raise UsageError(f"can't {action} `{spec.image}` with --writable and a writable --overlay",
                                 hint="add `:ro` to the overlay")  # fmt: skip
            found.insert(0, overlay.sif_overlay_partition(spec.image, verb=action))
        elif source.overlay is not None:
            # As Apptainer: a SIF's overlay partition is a read-only layer unless --writable.
            offset, size = source.overlay
            found.append(overlay.Overlay(source.path, "ext3", os.dup(source.fd), offset, size, False))
        return found
    except BaseException:
        source.close()
        raise


def _check_ecl(source, action: str, config: str | None) -> None:  # type: ignore[no-untyped-def]
    """Refuse an image the execution control list refuses, before anything is
    mounted; free when there is no ecl.toml (one stat)."""
    from sifbox.config.sysconf import DEFAULT_PATH, ENV_VAR

    conf = config or os.environ.get(ENV_VAR) or DEFAULT_PATH
    if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(conf)), "ecl.toml")):
        return
    from sifbox.security import ecl

    try:
        ecl.enforce(source.path, source.fd, action, conf)
    except BaseException:
        source.close()
        raise


def _device_request(args, cfg):  # type: ignore[no-untyped-def]
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
