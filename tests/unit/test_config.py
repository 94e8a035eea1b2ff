"""`sifbox.config`: the directive table and the sifbox.conf parser.

Pure: every file is written under tmp_path; the default path and the
environment are patched so the host's /etc/sifbox never matters.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sifbox.config import schema, sysconf
from sifbox.config.sysconf import (
    ABSENT,
    FROM_DEFAULT,
    FROM_FILE,
    MAX_SIZE,
    Config,
    ConfigError,
    defaults,
    load,
    parse,
    render_default,
)
from sifbox.util.errors import ExitStatus, SifboxError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SIFBOX_CONFIG_FILE, and a default path that does not exist."""
    monkeypatch.delenv(sysconf.ENV_VAR, raising=False)
    monkeypatch.setattr(sysconf, "DEFAULT_PATH", str(tmp_path / "etc-sifbox" / "sifbox.conf"))


def write(tmp_path: Path, text: str | bytes, name: str = "sifbox.conf") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return str(path)


def refused(tmp_path: Path, text: str | bytes) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


# --- the schema --------------------------------------------------------------------------------

#: The directives sifbox must know, with Apptainer's defaults (sifbox: `allow setuid = no`).
EXPECTED_DEFAULTS: dict[str, schema.Value] = {
    "allow setuid": False,
    "allow pid ns": True,
    "allow ipc ns": True,
    "allow uts ns": True,
    "allow user ns": True,
    "config passwd": True,
    "config group": True,
    "config resolv_conf": True,
    "mount proc": True,
    "mount sys": True,
    "mount dev": "yes",
    "mount devpts": True,
    "mount home": True,
    "mount tmp": True,
    "mount hostfs": False,
    "bind path": ("/etc/localtime", "/etc/hosts"),
    "user bind control": True,
    "enable fusemount": True,
    "enable overlay": "yes",
    "enable underlay": "yes",
    "mount slave": True,
    "sessiondir max size": 64,
    "memory fs type": "tmpfs",
    "limit container owners": (),
    "limit container groups": (),
    "limit container paths": (),
    "allow container sif": True,
    "allow container encrypted": True,
    "allow container squashfs": True,
    "allow container extfs": True,
    "allow container dir": True,
    # sifbox's own default: a bounded set, root containers contained (Apptainer: full).
    "root default capabilities": "default",
    "always use nv": False,
    "use nvidia-container-cli": False,
    "always use rocm": False,
    "shared loop devices": False,
    "max loop devices": 256,
    "mksquashfs procs": 0,
    "mksquashfs mem": None,
    "mksquashfs compression": "zstd:3",
    "mksquashfs path": None,
    "unsquashfs path": None,
    "ldconfig path": None,
    "nvidia-container-cli path": None,
    "cryptsetup path": None,
    "allow net users": (),
    "allow net groups": (),
    "allow net networks": (),
    "systemd cgroups": True,
    "store path": None,
}

EXPECTED_CHOICES = {
    "mount dev": ("yes", "no", "minimal"),
    "enable overlay": ("yes", "no", "try", "driver"),
    "enable underlay": ("yes", "no", "preferred"),
    "memory fs type": ("tmpfs", "ramfs"),
    "root default capabilities": ("default", "full", "file", "no"),
}


def test_schema_has_the_required_directives_with_apptainer_defaults() -> None:
    assert {name: schema.BY_NAME[name].default for name in EXPECTED_DEFAULTS} == EXPECTED_DEFAULTS
    for name, choices in EXPECTED_CHOICES.items():
        assert schema.BY_NAME[name].kind == schema.ENUM
        assert schema.BY_NAME[name].choices == choices


def test_schema_has_no_image_driver() -> None:
    assert "image driver" not in schema.BY_NAME
    assert "image driver" in schema.APPTAINER_ONLY


@pytest.mark.parametrize("d", schema.SCHEMA, ids=lambda d: d.name)
def test_schema_entry_is_well_formed(d: schema.Directive) -> None:
    assert d.name == " ".join(d.name.lower().split())
    assert d.kind in schema.KINDS
    assert d.help and "\n" not in d.help and len(d.help) <= 95
    assert bool(d.choices) == (d.kind == schema.ENUM)
    if d.kind == schema.ENUM:
        assert d.default in d.choices
    # The default, written out, reads back as itself.
    lines = d.format(d.default)
    if d.kind == schema.LIST:
        parsed: list[str] = []
        for line in lines:
            value = d.parse(line)
            assert isinstance(value, tuple)
            parsed.extend(value)
        assert tuple(parsed) == d.default
    elif lines:
        assert lines == [lines[0]] and d.parse(lines[0]) == d.default
    else:
        assert d.kind == schema.STRING and d.default is None


