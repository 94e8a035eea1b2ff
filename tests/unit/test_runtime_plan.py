"""The runtime's planning code, without the system: bind and mount options
(`spec.parse_bind`, `spec.parse_mount`), the mount plan
(`plan.default_mounts` against a fake host and file system), the identity
files (`merge_passwd`, `merge_group`) and the CLI's `build_spec`.

Expected behaviour: STYLE.md "Test pyramid" and apptainer-behaviour.md A.2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from sifbox.cli.commands import action
from sifbox.runtime.plan import (
    DEV_NODES,
    Mount,
    check_bind,
    default_mounts,
    merge_group,
    merge_passwd,
)
from sifbox.runtime.spec import (
    NO_MOUNT_NAMES,
    BindMount,
    ContainerSpec,
    Host,
    parse_bind,
    parse_mount,
)
from sifbox.util.errors import SifboxError, UsageError


# -- spec.parse_bind --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("/data", [BindMount("/data", "/data", False)]),
        ("/data:/mnt", [BindMount("/data", "/mnt", False)]),
        ("/data:/mnt:ro", [BindMount("/data", "/mnt", True)]),
        ("/data:/mnt:rw", [BindMount("/data", "/mnt", False)]),
        ("/data::ro", [BindMount("/data", "/data", True)]),  # empty dest means the source
        ("/data:", [BindMount("/data", "/data", False)]),
        ("rel/dir:/mnt", [BindMount("rel/dir", "/mnt", False)]),  # the source may be relative
        (
            "/a,/b:/mnt/b:ro,/c:/c:rw",
            [BindMount("/a", "/a"), BindMount("/b", "/mnt/b", True), BindMount("/c", "/c")],
        ),
        ("/a,,/b,", [BindMount("/a", "/a"), BindMount("/b", "/b")]),  # empty items skipped
        ("", []),
    ],
)
def test_parse_bind(text: str, expected: list[BindMount]) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    "text,item,reason",
    [
        ("/a:/b:xx", "/a:/b:xx", "unknown option `xx` (use ro, rw, image-src=PATH or id=N)"),
        ("/a:/b:RO", "/a:/b:RO", "unknown option `RO` (use ro, rw, image-src=PATH or id=N)"),
        ("/ok,/a:/b:nosuid", "/a:/b:nosuid", "unknown option `nosuid` (use ro, rw, image-src=PATH or id=N)"),
        ("/a:b", "/a:b", "the destination must be an absolute path"),
        ("/a:relative/dir:ro", "/a:relative/dir:ro", "the destination must be an absolute path"),
        ("relative", "relative", "the destination must be an absolute path"),
        (":/mnt", ":/mnt", "expected src[:dest[:options]]"),
        ("/a:/b:ro:x", "/a:/b:ro:x", "expected src[:dest[:options]]"),
        ("/a:/b:id=0", "/a:/b:id=0", "`id=0`: the descriptor ID is a number from 1"),
        ("/a:/b:id=x", "/a:/b:id=x", "`id=x`: the descriptor ID is a number from 1"),
    ],
)
def test_parse_bind_errors(text: str, item: str, reason: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_bind(text)
    assert str(exc.value) == f"can't use bind `{item}`: {reason}"


@pytest.mark.parametrize(
    "text,expected",
    [
        # Apptainer's escapes: a comma or a colon of a path (tests actionBinds BindFileWithComma/ColonOK)
        ("/d/file\\,comma:/canary/file", [BindMount("/d/file,comma", "/canary/file")]),
        ("/d/file\\:colon:/canary/file", [BindMount("/d/file:colon", "/canary/file")]),
        ("/d/a\\,b\\:c", [BindMount("/d/a,b:c", "/d/a,b:c")]),
        ("/d/a\\b:/x", [BindMount("/d/a\\b", "/x")]),  # other backslashes are the path's own
        # image binds: the options of a bind are comma-separated too
        ("/i.sqfs:/bind:image-src=/", [BindMount("/i.sqfs", "/bind", False, "/")]),
        ("/i.img:/bind:image-src=/data,ro", [BindMount("/i.img", "/bind", True, "/data")]),
        ("/i.sif:/rootfs:id=4", [BindMount("/i.sif", "/rootfs", False, None, 4)]),
        ("/i.sif:/b:id=2,image-src=/x,rw,/c", [BindMount("/i.sif", "/b", False, "/x", 2), BindMount("/c", "/c")]),
        ("/i.sqfs:/bind:image-src=", [BindMount("/i.sqfs", "/bind", False, "/")]),  # empty: the image's root
        (" /a:/b , /c ", [BindMount("/a", "/b"), BindMount("/c", "/c")]),  # items are stripped
    ],
)
def test_parse_bind_apptainer_syntax(text: str, expected: list[BindMount]) -> None:
    assert parse_bind(text) == expected


def test_parse_bind_options_end_at_a_non_option() -> None:
    # As Apptainer: after src:dst:opts, an item that is not an option is the next bind.
    assert parse_bind("/a:/b:ro,/c:/d:image-src=/") == [BindMount("/a", "/b", True),
                                                         BindMount("/c", "/d", False, "/")]  # fmt: skip
    with pytest.raises(UsageError, match="destination must be an absolute path"):
        parse_bind("/a:/b:image-src=/,bogus=1")  # `bogus=1` is a source without a destination


def test_parse_bind_unescaped_comma_splits() -> None:
    # actionBinds BindFileWithCommaKO: the two halves are two binds
    assert parse_bind("/d/file,comma:/canary/file") == [BindMount("/d/file", "/d/file"),
                                                         BindMount("comma", "/canary/file")]  # fmt: skip


# -- spec.parse_mount ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("type=bind,source=/a,destination=/b", BindMount("/a", "/b", False)),
        ("type=bind,source=/a,destination=/b,ro", BindMount("/a", "/b", True)),
        ("type=bind,src=/a,dst=/b,readonly", BindMount("/a", "/b", True)),
        ("type=bind,src=/a,target=/b,ro=true", BindMount("/a", "/b", True)),
        ("type=bind,src=/a,target=/b,readonly=1", BindMount("/a", "/b", True)),
        ("type=bind,src=/a,target=/b,ro=false", BindMount("/a", "/b", False)),
        ("src=/a,dst=/b", BindMount("/a", "/b", False)),  # type defaults to bind
        ("TYPE=bind, Source=/a,DST=/b", BindMount("/a", "/b", False)),  # keys are case-insensitive
        ("type=bind,source=/data,dest=/mnt,ro", BindMount("/data", "/mnt", True)),  # the user guide's `dest`
        ("type=bind,src=/a,dst=/b,nonested", BindMount("/a", "/b", nested=False)),
        ('type=bind,"src=/comma,dir",dst=/mnt', BindMount("/comma,dir", "/mnt")),  # CSV quoting
        ("type=bind,src=/my:path,dst=/mnt", BindMount("/my:path", "/mnt")),  # a colon needs no escape
        ("type=bind,src=/i.sif,dst=/rootfs,id=4", BindMount("/i.sif", "/rootfs", part_id=4)),
        ("type=bind,src=/i.img,dst=/d,image-src=/x,ro", BindMount("/i.img", "/d", True, "/x")),
    ],
)
def test_parse_mount(text: str, expected: BindMount) -> None:
    assert parse_mount(text) == [expected]


def test_parse_mount_one_mount_a_line() -> None:
    # SIFBOX_MOUNT / APPTAINER_MOUNT hold several, newline-separated
    assert parse_mount("src=/a,dst=/b\n\nsrc=/c,dst=/d,ro\n") == [BindMount("/a", "/b"), BindMount("/c", "/d", True)]


@pytest.mark.parametrize(
    "text,reason",
    [
        ("type=volume,src=v,dst=/b", "only type=bind is supported"),
        ("type=tmpfs,dst=/b", "only type=bind is supported"),
        ("type=bind,dst=/b", "source and destination are required"),
        ("type=bind,source=/a", "source and destination are required"),
        ("type=bind", "source and destination are required"),
        ("type=bind,src=/a,dst=/b,nosuid", "unknown field `nosuid`"),
        ("type=bind,src=/a,dst=/b,ro=maybe", "`ro=maybe`: expected ro, ro=true or ro=false"),
        ("type=bind,,src=/a,dst=/b", "unknown field ``"),
        ("type=bind,src=/a,dst=/b,bind-propagation=rprivate", "bind-propagation is not set per mount"),
        ("type=bind,src=/a,dst=/b,id=0", "`id=0`: the descriptor ID is a number from 1"),
        ("type=bind,src=/a,dst=/b,image-src=", "image-src can't be empty"),
        ('type=bind,"src=/a,dst=/b', "bad quoting (unexpected end of data)"),
        ("", "source and destination are required"),
    ],
)
def test_parse_mount_errors(text: str, reason: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_mount(text)
    assert str(exc.value) == f"can't use mount `{text}`: {reason}"


@pytest.mark.parametrize(
    "text",
    ["type=bind,source=,destination=/b", "type=bind,src=/a,dst=", "type=bind,src=/a,dst=relative"],
)
def test_parse_mount_refuses_empty_fields_and_relative_destination(text: str) -> None:
    with pytest.raises(UsageError):
        parse_mount(text)


# -- plan.default_mounts -------------------------------------------------------------------------
HOST = Host(
    uid=1000, gid=1000, user="alice", home="/home/alice", cwd="/home/alice/work", is_root=False
)

DIRS = {
    "/",
    "/proc",
    "/sys",
    "/dev",
    "/tmp",
    "/var/tmp",
    "/home",
    "/home/alice",
    "/home/alice/work",
    "/data",
    "/data/proj",
    "/scratch",
    "/usr",
    "/usr/share",
    "/opt",
    "/srv/h",
    "/etc",
}
FILES = {"/etc/hosts", "/etc/resolv.conf", "/etc/localtime", "/data/file.txt"} | {
    f"/dev/{n}" for n in DEV_NODES
}

# The site's mounts are "site" ones, /etc/hosts and /etc/localtime of `bind path` "optional"
# (skipped when they can't be made, as Apptainer), the home directory "home", what the caller
# asks for "asked" (see ops.Mount).
ETC_FILES = [
    Mount("bind", f, f, readonly=True, file=True, policy="site" if f == "/etc/resolv.conf" else "optional")
    for f in ("/etc/localtime", "/etc/hosts", "/etc/resolv.conf")  # `bind path`, then resolv.conf
]
DEFAULTS = [
    Mount("rbind", "/proc", "/proc"),
    Mount("rbind", "/sys", "/sys"),
    Mount("rbind", "/dev", "/dev"),
    Mount("rbind", "/tmp", "/tmp", policy="site"),
    Mount("rbind", "/var/tmp", "/var/tmp", policy="site"),
    Mount("rbind", "/home/alice", "/home/alice", policy="home"),
    *ETC_FILES,
]


def asked(source: str, target: str, readonly: bool = False, file: bool = False) -> Mount:
    return Mount("rbind", source, target, readonly=readonly, file=file, policy="asked")


def fs(
    dirs: Iterable[str] = DIRS, files: Iterable[str] = FILES
) -> dict[str, Callable[[str], bool]]:
    d, f = set(dirs), set(files)
    return {"exists": lambda p: p in d or p in f, "isdir": lambda p: p in d}


def plan(
    host: Host = HOST, *, dirs: Iterable[str] = DIRS, files: Iterable[str] = FILES, **kw: Any
) -> list[Mount]:
    spec = ContainerSpec(image="/img.sif", action="exec", command=["true"], **kw)
    return default_mounts(spec, host, **fs(dirs, files))


def targets(mounts: list[Mount]) -> list[str]:
    return [m.target for m in mounts]


def test_default_set() -> None:
    # The cwd is under the home, which is bound already: no cwd bind.
    assert plan() == DEFAULTS


def test_defaults_skip_what_the_host_lacks() -> None:
    got = plan(dirs={"/proc"}, files=set())
    # proc/sys/dev are always planned; /tmp, /var/tmp, home, /etc files and cwd only if present
    assert got == DEFAULTS[:3]


def test_cwd_outside_covered_paths_is_bound_before_home_and_binds() -> None:
    # Below home and the binds: a bind into the current directory stays visible.
    got = plan(HOST._replace(cwd="/data/proj"))
    cwd = Mount("rbind", "/data/proj", "/data/proj", policy="if-present")
    assert cwd in got and got.index(cwd) < got.index(DEFAULTS[5])
    assert sorted(got, key=repr) == sorted([*DEFAULTS, cwd], key=repr)


def test_a_bind_into_the_current_directory_is_not_hidden_by_it() -> None:
    got = plan(HOST._replace(cwd="/data/proj"), binds=(BindMount("/srv/in", "/data/proj/in"),), dirs=DIRS | {"/srv/in"})
    assert got.index(Mount("rbind", "/data/proj", "/data/proj", policy="if-present")) < got.index(asked("/srv/in", "/data/proj/in"))


@pytest.mark.parametrize(
    "cwd",
    [
        "/",
        "/usr",
        "/usr/share",
        "/etc",
        "/proc",
        "/sys",
        "/dev",  # system paths
        "/tmp",
        "/var/tmp",
        "/home/alice",
        "/home/alice/work",  # already covered
        "/no/such/dir",
    ],
)
def test_cwd_not_bound(cwd: str) -> None:
    assert plan(HOST._replace(cwd=cwd), dirs=DIRS | {"/tmp/x"}) == DEFAULTS


def test_cwd_bound_when_only_a_prefix_matches() -> None:
    # /usrlocal is not under /usr, /home/alicex is not under /home/alice
    for cwd in ("/usrlocal", "/home/alicex"):
        got = plan(HOST._replace(cwd=cwd), dirs=DIRS | {cwd})
        assert Mount("rbind", cwd, cwd, policy="if-present") in got


def test_cwd_under_a_user_bind_is_covered() -> None:
    got = plan(HOST._replace(cwd="/data/proj"), binds=(BindMount("/data", "/data"),))
    assert got[-1] == asked("/data", "/data")


def test_cwd_not_bound_under_a_file_bind_alone() -> None:
    # file binds do not cover a directory
    got = plan(HOST._replace(cwd="/data/proj"), binds=(BindMount("/data/file.txt", "/data"),))
    assert Mount("rbind", "/data/proj", "/data/proj", policy="if-present") in got


def test_cwd_not_bound_with_pwd_or_contain() -> None:
    host = HOST._replace(cwd="/data/proj")
    assert "/data/proj" not in targets(plan(host, pwd="/opt"))
    assert "/data/proj" not in targets(plan(host, contain=True))


def test_contain() -> None:
    got = plan(HOST._replace(cwd="/data/proj"), contain=True)
    assert got == [
        Mount("rbind", "/proc", "/proc"),
        Mount("rbind", "/sys", "/sys"),
        Mount("tmpfs", None, "/dev", options="mode=755,size=1m"),
        *[Mount("bind", f"/dev/{n}", f"/dev/{n}", file=True) for n in DEV_NODES],
        Mount("devpts", None, "/dev/pts", options="newinstance,ptmxmode=0666,mode=0620"),
        Mount("tmpfs", None, "/dev/shm", options="mode=1777"),
        Mount("tmpfs", None, "/tmp", options="mode=1777", policy="site"),
        Mount("tmpfs", None, "/var/tmp", options="mode=1777", policy="site"),
        Mount("tmpfs", None, "/home/alice", options="mode=700", policy="home"),
        *ETC_FILES,
    ]
    assert set(DEV_NODES) == {"null", "zero", "full", "random", "urandom", "tty"}


def test_contain_binds_only_the_device_nodes_that_exist() -> None:
    got = plan(contain=True, files={"/dev/null", "/dev/zero"})
    assert [m.target for m in got if m.source and m.source.startswith("/dev/")] == [
        "/dev/null",
        "/dev/zero",
    ]


def test_contain_tmp_is_tmpfs_even_without_host_tmp() -> None:
    got = plan(contain=True, dirs={"/"})
    assert Mount("tmpfs", None, "/tmp", options="mode=1777", policy="site") in got
    assert Mount("tmpfs", None, "/home/alice", options="mode=700", policy="home") in got  # home need not exist


def test_no_home() -> None:
    host = HOST._replace(cwd="/")
    assert plan(host, no_home=True) == [m for m in DEFAULTS if m.target != "/home/alice"]
    assert "/home/alice" not in targets(plan(no_home=True, contain=True))


def test_no_home_binds_the_cwd_under_home() -> None:
    got = plan(no_home=True)
    assert Mount("rbind", "/home/alice/work", "/home/alice/work", policy="if-present") in got


@pytest.mark.parametrize("home", ["", "/"])
def test_no_home_bind_for_an_empty_or_root_home(home: str) -> None:
    got = plan(HOST._replace(home=home, cwd="/"))
    assert [m for m in got if m.kind == "rbind" and m.target in ("/tmp", "/var/tmp", "/home/alice", "/")] == DEFAULTS[3:5]


def test_home_source_and_target() -> None:
    got = plan(home_source="/srv/h", home_target="/home/alice")
    assert Mount("rbind", "/srv/h", "/home/alice", policy="home") in got
    assert DEFAULTS[5] not in got
    got = plan(home_source="/srv/h", home_target="/myhome")
    assert Mount("rbind", "/srv/h", "/myhome", policy="home") in got
    # -H wins over --contain's tmpfs home
    got = plan(home_source="/srv/h", home_target="/myhome", contain=True)
    assert Mount("rbind", "/srv/h", "/myhome", policy="home") in got
    assert not [m for m in got if m.kind == "tmpfs" and m.target in ("/myhome", "/home/alice")]
    # --no-home wins over -H
    assert "/myhome" not in targets(plan(home_source="/srv/h", home_target="/myhome", no_home=True))


def test_home_target_alone_binds_the_host_home_there() -> None:
    got = plan(home_target="/myhome")
    assert Mount("rbind", "/home/alice", "/myhome", policy="home") in got


@pytest.mark.parametrize(
    "name,gone",
    [
        ("proc", ["/proc"]),
        ("sys", ["/sys"]),
        ("dev", ["/dev"]),
        ("tmp", ["/tmp", "/var/tmp"]),
        ("home", ["/home/alice"]),
        ("/etc/hosts", ["/etc/hosts"]),
        ("/etc/resolv.conf", ["/etc/resolv.conf"]),
        ("/etc/localtime", ["/etc/localtime"]),
        ("hostfs", []),  # accepted; sifbox has no hostfs mounts
        ("devpts", []),  # only matters with --contain
        ("cwd", []),  # see test_no_mount_cwd
        ("bind-paths", ["/etc/localtime", "/etc/hosts"]),  # the `bind path` entries
    ],
)
def test_no_mount_names(name: str, gone: list[str]) -> None:
    assert name in NO_MOUNT_NAMES
    got = plan(HOST._replace(cwd="/"), no_mount=frozenset({name}))
    assert got == [m for m in DEFAULTS if m.target not in gone]


def test_no_mount_every_name_is_known() -> None:
    assert NO_MOUNT_NAMES == {
        "proc",
        "sys",
        "dev",
        "devpts",
        "home",
        "tmp",
        "hostfs",
        "cwd",
        "bind-paths",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/localtime",
    }


def test_no_mount_dev_with_contain_drops_every_dev_mount() -> None:
    got = plan(contain=True, no_mount=frozenset({"dev"}))
    assert not [t for t in targets(got) if t.startswith("/dev")]


def test_no_mount_devpts_with_contain() -> None:
    got = plan(contain=True, no_mount=frozenset({"devpts"}))
    assert "/dev/pts" not in targets(got)
    assert "/dev" in targets(got) and "/dev/shm" in targets(got)


def test_no_mount_cwd() -> None:
    host = HOST._replace(cwd="/data/proj")
    assert plan(host, no_mount=frozenset({"cwd"})) == DEFAULTS


def test_no_mount_everything() -> None:
    every = NO_MOUNT_NAMES
    got = plan(HOST._replace(cwd="/data/proj"), no_mount=every, binds=(BindMount("/data", "/mnt"),))
    # --no-mount turns off what sifbox mounts by itself, never the user's --bind.
    assert got == [asked("/data", "/mnt")]


# user binds
def test_user_binds_come_after_the_defaults_in_order() -> None:
    binds = (
        BindMount("/data", "/mnt/data", True),
        BindMount("/data/file.txt", "/etc/file.txt"),
        BindMount("/scratch", "/scratch"),
    )
    got = plan(binds=binds)
    assert got == [
        *DEFAULTS,
        asked("/data", "/mnt/data", readonly=True),
        asked("/data/file.txt", "/etc/file.txt", file=True),
        asked("/scratch", "/scratch"),
    ]


def test_no_mount_destination_keeps_user_binds() -> None:
    """As in Apptainer, `--no-mount /dest` and `bind-paths` only turn off
    configured binds (`bind path`), not the user's -B options."""
    got = plan(
        binds=(BindMount("/data", "/mnt"), BindMount("/scratch", "/scratch")),
        no_mount=frozenset({"/mnt"}),
    )
    assert targets(got)[-2:] == ["/mnt", "/scratch"]


