"""`sifbox config global` (sifbox.config.edit) and `config fakeroot` (sifbox.runtime.idmap):
the edits of sifbox.conf and of /etc/subuid, on text."""

from __future__ import annotations

import pytest

from sifbox.config import edit, sysconf
from sifbox.config.edit import GET, RESET, SET, UNSET
from sifbox.runtime import idmap
from sifbox.util.errors import ExitStatus, SifboxError, UsageError

CONF = """\
# site configuration
#
# Let users mount FUSE file systems
enable fusemount = yes

# bind these
bind path = /etc/localtime
bind path = /etc/hosts

#sessiondir max size =
mount home = yes
mount home = no
"""


def test_set_a_directive_keeps_everything_else() -> None:
    new = edit.edit(CONF, SET, "enable fusemount", ["no"])
    assert new == CONF.replace("enable fusemount = yes", "enable fusemount = no")
    assert sysconf.parse(new).get_bool("enable fusemount") is False


def test_set_names_are_as_the_parser_reads_them() -> None:
    assert edit.edit(CONF, SET, "  Enable   FuseMount ", ["NO"]) == edit.edit(CONF, SET, "enable fusemount", ["no"])


def test_set_replaces_repeated_lines_of_a_scalar() -> None:
    new = edit.edit(CONF, SET, "mount home", ["no"])
    assert new.count("mount home") == 1 and "mount home = no\n" in new


def test_set_after_the_commented_template_line_or_at_the_end() -> None:
    new = edit.edit(CONF, SET, "sessiondir max size", ["16"])
    assert "#sessiondir max size =\nsessiondir max size = 16\nmount home" in new
    new = edit.edit(CONF, SET, "memory fs type", ["ramfs"])
    assert new == CONF + "memory fs type = ramfs\n"


def test_list_directives_gain_and_lose_values() -> None:
    new = edit.edit(CONF, SET, "bind path", ["/opt,/etc/hosts", "/srv:/data"])
    assert "bind path = /etc/hosts\nbind path = /opt, /srv:/data\n" in new
    assert edit.get(new, "bind path") == "/etc/localtime,/etc/hosts,/opt,/srv:/data"
    assert edit.edit(CONF, SET, "bind path", ["/etc/hosts"]) == CONF  # already there
    new = edit.edit(new, UNSET, "bind path", ["/opt,/etc/localtime"])
    assert edit.get(new, "bind path") == "/etc/hosts,/srv:/data"
    assert "bind path = /etc/localtime" not in new
    with pytest.raises(SifboxError, match="value `/nope` not found"):
        edit.edit(new, UNSET, "bind path", ["/nope"])


def test_unset_and_reset_go_back_to_the_default() -> None:
    new = edit.edit(CONF, UNSET, "enable fusemount", ["yes"])
    assert "enable fusemount" not in new.replace("# Let users mount FUSE", "")
    with pytest.raises(SifboxError, match="not found"):
        edit.edit(CONF, UNSET, "enable fusemount", ["no"])
    changed = edit.edit(CONF, SET, "enable fusemount", ["no"])
    assert edit.edit(changed, RESET, "enable fusemount", []) == CONF
    reset = edit.edit(edit.edit(CONF, SET, "bind path", ["/opt"]), RESET, "bind path", [])
    assert edit.get(reset, "bind path") == "/etc/localtime,/etc/hosts"


def test_get() -> None:
    assert edit.get(CONF, "enable fusemount") == "yes"
    assert edit.get(CONF, "mount home") == "yes"  # the first value is the one in force
    assert edit.get(CONF, "limit container paths") == ""
    assert edit.get(CONF, "store path") == ""


