"""The CLI's error boundary: global options only before the command word, unknown flags named
with their (sub)command and exit status 125, Apptainer's message format on request, OS faults
as one line."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sifbox.cli import main as climain
from sifbox.cli.main import leading_globals, main
from sifbox.util import messages


@pytest.fixture(autouse=True)
def _no_format_from_outside(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # main() publishes the format it read from sifbox.conf in os.environ: restored here
    saved = os.environ.pop(messages.ENV_VAR, None)
    (tmp_path / "empty.conf").write_text("")
    monkeypatch.setenv("SIFBOX_CONFIG_FILE", str(tmp_path / "empty.conf"))
    monkeypatch.setenv("SIFBOX_CACHEDIR", str(tmp_path / "cache"))
    yield
    os.environ.pop(messages.ENV_VAR, None)
    if saved is not None:
        os.environ[messages.ENV_VAR] = saved


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- global options: before the command word only ---------------------------------------------
def test_leading_globals_stop_at_the_command_word() -> None:
    assert leading_globals(["-d", "-c", "x.conf", "exec", "img", "ls", "-d"]) == ["-d", "-c", "x.conf"]
    assert leading_globals(["exec", "-d"]) == []
    assert leading_globals(["--", "-d"]) == []


def test_payload_dash_d_is_not_debug(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.sif"
    status, _, err = run(capsys, "exec", str(missing), "ls", "-d", "/")
    assert status == 255
    assert "Traceback" not in err
    assert err.splitlines() == [f"sifbox: error: can't exec `{missing}`: no such file or directory"]


def test_leading_dash_d_is_debug(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, "-d", "sif", "list", str(tmp_path / "missing.sif"))
    assert status == 255 and "Traceback" in err
    status, _, err = run(capsys, "-vd", "sif", "list", str(tmp_path / "missing.sif"))
    assert status == 255 and "Traceback" in err


def test_cache_clean_dash_d_is_an_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "cache", "clean", "-d", "30")
    assert (status, out) == (125, "")
    lines = err.splitlines()
    assert lines[0] == "sifbox: error: can't run `sifbox cache clean`: unknown flag `-d`"
    assert lines[1].startswith("hint: `-d` is a global option: put it before the command")
    assert "Traceback" not in err


def test_cache_clean_days(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("-D", "--days"):
        status, out, err = run(capsys, "cache", "clean", "-n", flag, "30")
        assert status == 0, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["exec", "--foo", "img", "true"], "can't run `sifbox exec`: unknown flag `--foo`"),
        (["run", "--foo=1", "img"], "can't run `sifbox run`: unknown flag `--foo`"),
        (["pull", "--bogus", "docker://x"], "can't run `sifbox pull`: unknown flag `--bogus`"),
        (["cache", "list", "-x"], "can't run `sifbox cache list`: unknown flag `-x`"),
        (["key", "list", "--nope"], "can't run `sifbox key list`: unknown flag `--nope`"),
        (["inspect", "a.sif", "b.sif"], "can't run `sifbox inspect`: unexpected argument `b.sif`"),
        (["--bogus", "version"], "can't run `sifbox`: unknown flag `--bogus`"),
    ],
)
def test_unknown_flags_name_the_command(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (125, "")
    assert err.splitlines()[0] == f"sifbox: error: {message}"
    assert "Traceback" not in err


# -- Apptainer's message format ------------------------------------------------------------------
def test_apptainer_format_from_the_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv(messages.ENV_VAR, "apptainer")
    status, _, err = run(capsys, "sif", "list", str(tmp_path / "missing.sif"))
    assert status == 255
    assert err.splitlines() == [f"FATAL:   can't list `{tmp_path / 'missing.sif'}`: no such file"]
    status, _, err = run(capsys, "cache", "clean", "-d", "1")
    assert status == 125
    lines = err.splitlines()
    assert lines[0].startswith("FATAL:   can't run `sifbox cache clean`: unknown flag `-d`")
    assert lines[1].startswith("INFO:    `-d` is a global option")


def test_apptainer_format_from_sifbox_conf(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:  # fmt: skip
    conf = tmp_path / "sifbox.conf"
    conf.write_text("# message format = sifbox\n  Message   FORMAT = Apptainer\nmessage format = sifbox\n")
    status, _, err = run(capsys, "-c", str(conf), "sif", "list", str(tmp_path / "missing.sif"))
    assert status == 255 and err.startswith("FATAL:   can't list"), err
    # published for the helper processes sifbox runs
    assert os.environ.pop(messages.ENV_VAR) == "apptainer"
    monkeypatch.setenv("SIFBOX_CONFIG_FILE", str(conf))
    assert run(capsys, "sif", "list", str(tmp_path / "missing.sif"))[2].startswith("FATAL:   ")
    # the environment wins over the file
    os.environ[messages.ENV_VAR] = "sifbox"
    assert run(capsys, "sif", "list", str(tmp_path / "missing.sif"))[2].startswith("sifbox: error: ")


def test_unknown_message_format_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv(messages.ENV_VAR, "json")
    status, out, err = run(capsys, "version")
    assert (status, out) == (125, "")
    assert err == "sifbox: error: can't use SIFBOX_MESSAGE_FORMAT `json`: not one of `sifbox`, `apptainer`\n"


def test_directive_in_the_schema() -> None:
    from sifbox.config import sysconf

    cfg = sysconf.parse(b"message format = APPTAINER\n", "x.conf")
    assert cfg.get("message format") == "apptainer"
    with pytest.raises(sysconf.ConfigError):
        sysconf.parse(b"message format = xml\n", "x.conf")
    assert climain._DEFAULT_CONFIG == sysconf.DEFAULT_PATH
    assert climain._FORMAT_VAR == messages.ENV_VAR


def test_log_lines_in_both_formats() -> None:
    from sifbox.util.log import _Formatter

    def line(fmt: str, level: int, name: str) -> str:
        record = logging.LogRecord("sifbox", level, __file__, 1, "the message", None, None)
        record.levelname = name
        return _Formatter(color=False, debug=False, fmt=fmt).format(record)

    assert line("sifbox", logging.INFO, "INFO") == "INFO     the message"
    assert line("sifbox", logging.WARNING, "WARNING") == "WARNING  the message"
    assert line("apptainer", logging.INFO, "INFO") == "INFO:    the message"
    assert line("apptainer", logging.WARNING, "WARNING") == "WARNING: the message"
    assert line("apptainer", logging.ERROR, "ERROR") == "ERROR:   the message"
    assert line("apptainer", 15, "VERBOSE") == "VERBOSE: the message"
    assert messages.step_text("Creating SIF file...", fmt="apptainer") == "INFO:    Creating SIF file...\n"
    assert messages.step_text("creating SIF image", fmt="sifbox") == "==> creating SIF image\n"


# -- faults the commands did not foresee: one line, no "internal error" -------------------------------
@pytest.mark.parametrize(
    "err,needle,hint",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/x/out.sif"), "no space left on device: `/x/out.sif`",
         "free some space"),
        (OSError(errno.EINVAL, "Invalid argument", "/x/link"), "invalid argument: `/x/link`", "changed while"),
        (PermissionError(errno.EACCES, "Permission denied", "/c/locks/a.lock"), "permission denied",
         "another user"),
    ],
)
def test_os_errors_are_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                err: OSError, needle: str, hint: str) -> None:  # fmt: skip
    def boom(argv: list[str]) -> int:
        raise err

    monkeypatch.setattr(climain, "run", boom)
    status, _, text = run(capsys, "pull", "docker://x")
    lines = text.splitlines()
    assert status == 255 and len(lines) == 2, text
    assert lines[0].startswith("sifbox: error: can't run `sifbox pull`: ") and needle in lines[0]
    assert "internal error" not in text and "Traceback" not in text
    assert lines[1].startswith("hint: ") and hint in lines[1]


def test_a_path_race_in_realpath_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:  # fmt: skip
    """A symlink replaced by a file between lstat and readlink: realpath's readlink fails with
    EINVAL (Python's realpath does not catch it). The image is read through the descriptor it
    was opened as (its path is never resolved again), so the race changes nothing; an
    OSError no step expected is still one line naming the path, never an internal error."""
    from sifbox.image import source

    from .sifcorpus import IMAGES

    link = tmp_path / "img.sif"
    link.symlink_to(IMAGES / "one-group.sif")
    real_readlink = os.readlink

    def racing_readlink(path, *args, **kw):  # type: ignore[no-untyped-def]
        if os.fspath(path) == str(link):
            raise OSError(errno.EINVAL, "Invalid argument", str(link))
        return real_readlink(path, *args, **kw)

    monkeypatch.setattr(os, "readlink", racing_readlink)
    status, out, err = run(capsys, "sif", "list", str(link))
    assert status == 0, err

    def unexpected(*args, **kw):  # type: ignore[no-untyped-def]
        raise OSError(errno.EINVAL, "Invalid argument", str(link))

    monkeypatch.setattr(source, "_opened", unexpected)
    status, out, err = run(capsys, "inspect", str(link))
    assert status == 255 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"sifbox: error: can't run `sifbox inspect`: invalid argument: `{link}`", err
    assert lines[1] == "hint: a path changed while sifbox was using it: run the command again"
