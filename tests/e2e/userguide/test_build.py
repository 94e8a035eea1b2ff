"""build_a_container.rst and definition_files.rst: building from registries, sandboxes,
conversion, definition files (header, every section, %files, multi-stage), the build options,
and build arguments.

The definition files of the examples are in data/, each with this machine's busybox for the
guide's base image (its header comment says what else changed and why); docker:// images are
the local registry's (conftest.py), pulled with HOME in the test's directory (a cache of its
own). Builds run as the user, and as root without sudo, as Apptainer builds either way.

Build arguments: the stored Apptainer guide names `--build-arg`, `--build-arg-file`,
`--warn-unused-build-args` and the `%arguments` section without an example; the examples here are
those of the same sections in the SingularityCE guide (sylabs/singularity-userdocs,
definition_files.rst "Templating: How to Pass Values into Definition Files"), whose design
Apptainer 1.2 implements. Their `sudo` is left out (a user builds as well).
"""

from __future__ import annotations

import pytest

from tests.e2e.apptainer.cases import (
    C,
    Case,
    Result,
    check,
    contains,
    exact,
    lacks,
    params,
    regex,
)
from tests.e2e.userguide import guide
from tests.e2e.userguide.guide import chain, files, staged

pytestmark = pytest.mark.integration

BC = "build_a_container.rst"
DF = "definition_files.rst"
HOME = {"HOME": "@work@"}
ALPINE = "docker://@registry@/library/alpine"
HELP = (
    "    This is a demo container used to illustrate a def file that uses all\n"
    "    supported sections."
)
UBUNTU = "Container base is Ubuntu as expected."
#: Why a variable %environment sets without `export` is in no process's environment.
NOT_EXPORTED = (
    "Apptainer's runtime (since Singularity 3.6, which the guide's text predates) clears the host's "
    "variables, sources the environment scripts without allexport and passes the command only the "
    "exported variables (its action_script.sh and process_linux.go); an unexported one set by a "
    "script is not restored from the host either. sifbox's PRELUDE does the same"
)
NOW = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \w+ \d{4}"


def then(sb, name: str, argv: list[str], stdin: str | None = None, **expect: object) -> Result:  # type: ignore[no-untyped-def]
    """A step after the case: run `argv` and check it as a case named `name`."""
    res = sb.run(argv, stdin=stdin)
    check(sb, C(name, *argv, **expect), res)
    return res


# --- build_a_container.rst: registries, sandboxes, conversion ----------------------------------

REGISTRY = [
    C(f"{BC}:Downloading an existing container from Docker Hub", "build", "alpine.sif", ALPINE, env=HOME,
      host_paths=(("file", "@work@/alpine.sif"),)),
    C(f"{BC}:Creating writable --sandbox directories", "build", "--sandbox", "alpine/", ALPINE, env=HOME,
      host_paths=(("dir", "@work@/alpine/.singularity.d"),)),
]  # fmt: skip


@pytest.mark.parametrize("case", params(REGISTRY))
def test_registry(request, sb, reg, case: Case) -> None:
    guide.run(request, sb, case)
    if "sandbox" in case.name:
        # `shell --writable alpine/`: changes persist in the sandbox.
        then(
            sb,
            f"{BC}:Creating writable --sandbox directories[shell --writable]",
            ["shell", "--writable", "alpine/"],
            stdin="touch /made-in-shell\n",
        )
        then(sb, f"{BC}:Creating writable --sandbox directories[persisted]",
             ["exec", "alpine/", "ls", "/made-in-shell"], out=exact("/made-in-shell"))  # fmt: skip


def test_architecture(request, sb, reg) -> None:
    """Specifying an architecture: `build --arch arm64 alpine.sif docker://alpine` fetches the
    arm64 image of the index (the registry's alpine has amd64 and arm64), whose SIF partition
    says arm64."""
    guide.run(request, sb, C(f"{BC}:Specifying an architecture", "build", "--arch", "arm64", "alpine.sif",
                             ALPINE, env=HOME))  # fmt: skip
    then(sb, f"{BC}:Specifying an architecture[sif list]", ["sif", "list", "alpine.sif"],
         out=contains("FS (Squashfs/*System/arm64)"))  # fmt: skip


