"""Apptainer's e2e/instance/instance.go (the "ordered" tests, user and root profiles),
instance_utils.go (echo server, list, exec, stop) and e2e/instance/regressions.go.

The test image's %startscript is an echo server on the port given as its argument. Ports are
free ones picked here (Apptainer uses 11372 and up), and instance names are unique to this run:
other test sessions on this machine run instances as the same users. For the same reason
StopAll stops this test's instances by a name pattern rather than with --all.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.apptainer.cases import C, check, contains, mark_xfail, run_case

pytestmark = pytest.mark.integration

MESSAGE = b"b40cbeaaea293f7e8bd40fb61f389cfca9823467\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo(port: int) -> None:
    """instance_utils.go:echo: the server sends back the line it got (10 tries, 100 ms apart)."""
    for attempt in range(20):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(MESSAGE)
                got = b""
                while not got.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                assert got == MESSAGE, f"bad response {got!r} != {MESSAGE!r}"
                return
        except ConnectionRefusedError:
            if attempt == 19:
                raise
            time.sleep(0.1)


def name(tag: str) -> str:
    return f"e2e-{tag}-{uuid.uuid4().hex[:8]}"


def listed(sb, pattern: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """instance_utils.go:expectInstance: `instance list --json NAME`."""
    res = sb.run(["instance", "list", "--json", pattern])
    assert res.status == 0, res
    return list(json.loads(res.stdout)["instances"])


def stop(sb, *args: str) -> None:  # type: ignore[no-untyped-def]
    """instance_utils.go:stopInstance: stop exits 0 and the instance is gone from the list."""
    res = sb.run(["instance", "stop", *args])
    assert res.status == 0, res
    assert listed(sb, args[-1]) == [], f"{args[-1]} is still listed"


def exec_in(sb, instance: str, *argv: str) -> str:  # type: ignore[no-untyped-def]
    """instance_utils.go:execInstance: exec instance://NAME exits 0; its stdout."""
    res = sb.run(["exec", f"instance://{instance}", *argv])
    assert res.status == 0, res
    return res.stdout


@pytest.fixture
def instances(sb):  # type: ignore[no-untyped-def]
    """Names started by the test; whatever is still running at the end is stopped, and the
    instances' log files are removed."""
    started: list[str] = []
    yield started
    logs = Path(sb.who.home, ".sifbox/instances/logs", socket.gethostname(), sb.who.name)
    for n in started:
        sb.run(["instance", "stop", "--force", n])
        for suffix in (".out", ".err"):
            (logs / (n + suffix)).unlink(missing_ok=True)


def test_basic_echo_server(request, sb, instances) -> None:
    """instance.go:testBasicEchoServer: start, talk to the echo server, stop."""
    inst, port = name("echo1"), free_port()
    instances.append(inst)
    res = sb.run(["instance", "start", "@test@", inst, str(port)])
    assert res.status == 0, res
    echo(port)
    assert len(listed(sb, inst)) == 1
    stop(sb, inst)


@pytest.mark.parametrize("verb", ["start", "run"])
def test_basic_options(request, sb, instances, verb: str) -> None:
    """instance.go:testBasicOptions: -H DIR:/home/temp --hostname -e, then from inside: the
    file in the home directory, the hostname, APPTAINER_INSTANCE."""
    home = sb.work / "home"
    home.mkdir()
    (home / "hello").write_text("world")
    home.chmod(0o755)
    (home / "hello").chmod(0o644)
    inst = name("testbasic")
    instances.append(inst)
    res = sb.run(["instance", verb, "-H", f"{home}:/home/temp", "--hostname", "echoserver99", "-e", "@test@", inst,
                  str(free_port())])  # fmt: skip
    assert res.status == 0, res
    assert exec_in(sb, inst, "cat", "/home/temp/hello") == "world"
    assert exec_in(sb, inst, "hostname") == "echoserver99\n"
    assert exec_in(sb, inst, "sh", "-c", "echo $APPTAINER_INSTANCE") == f"{inst}\n"
    # and sifbox's own name for it
    assert exec_in(sb, inst, "sh", "-c", "echo $SIFBOX_INSTANCE") == f"{inst}\n"
    stop(sb, inst)


@pytest.mark.parametrize("verb", ["start", "run"])
def test_contain(request, sb, instances, verb: str) -> None:
    """instance.go:testContain: -c -W DIR: /tmp inside is DIR/tmp on the host."""
    inst = name("testcontain")
    instances.append(inst)
    res = sb.run(["instance", verb, "-c", "-W", str(sb.work), "@test@", inst, str(free_port())])
    assert res.status == 0, res
    exec_in(sb, inst, "touch", "/tmp/thegreattestfile")
    assert (sb.work / "tmp" / "thegreattestfile").exists(), "the temp file doesn't exist"
    stop(sb, inst)


@pytest.mark.parametrize("verb", ["start", "run"])
def test_instance_from_uri(sb, instances, oras_image: str, verb: str) -> None:  # type: ignore[no-untyped-def]
    """instance.go:testInstanceFromURI: `instance start|run oras://... NAME`, `id` in it, stop."""
    inst = name("fromuri")
    instances.append(inst)
    res = sb.run(["instance", verb, oras_image, inst])
    assert res.status == 0, res
    exec_in(sb, inst, "id")
    stop(sb, inst)