def test_bind_paths_keeps_user_binds() -> None:
    got = plan(binds=(BindMount("/data", "/mnt"),), no_mount=frozenset({"bind-paths"}))
    without_conf_binds = [m for m in DEFAULTS if m.target not in ("/etc/localtime", "/etc/hosts")]
    assert got == [*without_conf_binds, asked("/data", "/mnt")]


def test_site_configuration() -> None:
    from sifbox.config import sysconf
    from sifbox.runtime.plan import Site, site_from_config

    assert site_from_config(sysconf.defaults()) == Site()
    spec = ContainerSpec(image="/img.sif", action="exec", command=["true"])
    site = Site(mount_proc=False, mount_dev="minimal", mount_home=False, bind_paths=("/etc/hosts:/etc/h2", "/data"),
                resolv_conf=False)  # fmt: skip
    got = default_mounts(spec, HOST, site=site, **fs())
    assert "/proc" not in targets(got) and "/home/alice" not in targets(got)
    assert ("tmpfs", "/dev") in [(m.kind, m.target) for m in got]
    assert Mount("bind", "/etc/hosts", "/etc/h2", readonly=True, file=True, policy="optional") in got
    assert Mount("bind", "/data", "/data", readonly=True, policy="site") in got  # a failure stops the launch
    assert "/etc/resolv.conf" not in targets(got)
    with pytest.raises(SifboxError, match="user bind control"):
        default_mounts(spec._replace(binds=(BindMount("/data", "/mnt"),)), HOST,
                       site=Site(user_bind_control=False), **fs())  # fmt: skip


