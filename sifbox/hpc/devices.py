"""GPU and CDI devices for `sifbox exec|run|shell|test`: the options
`--nv`, `--nvccli`, `--rocm`, `--device`, `--cdi-dirs` (and their SIFBOX_*
variables and sifbox.conf directives) turned into extra mounts and
environment variables for the container.

With `--nvccli`, nvidia-container-cli (`configure`, as the NVIDIA container
runtime hooks call it) sets up the finished container root before sifbox
enters it, from NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES.

`SIFBOX_GPU_DEVICE_ROOT` (default `/dev`) is where GPU device nodes are
looked up, for sites that keep them elsewhere (and for testing without a GPU).
"""

from __future__ import annotations

import os
from sifbox.util.records import record as namedtuple

from sifbox.util.errors import SifboxError

#: What the options ask for.
Request = namedtuple("Request", "nv nvccli rocm devices cdi_dirs")
#: What they add: mounts for the plan, environment overrides, warnings, and
#: `prepare(root)` to run on the finished root before entering it (or None).
Extra = namedtuple("Extra", "mounts env warnings prepare", defaults=(None,))


def with_config(request: Request, cfg) -> Request | None:  # type: ignore[no-untyped-def]
    """The request once sifbox.conf had its say (`always use nv`, `always use
    rocm`, `use nvidia-container-cli`); None when no device is wanted."""
    nvccli = request.nvccli
    nv = request.nv or cfg.get_bool("always use nv")
    rocm = request.rocm or cfg.get_bool("always use rocm")
    if not (nv or nvccli or rocm or request.devices):
        return None
    if cfg.get_bool("use nvidia-container-cli") and nv and not request.nvccli:
        nvccli = True  # as Apptainer: the directive turns --nv into --nvccli
    return Request(nv and not nvccli, nvccli, rocm, tuple(request.devices), tuple(request.cdi_dirs))


def wanted(request: Request) -> bool:
    return bool(request.nv or request.nvccli or request.rocm or request.devices)


def plan(request: Request, *, cfg, conf_dir: str, dev_is_host: bool, env) -> Extra:  # type: ignore[no-untyped-def]
    """Find the host files of the requested devices (see the module doc)."""
    from sifbox.hpc import gpu

    warnings: list[str] = []
    mounts = []
    prepare = None
    extra_env: dict[str, str] = {}
    dev_root = os.path.normpath(os.environ.get("SIFBOX_GPU_DEVICE_ROOT") or "/dev")
    own_dev = dev_is_host and dev_root != "/dev"
    if request.nvccli:
        from sifbox.hpc import nvidia
        from sifbox.util.paths import which

        tool = cfg.get_str("nvidia-container-cli path") or which("nvidia-container-cli")
        if tool is None or not os.access(tool, os.X_OK):
            raise SifboxError("can't use --nvccli: nvidia-container-cli is not installed",
                              hint=nvidia.nvccli_missing_hint(), exit_status=125)  # fmt: skip
        ldconfig = cfg.get_str("ldconfig path") or gpu._find_ldconfig() or "/sbin/ldconfig"
        user = os.getuid() != 0 or bool(env.get("SIFBOX_USERNS"))

        def configure(root: str) -> None:
            argv = nvidia.nvccli_argv(tool, root, pid=os.getpid(), env=env, ldconfig=ldconfig, user=user)
            if argv is not None:
                nvidia.run_nvccli(argv)

        prepare = configure

    vendors = []
    if request.nv:
        from sifbox.hpc import nvidia

        visible = nvidia.visible_filter(env.get("NVIDIA_VISIBLE_DEVICES"))
        vendors.append((nvidia.VENDOR, visible))
    if request.rocm:
        from sifbox.hpc import rocm

        vendors.append((rocm.VENDOR, None))
    for vendor, visible in vendors:
        found = gpu.gather(vendor, conf_dir=conf_dir, ldconfig=cfg.get_str("ldconfig path"),
                           dev_root=dev_root, visible=visible, warn=warnings.append)  # fmt: skip
        if own_dev and found.devices:
            warnings.append(f"{vendor.word} device nodes of `{dev_root}` are bound only with a minimal /dev "
                            "(--contain, or `mount dev = minimal`)")  # fmt: skip
        mounts += gpu.mounts(found, dev_is_host=dev_is_host, dev_root=dev_root)
    if request.devices:
        from sifbox.hpc import cdi

        dirs = request.cdi_dirs or cdi.DEFAULT_DIRS
        edits = cdi.resolve(request.devices, cdi.load_specs(dirs), dirs)
        for hook in edits.hooks:
            warnings.append(f"CDI hook `{hook.get('path')}` ({hook.get('hookName', 'no hookName')}) "
                            "is not run: sifbox's runtime runs no OCI hooks")  # fmt: skip
        mounts += cdi.plan_mounts(edits, dev_is_host=dev_is_host)
        extra_env.update(edits.env)
    return Extra(mounts, extra_env, warnings, prepare)
