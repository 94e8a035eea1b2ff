"""running_services.rst (instances): starting, listing, joining and stopping instances, the
NGINX example, instance logs and PID files; and definition_files.rst's %startscript example.

alpine_latest.sif (oras://ghcr.io/apptainer/alpine:latest) is @alpine@ (data/alpine.def; the
pull itself runs against the registry on 127.0.0.1, @alpine@ pushed there with `sifbox push`),
nginx.sif is @nginx@ (busybox httpd for nginx, data/nginx.def). Instance names carry the
test's @id@, since other test sessions run instances as the same users; for the same reason
`instance stop \\*` becomes a pattern of this test's names and `--all` is left out. The services
listen on free ports picked here (the guide's 80 and 12345 may be taken). Each test stops what
it started and removes the instances' log files.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, check, contains, exact, lacks, regex
from tests.e2e.userguide import guide

pytestmark = pytest.mark.integration

RS = "running_services.rst"
DF = "definition_files.rst"
HEADER = r"(?m)^INSTANCE NAME\s+PID\s+IP\s+IMAGE$"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def row(name: str, image: str) -> object:
    return regex(rf"(?m)^{name}\s+\d+\s+{image}$")


@pytest.fixture
def instances(sb) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Stop this test's instances (named @id@...) and remove their log files."""
    yield
    sb.run(["instance", "stop", "--force", "@id@*"])
    logs = Path(sb.who.home, ".sifbox/instances/logs", socket.gethostname(), sb.who.name)
    for log in logs.glob(sb.subst("@id@*")):
        log.unlink(missing_ok=True)


def step(sb, name: str, argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None,
         **expect: object) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    check(sb, C(name, *argv, **expect), sb.run(argv, stdin=stdin, env=env))  # type: ignore[arg-type]


def test_container_instances(request, sb, instances) -> None:
    """Container Instances in Apptainer: start three instances of one image, list them (all, and
    by a pattern), run commands in them (exec, run, shell), stop one, then the others."""
    guide.run(request, sb, C(f"{RS}:Starting Instances", "instance", "start", "@alpine@", "@id@instance1",
                             err=contains("instance started successfully")))  # fmt: skip
    step(
        sb,
        f"{RS}:Starting Instances[list]",
        ["instance", "list", "@id@*"],
        out=(regex(HEADER), row("@id@instance1", "@alpine@")),
    )
    for n in (2, 3):
        step(
            sb,
            f"{RS}:Starting Instances[instance{n}]",
            ["instance", "start", "@alpine@", f"@id@instance{n}"],
        )
    step(
        sb,
        f"{RS}:Starting Instances[list three]",
        ["instance", "list", "@id@*"],
        out=tuple(row(f"@id@instance{n}", "@alpine@") for n in (1, 2, 3)),
    )
    step(
        sb,
        f"{RS}:Starting Instances[pattern]",
        ["instance", "list", "@id@*2"],
        out=(
            regex(HEADER),
            row("@id@instance2", "@alpine@"),
            lacks("@id@instance1"),
            lacks("@id@instance3"),
        ),
    )
    step(
        sb,
        f"{RS}:Interacting With Instances[exec]",
        ["exec", "instance://@id@instance1", "cat", "/etc/os-release"],
        out=contains('NAME="Alpine Linux"'),
    )
    step(sb, f"{RS}:Interacting With Instances[run]", ["run", "instance://@id@instance2"])
    step(
        sb,
        f"{RS}:Interacting With Instances[shell]",
        ["shell", "instance://@id@instance3"],
        stdin="echo hello from the instance\n",
        out=exact("hello from the instance"),
    )
    step(sb, f"{RS}:Stopping Instances", ["instance", "stop", "@id@instance1"])
    step(
        sb,
        f"{RS}:Stopping Instances[list]",
        ["instance", "list", "@id@*"],
        out=lacks("@id@instance1"),
    )
    step(sb, f"{RS}:Stopping Instances[\\*]", ["instance", "stop", "@id@*"])
    step(
        sb,
        f"{RS}:Stopping Instances[\\*][list]",
        ["instance", "list", "@id@*"],
        out=lacks("@id@instance"),
    )


