"""`sifbox exec/run/shell/test` given bad input: one clear error, a documented status, no mess.

Each case must give exactly one `sifbox: error:` line on stderr (and at most a `hint:` line), no
traceback, nothing on stdout, a status from the documented set (255 generic, 125 usage,
126 cannot launch), and, as everywhere in these modules, nothing left mounted, running or attached
(`no_leaks`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for, make_sif

pytestmark = pytest.mark.integration

action_images = images.action_images
no_leaks = images.no_leaks  # autouse

IMAGE_FAILURE = (255, 126)  # an image that can't be used: generic failure or cannot launch
USAGE = 125


@pytest.fixture(scope="module")
def bad_images(action_images: ActionImages, sifbox_cli: str, sif_corpus: Path) -> dict[str, Path]:
    """Broken images, world-readable, beside the good ones."""
    d = action_images.root / "bad"
    d.mkdir(exist_ok=True)
    made: dict[str, Path] = {}

    made["text-file"] = d / "notes.sif"
    made["text-file"].write_text("this is not a container image\n", encoding="utf-8")
    made["empty-file"] = d / "empty.sif"
    made["empty-file"].write_bytes(b"")

    made["sif-without-squashfs"] = d / "generic-json.sif"
    shutil.copyfile(
        sif_corpus / "images" / "one-object-generic-json.sif", made["sif-without-squashfs"]
    )

    garbage = d / "garbage.part"
    garbage.write_bytes(b"\0this is not squashfs\0" * 3000)
    made["sif-garbage-partition"] = make_sif(sifbox_cli, garbage, d / "garbage.sif")

    truncated = d / "truncated.sqfs"  # valid superblock, most of the filesystem missing
    truncated.write_bytes(action_images.sqfs.read_bytes()[:65536])
    made["truncated-sqfs"] = truncated
    made["sif-truncated-partition"] = make_sif(sifbox_cli, truncated, d / "truncated.sif")

    for path in made.values():
        path.chmod(0o644)
    return made


def one_error(proc: subprocess.CompletedProcess[str], statuses: tuple[int, ...]) -> str:
    """Check the failure shape; return the `sifbox: error:` line."""
    assert proc.returncode in statuses, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("sifbox: error: ")]
    assert len(errors) == 1, proc.stderr
    assert lines[0] == errors[0], proc.stderr
    hints = [ln for ln in lines[1:] if ln.startswith("hint: ")]
    assert len(hints) == len(lines) - 1 <= 1, proc.stderr
    return errors[0]


@pytest.fixture
def sb(run_as, as_who, sifbox_cli, action_images: ActionImages):
    def launch(*args: object, **kw: object) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cwd", str(action_images.root))
        kw.setdefault("timeout", LAUNCH_TIMEOUT)
        return run_as(as_who, [sifbox_cli, *map(str, args)], env=env_for(as_who), **kw)

    return launch


@pytest.mark.parametrize("action", ["exec", "run", "test"])
def test_missing_image(sb, action_images, action):
    missing = action_images.root / "no-such-image.sif"
    args = [action, missing, "true"] if action == "exec" else [action, missing]
    line = one_error(sb(*args), IMAGE_FAILURE)
    assert str(missing) in line


@pytest.mark.parametrize(
    "case",
    [
        "text-file",
        "empty-file",
        "sif-without-squashfs",
        "sif-garbage-partition",
        "truncated-sqfs",
        "sif-truncated-partition",
    ],
)
def test_unusable_image(sb, bad_images, case):
    image = bad_images[case]
    line = one_error(sb("exec", image, "true"), IMAGE_FAILURE)
    assert image.name in line


@pytest.fixture
def launch_as_user(run_as, test_user, sifbox_cli, action_images: ActionImages):
    def launch(*args: object) -> subprocess.CompletedProcess[str]:
        argv = [sifbox_cli, *map(str, args)]
        return run_as(
            test_user,
            argv,
            env=env_for(test_user),
            cwd=str(action_images.root),
            timeout=LAUNCH_TIMEOUT,
        )

    return launch


def test_image_the_caller_cannot_read(launch_as_user, shared_tmp, action_images):
    private = shared_tmp / "private.sif"
    shutil.copyfile(action_images.sif, private)
    private.chmod(0o600)  # root's
    line = one_error(launch_as_user("exec", private, "true"), IMAGE_FAILURE)
    assert private.name in line
    assert "permission denied" in line.lower()


@pytest.mark.parametrize("dst", ["", ":/mnt"], ids=["same-path", "to-mnt"])
def test_bind_source_missing(sb, action_images, dst):
    src = "/nonexistent/sifbox-bind-source"
    line = one_error(
        sb("exec", "-B", f"{src}{dst}", action_images.sif, "true"), (*IMAGE_FAILURE, USAGE)
    )
    assert "bind" in line and src in line and "does not exist" in line, line


def test_bind_source_missing_from_env(sb, action_images, run_as, as_who, sifbox_cli):
    src = "/nonexistent/sifbox-bind-source"
    env = env_for(as_who, SIFBOX_BIND=f"{src}:/mnt")
    proc = run_as(
        as_who, [sifbox_cli, "exec", str(action_images.sif), "true"],
        env=env, cwd=str(action_images.root), timeout=LAUNCH_TIMEOUT,
    )  # fmt: skip
    line = one_error(proc, (*IMAGE_FAILURE, USAGE))
    assert "bind" in line and src in line and "does not exist" in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["exec", "--no-such-option", "{sif}", "true"],
        ["run", "--no-such-option", "{sif}"],
        ["exec", "{sif}"],  # no command
        ["exec"],  # no image
        ["shell"],
    ],
    ids=[
        "unknown-option-exec",
        "unknown-option-run",
        "exec-without-command",
        "exec-without-image",
        "shell-without-image",
    ],
)
def test_usage_errors(sb, action_images, args):
    argv = [a.replace("{sif}", str(action_images.sif)) for a in args]
    one_error(sb(*argv), (USAGE,))


def test_bad_bind_option(sb, action_images):
    line = one_error(sb("exec", "-B", "/tmp:/mnt:bogus", action_images.sif, "true"), (USAGE, 255))
    assert "bogus" in line, line