def test_user_bind_with_a_missing_source() -> None:
    with pytest.raises(SifboxError) as exc:
        plan(binds=(BindMount("/data", "/a"), BindMount("/nope/x", "/mnt")))
    assert str(exc.value) == "can't bind `/nope/x` to `/mnt`: the source does not exist"
    assert exc.value.hint


@pytest.mark.parametrize(
    "target,forbidden",
    [
        ("/proc", "/proc"),
        ("/proc/sys", "/proc"),
        ("/sys", "/sys"),
        ("/sys/fs/cgroup", "/sys"),
        ("/dev", "/dev"),
        ("/dev/pts", "/dev"),
        ("/dev/shm/../null", "/dev"),
        ("/dev/./pts", "/dev"),
        ("/usr/../proc", "/proc"),
        ("///proc", "/proc"),
        ("/proc/", "/proc"),
    ],
)
def test_bind_onto_kernel_file_systems_is_refused(target: str, forbidden: str) -> None:
    with pytest.raises(SifboxError) as exc:
        plan(binds=(BindMount("/data", target),))
    assert (
        str(exc.value)
        == f"can't bind `/data` to `{target}`: binding onto {forbidden} is not allowed"
    )


@pytest.mark.parametrize("target", ["/", "/.", "/usr/..", "/../.."])
def test_bind_onto_the_root_is_refused(target: str) -> None:
    with pytest.raises(SifboxError) as exc:
        plan(binds=(BindMount("/data", target),))
    assert str(exc.value) == "can't bind `/data` to `/`: the container root can't be replaced"