def test_convert(request, sb) -> None:
    """Converting containers from one format to another: `build production.sif development/`
    (development/ is a sandbox of the lolcow image)."""
    res = sb.run(["build", "--sandbox", "development/", "@lolcow@"])
    assert res.status == 0, res
    guide.run(request, sb, C(f"{BC}:Converting containers from one format to another", "build",
                             "production.sif", "development/", host_paths=(("file", "@work@/production.sif"),)))  # fmt: skip
    then(sb, f"{BC}:Converting containers from one format to another[run]", ["run", "production.sif"],
         out=contains("(oo)\\_______"))  # fmt: skip


# --- build_a_container.rst: definition files and the build options -----------------------------

LOLCOW = staged("lolcow.def", "cowsay", "lolcat")
OPTIONS = [
    C(f"{BC}:Building containers from Apptainer definition files", "build", "lolcow.sif", "lolcow.def",
      host_paths=(("file", "@work@/lolcow.sif"),)),
    C(f"{BC}:--fakeroot", "build", "--fakeroot", "lolcow.sif", "lolcow.def",
      host_paths=(("file", "@work@/lolcow.sif"),)),
    C(f"{BC}:--force", "build", "--force", "lolcow.sif", "lolcow.def", host_paths=(("file", "@work@/lolcow.sif"),)),
    # Without --force, an existing image is deleted and overwritten once the user says yes.
    C(f"{BC}:--force[without]", "build", "lolcow.sif", "lolcow.def", stdin="y\n",
      out=contains("already exists and will be deleted during the build process. Do you want to continue? [y/N]")),
    C(f"{BC}:--notest", "build", "--notest", "my_container.sif", "my_container.def", out=lacks(UBUNTU)),
    C(f"{BC}:--bind", "build", "--bind", "@work@/data:/example", "build_bind.sif", "build_bind.def"),
    C(f"{BC}:--writable-tmpfs", "build", "--writable-tmpfs", "build_tmpfs.sif", "build_tmpfs.def"),
    # Build arguments the definition file does not use are an error, or a warning with
    # --warn-unused-build-args.
    C(f"{BC}:--warn-unused-build-args[without]", "build", "--build-arg", "some_text=hi", "--build-arg",
      "unused=1", "my_container.sif", "templating_basic.def", exit=255,
      err=contains("unused build args: unused")),
    C(f"{BC}:--warn-unused-build-args", "build", "--warn-unused-build-args", "--build-arg", "some_text=hi",
      "--build-arg", "unused=1", "my_container.sif", "templating_basic.def", err=contains("unused")),
]  # fmt: skip
SETUP = {
    f"{BC}:Building containers from Apptainer definition files": LOLCOW,
    f"{BC}:--fakeroot": LOLCOW,
    f"{BC}:--force": chain(LOLCOW, files({"@work@/lolcow.sif": "an older image\n"})),
    f"{BC}:--force[without]": chain(LOLCOW, files({"@work@/lolcow.sif": "an older image\n"})),
    f"{BC}:--notest": staged("my_container.def"),
    f"{BC}:--bind": chain(
        staged("build_bind.def"), files({"@work@/data/marker": "bound from the host\n"})
    ),
    f"{BC}:--writable-tmpfs": staged("build_tmpfs.def"),
    f"{BC}:--warn-unused-build-args[without]": staged("templating_basic.def"),
    f"{BC}:--warn-unused-build-args": staged("templating_basic.def"),
}
AFTER = {
    f"{BC}:--force": (["run", "lolcow.sif"], {"out": contains("(oo)\\_______")}),
    f"{BC}:--force[without]": (["run", "lolcow.sif"], {"out": contains("(oo)\\_______")}),
    f"{BC}:--bind": (
        ["exec", "build_bind.sif", "cat", "/from-bind"],
        {"out": exact("bound from the host")},
    ),
}


@pytest.mark.parametrize("case", params(OPTIONS))
def test_options(request, sb, case: Case) -> None:
    guide.run(request, sb, case, SETUP.get(case.name))
    if case.name in AFTER:
        argv, expect = AFTER[case.name]
        then(sb, f"{case.name}[then]", argv, **expect)


