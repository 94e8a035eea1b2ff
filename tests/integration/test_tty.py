"""`sifbox shell` on a terminal (a pty made by `script`), as root and as the test user:
the shell is interactive, the terminal is the container's stdin, the exit status comes back."""

from __future__ import annotations

import shutil

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("script") is None, reason="`script` (util-linux) is not installed"),
]


def test_shell_on_a_tty(run_as, as_who, sifbox_cli, action_images: ActionImages) -> None:
    typed = 'tty; [ -t 0 ] && echo "stdin is a tty"; echo "answer $((6*7))"; exit 3\n'
    proc = run_as(
        as_who,
        ["script", "-qec", f"{sifbox_cli} shell {action_images.sif}", "/dev/null"],
        input=typed, env=env_for(as_who), cwd=str(action_images.root), timeout=LAUNCH_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = proc.stdout.replace("\r", "")
    # A contained root container has a minimal /dev: the terminal is its /dev/console.
    assert ("/dev/console" if as_who.is_root else "/dev/pts/") in out
    assert "stdin is a tty" in out
    assert "answer 42" in out