def test_pull_oras(sb, registry: str, sifbox_cli: str) -> None:  # type: ignore[no-untyped-def]
    """Container Instances in Apptainer: `pull oras://ghcr.io/apptainer/alpine:latest`; here the
    guide's alpine image, pushed with `sifbox push` to the registry on 127.0.0.1."""
    import subprocess

    uri = f"oras://{registry}/apptainer/alpine:latest"
    push = subprocess.run([sifbox_cli, "push", sb.subst("@alpine@"), uri], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert push.returncode == 0, push.stderr
    res = sb.run(["pull", uri])
    check(sb, C(f"{RS}:Container Instances in Apptainer[pull]", err=contains("Wrote `alpine_latest.sif`")), res)
    res = sb.run(["exec", str(sb.work / "alpine_latest.sif"), "cat", "/etc/os-release"])
    check(sb, C(f"{RS}:Container Instances in Apptainer[pulled]", out=contains("Alpine Linux")), res)


@pytest.mark.skip(reason=f"{RS}:Stopping Instances: `instance stop --all` / `-a` would stop the "
                         "instances other test sessions run as the same users (the pattern form is tested)")  # fmt: skip
def test_stop_all() -> None:
    pass


def test_nginx(request, sb, instances) -> None:
    """Nginx "Hello-world": `sudo apptainer instance start --writable-tmpfs nginx.sif web` (the
    server writes when it starts, hence --writable-tmpfs), then `curl localhost` gets the page."""
    if not sb.who.is_root:
        pytest.skip("the guide starts this instance with sudo (a web server on port 80)")
    port = free_port()
    guide.run(request, sb, C(f"{RS}:Nginx \"Hello-world\" in Apptainer", "instance", "start", "--writable-tmpfs",
                             "@nginx@", "@id@web", str(port)))  # fmt: skip
    page = guide.fetch(f"http://127.0.0.1:{port}/")
    assert "<h1>Welcome to nginx!</h1>" in page, page
    step(sb, f'{RS}:Nginx "Hello-world" in Apptainer[stop]', ["instance", "stop", "@id@web"])


def _talk(port: int, text: bytes) -> None:
    """Connect to the `nc -lp PORT` of a %startscript and send `text` (a few tries)."""
    for attempt in range(50):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(text)
            return
        except ConnectionRefusedError:
            if attempt == 49:
                raise
            time.sleep(0.1)


def test_startscript_and_logs(request, sb, instances) -> None:
    """definition_files.rst %startscript: `instance start my_container.sif instance1` runs
    `nc -lp $LISTEN_PORT` (the port set on the host with APPTAINERENV_LISTEN_PORT); then
    running_services.rst Instance Logs: `instance list --logs` names the .err and .out files,
    and the service's output is in the .out file; `instance stop` says what it stops."""
    port = free_port()
    env = {"APPTAINERENV_LISTEN_PORT": str(port)}
    guide.run(request, sb, C(f"{DF}:%startscript", "instance", "start", "@my_container@", "@id@instance1", env=env,
                             err=contains("instance started successfully")))  # fmt: skip
    _talk(port, b"hello from the client\n")
    logs = "@home@/.sifbox/instances/logs/@host@/@user@/@id@instance1"
    step(
        sb,
        f"{RS}:Instance Logs",
        ["instance", "list", "--logs", "@id@*"],
        out=(
            regex(r"(?m)^INSTANCE NAME\s+PID\s+LOGS$"),
            regex(rf"(?m)^@id@instance1\s+\d+\s+{logs}\.err$"),
            regex(rf"(?m)^\s+{logs}\.out$"),
        ),
        diverges="sifbox keeps its instances' logs under ~/.sifbox (Apptainer: ~/.apptainer)",
    )
    out = Path(sb.subst(logs + ".out"))
    deadline = time.monotonic() + 5
    while (
        "hello from the client" not in (out.read_text() if out.exists() else "")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert "hello from the client" in out.read_text(), f"{out}: {out.read_text()!r}"
    step(
        sb,
        f"{DF}:%startscript[stop]",
        ["instance", "stop", "@id@instance1"],
        err=regex(r"Stopping @id@instance1 instance of @my_container@ \(PID=\d+\)"),
    )


def test_pid_file(request, sb, instances) -> None:
    """System integration / PID files: `instance start --pid-file FILE alpine_latest.sif
    instanceA` writes the instance's PID to FILE."""
    guide.run(request, sb, C(f"{RS}:System integration / PID files", "instance", "start", "--pid-file",
                             "@work@/alpine.pid", "@alpine@", "@id@instanceA",
                             host_paths=(("file", "@work@/alpine.pid"),)))  # fmt: skip
    pid = int(Path(sb.subst("@work@/alpine.pid")).read_text().strip())
    os.kill(pid, 0)  # alive
    step(sb, f"{RS}:System integration / PID files[stop]", ["instance", "stop", "@id@instanceA"])


@pytest.mark.skip(reason=f"{RS}:API Server Example: builds a node:8 image with apt-get, git clone and "
                         "npm install from the network")  # fmt: skip
def test_api_server() -> None:
    pass


@pytest.mark.skip(reason=f"{RS}:Resource Usage / Limits: `instance start --memory` and `instance stats` "
                         "are tested by tests/integration/test_cgroup_options.py")  # fmt: skip
def test_instance_stats() -> None:
    pass
