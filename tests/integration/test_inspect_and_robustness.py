"""inspect and run-help on every image kind; the launch failures a site meets; descriptors;
concurrent launches racing for loop devices and FUSE mounts."""

from __future__ import annotations

import json
import os

import pytest

from tests.integration import images
from tests.integration.images import (
    KINDS,
    LABELS,
    LAUNCH_TIMEOUT,
    RUNSCRIPT,
    ActionImages,
    env_for,
)

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_labels_runscript_json(run_as, as_who, sifbox_cli, action_images: ActionImages, kind: str) -> None:
    image = str(action_images.kind(kind))
    labels = run_as(as_who, [sifbox_cli, "inspect", image])
    assert labels.returncode == 0, labels.stderr
    assert labels.stdout == "".join(f"{k}: {LABELS[k]}\n" for k in sorted(LABELS))
    script = run_as(as_who, [sifbox_cli, "inspect", "--runscript", image])
    assert script.stdout == RUNSCRIPT
    data = json.loads(run_as(as_who, [sifbox_cli, "inspect", "--json", "-l", "-r", "-e", image]).stdout)
    attrs = data["data"]["attributes"]
    assert data["type"] == "container"
    assert attrs["runscript"] == RUNSCRIPT.rstrip("\n")
    assert attrs["labels"] == LABELS
    assert "/.singularity.d/env/90-environment.sh" in attrs["environment"]


def test_run_help_without_help(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    proc = run_as(as_who, [sifbox_cli, "run-help", str(action_images.sif)])
    assert (proc.returncode, proc.stdout) == (0, "No help sections were defined for this image\n")


def test_squashfuse_missing_is_a_clear_error(test_user, sifbox_cli, action_images: ActionImages) -> None:
    env = env_for(test_user) | {"PATH": "/nonexistent"}
    proc = images.run_direct(test_user, [sifbox_cli, "exec", str(action_images.sif), "/bin/true"], env=env,
                             timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 126
    assert proc.stderr.splitlines()[0].endswith("squashfuse_ll is not installed")
    assert "squashfuse" in proc.stderr.splitlines()[1]


def test_no_host_descriptor_leaks_in(as_who, sifbox_cli, action_images: ActionImages) -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        argv = [sifbox_cli, "exec", str(action_images.sif), "ls", "/proc/self/fd"]
        proc = images.run_direct(as_who, argv, pass_fds=(r,), timeout=LAUNCH_TIMEOUT)
    finally:
        os.close(r)
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert str(r) not in proc.stdout.split() or r == 3  # ls itself opens fd 3 for the listing
    assert sorted(int(x) for x in proc.stdout.split()) == [0, 1, 2, 3]


def test_sixteen_concurrent_launches(as_who, sifbox_cli, action_images: ActionImages) -> None:
    """Launches racing for loop devices (root) and FUSE mounts (user) all succeed."""
    procs = [
        images.popen_as(as_who, [sifbox_cli, "exec", str(action_images.sif), "cat", "/data/hello.txt"])
        for _ in range(16)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 16, [err for _, err in results]
    assert all(out == images.HELLO for out, _ in results)