def test_attribute_names_are_unique_identifiers() -> None:
    assert all(attr.isidentifier() for attr in schema.BY_ATTR)
    assert schema.BY_ATTR["config_resolv_conf"] == "config resolv_conf"
    assert schema.BY_ATTR["use_nvidia_container_cli"] == "use nvidia-container-cli"


# --- defaults and missing files ---------------------------------------------------------------


def test_defaults() -> None:
    cfg = defaults()
    assert cfg.as_dict() == {d.name: d.default for d in schema.SCHEMA}
    assert cfg.warnings == []
    assert cfg.source is None
    assert all(s.origin == FROM_DEFAULT and s.line is None for s in cfg.items())


def test_missing_default_file_gives_defaults_without_warning() -> None:
    cfg = load()
    assert cfg == defaults()
    assert cfg.warnings == [] and cfg.source is None


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"can't read configuration `{path}`: no such file or directory"
    assert info.value.exit_status == ExitStatus.USAGE == 125
    assert info.value.hint and sysconf.ENV_VAR in info.value.hint


def test_missing_file_named_by_environment_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "nope.conf")
    monkeypatch.setenv(sysconf.ENV_VAR, path)
    with pytest.raises(ConfigError, match="no such file"):
        load()


def test_unreadable_default_file_is_an_error_not_defaults(tmp_path: Path) -> None:
    # A default path that exists but cannot be read (here: a directory) must not
    # silently give the defaults: that would drop the site's policy.
    os.makedirs(sysconf.DEFAULT_PATH)
    with pytest.raises(ConfigError, match="is a directory"):
        load()


def test_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load(fifo)  # and does not wait for a writer


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "mount home = no\n")
    os.chmod(path, 0)
    with pytest.raises(ConfigError, match="permission denied"):
        load(path)


# --- the path: argument, environment, default -------------------------------------------------


def test_environment_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "mount home = no\n")
    monkeypatch.setenv(sysconf.ENV_VAR, path)
    cfg = load()
    assert cfg.source == path and cfg["mount home"] is False


def test_argument_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sysconf.ENV_VAR, write(tmp_path, "mount home = no\n", "env.conf"))
    arg = write(tmp_path, "mount tmp = no\n", "arg.conf")
    cfg = load(Path(arg))
    assert cfg.source == arg
    assert cfg["mount home"] is True and cfg["mount tmp"] is False


def test_env_mapping_argument_and_empty_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "mount home = no\n")
    assert load(env={sysconf.ENV_VAR: path})["mount home"] is False
    assert load(env={sysconf.ENV_VAR: ""}) == defaults()  # empty: as if unset


def test_default_path_is_read_when_present(tmp_path: Path) -> None:
    os.makedirs(os.path.dirname(sysconf.DEFAULT_PATH))
    Path(sysconf.DEFAULT_PATH).write_text("mount hostfs = yes\n")
    cfg = load()
    assert cfg.source == sysconf.DEFAULT_PATH and cfg["mount hostfs"] is True


# --- syntax ----------------------------------------------------------------------------------


def test_comments_blank_lines_and_trimming(tmp_path: Path) -> None:
    cfg = load(
        write(
            tmp_path,
            "# a comment\n\n   \n   # an indented comment\n"
            "\t mount home   =   no  \t\n"
            "mksquashfs mem=  1G\n",
        )
    )
    assert cfg["mount home"] is False and cfg["mksquashfs mem"] == "1G"
    assert cfg.warnings == []


def test_crlf_lines_and_byte_order_mark(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, b"\xef\xbb\xbfmount home = no\r\nmount tmp = no\r\n"))
    assert cfg["mount home"] is False and cfg["mount tmp"] is False
    assert cfg.warnings == []


def test_value_is_everything_after_the_first_equals_sign(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "mksquashfs mem = a = b # c\n"))
    assert cfg["mksquashfs mem"] == "a = b # c"


def test_directive_names_ignore_case_and_inner_blanks(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "Mount  HOME = no\nALLOW\tPID NS = no\n"))
    assert cfg["mount home"] is False and cfg["allow pid ns"] is False
    assert cfg.warnings == []


