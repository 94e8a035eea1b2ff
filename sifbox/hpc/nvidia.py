"""NVIDIA GPUs: `--nv` (the driver files of nvliblist.conf, /dev/nvidia*)
and `--nvccli` (delegated to nvidia-container-cli)."""

from __future__ import annotations

import os
import re

from sifbox.hpc.gpu import Vendor

_GPU = re.compile(r"nvidia(\d+)\Z")
#: Control nodes every NVIDIA container needs, whichever GPUs it sees.
CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "nvidia-caps")


def is_device(entry: str) -> bool:
    return bool(_GPU.match(entry)) or entry in CONTROL


def visible_filter(value: str | None):  # type: ignore[no-untyped-def]
    """Keep the GPUs that NVIDIA_VISIBLE_DEVICES names (`0,2`, `all`;
    `none`/`void`: no GPU, only the control nodes). Unset, `all`, or names
    that are not indexes (GPU UUIDs need the driver to resolve) keep all."""
    if value is None or value.strip() in ("", "all"):
        return None
    value = value.strip()
    if value in ("none", "void"):
        wanted: set[str] | None = set()
    else:
        items = [v.strip() for v in value.split(",") if v.strip()]
        wanted = set(items) if all(v.isdigit() for v in items) else None
    if wanted is None:
        return None

    def keep(devices: list[str]) -> list[str]:
        out = []
        for d in devices:
            m = _GPU.match(os.path.basename(d))
            if m is None or str(int(m.group(1))) in {str(int(w)) for w in wanted}:
                out.append(d)
        return out

    return keep


VENDOR = Vendor("nvidia", "nvliblist.conf", "nv", is_device)


def nvccli_missing_hint() -> str:
    return "install nvidia-container-cli (Debian package libnvidia-container-tools), or use --nv"


#: NVIDIA_DRIVER_CAPABILITIES values and nvidia-container-cli's options for them.
CAPABILITIES = ("compute", "compat32", "display", "graphics", "ngx", "utility", "video")
DEFAULT_CAPABILITIES = "compute,utility"


def nvccli_argv(tool: str, root: str, *, pid: int, env, ldconfig: str, user: bool) -> list[str] | None:  # type: ignore[no-untyped-def]
    """`nvidia-container-cli ... configure ... ROOT` for the container root
    `root` (a host path, in the mount namespace of process `pid`), from
    NVIDIA_VISIBLE_DEVICES (default all; `none`: driver only; `void`: nothing,
    returns None), NVIDIA_DRIVER_CAPABILITIES (default compute,utility; `all`)
    and NVIDIA_REQUIRE_* (unless NVIDIA_DISABLE_REQUIRE is set)."""
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "all").strip() or "all"
    if visible == "void":
        return None
    argv = [tool] + (["--user"] if user else []) + ["configure", "--no-cgroups", f"--ldconfig=@{ldconfig}",
                                                    f"--pid={pid}"]  # fmt: skip
    if visible != "none":
        argv.append(f"--device={visible}")
    caps = [c.strip() for c in env.get("NVIDIA_DRIVER_CAPABILITIES", DEFAULT_CAPABILITIES).split(",") if c.strip()]
    if "all" in caps:
        caps = list(CAPABILITIES)
    argv += [f"--{c}" for c in CAPABILITIES if c in caps]
    if not env.get("NVIDIA_DISABLE_REQUIRE"):
        argv += [f"--require={v}" for k, v in sorted(env.items()) if k.startswith("NVIDIA_REQUIRE_") and v]
    argv.append(root)
    return argv


def run_nvccli(argv: list[str]) -> None:
    """Run nvidia-container-cli; its failure is the launch's."""
    import shlex
    import subprocess

    from sifbox.util.errors import ExitStatus, SifboxError

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SifboxError(f"can't set up NVIDIA GPUs: `{argv[0]}` did not run: {err}",
                          exit_status=ExitStatus.CANNOT_LAUNCH) from None  # fmt: skip
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SifboxError(
            f"can't set up NVIDIA GPUs: nvidia-container-cli failed with exit status {proc.returncode}: {detail}",
            hint=f"the command was: {shlex.join(argv)}", exit_status=ExitStatus.CANNOT_LAUNCH,
        )
