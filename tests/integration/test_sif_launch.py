"""`./image.sif ARGS` runs the image's runscript, as Apptainer's images do: the SIFs sifbox
builds carry the launch script `#!/usr/bin/env run-singularity` and are created executable
(0777 narrowed by the umask), and scripts/run-singularity (installed by scripts/install.sh)
runs `sifbox run`. As root and as the test user."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.images import LAUNCH_TIMEOUT, ActionImages, env_for

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LAUNCH = b"#!/usr/bin/env run-singularity\n"


def _bin_dir(shared_tmp: Path, sifbox_cli: str) -> Path:
    """A directory with the repository's run-singularity and `sifbox` (the CLI under test)."""
    bin_dir = shared_tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "run-singularity").write_bytes((REPO / "scripts/run-singularity").read_bytes())
    (bin_dir / "run-singularity").chmod(0o755)
    (bin_dir / "sifbox").symlink_to(sifbox_cli)
    return bin_dir


def _build(run_as, who, sifbox_cli, out: Path, source: Path, umask: int):  # type: ignore[no-untyped-def]
    argv = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", sifbox_cli, "build", "--force", str(out), str(source)]
    return run_as(who, argv, env=env_for(who), timeout=300)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_built_sif_is_executable_with_apptainers_launch_script(run_as, as_who, sifbox_cli, shared_tmp, umask,
                                                               action_images: ActionImages) -> None:  # fmt: skip
    out = shared_tmp / "built.sif"
    proc = _build(run_as, as_who, sifbox_cli, out, action_images.sandbox, umask)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:32] == LAUNCH.ljust(32, b"\0")
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    header = run_as(as_who, [sifbox_cli, "sif", "header", str(out)], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)
    assert "Launch Script:        #!/usr/bin/env run-singularity" in header.stdout


def test_dot_slash_image_runs_the_runscript(run_as, as_who, sifbox_cli, shared_tmp,
                                            action_images: ActionImages) -> None:  # fmt: skip
    out = shared_tmp / "app.sif"
    proc = _build(run_as, images.user_named("root"), sifbox_cli, out, action_images.sandbox, 0o022)
    assert proc.returncode == 0, proc.stderr
    bin_dir = _bin_dir(shared_tmp, sifbox_cli)
    env = env_for(as_who)
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    argv = ["./app.sif", "one", "two words"]
    if not as_who.is_root:
        argv = ["runuser", "-u", as_who.name, "--", *argv]
    run = subprocess.run(argv, cwd=shared_tmp, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                         check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "runscript args: one two words\n"
    # the runscript's exit status passes through the interpreter
    import shutil

    sandbox = shared_tmp / "exit7"
    shutil.copytree(action_images.sandbox, sandbox, symlinks=True)
    (sandbox / ".singularity.d/runscript").write_text("#!/bin/sh\nexit 7\n")
    assert _build(run_as, images.user_named("root"), sifbox_cli, shared_tmp / "exit7.sif", sandbox, 0o022).returncode == 0
    argv = ["./exit7.sif"] if as_who.is_root else ["runuser", "-u", as_who.name, "--", "./exit7.sif"]
    run = subprocess.run(argv, cwd=shared_tmp, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                         check=False)  # fmt: skip
    assert run.returncode == 7, run.stderr


def test_installer_installs_run_singularity() -> None:
    """scripts/install.sh puts scripts/run-singularity in /usr/local/bin, leaving another one alone."""
    text = (REPO / "scripts/install.sh").read_text()
    assert 'install -m 0755 "$repo/scripts/run-singularity" "$RUN_SINGULARITY"' in text
    script = (REPO / "scripts/run-singularity").read_text()
    assert script.startswith("#!/bin/sh\n") and 'exec sifbox run "$@"' in script
    assert os.access(REPO / "scripts/run-singularity", os.X_OK)