def test_empty_value_sets_nothing(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "mount home =\nmksquashfs path =   \n"))
    assert cfg.setting("mount home").origin == FROM_DEFAULT
    assert cfg["mount home"] is True and cfg["mksquashfs path"] is None


# --- every type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "value"),
    [("yes", True), ("no", False), ("YES", True), ("No", False), ("yEs", True), ("nO", False)],
)
def test_bool_is_case_insensitive(tmp_path: Path, word: str, value: bool) -> None:
    assert load(write(tmp_path, f"mount hostfs = {word}\n"))["mount hostfs"] is value


@pytest.mark.parametrize("word", ["true", "1", "on", "y", "yes please", "yes, no"])
def test_bool_refuses_other_words(tmp_path: Path, word: str) -> None:
    err = refused(tmp_path, f"# header\nmount home = {word}\n")
    path = str(tmp_path / "sifbox.conf")
    assert str(err) == (
        f"can't read configuration `{path}`: line 2: `mount home` must be `yes` or `no`, "
        f"not `{word}`"
    )
    assert err.line == 2 and err.path == path
    assert isinstance(err, SifboxError) and err.exit_status == 125


def test_int(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "max loop devices = 1024\nmksquashfs procs = 0\n"))
    assert cfg["max loop devices"] == 1024 and cfg["mksquashfs procs"] == 0
    assert cfg.get_int("sessiondir max size") == 64


@pytest.mark.parametrize("word", ["-1", "12a", "1.5", "0x10", "１２", "٣", str(2**63)])
def test_int_refuses_other_words(tmp_path: Path, word: str) -> None:
    err = refused(tmp_path, f"sessiondir max size = {word}\n")
    assert err.line == 1
    assert "`sessiondir max size` must be a whole number (0 or more)" in str(err)


def test_huge_number_is_refused_not_converted(tmp_path: Path) -> None:
    err = refused(tmp_path, "max loop devices = " + "9" * 100_000 + "\n")
    assert err.line == 1 and "whole number" in str(err)
    assert len(str(err)) < 300  # the value is shortened in the message


def test_string(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "mksquashfs mem = 512M\nstore path = /var/lib/sifbox/store\n"))
    assert cfg["mksquashfs mem"] == "512M"
    assert cfg.get_str("store path") == "/var/lib/sifbox/store"


def test_path_directives_need_absolute_paths(tmp_path: Path) -> None:
    assert (
        load(write(tmp_path, "mksquashfs path = /opt/sq/bin/mksquashfs\n"))["mksquashfs path"]
        == "/opt/sq/bin/mksquashfs"
    )
    err = refused(tmp_path, "\n\ncryptsetup path = cryptsetup\n")
    assert err.line == 3
    assert "`cryptsetup path` needs an absolute path, not `cryptsetup`" in str(err)
    err = refused(tmp_path, "limit container paths = /scratch, data\n")
    assert "`limit container paths` needs an absolute path, not `data`" in str(err)


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("mount dev = minimal", "mount dev", "minimal"),
        ("mount dev = MINIMAL", "mount dev", "minimal"),
        ("enable overlay = driver", "enable overlay", "driver"),
        ("enable overlay = Try", "enable overlay", "try"),
        ("enable underlay = preferred", "enable underlay", "preferred"),
        ("memory fs type = ramfs", "memory fs type", "ramfs"),
        ("root default capabilities = file", "root default capabilities", "file"),
    ],
)
def test_enum(tmp_path: Path, line: str, name: str, value: str) -> None:
    cfg = load(write(tmp_path, line + "\n"))
    assert cfg[name] == value and cfg.get_str(name) == value


def test_enum_refusal_names_the_line_and_the_choices(tmp_path: Path) -> None:
    err = refused(tmp_path, "mount home = yes\n# ...\nmount dev = full\n")
    path = str(tmp_path / "sifbox.conf")
    assert str(err) == (
        f"can't read configuration `{path}`: line 3: "
        "`mount dev` must be one of `yes`, `no`, `minimal`, not `full`"
    )
    assert err.exit_status == ExitStatus.USAGE


def test_inline_comment_gets_a_hint(tmp_path: Path) -> None:
    err = refused(tmp_path, "mount home = no # not on this cluster\n")
    assert err.hint and "own" in err.hint


