"""Definition-file parser: every section, multi-stage, build arguments, errors with file:line."""

from __future__ import annotations

import pytest

from sifbox.formats.deffile import (
    DeffileError,
    parse_build_arg_file,
    parse_build_args,
    parse_deffile,
)

FULL = """\
# a comment before the header
Bootstrap: debootstrap
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian
Include: ca-certificates, curl

%arguments
    RELEASE=1.2
    NAME="my tool"

%setup
    touch "$SIFBOX_ROOTFS/setup-was-here"

%files
    a.txt /opt/a.txt
    "with space.txt" /opt/
    single

%environment
    export TOOL_VERSION={{ RELEASE }}

%post -c /bin/bash
    echo "{{ NAME }}" > /name
    printf '%s\\n' x
%d is not a section? it is
"""


def test_full_header_and_sections() -> None:
    text = (
        FULL.replace("%d is not a section? it is\n", "")
        + """\
%runscript
    exec echo run "$@"

%startscript
    exec sleep 100

%test
    test -f /name

%labels
    Author Jane Doe
    Version=2

%help
    Some help.
"""
    )
    d = parse_deffile(text, "app.def")
    assert d.text == text  # stored as given
    s = d.final
    assert s.bootstrap == "debootstrap"
    assert s.get("OSVersion") == "bookworm" and s.get("include") == "ca-certificates, curl"
    assert s.header_names["mirrorurl"] == "MirrorURL"
    assert s.setup is not None and "setup-was-here" in s.setup.text and s.setup.shell is None
    assert s.files[0].pairs == [
        ("a.txt", "/opt/a.txt"),
        ("with space.txt", "/opt/"),
        ("single", "single"),
    ]
    assert s.environment == "    export TOOL_VERSION=1.2\n"
    assert s.post is not None and s.post.shell == "/bin/bash"
    assert s.post.argv() == ["/bin/bash"]
    assert 'echo ""my tool"" > /name' in s.post.text  # as Apptainer: the quotes are the value's
    assert "printf '%s\\n' x" in s.post.text
    assert s.runscript is not None and s.runscript.text.strip() == 'exec echo run "$@"'
    assert s.startscript is not None and s.test is not None
    assert s.labels == {"Author": "Jane Doe", "Version": "2"}
    assert s.help == "    Some help.\n"
    assert d.arguments == {"RELEASE": "1.2", "NAME": '"my tool"'}


def test_unknown_section_at_line_start_is_an_error_with_line() -> None:
    with pytest.raises(DeffileError, match=r"app.def:25`: unknown section `%d`"):
        parse_deffile(FULL, "app.def")


def test_build_args_override_arguments_and_unused_are_reported() -> None:
    d = parse_deffile(
        "Bootstrap: scratch\n%arguments\n  V=1\n%post\n  echo {{V}} {{ V }}\n",
        "x.def",
        {"V": "9", "EXTRA": "x"},
    )
    assert d.final.post is not None and d.final.post.text.strip() == "echo 9 9"
    assert d.unused_args == ["EXTRA"]


def test_undefined_build_argument() -> None:
    with pytest.raises(
        DeffileError, match=r"x.def:3`: build argument `MISSING` is not defined"
    ) as e:
        parse_deffile("Bootstrap: scratch\n%post\n  echo {{ MISSING }}\n", "x.def")
    assert "--build-arg MISSING=" in (e.value.hint or "")