@pytest.mark.parametrize(
    "target", ["/dev/shm", "/dev/shm/x", "/devices", "/process", "/system", "/proc2"]
)
def test_bind_allowed_targets(target: str) -> None:
    got = plan(binds=(BindMount("/data", target),))
    assert got[-1] == asked("/data", target)


@pytest.mark.parametrize("target", ["//proc", "//sys/kernel", "//dev/pts", "//"])
def test_bind_refusal_cannot_be_bypassed_with_a_double_slash(target: str) -> None:
    with pytest.raises(SifboxError):
        check_bind(BindMount("/data", target))


# -- merge_passwd / merge_group ------------------------------------------------------------
IMAGE_PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\n"
ALICE = "alice:x:1000:1000:alice:/home/alice:/bin/sh\n"


def test_merge_passwd_appends_the_caller() -> None:
    assert merge_passwd(IMAGE_PASSWD, HOST) == IMAGE_PASSWD + ALICE


def test_merge_passwd_empty_image_file() -> None:
    assert merge_passwd("", HOST) == ALICE
    assert merge_passwd("\n\n", HOST) == ALICE


def test_merge_passwd_without_final_newline() -> None:
    assert merge_passwd(IMAGE_PASSWD.rstrip("\n"), HOST) == IMAGE_PASSWD + ALICE


@pytest.mark.parametrize(
    "line",
    [
        "alice:x:501:501::/home/alice:/bin/bash",  # same name
        "bob:x:1000:1000::/home/bob:/bin/bash",
    ],  # same uid
)
def test_merge_passwd_replaces_a_line_with_the_same_name_or_uid(line: str) -> None:
    text = "root:x:0:0:root:/root:/bin/bash\n" + line + "\nzed:x:2000:2000::/:/bin/sh\n"
    got = merge_passwd(text, HOST)
    assert got == "root:x:0:0:root:/root:/bin/bash\nzed:x:2000:2000::/:/bin/sh\n" + ALICE
    assert line not in got