# --- lists -----------------------------------------------------------------------------------


def test_repeated_list_directive_adds_up(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "bind path = /etc/localtime\nbind path = /etc/hosts\n"))
    assert cfg["bind path"] == ("/etc/localtime", "/etc/hosts")
    setting = cfg.setting("bind path")
    assert setting.origin == FROM_FILE and setting.line == 1


def test_comma_separated_list(tmp_path: Path) -> None:
    cfg = load(
        write(
            tmp_path,
            "limit container paths = /a, /b ,/c\n"
            "limit container paths = /d\n"
            "limit container owners = alice,, bob,\n"
            "bind path = /opt:/mnt/opt\n",
        )
    )
    assert cfg["limit container paths"] == ("/a", "/b", "/c", "/d")
    assert cfg["limit container owners"] == ("alice", "bob")
    assert cfg.get_list("bind path") == ("/opt:/mnt/opt",)


def test_list_not_in_a_file_is_empty_as_in_apptainer(tmp_path: Path) -> None:
    # Apptainer applies list defaults only when it reads no file at all, so
    # deleting the shipped `bind path` lines removes those binds.
    cfg = load(write(tmp_path, "mount home = yes\n"))
    assert cfg["bind path"] == ()
    assert cfg.setting("bind path").origin == ABSENT
    assert defaults()["bind path"] == ("/etc/localtime", "/etc/hosts")


# --- warnings --------------------------------------------------------------------------------


def test_unknown_directive_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "mount home = no\nfrobnicate = yes\nmount hmoe = no\n")
    cfg = load(path)
    assert cfg["mount home"] is False
    assert cfg.warnings == [
        f"configuration `{path}`: line 2: unknown directive `frobnicate`, ignored",
        (
            f"configuration `{path}`: line 3: unknown directive `mount hmoe`, ignored "
            "(did you mean `mount home`?)"
        ),
    ]


def test_apptainer_only_directive_is_a_precise_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "image driver = squashfuse\ndownload concurrency = 3\n")
    cfg = load(path)
    assert cfg.warnings == [
        (
            f"configuration `{path}`: line 1: `image driver` is an Apptainer directive "
            "that sifbox does not implement, ignored"
        ),
        (
            f"configuration `{path}`: line 2: `download concurrency` is an Apptainer directive "
            "that sifbox does not implement, ignored"
        ),
    ]


def test_line_without_equals_sign_is_a_warning(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "mount home no\n= yes\n"))
    assert len(cfg.warnings) == 2
    assert "line 1: not a `directive = value` line, ignored: `mount home no`" in cfg.warnings[0]
    assert "line 2:" in cfg.warnings[1]
    assert all(s.origin != FROM_FILE for s in cfg.items())  # nothing was set


def test_duplicate_scalar_keeps_the_first_value_with_a_warning(tmp_path: Path) -> None:
    # Apptainer's parser uses value[0] of a repeated directive (parser.go GetConfig).
    path = write(tmp_path, "mount home = no\nmount tmp = no\nmount home = yes\n")
    cfg = load(path)
    assert cfg["mount home"] is False
    assert cfg.setting("mount home").line == 1
    assert cfg.warnings == [
        (
            f"configuration `{path}`: line 3: `mount home` is already set on line 1; "
            "the first value is used, as in Apptainer"
        )
    ]


def test_duplicate_scalar_values_are_all_checked(tmp_path: Path) -> None:
    err = refused(tmp_path, "mount home = no\nmount home = perhaps\n")
    assert err.line == 2


def test_allow_setuid_yes_warns_and_is_no(tmp_path: Path) -> None:
    path = write(tmp_path, "allow setuid = yes\n")
    cfg = load(path)
    assert cfg["allow setuid"] is False
    assert cfg.warnings == [
        (
            f"configuration `{path}`: line 1: `allow setuid = yes` is not supported: "
            "sifbox has no setuid mode; treated as `no`"
        )
    ]
    quiet = load(write(tmp_path, "allow setuid = no\n", "no.conf"))
    assert quiet["allow setuid"] is False and quiet.warnings == []


# --- bytes, size -----------------------------------------------------------------------------


def test_non_utf8_is_an_error_with_the_line(tmp_path: Path) -> None:
    err = refused(tmp_path, b"mount home = no\n# caf\xe9\nmount tmp = no\n")
    assert err.line == 2
    assert str(err).endswith("line 2: not valid UTF-8 (byte 0xe9 at column 6)")
    assert err.exit_status == ExitStatus.USAGE