def test_build_arg_parsing() -> None:
    assert parse_build_args(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(DeffileError):
        parse_build_args(["novalue"])



def test_build_arg_file_as_apptainer_reads_it() -> None:
    """Split at the first `=`, name and value trimmed, quotes kept (they belong to the script
    the value lands in); what is not NAME=VALUE is skipped with a warning."""
    text = "# comment\nA=1\n\nB='two words'\n  C = \"x y\"  \nD=a=b\nE=\"\nF=it's\n"
    assert parse_build_arg_file(text, "f") == {
        "A": "1", "B": "'two words'", "C": '"x y"', "D": "a=b", "E": '"', "F": "it's",
    }  # fmt: skip
    warnings: list[str] = []
    got = parse_build_arg_file("A=1\nbad line\nB=\n=x\nnot a name=1\nC=2\n", "f", warn=warnings.append)
    assert got == {"A": "1", "C": "2"}
    assert warnings == [
        "skipping `bad line` in build-arg file `f:2`: not NAME=VALUE",
        "skipping `B=` in build-arg file `f:3`: the value is empty",
        "skipping `=x` in build-arg file `f:4`: not a build argument name",
        "skipping `not a name=1` in build-arg file `f:5`: not a build argument name",
    ]


def test_quoted_values_reach_the_script_as_written() -> None:
    """%arguments and build-arg files keep quotes: `export X={{ X }}` with X="a b" is the
    valid shell `export X="a b"` (stripping them would give `export X=a b`)."""
    d = parse_deffile('Bootstrap: scratch\n%arguments\n  X="a b"\n%environment\n  export X={{ X }}\n', "x.def")
    assert d.final.environment == '  export X="a b"\n'
    d = parse_deffile("Bootstrap: scratch\n%environment\n  export X={{ X }}\n", "x.def",
                      parse_build_arg_file("X='c d'\n", "args"))  # fmt: skip
    assert d.final.environment == "  export X='c d'\n"


def test_multi_stage_and_files_from() -> None:
    text = """Bootstrap: busybox
Stage: builder

%post
    echo built > /artifact

Bootstrap: scratch
Stage: final

%files from builder
    /artifact /opt/artifact
    /bin/busybox

%runscript
    cat /opt/artifact
"""
    d = parse_deffile(text, "m.def")
    assert [s.name for s in d.stages] == ["builder", "final"]
    assert d.stages[1].line == 7
    fs = d.final.files[0]
    assert fs.stage == "builder" and fs.pairs == [
        ("/artifact", "/opt/artifact"),
        ("/bin/busybox", "/bin/busybox"),
    ]
    assert d.stage("builder") is d.stages[0]
    assert d.stages[0].text.startswith("Bootstrap: busybox") and d.stages[1].text.startswith(
        "Bootstrap: scratch"
    )


def test_files_from_unknown_stage() -> None:
    with pytest.raises(DeffileError, match=r"m.def:3`: `%files from nowhere`: no earlier stage"):
        parse_deffile("Bootstrap: scratch\n\n%files from nowhere\n  /a /b\n", "m.def")


def test_scif_apps() -> None:
    text = """Bootstrap: scratch

%appinstall foo
    echo install > bin/foo.txt
%apprun foo
    echo running foo "$@"
%appenv foo
    export FOO=1
%applabels foo
    Kind tool
%apphelp foo
    Foo's help.
%appfiles foo
    foo.cfg
%apptest foo
    true
%appstart foo
    sleep 1
%apprun bar
    echo bar
"""
    d = parse_deffile(text)
    apps = d.final.apps
    assert sorted(apps) == ["bar", "foo"]
    foo = apps["foo"]
    assert foo.install and "install" in foo.install.text
    assert foo.run and foo.run.text.strip() == 'echo running foo "$@"'
    assert foo.env.strip() == "export FOO=1"
    assert foo.labels == {"Kind": "tool"}
    assert foo.help.strip() == "Foo's help."
    assert foo.files == [("foo.cfg", "foo.cfg")]
    assert foo.test and foo.start


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the definition file is empty"),
        ("From: debian\n%post\n true\n", "x.def:1`: the header has no `Bootstrap:` keyword"),
        ("Bootstrap: nosuch\n", "x.def:1`: unknown bootstrap agent `nosuch`"),
        ("Bootstrap: docker\n", "x.def:1`: bootstrap agent `docker` needs a `From:` keyword"),
        ("Bootstrap: scratch\nColour: blue\n", "x.def:2`: unknown header keyword `Colour`"),
        ("Bootstrap: scratch\nthis is not a header\n", "x.def:2`: expected `Keyword: value`"),
        ("Bootstrap: scratch\nFrom: a\nFrom: b\n", "x.def:3`: header keyword `From` given twice"),
        ("Bootstrap: scratch\n%postt\n  true\n", "x.def:2`: unknown section `%postt`"),
        ("Bootstrap: scratch\n%post -x\n  true\n", "x.def:2`: %post takes only `-c SHELL`"),
        ("Bootstrap: scratch\n%apprun\n  true\n", "x.def:2`: %apprun needs one app name"),
        ("Bootstrap: scratch\n%files to x\n a b\n", "x.def:2`: expected `%files from STAGE`"),
        ("Bootstrap: scratch\n%files\n a b c\n", "x.def:3`: a %files line is"),
        ("Bootstrap: scratch\n%environment extra\n", "x.def:2`: %environment takes no argument"),
        (
            "Bootstrap: scratch\nStage: a\n%post\nBootstrap: scratch\nStage: a\n",
            "x.def:4`: stage `a` is defined twice",
        ),
        ("Bootstrap: scratch\n\0", "NUL bytes"),
    ],
)
def test_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(DeffileError) as e:
        parse_deffile(text, "x.def")
    assert message in e.value.message
    assert e.value.message.startswith("can't parse `")


def test_header_keywords_are_case_insensitive_and_otherurl() -> None:
    d = parse_deffile("bootstrap: BusyBox\nmirrorurl: file:///bin/busybox\nOtherURL1: http://x\n")
    assert d.final.bootstrap == "busybox" and d.final.get("MirrorURL") == "file:///bin/busybox"


def test_duplicate_sections_concatenate() -> None:
    d = parse_deffile(
        "Bootstrap: scratch\n%post\n  echo 1\n%environment\n  export A=1\n%post\n  echo 2\n"
        "%environment\n  export B=2\n"
    )
    assert d.final.post is not None and d.final.post.text == "  echo 1\n  echo 2\n"
    assert d.final.environment == "  export A=1\n  export B=2\n"


def test_script_shell_option_with_arguments() -> None:
    d = parse_deffile(
        "Bootstrap: scratch\n%post -c '/bin/bash -eu'\n  true\n%runscript -c /bin/bash\n  true\n"
    )
    assert d.final.post is not None and d.final.post.argv() == ["/bin/bash", "-eu"]
    assert d.final.runscript is not None and d.final.runscript.shell == "/bin/bash"


def test_round_trip_keeps_text_exactly() -> None:
    text = "Bootstrap: scratch  \r\n\n%post\n\tcat <<'EOF'\n  {{ X }}\nEOF\n\n\n"
    d = parse_deffile(text, build_args={"X": "y"})
    assert d.text == text
    assert d.final.post is not None and "  y" in d.final.post.text