def test_create_many_instances_run_and_stop_all(request, sb, instances) -> None:
    """instance.go: CreateManyInstances (10 echo servers, each listed once), InstanceRun
    (`instance run IMG NAME true` runs the runscript: its log says `Running command: true`),
    StopAll (the instances of this test, by a name pattern, see the module's docstring)."""
    prefix = name("many")
    for i in range(10):
        inst, port = f"{prefix}-echo{i + 1}", free_port()
        instances.append(inst)
        res = sb.run(["instance", "start", "@test@", inst, str(port)])
        assert res.status == 0, res
        echo(port)
        assert len(listed(sb, inst)) == 1
    run_name = f"{prefix}-testtrue"
    instances.append(run_name)
    res = sb.run(["instance", "run", "@test@", run_name, "true"])
    assert res.status == 0, res
    # Divergence: sifbox's own paths, ~/.sifbox/instances/logs/HOST/USER/NAME.out
    # (Apptainer: ~/.apptainer/instances/logs/HOST/USER/NAME.out).
    log = Path(
        sb.who.home, ".sifbox/instances/logs", socket.gethostname(), sb.who.name, run_name + ".out"
    )
    deadline = time.monotonic() + 5
    while (
        "Running command: true" not in (log.read_text() if log.exists() else "")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert "Running command: true" in log.read_text()
    stop(sb, f"{prefix}-*")


@pytest.mark.parametrize("verb", ["start", "run"])
def test_ghost_instance(request, sb, instances, verb: str) -> None:
    """instance.go:testGhostInstance: a second start of a running name fails (255); once the
    instance's parent process is killed, the name can be started again."""
    inst = name("ghost")
    instances.append(inst)
    pidfile = sb.work / "pidfile"
    res = sb.run(["instance", verb, "--pid-file", str(pidfile), "@test@", inst])
    assert res.status == 0, res
    pid = int(pidfile.read_text().strip())
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    again = sb.run(["instance", verb, "@test@", inst])
    # Divergence: sifbox's own message, `can't start instance `NAME`: an instance of that name
    # already exists` (Apptainer: `instance NAME already exists`).
    check(
        sb,
        C("instance.go:testGhostInstance/twice", exit=255, err=contains("already exists")),
        again,
    )
    assert inst in again.stderr, again
    os.kill(ppid, 9)
    res = sb.run(["instance", verb, "@test@", inst])
    assert res.status == 0, res
    stop(sb, inst)


@pytest.mark.skip(
    reason="instance.go:testCheckpointInstance (checkpoint.go) needs DMTCP and "
    "`instance start --dmtcp-launch`: sifbox has no checkpointing"
)
def test_checkpoint_instance() -> None:
    pass


def test_instance_with_config_dir(request, sb, instances) -> None:
    """instance.go:testInstanceWithConfigDir: with APPTAINER_CONFIGDIR=DIR the instance's files
    are under DIR/instances/app."""
    confdir = sb.work / "config"
    confdir.mkdir()
    os.chown(confdir, sb.who.uid, sb.who.gid)
    env = {"APPTAINER_CONFIGDIR": str(confdir)}
    inst = name("movedConfig")
    instances.append(inst)
    res = sb.run(["instance", "start", "@test@", inst], env=env)
    assert res.status == 0, res
    listing = sb.run(["instance", "list", "--json", inst], env=env)
    assert len(json.loads(listing.stdout)["instances"]) == 1, listing
    assert sb.run(["exec", f"instance://{inst}", "id"], env=env).status == 0
    assert sb.run(["instance", "stop", inst], env=env).status == 0
    assert (confdir / "instances/app").is_dir(), "no instances/app under APPTAINER_CONFIGDIR"


def test_instance_start_fakeroot_unprivileged_user(request, sb, instances) -> None:
    """instance.go:testInstanceStartFakerootUnprivilegedUser (user profile only)."""
    if sb.who.is_root:
        pytest.skip("the Go test runs it with the user profile only")
    inst = name("fakeroot")
    instances.append(inst)
    # Divergence: Apptainer refuses (255, "not enough permission to start instance with
    # --fakeroot and unprivileged user"); sifbox's --fakeroot works for users (user namespace
    # and subuid maps), instances included (DESIGN decision 2).
    res = sb.run(["instance", "start", "--fakeroot", "@test@", inst])
    assert res.status == 0, res
    assert exec_in(sb, inst, "id", "-u") == "0\n"
    stop(sb, inst)


# --- instance/regressions.go ---------------------------------------------------------------------


def test_issue5033_boot(request, sb, instances) -> None:
    """regressions.go:issue5033 (root profile): an instance started with --boot can be joined.

    Diverges: sifbox does not boot /sbin/init in a container (Apptainer does so only in its
    setuid mode, which sifbox has none of): --boot is refused in one line, status 125, and no
    instance is started."""
    if not sb.who.is_root:
        pytest.skip("--boot is for root (the Go test uses the root profile)")
    inst = name("boot")
    instances.append(inst)
    res = sb.run(["instance", "start", "--boot", "@test@", inst])
    assert res.status == 125, res
    assert res.stderr.startswith("sifbox: error: can't use --boot: "), res
    assert inst not in sb.run(["instance", "list"]).stdout


def test_issue2189_ignore_subuid(request, sb, instances) -> None:
    """regressions.go:issue2189 (fakeroot profile): instance start --ignore-subuid."""
    inst = name("subuid")
    instances.append(inst)
    case = C("regressions.go:issue2189", "instance", "start", "--ignore-subuid", "@debian@", inst,
             profile="fakeroot")  # fmt: skip
    run_case(request, sb, case)
    stop(sb, inst)
