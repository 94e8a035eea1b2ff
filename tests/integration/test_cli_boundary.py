"""The CLI as a job script meets it, as root and as the unprivileged user: options of the payload
stay the payload's, unknown flags are named with their command (status 125), and Apptainer's
message format (`SIFBOX_MESSAGE_FORMAT`, `message format` in sifbox.conf) gives the prefixes
that wrapper scripts grep for."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

pytestmark = pytest.mark.integration

action_images = images.action_images


@pytest.fixture
def sb(run_as, as_who, sifbox_cli, action_images: ActionImages):  # type: ignore[no-untyped-def]
    def launch(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
        return run_as(as_who, [sifbox_cli, *map(str, args)], env=env_for(as_who, **env),
                      cwd=str(action_images.root), timeout=LAUNCH_TIMEOUT)  # fmt: skip

    return launch


def test_payload_options_are_the_payloads(sb, action_images: ActionImages) -> None:  # type: ignore[no-untyped-def]
    proc = sb("exec", action_images.sif, "ls", "-d", "/")
    assert (proc.returncode, proc.stdout) == (0, "/\n"), proc.stderr
    assert "DEBUG" not in proc.stderr and "Traceback" not in proc.stderr
    # `-d` after the command word is not --debug: a failure is one line, no traceback
    missing = action_images.root / "missing.sif"
    proc = sb("exec", missing, "ls", "-d", "/")
    assert proc.returncode == 255
    assert proc.stderr.splitlines() == [f"sifbox: error: can't exec `{missing}`: no such file or directory"]
    # before the command word it is
    proc = sb("-d", "exec", missing, "ls", "/")
    assert proc.returncode == 255 and "Traceback" in proc.stderr


def test_unknown_flags(sb, action_images: ActionImages) -> None:  # type: ignore[no-untyped-def]
    for argv, message in (
        (["exec", "--foo", action_images.sif, "true"], "can't run `sifbox exec`: unknown flag `--foo`"),
        (["cache", "clean", "-d", "30"], "can't run `sifbox cache clean`: unknown flag `-d`"),
        (["build", "--nosuchflag", "x.sif", "x.def"], "can't run `sifbox build`: unknown flag `--nosuchflag`"),
    ):
        proc = sb(*argv)
        assert proc.returncode == 125, proc.stderr
        lines = proc.stderr.splitlines()
        assert lines[0] == f"sifbox: error: {message}", proc.stderr
        assert len(lines) == 2 and lines[1].startswith("hint: ") and "Traceback" not in proc.stderr


@pytest.fixture
def conf_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sifbox-cli-conf-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_apptainer_message_format(sb, action_images: ActionImages, conf_dir: Path) -> None:  # type: ignore[no-untyped-def]
    missing = action_images.root / "missing.sif"
    proc = sb("exec", missing, "true", SIFBOX_MESSAGE_FORMAT="apptainer")
    assert proc.returncode == 255
    assert proc.stderr.splitlines() == [f"FATAL:   can't exec `{missing}`: no such file or directory"]
    # the same from sifbox.conf; log lines too (`--nv` on a machine without NVIDIA driver files
    # warns, and runs)
    conf = conf_dir / "sifbox.conf"
    conf.write_text("message format = apptainer\n")
    conf.chmod(0o644)
    proc = sb("-c", conf, "exec", missing, "true")
    assert proc.stderr.startswith("FATAL:   can't exec"), proc.stderr
    proc = sb("-c", conf, "exec", "--nv", action_images.sif, "true")
    assert proc.returncode == 0, proc.stderr
    for line in proc.stderr.splitlines():
        assert line.startswith(("WARNING: ", "INFO:    ", "VERBOSE: ")), proc.stderr
    proc = sb("-c", conf, "cache", "clean", "-f", "--nope")
    assert proc.returncode == 125 and proc.stderr.startswith(
        "FATAL:   can't run `sifbox cache clean`: unknown flag `--nope`"
    )
