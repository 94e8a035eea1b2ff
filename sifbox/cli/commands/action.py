"""`sifbox exec|run|shell|test IMAGE ...`: run an image without extracting it.

    sifbox exec [options] IMAGE COMMAND [ARGS...]   IMAGE may be docker://REF (pulled to the cache)
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
    (("-B", "--bind"), "bind", "append", "SPEC",
     "bind mount src[:dest[:opts]], comma-separated, repeatable; opts: ro, rw, image-src=PATH, id=N", "mounts"),
    (("--mount",), "mount", "append", "SPEC",
     "type=bind,src=...,dst=...[,ro][,image-src=PATH][,id=N][,nonested] (CSV quoting)", "mounts"),
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
    (("--env-file",), "env_file", "append", "FILE[,FILE]",
     "read environment variables from files (shell assignments, evaluated on the host)", "isolation"),
    (("--no-env",), "no_env", "append", "VAR[,VAR]", "do not pass these host variables into the container",
     "isolation"),
    (("--no-eval",), "no_eval", "bool", None,
     "do not evaluate the values of --env, --env-file and SIFBOXENV_* in the container's shell", "isolation"),
    (("--no-umask",), "no_umask", "bool", None, "give the container the default umask 0022, not the caller's",
     "isolation"),
    (("--no-init",), "no_init", "bool", None, "with a PID namespace, run the program as its PID 1 (no init)",
     "isolation"),
    (("--compat",), "compat", "bool", None,
     "OCI/Docker-like: --containall --no-init --no-umask --no-eval --writable-tmpfs", "isolation"),
    (("--pwd", "--cwd"), "pwd", "value", "DIR", "initial working directory", "isolation"),
    (("--app",), "app", "value", "NAME", "run an app of a SCIF image (/scif/apps/NAME)", "isolation"),
    (("-u", "--userns"), "userns", "bool", None, "run in a user namespace even as root", "isolation"),
    (("-p", "--pid"), "pid", "bool", None, "run in a new PID namespace", "isolation"),
    (("-i", "--ipc"), "ipc", "bool", None, "run in a new IPC namespace", "isolation"),
    (("--uts",), "uts", "bool", None, "run in a new UTS namespace", "isolation"),
    (("--hostname",), "hostname", "value", "NAME", "set the container hostname (implies --uts)", "isolation"),
    (("-n", "--net"), "net", "bool", None, "run in a new network namespace", "isolation"),
    (("--network",), "network", "value", "NAMES",
     "networks with --net, comma-separated (CNI configurations; default bridge for root; none: loopback only)",
     "isolation"),
    (("--network-args",), "network_args", "append", "ARGS",
     "arguments of the networks: portmap=HOST:CONTAINER/PROTO, IP=ADDRESS, [NETWORK:]KEY=VALUE", "isolation"),
    (("--netns-path",), "netns_path", "value", "PATH",
     "join the network namespace at PATH (root; users: paths of `allow netns paths`)", "isolation"),
    (("--dns",), "dns", "value", "SERVERS", "DNS servers of the container's /etc/resolv.conf (comma list)",
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
    (("-W", "--workdir"), "workdir", "value", "DIR",
     "host directory behind /tmp, /var/tmp and the home directory with --contain, and behind --scratch",
     "mounts"),
    (("-S", "--scratch"), "scratch", "append", "DIR",
     "an empty directory at DIR in the container (in --workdir if given), comma-separated, repeatable", "mounts"),
    (("--underlay",), "underlay", "bool", None,
     "accepted for Apptainer's command lines: missing mount points are always made", "mounts"),
    *((("--" + name,), name, "bool", None, None, "not available yet") for name in NOT_YET),
    (("--security",), "security", "append", "OPTS",
     ("uid:N,gid:N[:M...]: run as these IDs (root only); seccomp:FILE: a seccomp profile (OCI/Docker JSON); "
      "apparmor:, selinux: are refused"), "isolation"),
    (("--allow-setuid",), "allow_setuid", "bool", None,
     "refused: setuid programs never gain privileges in a sifbox container (no_new_privs, nosuid)", "isolation"),
    (("--unsquash",), "unsquash", "bool", None, "no effect: sifbox runs images without extracting them", "mounts"),
    (("--runscript-timeout",), "runscript_timeout", "value", "DURATION",
     "time the image's environment scripts may take, e.g. 30s, 2m (killed after it)", "isolation"),
    (("--disable-cache",), "disable_cache", "bool", None, "do not use or create cached images (URIs)", "image URIs"),
    (("--no-https", "--nohttps"), "no_https", "bool", None, "use plain HTTP for docker:// registries", "image URIs"),
    (("--oci",), "oci", "bool", None, ("OCI semantics: runc's namespaces, mounts and capabilities, the image's "
                                       "OCI config (Env, Entrypoint, Cmd, WorkingDir), no host environment"),
     "isolation"),
    (("--memory",), "memory", "value", "BYTES", "memory limit (cgroups), e.g. 512m, 2g", "resources"),
    (("--memory-swap",), "memory_swap", "value", "BYTES", "memory and swap limit (cgroups); -1: unlimited swap",
     "resources"),
    (("--cpus",), "cpus", "value", "N", "CPU time limit in CPUs (cgroups), e.g. 1.5", "resources"),
    (("--pids-limit",), "pids_limit", "value", "N", "limit on the number of processes (cgroups)", "resources"),
    (("--memory-reservation",), "memory_reservation", "value", "BYTES",
     "memory soft limit (cgroups v1 soft limit, v2 memory.low), e.g. 256m", "resources"),
    (("--oom-kill-disable",), "oom_kill_disable", "bool", None,
     "disable the OOM killer of the container's cgroup (cgroups v1; v2 has no switch: a warning)", "resources"),
    (("--cpu-shares",), "cpu_shares", "value", "N", "CPU shares, a relative weight (2 to 262144; v2: cpu.weight)",
     "resources"),
    (("--cpuset-cpus",), "cpuset_cpus", "value", "LIST", "CPUs the container may use, e.g. 0-3,6", "resources"),
    (("--cpuset-mems",), "cpuset_mems", "value", "LIST", "memory nodes the container may use, e.g. 0", "resources"),
    (("--blkio-weight",), "blkio_weight", "value", "N", "block I/O weight (10 to 1000; v2: io.weight)", "resources"),
    (("--apply-cgroups",), "apply_cgroups", "value", "FILE",
     "apply the limits of a cgroups TOML file (Apptainer's format); not with the other limit options",
     "resources"),
    (("--passphrase",), "passphrase", "bool", None,
     "ask for the passphrase of an encrypted image (or SIFBOX_ENCRYPTION_PASSPHRASE)", "encrypted images"),
    (("--pem-path",), "pem_path", "value", "PATH",
     "the RSA private key (PEM) of an encrypted image (or SIFBOX_ENCRYPTION_PEM_PATH)", "encrypted images"),
    (("--no-share",), "no_share", "bool", None,
     "mount the image for this container alone, not through the node's shared mount of it", "mounts"),
    (("--ignore-subuid",), "ignore_subuid", "bool", None, None, "isolation"),
    (("--ignore-fakeroot-command",), "ignore_fakeroot_command", "bool", None, None, "isolation"),
    (("--ignore-userns",), "ignore_userns", "bool", None, None, "isolation"),
)
SHELL_OPTION = (("-s", "--shell"), "shell", "value", "PATH", "shell to run (default /bin/bash, else /bin/sh)",
                "isolation")  # fmt: skip
#: `instance start|run` only, as in Apptainer.
BOOT_OPTION = (("--boot",), "boot", "bool", None, "refused: sifbox does not boot /sbin/init in a container",
               "isolation")  # fmt: skip


def _options(action: str):  # type: ignore[no-untyped-def]
    return OPTIONS + ((SHELL_OPTION,) if action == "shell" else (BOOT_OPTION,) if action == "start" else ())


def add_arguments(p) -> None:  # type: ignore[no-untyped-def]
    import argparse

    action = p.get_default("_command").name
    p.add_argument("image", metavar="IMAGE",
                   help="SIF file, SquashFS file, sandbox directory, instance://NAME, or docker://REF")  # fmt: skip
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
    # As Apptainer's: --bind first, then SIFBOX_BIND (else APPTAINER_BIND, SINGULARITY_BIND),
    # then SIFBOX_BINDPATH (else ...); --mount, then SIFBOX_MOUNT (else ...).
    for text in args.bind + [v for v in (flag_env("BIND"), flag_env("BINDPATH")) if v]:
        binds += parse_bind(text)
    for text in args.mount + ([flag_env("MOUNT")] if flag_env("MOUNT") else []):
        binds += parse_mount(text)
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
    compat = _compat(args)
    containall = args.containall or compat or _truthy(flag_env("CONTAINALL"))
    net, network = _net(args)
    netns_path = getattr(args, "netns_path", None) or flag_env("NETNS_PATH") or None
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
        writable_tmpfs=args.writable_tmpfs or compat or _truthy(flag_env("WRITABLE_TMPFS")),
        writable=args.writable or _truthy(flag_env("WRITABLE")),
        overlays=tuple(args.overlay + ([flag_env("OVERLAY", "OVERLAYIMAGE")] if flag_env("OVERLAY", "OVERLAYIMAGE") else [])),
        userns=args.userns or _truthy(flag_env("USERNS", "UNSHARE_USERNS")),
        pwd=args.pwd or flag_env("CWD", "TARGET_CWD", "PWD", "TARGET_PWD") or None,
        no_mount=frozenset(no_mount),
        shell=getattr(args, "shell", None) or flag_env("SHELL") if args.command == "shell" else None,
        fakeroot=fakeroot,
        pid=args.pid or containall or _truthy(flag_env("PID", "UNSHARE_PID")),
        ipc=args.ipc or containall or _truthy(flag_env("IPC", "UNSHARE_IPC")),
        uts=args.uts or _truthy(flag_env("UTS", "UNSHARE_UTS")),
        hostname=args.hostname or flag_env("HOSTNAME") or None,
        net=net or bool(netns_path),
        netns_path=netns_path,
        network=network,
        network_args=tuple(getattr(args, "network_args", None) or ([flag_env("NETWORK_ARGS")] if flag_env("NETWORK_ARGS") else [])),
        dns=_dns(args),
        workdir=args.workdir or flag_env("WORKDIR") or None,
        scratch=tuple(args.scratch + ([flag_env("SCRATCH", "SCRATCHDIR")] if flag_env("SCRATCH", "SCRATCHDIR") else [])),
    )


def _compat(args) -> bool:  # type: ignore[no-untyped-def]
    return bool(getattr(args, "compat", False)) or _truthy(flag_env("COMPAT"))


def _env_options(args):  # type: ignore[no-untyped-def]
    """(env_files, no_env, no_eval, no_umask, no_init) of the options and variables."""
    compat = _compat(args)
    files = [f for item in args.env_file + ([flag_env("ENV_FILE")] if flag_env("ENV_FILE") else [])
             for f in item.split(",") if f]  # fmt: skip
    no_env = [n for item in getattr(args, "no_env", []) + ([flag_env("NOENV")] if flag_env("NOENV") else [])
              for n in item.split(",") if n]  # fmt: skip
    no_eval = bool(getattr(args, "no_eval", False)) or compat or _truthy(flag_env("NO_EVAL"))
    no_umask = bool(getattr(args, "no_umask", False)) or compat or _truthy(flag_env("NO_UMASK"))
    no_init = bool(getattr(args, "no_init", False)) or compat or _truthy(flag_env("NOSHIMINIT"))
    return tuple(files), tuple(no_env), no_eval, no_umask, no_init


def _caps(args):  # type: ignore[no-untyped-def]
    """(keep_privs, no_privs, add, drop) of the options and variables."""
    add = args.add_caps or flag_env("ADD_CAPS") or ""
    drop = args.drop_caps or flag_env("DROP_CAPS") or ""
    keep_privs = args.keep_privs or _truthy(flag_env("KEEP_PRIVS"))
    no_privs = args.no_privs or _truthy(flag_env("NO_PRIVS"))
    if os.getuid() != 0 and (add or keep_privs):
        raise UsageError(
            f"can't use {'--add-caps' if add else '--keep-privs'}: only root can keep capabilities in a container",
            hint="--fakeroot gives root's capabilities inside a user namespace",
        )
    from sifbox.runtime import caps

    caps.parse(add)  # bad names are usage errors, found before anything starts
    caps.parse(drop)
    return (keep_privs, no_privs, add, drop)


def _net(args) -> tuple[bool, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """(--net, the --network names) of the options and variables."""
    network = args.network or flag_env("NETWORK")
    net = args.net or _truthy(flag_env("NET", "UNSHARE_NET")) or bool(network)
    if not network:
        return net, ()
    from sifbox.runtime.cni import NetworkError, parse_networks  # (not on a launch without networks)

    try:
        return net, parse_networks(network)
    except NetworkError as err:
        raise UsageError(f"can't use --network `{network}`: {err}", hint=err.hint) from None


def _dns(args) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    text = getattr(args, "dns", None) or flag_env("DNS") or ""
    servers = tuple(d.strip() for d in text.split(",") if d.strip())
    if not servers:
        return ()
    from sifbox.runtime.cni import NetworkError, resolv_conf

    try:
        resolv_conf(servers)
    except NetworkError as err:
        raise UsageError(f"can't use --dns `{text}`: {err}") from None
    return servers


def _devices(args):  # type: ignore[no-untyped-def]
    """The GPU/CDI options and variables (sifbox.conf has its say in the launcher); None when none."""
    nvccli = args.nvccli or _truthy(flag_env("NVCCLI"))
    nv = args.nv or _truthy(flag_env("NV"))
    rocm = args.rocm or _truthy(flag_env("ROCM"))
    devices = [d for item in args.device + ([flag_env("DEVICE")] if flag_env("DEVICE") else [])
               for d in item.split(",") if d]  # fmt: skip
    cdi_dirs = args.cdi_dirs or flag_env("CDI_DIRS")
    if not (nvccli or nv or rocm or devices or cdi_dirs):
        return None  # (sifbox.conf's `always use nv|rocm` is the launcher's to apply)
    from sifbox.hpc.devices import Request

    return Request(nv, nvccli, rocm, tuple(devices), tuple(d for d in (cdi_dirs or "").split(",") if d))


def build_launch(args, instance: str | None = None, pid_file: str | None = None):  # type: ignore[no-untyped-def]
    """The launch request of an action's (or `instance start|run`'s) options."""
    from sifbox.runtime.launcher import Launch

    action = args.command
    spec = build_spec(args)
    if action == "exec":
        words = [args.command_word, *args.args]
    elif action == "shell":
        words = [spec.shell or "", *args.args]
    else:
        words = list(args.args)
    env_files, no_env, no_eval, no_umask, no_init = _env_options(args)
    launch = Launch(
        action=action, spec=spec, words=tuple(words), app=args.app or flag_env("APP", "APPNAME") or None,
        env_files=env_files, env_opts=tuple(args.env),
        caps=_caps(args), devices=_devices(args), config=getattr(args, "config", None),
        instance=instance, pid_file=pid_file, options=_launch_options(args, instance), no_env=no_env,
        no_eval=no_eval, no_umask=no_umask, no_init=no_init,
    )  # fmt: skip
    return launch


def _flag(args, name: str, *env: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(getattr(args, name, False)) or _truthy(flag_env(*env))


def _launch_options(args, instance: str | None):  # type: ignore[no-untyped-def]
    """The privilege, fakeroot-mode, timeout and image-URI options (sifbox.runtime.options)."""
    from sifbox.runtime import options as ro

    root = os.getuid() == 0
    if _flag(args, "boot", "BOOT"):
        raise NotAvailableError("can't use --boot: sifbox does not run /sbin/init as a container's init "
                                "(Apptainer does only in its setuid mode, which sifbox has none of)",
                                hint="`instance start` runs the image's %startscript as a service")  # fmt: skip
    if _flag(args, "allow_setuid", "ALLOW_SETUID"):
        raise UsageError("can't use --allow-setuid: setuid programs never gain privileges in a sifbox container "
                         "(every payload runs with no_new_privs, images are mounted nosuid)",
                         hint="run the program as the user it should run as (`--security uid:N` as root), "
                         "or give root's container capabilities (--add-caps)")  # fmt: skip
    ignore_userns = _flag(args, "ignore_userns", "IGNORE_USERNS")
    if ignore_userns and not root:
        raise UsageError("can't use --ignore-userns: sifbox runs a user's containers in user namespaces "
                         "only (it has no setuid mode)")  # fmt: skip
    security = list(getattr(args, "security", None) or [])
    env_security = flag_env("SECURITY")
    if env_security:
        security.insert(0, env_security)
    run_as = ro.parse_security(security, is_root=root)
    timeout_text = getattr(args, "runscript_timeout", None) or flag_env("RUNSCRIPT_TIMEOUT")
    timeout = ro.parse_duration(timeout_text) if timeout_text else None
    if timeout is not None and instance is not None:
        raise NotAvailableError(f"can't use --runscript-timeout with instance `{instance}`: "
                                "not available for instances in this version")  # fmt: skip
    if _flag(args, "unsquash", "UNSQUASH"):
        from sifbox.util.log import log

        log.warning("--unsquash has no effect: sifbox runs images without extracting them")
    return ro.LaunchOptions(
        run_as=run_as, timeout=timeout or None, timeout_text=ro.format_duration(timeout) if timeout else "",
        subuid=not _flag(args, "ignore_subuid", "IGNORE_SUBUID"), ignore_userns=ignore_userns,
        disable_cache=_flag(args, "disable_cache", "DISABLE_CACHE"),
        no_https=_flag(args, "no_https", "NOHTTPS", "NO_HTTPS"), seccomp=ro.parse_seccomp(security),
        limits=_limits(args, instance), key=_key(args),
        share=not _flag(args, "no_share", "NO_SHARE"),
    )  # fmt: skip


#: The limit options (their `args` names), in from_options' keyword names.
_LIMITS = ("memory", "memory_swap", "cpus", "pids_limit", "cpu_shares", "cpuset_cpus", "cpuset_mems",
           "memory_reservation", "oom_kill_disable", "blkio_weight")  # fmt: skip


def _limits(args, instance: str | None):  # type: ignore[no-untyped-def]
    """The cgroup limits of --memory, --cpus, ... or of --apply-cgroups FILE (each also read
    from SIFBOX_<OPTION>, APPTAINER_<OPTION>, SINGULARITY_<OPTION>), or None."""
    values = {n: getattr(args, n, None) or flag_env(n.upper()) for n in _LIMITS}
    values["oom_kill_disable"] = _flag(args, "oom_kill_disable", "OOM_KILL_DISABLE")
    toml = getattr(args, "apply_cgroups", None) or flag_env("APPLY_CGROUPS")
    if not toml and not any(values.values()):
        return None  # (no import of cgroups, and of `typing` with it, on a launch without limits)
    if toml:
        given = [n for n, v in values.items() if v]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise UsageError(f"can't use --apply-cgroups with {flags}: the file sets the limits",
                             hint="put every limit in the file, or use the options alone")  # fmt: skip
        from sifbox.hpc import cgrouptoml

        return cgrouptoml.load(toml, cpu_count=os.cpu_count())
    from sifbox.hpc import cgroups

    return cgroups.from_options(values.pop("memory"), values.pop("memory_swap"), values.pop("cpus"),
                                values.pop("pids_limit"), cpu_count=os.cpu_count(), **values)  # fmt: skip


def _key(args):  # type: ignore[no-untyped-def]
    """The key of an encrypted image: --passphrase (asked), --pem-path, or the
    SIFBOX_/APPTAINER_/SINGULARITY_ENCRYPTION_* variables; None when none is given."""
    ask, pem = bool(getattr(args, "passphrase", False)), getattr(args, "pem_path", None)
    if not ask and not pem and not any(k.endswith(("_ENCRYPTION_PASSPHRASE", "_ENCRYPTION_PEM_PATH"))
                                       for k in os.environ):  # fmt: skip
        return None
    from sifbox.security import cryptkey

    key = cryptkey.from_options(ask=ask, pem_path=pem, env=os.environ, verb=args.command, what=f"`{args.image}`")
    cryptkey.forget_environment(os.environ)
    return key


def main(args) -> int:  # type: ignore[no-untyped-def]
    """Run the action in a container; exit with the payload's status."""
    from sifbox.runtime import launcher

    if "://" in str(getattr(args, "image", "")) and not str(args.image).startswith("instance://"):
        import gc

        gc.enable()  # a pull first (the CLI turned the collector off for a launch): long, with cyclic garbage

    if _flag(args, "oci", "OCI"):
        from sifbox.runtime import ocimode

        status = ocimode.run(build_launch(args))
    else:
        status = launcher.run(build_launch(args))
    # The payload is gone and its status known: skip the interpreter's
    # teardown (~10 ms on every launch, which counts once per MPI rank).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
