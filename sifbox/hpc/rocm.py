"""AMD GPUs: `--rocm` (the driver files of rocmliblist.conf, /dev/kfd, /dev/dri)."""

from __future__ import annotations

from sifbox.hpc.gpu import Vendor


def is_device(entry: str) -> bool:
    return entry in ("kfd", "dri")


VENDOR = Vendor("rocm", "rocmliblist.conf", "rocm", is_device)