def test_merge_passwd_as_root_replaces_roots_line() -> None:
    root = Host(0, 0, "root", "/root", "/", True)
    assert merge_passwd(IMAGE_PASSWD, root) == (
        "daemon:x:1:1::/:/usr/sbin/nologin\nroot:x:0:0:root:/root:/bin/sh\n"
    )


def test_merge_passwd_keeps_malformed_lines() -> None:
    text = "# comment\nbroken\nweird:x:notanumber:0::/:/bin/sh\n"
    assert merge_passwd(text, HOST) == text + ALICE


def test_merge_group() -> None:
    image = "root:x:0:\nusers:x:100:\n"
    assert merge_group(image, HOST, "alice") == image + "alice:x:1000:\n"
    assert merge_group("", HOST, "alice") == "alice:x:1000:\n"
    # a group with the caller's gid is kept as the image has it
    has = "root:x:0:\nstaff:x:1000:bob\n"
    assert merge_group(has, HOST, "alice") == has
    assert merge_group(has.rstrip("\n"), HOST, "alice") == has


# -- action.build_spec ----------------------------------------------------------------------
FLAG_PREFIXES = ("SIFBOX_", "APPTAINER_", "SINGULARITY_")


@pytest.fixture(autouse=True)
def clean_flag_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SIFBOX_/APPTAINER_/SINGULARITY_ flag from the caller's environment."""
    import os

    for key in list(os.environ):
        if key.startswith(FLAG_PREFIXES):
            monkeypatch.delenv(key)


def ns(command: str = "exec", **kw: Any) -> argparse.Namespace:
    """The Namespace `sifbox COMMAND IMAGE ...` parses to (see action.add_arguments)."""
    fields: dict[str, Any] = {
        "command": command,
        "image": "/img.sif",
        "args": [],
        "bind": [],
        "mount": [],
        "workdir": None,
        "scratch": [],
        "underlay": False,
        "home": None,
        "no_home": False,
        "no_mount": [],
        "writable_tmpfs": False,
        "writable": False,
        "overlay": [],
        "contain": False,
        "containall": False,
        "cleanenv": False,
        "env": [],
        "env_file": [],
        "no_env": [],
        "no_eval": False,
        "no_umask": False,
        "no_init": False,
        "compat": False,
        "pwd": None,
        "userns": False,
        "keep_privs": False,
        "no_privs": False,
        "fakeroot": False,
        "nv": False,
        "nvccli": False,
        "rocm": False,
        "device": [],
        "cdi_dirs": None,
        "pid": False,
        "ipc": False,
        "net": False,
        "uts": False,
        "hostname": None,
        "network": None,
        "network_args": [],
        "dns": None,
        "netns_path": None,
        "add_caps": None,
        "drop_caps": None,
        "app": None,
        # sifbox.runtime.options
        "security": [],
        "allow_setuid": False,
        "unsquash": False,
        "runscript_timeout": None,
        "disable_cache": False,
        "no_https": False,
        # encrypted images (sifbox.security.cryptkey)
        "passphrase": False,
        "pem_path": None,
        "no_share": False,
        "ignore_subuid": False,
        "ignore_fakeroot_command": False,
        "ignore_userns": False,
        "oci": False,
        # sifbox.hpc.cgroups
        "memory": None,
        "memory_swap": None,
        "cpus": None,
        "pids_limit": None,
        "memory_reservation": None,
        "oom_kill_disable": False,
        "cpu_shares": None,
        "cpuset_cpus": None,
        "cpuset_mems": None,
        "blkio_weight": None,
        "apply_cgroups": None,
    }
    if command == "exec":
        fields["command_word"] = "true"
    if command == "shell":
        fields["shell"] = None
    fields.update(kw)
    return argparse.Namespace(**fields)


@pytest.mark.parametrize("command", ["exec", "run", "shell", "test"])
def test_ns_matches_the_real_parser(command: str) -> None:
    from sifbox.cli.parser import build_parser

    argv = [command, "/img.sif"] + (["true"] if command == "exec" else [])
    parsed = vars(build_parser(full=command).parse_args(argv))
    global_keys = set(vars(build_parser(full=False).parse_args([])))
    ours = vars(ns(command))
    assert {k: v for k, v in parsed.items() if k not in global_keys | {"_command"}} == {
        k: v for k, v in ours.items() if k != "command"
    }
    assert parsed["command"] == command


def test_build_spec_defaults() -> None:
    spec = action.build_spec(ns())
    assert spec == ContainerSpec(
        image="/img.sif", action="exec", command=[], binds=(), no_mount=frozenset(), shell=None
    )