def test_update_section(request, sb) -> None:
    """--update and --section: build into an existing sandbox, running only the sections named:
    `build --update --section environment` gives the lolcow sandbox env.def's %environment
    (MYVAR) and keeps its own runscript (env.def's %runscript is not run)."""
    staged("env.def")(sb)
    res = sb.run(["build", "--sandbox", "dev/", "@lolcow@"])
    assert res.status == 0, res
    guide.run(request, sb, C(f"{BC}:--update[--section environment]", "build", "--sandbox", "--update",
                             "--section", "environment", "dev/", "env.def"))  # fmt: skip
    then(
        sb,
        f"{BC}:--update[environment]",
        ["exec", "dev/", "sh", "-c", "echo $MYVAR"],
        out=exact("Hello"),
    )
    then(sb, f"{BC}:--section[runscript kept]", ["run", "dev/"], out=contains("(oo)\\_______"))


# --- definition_files.rst: header, sections, multi-stage ----------------------------------------

SECTIONS = [
    C(f"{DF}:Sections[build]", "build", "my_container.sif", "my_container.def", out=contains(UBUNTU)),
    C(f"{DF}:%setup", "exec", "@my_container@", "ls", "/file2", out=exact("/file2")),
    C(f"{DF}:%files", "exec", "@my_container@", "ls", "/file1", "/opt/file1", out=exact("/file1\n/opt/file1")),
    C(f"{DF}:%test", "test", "@my_container@", out=exact(UBUNTU)),
    C(f"{DF}:%environment", "exec", "@my_container@", "env",
      out=(regex(r"(?m)^LISTEN_PORT=12345$"), regex(r"(?m)^LC_ALL=C$"))),
    # FOO=${FOO:-'default'}, without `export`: the guide says the host's FOO, else `default`
    # (also with --cleanenv/--containall); Apptainer's runtime passes neither (NOT_EXPORTED).
    C(f"{DF}:%environment[default]", "run", "@mycontainer@", out=lacks("FOO="), diverges=NOT_EXPORTED),
    C(f"{DF}:%environment[host FOO]", "run", "@mycontainer@", env={"FOO": "from the host"}, out=lacks("FOO="),
      diverges=NOT_EXPORTED),
    C(f"{DF}:%environment[--cleanenv]", "run", "--cleanenv", "@mycontainer@", env={"FOO": "from the host"},
      out=lacks("FOO="), diverges=NOT_EXPORTED),
    C(f"{DF}:%environment[--containall]", "run", "--containall", "@mycontainer@", env={"FOO": "from the host"},
      out=lacks("FOO="), diverges=NOT_EXPORTED),
    C(f"{DF}:%environment[%post wins]", "run", "@mycontainer@", out=regex(r"(?m)^WHO_WINS=post$")),
    # %runscript (the guide runs ./my_container.sif; see quick_start's sif-executable case)
    C(f"{DF}:%runscript", "run", "@my_container@",
      out=regex(rf"\AContainer was created {NOW}\nArguments received: \n\n\Z")),
    C(f"{DF}:%runscript[arguments]", "run", "@my_container@", "this", "that", "and", "the", "other",
      out=regex(rf"\AContainer was created {NOW}\nArguments received: this that and the other\n"
                r"this that and the other\n\Z")),
    C(f"{DF}:%labels", "inspect", "@my_container@",
      out=tuple(regex(f"(?m)^{line}$") for line in (
          "Author: alice", "Version: v0.0.1", "MyLabel: Hello World", "org.label-schema.build-arch: amd64",
          r"org.label-schema.build-date: \w+_\d+_\w+_\d{4}_[\d:]+_\w+", r"org.label-schema.schema-version: 1\.0",
          r"org.label-schema.usage: /\.singularity\.d/runscript\.help",
          r"org.label-schema.usage.apptainer.runscript.help: /\.singularity\.d/runscript\.help",
          "org.label-schema.usage.singularity.deffile.bootstrap: busybox",
          "org.label-schema.usage.singularity.deffile.stage: build"))),
    C(f"{DF}:%labels[version]", "inspect", "@my_container@",
      out=regex(r"(?m)^org\.label-schema\.usage\.sifbox\.version: \S+$"),
      diverges="the builder's version is recorded as `usage.sifbox.version` (Apptainer: "
               "`usage.apptainer.version`): the label names the program that built the image"),
    C(f"{DF}:%help", "run-help", "@my_container@", out=exact(HELP)),
    C(f"{DF}:Multi-Stage Builds", "build", "multistage.sif", "multistage.def"),
]  # fmt: skip
SECTIONS_SETUP = {
    f"{DF}:Sections[build]": staged("my_container.def"),
    f"{DF}:Multi-Stage Builds": staged("multistage.def"),
}


