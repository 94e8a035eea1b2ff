"""The container's environment as the Apptainer user guide describes it, end to end:
a pulled image's Docker `ENV` is not overridden by the host, the container lists its binds
in APPTAINER_BIND, several --env-file files, the umask (--no-umask, --fakeroot), --no-init,
and hostile values (the host's are never evaluated; an env file runs nothing).

Apptainer's own e2e expectations are in tests/e2e/apptainer (test_env.py and others); these
cover what the guide says beyond them. Every test runs as root and as the test user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sifbox.formats.singularityd import docker_env_script
from tests.integration import images
from tests.integration.images import DEFAULT_PATH, LAUNCH_TIMEOUT, ActionImages, env_for, run_direct

action_images = images.action_images
no_leaks = images.no_leaks

pytestmark = pytest.mark.integration


@pytest.fixture
def sb(as_who, sifbox_cli, action_images: ActionImages):  # type: ignore[no-untyped-def]
    """`sb(*sifbox_args, env={...}, umask=...)`: the CLI as the parametrized user, no runuser in between."""

    def launch(*args: object, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
        kw.setdefault("cwd", str(action_images.root))
        kw.setdefault("timeout", LAUNCH_TIMEOUT)
        return run_direct(as_who, [sifbox_cli, *map(str, args)], env=env_for(as_who, **(env or {})), **kw)

    return launch


@pytest.fixture
def sif(action_images: ActionImages) -> str:
    return str(action_images.sif)


def _ok(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
    return proc.stdout.splitlines()


@pytest.fixture
def docker_image(action_images: ActionImages, shared_tmp: Path) -> Path:
    """A sandbox as a pull of a Docker image makes it: ENV in 10-docker2singularity.sh."""
    root = shared_tmp / "docker-sandbox"
    shutil.copytree(action_images.sandbox, root, symlinks=True)
    script = root / ".singularity.d/env/10-docker2singularity.sh"
    script.write_text(docker_env_script(["PATH=/opt/app/bin:/usr/bin:/bin", "LANG=C.UTF-8", "APP_MODE=docker",
                                         "APP_HOME=/opt/app"]))  # fmt: skip
    script.chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


def test_docker_env_is_not_overridden_by_the_host(sb, docker_image: Path) -> None:
    probe = 'echo "$APP_MODE|$LANG|$APP_HOME|$HOST_ONLY|$PATH"'
    host = {"APP_MODE": "host", "LANG": "en_US.UTF-8", "HOST_ONLY": "host", "APP_HOME": "/host"}
    got = _ok(sb("exec", docker_image, "sh", "-c", probe, env=host))
    # ENV's PATH, with the default directories it lacks appended (Apptainer's fixpath)
    assert got == [f"docker|C.UTF-8|/opt/app|host|/opt/app/bin:/usr/bin:/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin"]
    # ...but the user's own values do override it
    mine = _ok(sb("exec", "--env", "APP_MODE=mine", docker_image, "sh", "-c", 'echo "$APP_MODE|$LANG"',
                  env={**host, "SIFBOXENV_LANG": "fr_FR.UTF-8"}))  # fmt: skip
    assert mine == ["mine|fr_FR.UTF-8"]


def test_the_container_lists_its_binds(sb, sif, shared_tmp: Path) -> None:
    src = shared_tmp / "bound"
    src.mkdir()
    src.chmod(0o755)
    probe = 'echo "$SIFBOX_BIND|$APPTAINER_BIND|$SINGULARITY_BIND"'
    got = _ok(sb("exec", "--bind", f"{src}:/mnt", "--bind", f"{src}:/opt:ro", sif, "sh", "-c", probe,
                 env={"APPTAINER_BIND": f"{src}:/srv", "APPTAINER_BINDPATH": f"{src}:/media"}))  # fmt: skip
    assert got == ["|".join(["/mnt,/opt,/srv,/media"] * 3)]
    # the host's own variable never reaches the container as it is
    assert _ok(sb("exec", sif, "sh", "-c", 'echo "[${APPTAINER_BINDPATH-unset}]"',
                  env={"APPTAINER_BINDPATH": f"{src}:/media"})) == ["[unset]"]  # fmt: skip


def test_several_env_files(sb, sif, shared_tmp: Path) -> None:
    """`--env-file a,b` (Apptainer 1.4): evaluated in order on the host; later files win."""
    a, b = shared_tmp / "a.env", shared_tmp / "b.env"
    a.write_text("A=1\nB=from-a\nexport C=$HOME\n")
    b.write_text("B=from-b\nD=\"${A}-\\$HOME\"\n")
    for f in (a, b):
        f.chmod(0o644)
    probe = 'echo "$A|$B|$C|$D"'
    want = ["1|from-b|/host/home|1-" + _home_inside(sb, sif)]
    assert _ok(sb("exec", "--env-file", f"{a},{b}", sif, "sh", "-c", probe, env={"HOME": "/host/home"})) == want
    assert _ok(sb("exec", sif, "sh", "-c", probe, env={"HOME": "/host/home", "SIFBOX_ENV_FILE": f"{a},{b}"})) == want


def _home_inside(sb, sif: str) -> str:  # type: ignore[no-untyped-def]
    return _ok(sb("exec", sif, "sh", "-c", 'echo "$HOME"'))[0]


def test_env_file_runs_nothing(sb, sif, shared_tmp: Path) -> None:
    marker = shared_tmp / "PWNED"
    bad = shared_tmp / "bad.env"
    bad.write_text(f"A=1\nB=$(touch {marker})\n")
    bad.chmod(0o644)
    proc = sb("exec", "--env-file", bad, sif, "true")
    assert proc.returncode == 125, proc.stderr
    assert f"can't read env file `{bad}`: line 2: command substitution ($(...)) is not allowed" in proc.stderr
    assert not marker.exists()


def test_host_values_are_never_evaluated(sb, sif, shared_tmp: Path) -> None:
    marker = shared_tmp / "PWNED"
    hostile = f"$(touch {marker})`touch {marker}`'\"\\"
    got = _ok(sb("exec", sif, "sh", "-c", 'printf "%s\\n" "$HOSTILE"', env={"HOSTILE": hostile}))
    assert got == [hostile]
    assert not marker.exists()


def test_users_values_are_evaluated_in_the_container(sb, sif) -> None:
    probe = 'echo "$WHO|$LIT|$IMG"'
    got = _ok(sb("exec", "--env", "WHO=$(id -u),LIT=\\$HOME", "--env", "IMG=$FROM_IMAGE", sif,
                 "sh", "-c", probe))  # fmt: skip
    inside = _ok(sb("exec", sif, "id", "-u"))[0]
    assert got == [f"{inside}|$HOME|image"]
    no_eval = _ok(sb("exec", "--no-eval", "--env", "WHO=$(id -u)", sif, "sh", "-c", probe))
    assert no_eval == ["$(id -u)||"]


@pytest.mark.parametrize("fakeroot", [False, True], ids=["plain", "fakeroot"])
def test_umask(sb, sif: str, fakeroot: bool) -> None:
    """The caller's umask, in Apptainer's e2e tests (actions.go:actionUmask) with --fakeroot
    too; --no-umask gives 0022."""
    flags = ("--fakeroot",) if fakeroot else ()
    assert _ok(sb("exec", *flags, sif, "sh", "-c", "umask", umask=0o077)) == ["0077"]
    assert _ok(sb("exec", *flags, "--no-umask", sif, "sh", "-c", "umask", umask=0o077)) == ["0022"]
    assert _ok(sb("exec", *flags, sif, "sh", "-c", "umask", umask=0o077,
                  env={"APPTAINER_NO_UMASK": "1"})) == ["0022"]  # fmt: skip


def test_no_init_makes_the_program_pid_1(sb, sif) -> None:
    assert _ok(sb("exec", "--pid", "--no-init", sif, "sh", "-c", "echo $$")) == ["1"]
    assert _ok(sb("exec", "--pid", sif, "sh", "-c", "echo $$")) != ["1"]  # sifbox's init is PID 1
    assert _ok(sb("exec", "--pid", sif, "sh", "-c", "echo $$", env={"SIFBOX_NOSHIMINIT": "1"})) == ["1"]
    proc = sb("exec", "--pid", "--no-init", sif, "sh", "-c", "exit 7")
    assert proc.returncode == 7


def test_compat(sb, sif) -> None:
    probe = 'echo "$$|$(umask)|${HOST_ONLY-unset}|$SIFBOX_NO_EVAL|$WHO"; touch /newfile && echo writable'
    got = _ok(sb("exec", "--compat", "--env", "WHO=$HOME", sif, "sh", "-c", probe, umask=0o077,
                 env={"HOST_ONLY": "x"}))  # fmt: skip
    assert got == ["1|0022|unset|1|$HOME", "writable"]


def test_lang_under_cleanenv(sb, sif) -> None:
    got = _ok(sb("exec", "--cleanenv", sif, "sh", "-c", 'echo "$LANG|${LC_ALL-unset}|$http_proxy"',
                 env={"LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8", "http_proxy": "http://p:3128"}))  # fmt: skip
    assert got == ["C|unset|http://p:3128"]


def test_path_default(sb, sif) -> None:
    assert _ok(sb("exec", sif, "sh", "-c", "echo $PATH", env={"PATH": "/evil:" + os.environ["PATH"]})) == [
        DEFAULT_PATH
    ]
