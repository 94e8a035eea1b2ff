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