@pytest.mark.parametrize("case", params(SECTIONS))
def test_sections(request, sb, case: Case) -> None:
    guide.run(request, sb, case, SECTIONS_SETUP.get(case.name))
    if case.name == f"{DF}:Multi-Stage Builds":
        then(
            sb,
            f"{DF}:Multi-Stage Builds[run]",
            ["run", "multistage.sif"],
            out=exact("Hello World!"),
        )


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_fingerprints(request, sb, keys, signed: bool) -> None:
    """SIF Image Verification / Fingerprints Header: a build from test.sif with
    `Fingerprints: FPR` succeeds when test.sif is signed by that key, and fails otherwise (the
    key is imported, and test.sif signed, with HOME in the test's directory)."""
    env = {"HOME": "@work@/home"}
    guide.dirs("@work@/home")(sb)
    res = sb.run(["key", "import", "@keys@/signer.asc"], env=env)
    assert res.status == 0, res
    res = sb.run(["build", "test.sif", "@lolcow@"])
    assert res.status == 0, res
    if signed:
        res = sb.run(["sign", "test.sif"], env=env)
        assert res.status == 0, res
    deffile = (guide.DATA / "fingerprints.def").read_text().replace("FINGERPRINT", keys.signer)
    files({"@work@/fingerprints.def": deffile})(sb)
    case = C(f"{DF}:SIF Image Verification / Fingerprints Header[{'signed' if signed else 'unsigned'}]",
             "build", "from-test.sif", "fingerprints.def", env=env, exit=0 if signed else 255,
             err=contains("Checking bootstrap image verifies with fingerprint(s)"))  # fmt: skip
    guide.run(request, sb, case)


# --- Templating: build arguments and %arguments (the SingularityCE guide's examples) -----------

TPL = f"{DF}:Templating: How to Pass Values into Definition Files"
ARGS_FILE = "@work@/my_args_file.txt"


def multi_output(file_contents: str, value1: str, value2: str, text: str, root: bool) -> str:
    """What the runscript of templating_multi.def prints; root's container does not see the file
    %setup wrote in the host's /tmp (its /tmp is private)."""
    return (
        f"file contents:{'' if root else ' ' + file_contents}\n"
        f"--> this should, if I'm not mistaken, equal: {file_contents}\n\n"
        f"env var: {value1}\n--> this should, if I'm not mistaken, equal: {value1}\n\n"
        f"env var: {value2}\n--> this should, if I'm not mistaken, equal: {value2}\n\n"
        f"and finally, here's some text: {text}"
    )


ROOT_TMP = (
    "root's container has a private /tmp (sifbox's containment, README: Security): the file "
    "%setup wrote in the host's /tmp is not there, so `file contents:` is empty"
)
A, B, C2, D = (
    "I am in a file",
    "I am in an env var",
    "I am also in an env var",
    "I am just some text",
)
#: name -> (build options, my_args_file.txt, the values the image shows)
MULTI = {
    "Working with multiple variables[--build-arg]": (
        ["--build-arg", f"file_contents='{A}'", "--build-arg", f"var_value1='{B}'", "--build-arg",
         f"var_value2='{C2}'", "--build-arg", f"some_text='{D}'"], None, (A, B, C2, D)),
    "Working with multiple variables[--build-arg-file]": (
        ["--build-arg-file", "./my_args_file.txt"],
        f'file_contents="{A}"\nvar_value1="{B}"\nvar_value2="{C2}"\nsome_text="{D}"\n', (A, B, C2, D)),
    "Working with multiple variables[both]": (
        ["--build-arg", f"file_contents='{A}'", "--build-arg", f"var_value2='{C2}'",
         "--build-arg-file", "./my_args_file.txt"], f'var_value1="{B}"\nsome_text="{D}"\n', (A, B, C2, D)),
    "Precedence among multiple value sources[last --build-arg]": (
        ["--build-arg", f"file_contents='{A} (1st time)'", "--build-arg", f"var_value2='{C2}'",
         "--build-arg", f"file_contents='{A} (2nd time)'", "--build-arg-file", "./my_args_file.txt"],
        f'var_value1="{B}"\nsome_text="{D}"\n', (f"{A} (2nd time)", B, C2, D)),
    "Precedence among multiple value sources[--build-arg over the file]": (
        ["--build-arg", f"file_contents='{A}'", "--build-arg", f"var_value2='{C2} (from command line)'",
         "--build-arg-file", "./my_args_file.txt"],
        f'var_value1="{B}"\nvar_value2="{C2} (from build arg file)"\nsome_text="{D}"\n',
        (A, B, f"{C2} (from command line)", D)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MULTI))