@pytest.mark.parametrize(
    ("op", "name", "values", "needle"),
    [
        (SET, "enable fusemount", ["maybe"], "must be `yes` or `no`"),
        (SET, "enable fusemount", [], "no value given"),
        (SET, "enable fusemount", ["yes,no"], "one value"),
        (SET, "sessiondir max size", ["-1"], "whole number"),
        (SET, "bind path", ["relative/path"], "absolute path"),
        (SET, "no such thing", ["1"], "not a sifbox.conf directive"),
        (SET, "allow kernel squashfs", ["no"], "Apptainer directive that sifbox does not implement"),
        (SET, "bind path", ["/a\0/b"], "NUL"),
        (SET, "mount home\nallow setuid", ["no"], "newline"),
    ],
)
def test_bad_edits_are_refused(op: str, name: str, values: list[str], needle: str) -> None:
    """Hostile: a value with a newline must not smuggle a second directive into the file."""
    with pytest.raises(SifboxError) as err:
        edit.edit(CONF, op, name, values)
    assert needle in err.value.message
    assert err.value.exit_status in (ExitStatus.USAGE, ExitStatus.FAILURE)


def test_a_newline_in_a_value_is_refused() -> None:
    for value in ("/a\nmount home = no", "no\nallow setuid = yes"):
        with pytest.raises(UsageError, match="newline"):
            edit.edit(CONF, SET, "bind path" if value.startswith("/") else "enable fusemount", [value])


def test_near_miss_names_get_a_hint() -> None:
    with pytest.raises(UsageError) as err:
        edit.directive("enable fusemounts")
    assert err.value.hint == "did you mean `enable fusemount`?"


# --- /etc/subuid, /etc/subgid ------------------------------------------------------------------------

USERS = {"alice": 1000, "bob": 1001}


def _uid_of(name: str) -> int | None:
    return USERS.get(name)


def test_add_allocates_a_free_range_from_the_top() -> None:
    text = "alice:100000:65536\n# a comment\n"
    new = idmap.edit_subids(text, "add", 1001, _uid_of, "/etc/subuid")
    assert new == text + f"1001:{idmap.START_MAX}:65536\n"
    again = idmap.edit_subids(new, "add", 1002, _uid_of, "/etc/subuid")
    assert again.endswith(f"1002:{idmap.START_MAX - 65536}:65536\n")
    assert idmap.edit_subids(new, "add", 1001, _uid_of, "/etc/subuid") == new  # has one: nothing to do
    assert idmap.edit_subids(text, "add", 1000, _uid_of, "/etc/subuid") == text  # found by name


def test_add_skips_ranges_that_overlap() -> None:
    text = f"x:{idmap.START_MAX - 10}:20\n"
    new = idmap.edit_subids(text, "add", 1000, _uid_of, "f")
    start = int(new.splitlines()[-1].split(":")[1])
    assert start + 65536 <= idmap.START_MAX - 10


def test_disable_enable_remove() -> None:
    text = "alice:100000:65536\nbob:165536:65536\n"
    off = idmap.edit_subids(text, "disable", 1000, _uid_of, "f")
    assert off == "!alice:100000:65536\nbob:165536:65536\n"
    assert idmap.subid_range(off, "alice", 1000) is None  # --fakeroot then maps root alone
    assert idmap.edit_subids(off, "disable", 1000, _uid_of, "f") == off
    assert idmap.edit_subids(off, "enable", 1000, _uid_of, "f") == text
    assert idmap.edit_subids(text, "remove", 1001, _uid_of, "f") == "alice:100000:65536\n"
    with pytest.raises(SifboxError, match="no mapping entry found in `f`"):
        idmap.edit_subids(text, "remove", 1002, _uid_of, "f", "carol")


def test_full_id_space_is_an_error() -> None:
    text = f"x:0:{2**32}\n"
    with pytest.raises(SifboxError, match="no range of 65536 IDs left"):
        idmap.edit_subids(text, "add", 1000, _uid_of, "f")


def test_get_is_not_an_edit() -> None:
    with pytest.raises(ValueError):
        edit.edit(CONF, GET, "mount home", [])
