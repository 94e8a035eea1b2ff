"""environment_and_metadata.rst: where a container's environment comes from (base image,
%environment, %post, the host, the runtime), overriding it (--env, --env-file,
APPTAINERENV_, PATH), escaping and evaluation, precedence, umask, labels and `inspect`, the
/.singularity.d directory; and singularity_compatibility.rst's SINGULARITYENV_ prefix.

Images: env.sif is @env@ (data/env.def); the guide's `mycontainer.sif`, which it never
defines, is @mycontainer@, whose runscript prints its environment (data/mycontainer.def);
python.sif is built from the local registry's docker://python:3.7 (conftest.py); the labelled
`ubuntu.sif` is @labels@. The host's HOSTNAME is p700 where an example uses it.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.apptainer.cases import C, Case, check, contains, exact, lacks, params, regex
from tests.e2e.userguide import guide
from tests.e2e.userguide.guide import files

pytestmark = pytest.mark.integration

EM = "environment_and_metadata.rst"
SC = "singularity_compatibility.rst"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ECHO_PATH = ("sh", "-c", "echo $PATH")
DATE = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \w+ \d{4}"


def line(text: str) -> object:
    """A whole line of the output (for `env` listings)."""
    import re

    return regex(f"(?m)^{re.escape(text)}$")


ENVIRONMENT = [
    # Environment From a Base Image: the Dockerfile's ENV, which host variables do not override
    # (APPTAINERENV_ and --env do).
    C(f"{EM}:Environment From a Base Image", "exec", "@python@", "env", out=line("PYTHON_VERSION=3.7.7")),
    C(f"{EM}:Environment From a Base Image[host]", "exec", "@python@", "env",
      env={"PYTHON_VERSION": "3.11"}, out=line("PYTHON_VERSION=3.7.7")),
    C(f"{EM}:Environment From a Base Image[APPTAINERENV_]", "exec", "@python@", "env",
      env={"APPTAINERENV_PYTHON_VERSION": "3.11"}, out=line("PYTHON_VERSION=3.11")),
    C(f"{EM}:Environment From a Base Image[--env]", "exec", "--env", "PYTHON_VERSION=3.11", "@python@", "env",
      out=line("PYTHON_VERSION=3.11")),
    # Environment From a Definition File
    C(f"{EM}:Environment From a Definition File", "run", "@env@", out=exact("Hello")),
    # Build Time Variables in %post: $APPTAINER_ENVIRONMENT is written to 91-environment.sh.
    C(f"{EM}:Build Time Variables in %post", "exec", "@my_container@", "cat",
      "/.singularity.d/env/91-environment.sh", out=regex(rf'(?m)^export NOW="{DATE}"$')),
    # Environment From the Host
    C(f"{EM}:Environment From the Host", "run", "@mycontainer@", env={"GUIDE_HOST_VAR": "from the host"},
      out=line("GUIDE_HOST_VAR=from the host")),
    C(f"{EM}:Environment From the Host[image wins]", "run", "@env@", env={"MYVAR": "from the host"},
      out=exact("Hello")),
    C(f"{EM}:Environment From the Host[PS1]", "run", "@mycontainer@", env={"PS1": "host prompt> "},
      out=lacks("PS1=host prompt> ")),
    C(f"{EM}:Environment From the Host[PATH]", "run", "@mycontainer@", env={"PATH": "/host/bin:/usr/bin:/bin"},
      out=line(f"PATH={DEFAULT_PATH}")),
    C(f"{EM}:Environment From the Host[LD_LIBRARY_PATH]", "run", "@mycontainer@",
      env={"LD_LIBRARY_PATH": "/host/lib"}, out=line("LD_LIBRARY_PATH=/.singularity.d/libs")),
    C(f"{EM}:Environment From the Host[APPTAINERENV_MYVAR]", "run", "@env@",
      env={"MYVAR": "from the host", "APPTAINERENV_MYVAR": "from the host"}, out=exact("from the host")),
    C(f"{EM}:Environment From the Host[--env MYVAR]", "run", "--env", "MYVAR=from the host", "@env@",
      env={"MYVAR": "from the host"}, out=exact("from the host")),
    # --cleanenv: a minimal environment (the guide's list; PATH without its /startpath, which
    # came from an earlier APPTAINERENV_PREPEND_PATH), no host variable.
    C(f"{EM}:Environment From the Host[--cleanenv]", "exec", "--cleanenv", "@env@", "env",
      env={"GUIDE_HOST_VAR": "from the host", "TERM": "xterm-256color"},
      out=(line("HOME=@home@"), line("LD_LIBRARY_PATH=/.singularity.d/libs"), line(f"PATH={DEFAULT_PATH}"),
           line("PWD=@work@"), line("APPTAINER_COMMAND=exec"), line("APPTAINER_CONTAINER=@env@"),
           line("APPTAINER_ENVIRONMENT=/.singularity.d/env/91-environment.sh"), line("APPTAINER_NAME=env.sif"),
           line("TERM=xterm-256color"), lacks("GUIDE_HOST_VAR"))),
    C(f"{EM}:Environment From the Host[--cleanenv LANG]", "exec", "--cleanenv", "@env@", "env",
      env={"LANG": "en_US.UTF-8"}, out=line("LANG=C")),
    # Environment From the Apptainer Runtime
    C(f"{EM}:Environment From the Apptainer Runtime[exec]", "exec", "@env@", "sh", "-c",
      "echo $APPTAINER_COMMAND $APPTAINER_CONTAINER $APPTAINER_ENVIRONMENT $APPTAINER_NAME",
      out=exact("exec @env@ /.singularity.d/env/91-environment.sh env.sif")),
    C(f"{EM}:Environment From the Apptainer Runtime[run]", "run", "@mycontainer@",
      out=line("APPTAINER_COMMAND=run")),
    C(f"{EM}:Environment From the Apptainer Runtime[shell]", "shell", "@env@",
      stdin="echo $APPTAINER_COMMAND\n", out=exact("shell")),
    C(f"{EM}:Environment From the Apptainer Runtime[APPTAINER_BIND]", "exec", "--bind", "@work@:/mnt", "@env@",
      "sh", "-c", "echo $APPTAINER_BIND", out=exact("/mnt"),
      diverges="the guide shows SRC:DEST; Apptainer's launcher passes only the destinations to nested "
               "containers (setBinds: `Pass only the destinations to nested binds`), and so does sifbox"),
    # Overriding Environment Variables
    C(f"{EM}:--env option", "run", "--env", "MYVAR=Goodbye", "@env@", out=exact("Goodbye")),
    C(f"{EM}:--env option[two]", "run", "--env", "MYVAR=A,MYVAR2=B", "@mycontainer@",
      out=(line("MYVAR=A"), line("MYVAR2=B"))),
    C(f"{EM}:--env-file option", "run", "--env-file", "myenvs", "@env@", out=exact("Hello from a file")),
    C(f"{EM}:APPTAINERENV_ prefix", "run", "@env@", env={"APPTAINERENV_MYVAR": "Overridden"},
      out=exact("Overridden")),
    C(f"{EM}:Manipulating PATH", "exec", "@env@", *ECHO_PATH, out=exact(DEFAULT_PATH)),
    C(f"{EM}:Manipulating PATH[APPTAINERENV_APPEND_PATH]", "exec", "@env@", *ECHO_PATH,
      env={"APPTAINERENV_APPEND_PATH": "/endpath"}, out=exact(f"{DEFAULT_PATH}:/endpath")),
    C(f"{EM}:Manipulating PATH[--env APPEND_PATH]", "exec", "--env", "APPEND_PATH=/endpath", "@env@",
      *ECHO_PATH, out=exact(f"{DEFAULT_PATH}:/endpath")),
    C(f"{EM}:Manipulating PATH[APPTAINERENV_PREPEND_PATH]", "exec", "@env@", *ECHO_PATH,
      env={"APPTAINERENV_PREPEND_PATH": "/startpath"}, out=exact(f"/startpath:{DEFAULT_PATH}")),
    C(f"{EM}:Manipulating PATH[--env PREPEND_PATH]", "exec", "--env", "PREPEND_PATH=/startpath", "@env@",
      *ECHO_PATH, out=exact(f"/startpath:{DEFAULT_PATH}")),
    # Escaping and Evaluation. The guide exports `APPTAINER_MYVAR`, which sets no container
    # variable (its own output shows MYVAR): the prefix meant is APPTAINERENV_.
    C(f"{EM}:Docker / OCI Compatibility[default]", "run", "@mycontainer@", env={"APPTAINERENV_MYVAR": "$(date)"},
      out=regex(rf"(?m)^MYVAR={DATE}$")),
    C(f"{EM}:Docker / OCI Compatibility[--no-eval]", "run", "--no-eval", "@mycontainer@",
      env={"APPTAINERENV_MYVAR": "$(date)"}, out=line("MYVAR=$(date)")),
    C(f"{EM}:Docker / OCI Compatibility[--compat]", "run", "--compat", "@mycontainer@",
      env={"APPTAINERENV_MYVAR": "$(date)"}, out=line("MYVAR=$(date)")),
    C(f"{EM}:Using Host Variables", "run", "--env", "MYHOST=p700", "@mycontainer@", env={"HOSTNAME": "p700"},
      out=line("MYHOST=p700")),
    C(f"{EM}:Using Container Variables", "run", "--env", "MYPATH=$PATH", "@mycontainer@",
      out=line(f"MYPATH={DEFAULT_PATH}")),
    C(f"{EM}:Using Container Variables[append]", "run", "--env", "PATH=$PATH:/endpath", "@mycontainer@",
      out=line(f"PATH={DEFAULT_PATH}:/endpath")),
    C(f"{EM}:Quoting / Avoiding Evaluation", "run", "--env=LD_PRELOAD=/foo/bar/\\$LIB/baz.so", "@mycontainer@",
      out=line("LD_PRELOAD=/foo/bar/$LIB/baz.so")),
    # Environment Variable Precedence: --env over %environment (above), APPEND_PATH after an
    # injected PATH, SCIF variables before --env.
    C(f"{EM}:Environment Variable Precedence[APPEND_PATH after --env PATH]", "exec", "--env",
      "PATH=/usr/bin:/bin,APPEND_PATH=/endpath", "@env@", *ECHO_PATH, out=exact("/usr/bin:/bin:/endpath")),
    C(f"{EM}:Environment Variable Precedence[--env after --app]", "exec", "--app", "foo", "--env",
      "SOFTWARE=override", "@scif@", "env", out=line("SOFTWARE=override")),
    # Umask: the caller's (with --fakeroot too), or 0022 with --no-umask.
    C(f"{EM}:Umask / Default File Permissions", "exec", "@env@", "sh", "-c", "umask", umask=0o077,
      out=exact("0077")),
    C(f"{EM}:Umask / Default File Permissions[--fakeroot]", "exec", "--fakeroot", "@env@", "sh", "-c", "umask",
      umask=0o077, out=exact("0077"),
      diverges="the guide says 0022; Apptainer's launcher saves the caller's umask for --fakeroot "
               "as for any launch (only --no-umask sets 0022), and so does sifbox"),
    C(f"{EM}:Umask / Default File Permissions[--no-umask]", "exec", "--no-umask", "@env@", "sh", "-c", "umask",
      umask=0o077, out=exact("0022")),
]  # fmt: skip
SETUP = {f"{EM}:--env-file option": files({"@work@/myenvs": 'MYVAR="Hello from a file"\n'})}


@pytest.mark.parametrize("case", params(ENVIRONMENT))
def test_environment(request, sb, oci, case: Case) -> None:
    guide.run(request, sb, case, SETUP.get(case.name))


# --- singularity_compatibility.rst: Singularity Prefixed Environment Variable Support -----------
# The guide runs docker://alpine; `[alpine_latest.sif]` is the same pulled first.

COMPAT = []
for target, tag in (("docker://@registry@/library/alpine", ""), ("@pulled_alpine@", "[alpine_latest.sif]")):
    COMPAT += [
        C(f"{SC}:Singularity Prefixed Environment Variable Support[APPTAINERENV_]{tag}", "exec", target, "env",
          env={"APPTAINERENV_FOO": "BAR", "HOME": "@work@"}, out=line("FOO=BAR")),
        C(f"{SC}:Singularity Prefixed Environment Variable Support[SINGULARITYENV_]{tag}", "exec", target, "env",
          env={"SINGULARITYENV_FOO": "BAZ", "HOME": "@work@"}, out=line("FOO=BAZ")),
    ]  # fmt: skip
#: The guide quotes Apptainer 1.0's warning; the code today says it as below.
PREFERRED = (
    "Apptainer's env.go (warnDeprecatedEnvUsage) now says `Environment variable SINGULARITYENV_FOO is "
    "set, but APPTAINERENV_FOO is preferred` (INFO), not the guide's older `DEPRECATED USAGE: "
    "Forwarding SINGULARITYENV_FOO ...` warning"
)
COMPAT += [
    C(f"{SC}:Singularity Prefixed Environment Variable Support[SINGULARITYENV_ warning]", "exec", "@alpine@", "env",
      env={"SINGULARITYENV_FOO": "BAZ"}, out=line("FOO=BAZ"),
      err=contains("Environment variable SINGULARITYENV_FOO is set, but APPTAINERENV_FOO is preferred"),
      diverges=PREFERRED),
    C(f"{SC}:Singularity Prefixed Environment Variable Support[SINGULARITYENV_ warning][-q]", "-q", "exec",
      "@alpine@", "env", env={"SINGULARITYENV_FOO": "BAZ"}, out=line("FOO=BAZ"), err=exact("")),
    C(f"{SC}:Singularity Prefixed Environment Variable Support[both]", "exec", "@alpine@", "env",
      env={"APPTAINERENV_FOO": "BAR", "SINGULARITYENV_FOO": "BAZ"}, out=line("FOO=BAR")),
    C(f"{SC}:Singularity Prefixed Environment Variable Support[both warning]", "exec", "@alpine@", "env",
      env={"APPTAINERENV_FOO": "BAR", "SINGULARITYENV_FOO": "BAZ"},
      err=(contains("Skipping environment variable [SINGULARITYENV_FOO=BAZ], FOO is already overridden with "
                    "different value [BAR]"), lacks("is preferred"))),
    C(f"{SC}:Singularity Prefixed Environment Variable Support[both same]", "exec", "@alpine@", "env",
      env={"APPTAINERENV_FOO": "BAR", "SINGULARITYENV_FOO": "BAR"}, out=line("FOO=BAR"), err=exact("")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(COMPAT))
def test_singularity_prefix(request, sb, oci, case: Case) -> None:
    guide.run(request, sb, case)


# --- Container Metadata ------------------------------------------------------------------------

LABELS = tuple(line(s) for s in (
    "my.label: version 1.2.3", "OWNER: Joana", "org.label-schema.build-arch: amd64",
    "org.label-schema.schema-version: 1.0", "org.label-schema.usage.singularity.deffile.bootstrap: busybox",
)) + (regex(r"(?m)^org\.label-schema\.build-date: \w+_\d+_\w+_\d{4}_[\d:]+_\w+$"),)  # fmt: skip
METADATA = [
    C(f"{EM}:-l/ --labels", "inspect", "@labels@", out=LABELS),
    C(f"{EM}:-l/ --labels[--labels]", "inspect", "--labels", "@labels@", out=LABELS),
    C(f"{EM}:-d / --deffile", "inspect", "--deffile", "@my_container@",
      out=exact((guide.DATA / "my_container.def").read_text().rstrip("\n"))),
    # The runscript of an image built from docker://: what the image's ENTRYPOINT and CMD run.
    C(f"{EM}:-r / --runscript", "inspect", "--runscript", "@python@",
      out=(regex(r"\A#!/bin/sh\n"), contains("OCI_ENTRYPOINT="), contains("OCI_CMD="))),
    C(f"{EM}:-t / --test", "inspect", "--test", "@my_container@", out=contains('grep -q NAME=\\"Ubuntu\\" /etc/os-release')),
    # The guide's `==90-environment.sh==` header is older; Apptainer now names the whole path.
    C(f"{EM}:-e / --environment", "inspect", "--environment", "@my_container@",
      out=(regex(r"(?m)^==+ ?(/\.singularity\.d/env/)?90-environment\.sh ?==+$"), line("#!/bin/sh"),
           contains("export LISTEN_PORT=12345"))),
    C(f"{EM}:-H / --helpfile", "inspect", "--helpfile", "@my_container@",
      out=contains("This is a demo container used to illustrate a def file that uses all")),
    # /.singularity.d directory
    C(f"{EM}:/.singularity.d directory", "exec", "@my_container@", "ls", "/.singularity.d",
      out=tuple(line(n) for n in ("actions", "env", "labels.json", "libs", "runscript", "runscript.help",
                                  "Singularity", "startscript"))),
    C(f"{EM}:/.singularity.d directory[actions]", "exec", "@my_container@", "ls", "/.singularity.d/actions",
      out=exact("exec\nrun\nshell\nstart\ntest")),
    C(f"{EM}:/.singularity.d directory[env]", "exec", "@my_container@", "ls", "/.singularity.d/env",
      out=tuple(line(n) for n in ("01-base.sh", "90-environment.sh", "91-environment.sh", "94-appsbase.sh",
                                  "95-apps.sh", "99-base.sh"))),
    C(f"{EM}:/.singularity.d directory[/environment]", "exec", "@my_container@", "readlink", "-f", "/environment",
      out=exact("/.singularity.d/env/90-environment.sh")),
    C(f"{EM}:/.singularity.d directory[/singularity]", "exec", "@my_container@", "readlink", "-f", "/singularity",
      out=exact("/.singularity.d/runscript")),
]  # fmt: skip


@pytest.mark.parametrize("case", params(METADATA))
def test_metadata(request, sb, oci, case: Case) -> None:
    guide.run(request, sb, case)


def test_inspect_json(request, sb) -> None:
    """-j / --json: the labels in {"data": {"attributes": {"labels": {...}}}, "type": "container"}."""
    res = guide.run(request, sb, C(f"{EM}:-j / --json", "inspect", "--json", "@labels@"))
    doc = json.loads(res.stdout)
    labels = doc["data"]["attributes"]["labels"]
    assert doc["type"] == "container", doc
    assert labels["my.label"] == "version 1.2.3" and labels["OWNER"] == "Joana", labels
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "busybox", labels


@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
def test_inherited_labels(request, sb, force: bool) -> None:
    """Inherited Labels: a build from an image whose OWNER label the definition sets again keeps
    the inherited value, with a warning, unless --force."""
    files({"@work@/test2.def": "Bootstrap: localimage\nFrom: @labels@\n\n%labels\n  OWNER Joe\n"})(
        sb
    )
    argv = ["build", *(["--force"] if force else []), "test2.sif", "test2.def"]
    name = f"{EM}:Inherited Labels{'[--force]' if force else ''}"
    warning = "WARNING: Label: OWNER already exists and force option is false, not overwriting"
    guide.run(
        request, sb, C(name, *argv, err=lacks(warning[9:]) if force else contains(warning[9:]))
    )
    check(sb, C(f"{name}[inspect]", out=line(f"OWNER: {'Joe' if force else 'Joana'}")),
          sb.run(["inspect", "test2.sif"]))  # fmt: skip