def test_templating_multi(request, sb, name: str) -> None:
    """`build -F OPTIONS ./my_container.sif ./my_container.def`, then `run ./my_container.sif`
    (from /, so that only the bound /tmp shows the file of %setup)."""
    options, args_file, values = MULTI[name]
    deffile = (
        (guide.DATA / "templating_multi.def").read_text().replace("TEST_FILE", "@work@/test_file")
    )
    spec = {"@work@/my_container.def": deffile, **({ARGS_FILE: args_file} if args_file else {})}
    guide.run(request, sb, C(f"{TPL}/{name}", "build", "-F", *options, "./my_container.sif",
                             "./my_container.def"), files(spec))  # fmt: skip
    res = sb.run(["run", "@work@/my_container.sif"], cwd="/")
    root = sb.who.is_root
    check(sb, C(f"{TPL}/{name}[run]", out=exact(multi_output(*values, root=root)),
                diverges=ROOT_TMP if root else None), res)  # fmt: skip


TEMPLATING = [
    C(f"{TPL}/Basics[--build-arg]", "build", "--build-arg", "some_text=Hello world", "./my_container.sif",
      "./my_container.def"),
    C(f"{TPL}/Basics[--build-arg-file]", "build", "-F", "--build-arg-file", "./my_args_file.txt",
      "./my_container.sif", "./my_container.def"),
    C(f"{TPL}/Default variable values: the %arguments section[undefined]", "build", "-F", "--build-arg",
      "some_more_text=more more more", "./my_container.sif", "./my_container.def", exit=255,
      err=contains("some_text")),
    C(f"{TPL}/Default variable values: the %arguments section", "build", "-F", "--build-arg",
      "some_more_text=more more more", "./my_container.sif", "./my_container.def"),
]  # fmt: skip


def _def(name: str) -> guide.Setup:
    return files({"@work@/my_container.def": (guide.DATA / name).read_text()})


TEMPLATING_SETUP = {
    f"{TPL}/Basics[--build-arg]": _def("templating_basic.def"),
    f"{TPL}/Basics[--build-arg-file]": chain(_def("templating_basic.def"),
                                             files({ARGS_FILE: 'some_text="Hello again, world"\n'})),
    f"{TPL}/Default variable values: the %arguments section[undefined]": _def("templating_undefined.def"),
    f"{TPL}/Default variable values: the %arguments section": _def("templating_arguments.def"),
}  # fmt: skip
TEMPLATING_RUN = {
    f"{TPL}/Basics[--build-arg]": "Hello world",
    f"{TPL}/Basics[--build-arg-file]": "Hello again, world",
    f"{TPL}/Default variable values: the %arguments section":
        "Here is some text: Some default text\nAnd here is some more text: more more more",
}  # fmt: skip


@pytest.mark.parametrize("case", params(TEMPLATING))
def test_templating(request, sb, case: Case) -> None:
    guide.run(request, sb, case, TEMPLATING_SETUP[case.name])
    if case.name in TEMPLATING_RUN:
        then(
            sb,
            f"{case.name}[run]",
            ["run", "./my_container.sif"],
            out=exact(TEMPLATING_RUN[case.name]),
        )


SKIPPED = {
    f"{BC}:Downloading an existing container from a Library API Registry":
        "`build lolcow.sif library://lolcow` needs a Library API registry (cloud.sylabs.io)",
    f"{BC}:--library": "needs a Library API registry",
    f"{BC}:--nv / --nvccli / --rocm": "bind the host's GPU driver files into %post and %test: no GPU here",
    f"{BC}:--json": "the guide shows no JSON definition file to build",
    f"{BC}:--encrypt / --passphrase / --pem-path": "encryption.rst's examples test them (test_encryption.py)",
}  # fmt: skip


@pytest.mark.parametrize("name", list(SKIPPED))
def test_skipped(name: str) -> None:
    pytest.skip(f"{name}: {SKIPPED[name]}")