def test_nul_is_an_error(tmp_path: Path) -> None:
    err = refused(tmp_path, b"mount home = no\nstore path = /a\x00b\n")
    assert err.line == 2 and "NUL" in str(err)


def test_size_bound(tmp_path: Path) -> None:
    line = b"# " + b"x" * 1021 + b"\n"  # 1 KiB
    assert len(line) * 1024 == MAX_SIZE
    cfg = load(write(tmp_path, line * 1024, "max.conf"))  # exactly MAX_SIZE: read
    assert cfg.warnings == [] and cfg["bind path"] == ()  # a file of comments only
    err = refused(tmp_path, line * 1024 + b"\n")
    assert "larger than 1 MiB" in str(err) and err.line is None


# --- the Config object -----------------------------------------------------------------------


def test_config_access(tmp_path: Path) -> None:
    path = write(tmp_path, "mount home = no\nmount dev = minimal\nuse nvidia-container-cli = yes\n")
    cfg = load(path)
    assert cfg["mount home"] is False
    assert cfg.get("mount home") is False
    assert cfg.mount_home is False
    assert cfg.use_nvidia_container_cli is True
    assert cfg.config_resolv_conf is True
    assert cfg.get_bool("mount home") is False
    assert cfg.get_str("mount dev") == "minimal"
    assert "mount home" in cfg and "frobnicate" not in cfg
    assert list(cfg) == [d.name for d in schema.SCHEMA] and len(cfg) == len(schema.SCHEMA)
    assert cfg.source == path


def test_config_unknown_names_fail_loudly() -> None:
    cfg = defaults()
    with pytest.raises(KeyError, match="mount hmoe"):
        cfg["mount hmoe"]
    with pytest.raises(KeyError):
        cfg.get("mount hmoe")
    with pytest.raises(AttributeError):
        cfg.mount_hmoe  # noqa: B018
    with pytest.raises(TypeError, match="bool directive"):
        cfg.get_int("mount home")
    with pytest.raises(TypeError):
        cfg.get_list("mount dev")


def test_config_is_immutable() -> None:
    cfg = defaults()
    with pytest.raises(AttributeError):
        cfg.mount_home = False
    with pytest.raises(AttributeError):
        cfg.source = "/x"
    with pytest.raises(TypeError):
        cfg["mount home"] = False  # type: ignore[index]
    cfg.warnings.append("mine")
    assert cfg.warnings == []
    with pytest.raises(AttributeError):
        cfg["bind path"].append("/x")  # type: ignore[union-attr]


def test_items_lists_every_directive_with_its_origin(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "# x\nmount home = no\nbind path = /opt\n"))
    items = {s.name: s for s in cfg.items()}
    assert list(items) == [d.name for d in schema.SCHEMA]
    assert items["mount home"] == ("mount home", False, FROM_FILE, 2)
    assert items["bind path"] == ("bind path", ("/opt",), FROM_FILE, 3)
    assert items["mount tmp"] == ("mount tmp", True, FROM_DEFAULT, None)
    assert items["limit container paths"] == ("limit container paths", (), ABSENT, None)
    assert items["mount home"].origin == "file"


def test_config_needs_every_directive() -> None:
    with pytest.raises(ValueError, match="no value"):
        Config({})


# --- the default file ------------------------------------------------------------------------


def test_render_default_round_trip() -> None:
    text = render_default()
    cfg = parse(text, "default")
    assert cfg.as_dict() == defaults().as_dict()
    assert cfg.warnings == []
    for d in schema.SCHEMA:
        assert f"# {d.help}\n" in text
        assert f"\n{d.name} =" in text or f"\n#{d.name} =" in text


def test_rendered_lines_fit() -> None:
    assert all(len(line) <= 100 for line in render_default().splitlines())


def test_shipped_default_file_is_render_default() -> None:
    shipped = REPO / "sifbox" / "data" / "sifbox.conf"
    assert shipped.read_text(encoding="utf-8") == render_default(), (
        "regenerate it: python3 -c 'from sifbox.config.sysconf import render_default as r; "
        'open("sifbox/data/sifbox.conf", "w").write(r())\''
    )
    assert load(shipped).as_dict() == defaults().as_dict()
