"""The chapters of the user guide that separate work covers: their examples are skipped here,
each skip naming that work. The fakeroot chapter's network examples (ping, a port-mapped HTTP
server) belong to networking.rst's.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

SKIPS = {
    "cgroups.rst": (
        "Limiting Container Resources (--cpus, --cpu-shares, --cpu-set-*, --memory*, --blkio-weight*, "
        "--apply-cgroups with a cgroups.toml, systemd-run) and running_services.rst's `instance stats`: "
        "their flags and expected files are Apptainer's e2e/cgroups ones, ported in "
        "tests/integration/test_cgroup_options.py (README: Resource limits); systemd-run is not used"
    ),
    "networking.rst": (
        "Network virtualization (--net with --network bridge/ptp/macvlan/ipvlan, --network-args portmap, "
        "CNI configuration) and fakeroot.rst's `exec --fakeroot --net ... ping` and "
        '`run --fakeroot --net --network-args="portmap=8080:80/tcp"`: not ported yet (CNI networks '
        "are tested by tests/integration/test_cni_networks.py and tests/e2e/apptainer's actionNetwork)"
    ),
}


@pytest.mark.parametrize("page", list(SKIPS))
def test_chapter(page: str) -> None:
    pytest.skip(f"{page}: {SKIPS[page]}")