def test_build_spec_binds_and_mounts_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPTAINER_BIND", "/env")
    spec = action.build_spec(ns(bind=["/a:/b:ro,/c", "/d"], mount=["type=bind,src=/m,dst=/n,ro"]))
    assert spec.binds == (  # as Apptainer's: --bind, then the variables
        BindMount("/a", "/b", True),
        BindMount("/c", "/c"),
        BindMount("/d", "/d"),
        BindMount("/env", "/env"),
        BindMount("/m", "/n", True),
    )


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"SINGULARITY_BIND": "/s"}, ["/s"]),
        ({"SINGULARITY_BINDPATH": "/sp"}, ["/sp"]),
        ({"APPTAINER_BIND": "/a", "SINGULARITY_BIND": "/s"}, ["/a"]),
        # BIND and BINDPATH add up (Apptainer appends both); per name, SIFBOX_ before
        # APPTAINER_ before SINGULARITY_.
        ({"APPTAINER_BINDPATH": "/ap", "SINGULARITY_BIND": "/s"}, ["/s", "/ap"]),
        ({"SIFBOX_BIND": "/x", "APPTAINER_BIND": "/a", "SINGULARITY_BIND": "/s"}, ["/x"]),
        ({"SIFBOX_BINDPATH": "/xp", "APPTAINER_BIND": "/a"}, ["/a", "/xp"]),
        ({"SIFBOX_BIND": "/x", "SIFBOX_BINDPATH": "/xp"}, ["/x", "/xp"]),
    ],
)
def test_bind_env_precedence(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert action.build_spec(ns()).binds == tuple(BindMount(e, e) for e in expected)


def test_flag_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert action.flag_env("CONTAIN") is None
    monkeypatch.setenv("SINGULARITY_CONTAIN", "s")
    assert action.flag_env("CONTAIN") == "s"
    monkeypatch.setenv("APPTAINER_CONTAIN", "a")
    assert action.flag_env("CONTAIN") == "a"
    monkeypatch.setenv("SIFBOX_CONTAIN", "")
    assert action.flag_env("CONTAIN") == ""  # set, even empty, wins


def test_bad_bind_in_env_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFBOX_BIND", "/a:/b:xx")
    with pytest.raises(UsageError, match="unknown option `xx`"):
        action.build_spec(ns())


def test_containall_implies_contain_and_cleanenv(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = action.build_spec(ns(containall=True))
    assert spec.contain and spec.cleanenv
    monkeypatch.setenv("APPTAINER_CONTAINALL", "true")
    spec = action.build_spec(ns())
    assert spec.contain and spec.cleanenv


@pytest.mark.parametrize(
    "var,field",
    [
        ("CONTAIN", "contain"),
        ("CLEANENV", "cleanenv"),
        ("NO_HOME", "no_home"),
        ("WRITABLE_TMPFS", "writable_tmpfs"),
        ("USERNS", "userns"),
    ],
)
@pytest.mark.parametrize(
    "value,truth",
    [("1", True), ("yes", True), (" ON ", True), ("0", False), ("", False), ("no", False)],
)
def test_boolean_flags_from_env(
    monkeypatch: pytest.MonkeyPatch, var: str, field: str, value: str, truth: bool
) -> None:
    assert getattr(action.build_spec(ns()), field) is False
    monkeypatch.setenv(f"SINGULARITY_{var}", value)
    assert getattr(action.build_spec(ns()), field) is truth


def test_no_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = action.build_spec(ns(no_mount=["proc,sys", "/etc/hosts,,/mnt/x"]))
    assert spec.no_mount == {"proc", "sys", "/etc/hosts", "/mnt/x"}
    monkeypatch.setenv("APPTAINER_NO_MOUNT", "tmp")
    assert action.build_spec(ns(no_mount=["cwd"])).no_mount == {"cwd", "tmp"}


@pytest.mark.parametrize("name", ["procs", "home2", "relative/path", "HOME"])
def test_unknown_no_mount_name(name: str) -> None:
    with pytest.raises(UsageError) as exc:
        action.build_spec(ns(no_mount=[f"proc,{name}"]))
    assert str(exc.value) == f"can't use --no-mount `{name}`: unknown mount"
    assert exc.value.hint and "bind-paths" in exc.value.hint


def test_unknown_no_mount_name_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFBOX_NO_MOUNT", "bogus")
    with pytest.raises(UsageError, match="bogus"):
        action.build_spec(ns())


def test_overlay_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert action.build_spec(ns(overlay=["a.img", "d:ro"])).overlays == ("a.img", "d:ro")
    monkeypatch.setenv("APPTAINER_OVERLAY", "/x/ov")
    assert action.build_spec(ns()).overlays == ("/x/ov",)


def test_fakeroot_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert action.build_spec(ns(fakeroot=True)).fakeroot
    assert not action.build_spec(ns()).fakeroot
    monkeypatch.setenv("APPTAINER_FAKEROOT", "1")
    assert action.build_spec(ns()).fakeroot


def test_writable_flag() -> None:
    assert action.build_spec(ns(writable=True)).writable


@pytest.mark.parametrize(
    "home,source,target",
    [
        ("/srv/h", "/srv/h", "/srv/h"),
        ("/srv/h:/home/me", "/srv/h", "/home/me"),
        ("/srv/h:", "/srv/h", "/srv/h"),
    ],
)
def test_home_option(monkeypatch: pytest.MonkeyPatch, home: str, source: str, target: str) -> None:
    spec = action.build_spec(ns(home=home))
    assert (spec.home_source, spec.home_target) == (source, target)
    monkeypatch.setenv("APPTAINER_HOME", home)
    spec = action.build_spec(ns())
    assert (spec.home_source, spec.home_target) == (source, target)
    assert action.build_spec(ns(home="/cli")).home_source == "/cli"  # the option wins


def test_pwd_and_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    assert action.build_spec(ns(pwd="/w")).pwd == "/w"
    monkeypatch.setenv("SIFBOX_PWD", "/e")
    assert action.build_spec(ns()).pwd == "/e"
    assert action.build_spec(ns("shell", shell="/bin/zsh")).shell == "/bin/zsh"
    monkeypatch.setenv("APPTAINER_SHELL", "/bin/ksh")
    assert action.build_spec(ns("shell")).shell == "/bin/ksh"
    assert action.build_spec(ns("exec")).shell is None  # only for `shell`


def test_build_spec_feeds_default_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFBOX_BIND", "/data:/mnt:ro")
    spec = action.build_spec(ns(no_mount=["tmp"], contain=True))
    got = default_mounts(spec, HOST, **fs())
    assert got[-1] == asked("/data", "/mnt", readonly=True)
    assert (
        "/tmp" not in targets(got)
        and Mount("tmpfs", None, "/dev", options="mode=755,size=1m") in got
    )


def test_home_with_three_elements_is_refused() -> None:
    with pytest.raises(UsageError):
        action.build_spec(ns(home="/a:/b:ro"))


@pytest.mark.parametrize("var", ["APPTAINER_PWD", "APPTAINER_TARGET_PWD", "SINGULARITY_TARGET_PWD"])
def test_pwd_from_apptainer_environment(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "/work")
    assert action.build_spec(ns()).pwd == "/work"


def test_namespace_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = action.build_spec(ns(pid=True, ipc=True, uts=True, hostname="box", net=True))
    assert (spec.pid, spec.ipc, spec.uts, spec.hostname, spec.net) == (True, True, True, "box", True)
    spec = action.build_spec(ns(containall=True))
    assert spec.pid and spec.ipc and spec.contain and spec.cleanenv and not spec.net
    assert action.build_spec(ns(network="none")).net
    spec = action.build_spec(ns(network="bridge,ptp", network_args=["portmap=8080:80/tcp"], dns="1.1.1.1, 9.9.9.9"))
    assert (spec.net, spec.network, spec.network_args, spec.dns) == (
        True, ("bridge", "ptp"), ("portmap=8080:80/tcp",), ("1.1.1.1", "9.9.9.9"))
    for bad in ({"network": "../x"}, {"network": "none,bridge"}, {"dns": "1.1.1.1;x"}):
        with pytest.raises(UsageError):
            action.build_spec(ns(**bad))
    monkeypatch.setenv("APPTAINER_UNSHARE_PID", "true")
    assert action.build_spec(ns()).pid


def test_pid_namespace_gets_its_own_proc() -> None:
    got = plan(pid=True)
    assert got[0] == Mount("proc", None, "/proc")


def test_host_file_systems_are_the_mounts_on_root() -> None:
    from sifbox.runtime.plan import host_file_systems

    info = (
        "20 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "21 20 0:5 / /proc rw - proc proc rw\n"
        "22 20 8:2 / /scratch rw - xfs /dev/sdb rw\n"
        "23 22 8:3 / /scratch/deep rw - xfs /dev/sdc rw\n"
        "24 20 0:6 / /run rw - tmpfs tmpfs rw\n"
        "25 20 0:7 / /gpfs\\040fs rw - gpfs gpfs rw\n"
        "26 20 0:8 / /tmp rw - tmpfs tmpfs rw\n"
        "27 20 0:9 / /var/lib rw - ext4 /dev/sdd rw\n"
        "28 20 0:9 / /scratch2 rw - ext4 /dev/sdd rw\n"
    )
    assert host_file_systems(info) == ["/scratch", "/gpfs fs", "/scratch2"]


def test_mount_hostfs_adds_binds_unless_no_mount() -> None:
    from sifbox.runtime.plan import DEFAULT_SITE, default_mounts
    from sifbox.runtime.spec import ContainerSpec, Host

    host = Host(1000, 1000, "u", "/home/u", "/", False)
    site = DEFAULT_SITE._replace(mount_hostfs=True)
    info = "1 0 8:1 / / rw - ext4 x rw\n2 1 8:2 / /lustre rw - lustre x rw\n"
    mounts = default_mounts(ContainerSpec("i.sif", "exec"), host, site=site, mountinfo=lambda: info)
    assert any(m.source == "/lustre" and m.target == "/lustre" for m in mounts)
    spec = ContainerSpec("i.sif", "exec", no_mount=frozenset({"hostfs"}))
    assert not any(m.target == "/lustre" for m in default_mounts(spec, host, site=site, mountinfo=lambda: info))


# -- the environment options (action._env_options, --compat) -------------------------------------
def test_env_options_defaults() -> None:
    assert action._env_options(ns()) == ((), (), False, False, False)


def test_env_files_are_comma_separated_and_read_from_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPTAINER_ENV_FILE", "/v1,/v2")
    got = action._env_options(ns(env_file=["/a,/b", "/c", ""]))
    assert got[0] == ("/a", "/b", "/c", "/v1", "/v2")


@pytest.mark.parametrize("var", ["SIFBOX_NOENV", "APPTAINER_NOENV", "SINGULARITY_NOENV"])
def test_no_env_option_and_variable(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "X,Y")
    assert action._env_options(ns(no_env=["A", "B,C"]))[1] == ("A", "B", "C", "X", "Y")


@pytest.mark.parametrize("var,index", [("NO_EVAL", 2), ("NO_UMASK", 3), ("NOSHIMINIT", 4)])
def test_env_flags_from_variables(monkeypatch: pytest.MonkeyPatch, var: str, index: int) -> None:
    assert not action._env_options(ns())[index]
    monkeypatch.setenv("APPTAINER_" + var, "1")
    assert action._env_options(ns())[index]


@pytest.mark.parametrize("how", ["option", "variable"])
def test_compat_is_containall_no_init_no_umask_no_eval_writable_tmpfs(monkeypatch: pytest.MonkeyPatch,
                                                                      how: str) -> None:  # fmt: skip
    if how == "variable":
        monkeypatch.setenv("APPTAINER_COMPAT", "true")
    args = ns(compat=how == "option")
    spec = action.build_spec(args)
    assert (spec.contain, spec.cleanenv, spec.pid, spec.ipc, spec.writable_tmpfs) == (True,) * 5
    assert action._env_options(args)[2:] == (True, True, True)


def test_mount_and_cwd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIFBOX_MOUNT", "type=bind,src=/m,dst=/n")
    monkeypatch.setenv("APPTAINER_CWD", "/work")
    spec = action.build_spec(ns(mount=["type=bind,src=/a,dst=/b"]))
    assert spec.binds == (BindMount("/a", "/b"), BindMount("/m", "/n"))
    assert spec.pwd == "/work"


def test_passwd_line_with_the_hosts_gecos_and_shell() -> None:
    assert merge_passwd("", HOST, "Alice A,,,", "/bin/zsh") == "alice:x:1000:1000:Alice A,,,:/home/alice:/bin/zsh\n"
    assert merge_passwd("", HOST, "", "/bin/sh") == "alice:x:1000:1000::/home/alice:/bin/sh\n"
    # a field can't add one: colons and newlines are blanked
    assert merge_passwd("", HOST, "a:b\nroot::0:0", "/bin/sh") == "alice:x:1000:1000:a b root  0 0:/home/alice:/bin/sh\n"


# -- image binds, --workdir, --scratch --------------------------------------------------------
IMAGES = {"/img/data.sqfs", "/img/data.sif"}


def test_image_binds_are_image_mounts_in_bind_order() -> None:
    binds = (
        BindMount("/img/data.sqfs", "/a", image_src="/sub"),
        BindMount("/data", "/b"),
        BindMount("/img/data.sif", "/c", True, part_id=3),
    )
    got = plan(binds=binds, files=FILES | IMAGES)
    assert got[-3:] == [
        Mount("image", "0", "/a", options="/sub", policy="asked"),
        asked("/data", "/b"),
        Mount("image", "1", "/c", readonly=True, options="/", policy="asked"),
    ]
    from sifbox.runtime.plan import image_binds

    spec = ContainerSpec(image="/i.sif", action="exec", binds=binds)
    assert image_binds(spec) == [binds[0], binds[2]]


def test_an_image_bind_of_a_directory_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="image-src and id are for image files, and this is a directory"):
        plan(binds=(BindMount("/data", "/a", image_src="/"),))


def test_relative_bind_sources_are_the_callers() -> None:
    got = plan(HOST._replace(cwd="/data"), binds=(BindMount("file.txt", "/f"), BindMount("proj", "/p")),
               files=FILES | {"/data/file.txt"})  # fmt: skip
    assert got[-2:] == [asked("/data/file.txt", "/f", file=True), asked("/data/proj", "/p")]


def test_workdir_backs_tmp_and_home_with_contain() -> None:
    got = plan(contain=True, workdir="/w")
    assert Mount("rbind", "/w/tmp", "/tmp", policy="site") in got
    assert Mount("rbind", "/w/var_tmp", "/var/tmp", policy="site") in got
    assert Mount("rbind", "/w/home", "/home/alice", policy="home") in got
    assert not [m for m in got if m.kind == "tmpfs" and m.target in ("/tmp", "/var/tmp", "/home/alice")]


def test_workdir_without_contain_changes_nothing_but_scratch() -> None:
    assert plan(workdir="/w") == DEFAULTS
    got = plan(workdir="w", scratch=("/s1,/s2", "/s3"), host=HOST._replace(cwd="/"))  # relative to the caller's
    # after home, before the site's binds (as Apptainer)
    assert got == [*DEFAULTS[:6], asked("/w/scratch/s1", "/s1"), asked("/w/scratch/s2", "/s2"),
                   asked("/w/scratch/s3", "/s3"), *DEFAULTS[6:]]  # fmt: skip


def test_scratch_is_an_empty_tmpfs_before_the_binds() -> None:
    got = plan(scratch=("/scratch",), binds=(BindMount("/data", "/scratch/dir"),))
    scratch = Mount("tmpfs", None, "/scratch", options="mode=755", policy="asked")
    assert got.index(scratch) < got.index(asked("/data", "/scratch/dir"))


@pytest.mark.parametrize("bad", ["rel", "/", "/proc", "/dev/x", "/sys/../proc"])
def test_scratch_refuses_relative_and_system_directories(bad: str) -> None:
    with pytest.raises(UsageError, match="--scratch"):
        plan(scratch=(bad,))


def test_workdir_dirs() -> None:
    from sifbox.runtime.plan import workdir_dirs

    spec = ContainerSpec(image="/i.sif", action="exec", contain=True, workdir="w/../w2", scratch=("/s",))
    assert workdir_dirs(spec, HOST) == [
        ("/home/alice/work/w2/tmp", 0o1777),
        ("/home/alice/work/w2/var_tmp", 0o1777),
        ("/home/alice/work/w2/home", 0o700),
        ("/home/alice/work/w2/scratch/s", 0o750),
    ]
    assert workdir_dirs(spec._replace(contain=False), HOST) == [("/home/alice/work/w2/scratch/s", 0o750)]
    assert workdir_dirs(spec._replace(workdir=None), HOST) == []


@pytest.mark.parametrize("what", [{"workdir": "/w"}, {"scratch": ("/s",)}])
def test_workdir_and_scratch_obey_user_bind_control(what: dict[str, Any]) -> None:
    from sifbox.runtime.plan import Site

    spec = ContainerSpec(image="/img.sif", action="exec", **what)
    with pytest.raises(SifboxError, match="user bind control is disabled"):
        default_mounts(spec, HOST, site=Site(user_bind_control=False), **fs())
    default_mounts(spec, HOST._replace(is_root=True), site=Site(user_bind_control=False), **fs())


def test_build_spec_reads_workdir_scratch_and_mounts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPTAINER_WORKDIR", "/w")
    monkeypatch.setenv("SINGULARITY_SCRATCH", "/s1,/s2")
    monkeypatch.setenv("SIFBOX_MOUNT", "src=/a,dst=/b\nsrc=/c,dst=/d,nonested")
    spec = action.build_spec(ns(scratch=["/s0"], mount=["src=/e,dst=/f"]))
    assert spec.workdir == "/w" and spec.scratch == ("/s0", "/s1,/s2")
    # As Apptainer's EnvAppendValue: the option's values first, then the variable's.
    assert spec.binds == (BindMount("/e", "/f"), BindMount("/a", "/b"), BindMount("/c", "/d", nested=False))
    assert action.build_spec(ns(workdir="/x")).workdir == "/x"


def test_underlay_is_accepted() -> None:
    from sifbox.cli.parser import build_parser

    parsed = build_parser(full="exec").parse_args(["exec", "--underlay", "-W", "/w", "-S", "/s", "/i.sif", "true"])
    assert parsed.underlay and parsed.workdir == "/w" and parsed.scratch == ["/s"]
    assert action.fast_parse("exec", ["--underlay", "-S", "/s", "/i.sif", "true"])["scratch"] == ["/s"]


def test_own_network_namespace_gets_its_own_sysfs_and_dns_its_resolv_conf() -> None:
    assert Mount("sysfs", None, "/sys") in plan(net=True)
    assert Mount("rbind", "/sys", "/sys") in plan()
    assert "/etc/resolv.conf" in targets(plan(files=[*FILES, "/etc/resolv.conf"]))
    assert "/etc/resolv.conf" not in targets(plan(files=[*FILES, "/etc/resolv.conf"], dns=("1.1.1.1",)))


def test_merge_group_looks_the_name_up_only_when_it_is_needed() -> None:
    def unused() -> str:
        raise AssertionError("looked up (NSS) for a group the image has")

    has = "root:x:0:\nstaff:x:1000:bob\n"
    assert merge_group(has, HOST, unused) == has
    assert merge_group("root:x:0:\n", HOST, lambda: "alice") == "root:x:0:\nalice:x:1000:\n"


# -- devices: none asked for, none looked at -------------------------------------------------------
def test_no_device_option_is_no_device_request() -> None:
    """A launch without --nv/--rocm/--device/--cdi-dirs (nor their variables) has no request:
    the launcher doesn't import sifbox.hpc.devices unless sifbox.conf says `always use ...`."""
    assert action._devices(ns()) is None
    assert action._devices(ns(nv=True)).nv is True
    assert action._devices(ns(cdi_dirs="/etc/cdi")).cdi_dirs == ("/etc/cdi",)


@pytest.mark.parametrize("conf,wanted", [("", None), ("always use rocm = yes\n", "rocm"), ("always use nv = yes\n", "nv")])
def test_always_use_still_applies_without_a_device_option(conf: str, wanted: str | None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from sifbox.config import sysconf
    from sifbox.hpc import devices
    from sifbox.runtime import launcher
    from sifbox.runtime.plan import DEFAULT_SITE

    asked = []

    def plan(request, **kw):  # type: ignore[no-untyped-def]
        asked.append(request)
        return devices.Extra([], {}, [])

    monkeypatch.setattr(devices, "plan", plan)
    spec = ContainerSpec(image="/img.sif", action="exec", command=["true"])
    mounts, env, prepare = launcher._add_devices(None, sysconf.parse(conf), "/etc/sifbox/sifbox.conf", spec,
                                                 DEFAULT_SITE, HOST, [], {}, False)  # fmt: skip
    assert (mounts, env, prepare) == ([], {}, None)
    assert [r.nv or r.rocm for r in asked] == ([] if wanted is None else [True])
    if wanted:
        assert getattr(asked[0], wanted) is True
