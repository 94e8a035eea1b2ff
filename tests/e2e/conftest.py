"""Fixtures of the e2e ports (Apptainer's own expectations and its user guide's examples)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def host_network() -> Iterator[None]:
    """The host as it was before the networks' plugins ran (bridge, iptables, ip_forward)."""
    from tests.integration import netstate

    networks = Path("/var/lib/cni/networks")
    with netstate.restored(("sbr0",), tuple(networks / n for n in ("bridge", "ptp", "fakeroot"))) as problems:
        yield
    assert not problems, problems
