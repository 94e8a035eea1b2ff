"""Instance state: naming, the state file, /proc parsing, matching, rendering (pure)."""

from __future__ import annotations

import base64
import json
import os
import signal

import pytest

from sifbox.runtime import instances as ins
from sifbox.util.errors import UsageError


def _state(**kw: object) -> ins.State:
    base: dict[str, object] = {
        "pid": 1234, "ppid": 1233, "name": "web", "user": "alice", "image": "/img/app.sif",
        "logErrPath": "/h/.sifbox/instances/logs/n/alice/web.err",
        "logOutPath": "/h/.sifbox/instances/logs/n/alice/web.out",
    }  # fmt: skip
    base.update(kw)
    return ins.State(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["web", "a.b_c-1", "X9"])
def test_valid_names(name: str) -> None:
    assert ins.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a b", "..", ".", "x*", "é"])
def test_invalid_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="not a valid instance name"):
        ins.check_name(name)


def test_uri_name() -> None:
    assert ins.name_of("instance://web") == "web"
    assert ins.name_of("web") == "web"


def test_paths_follow_apptainers_layout() -> None:
    p = ins.Paths("/home/alice", "node1", "alice")
    assert p.state_file("web") == "/home/alice/.sifbox/instances/app/node1/alice/web/web.json"
    assert p.logs("web") == ("/home/alice/.sifbox/instances/logs/node1/alice/web.err",
                             "/home/alice/.sifbox/instances/logs/node1/alice/web.out")  # fmt: skip


def test_state_file_round_trip_and_field_order() -> None:
    state = _state(config={"engineName": "sifbox"}, userns=True, starttime=99, ppidStarttime=98)
    text = ins.dump_state(state)
    doc = json.loads(text)
    assert list(doc)[:12] == list(ins.FIELDS)
    # `config` is a byte array in Apptainer's Go struct: base64 in JSON.
    assert json.loads(base64.b64decode(doc["config"])) == {"engineName": "sifbox"}
    back = ins.parse_state(text, "/x.json")
    assert back.pid == 1234 and back.ppid == 1233 and back.userns and back.starttime == 99
    assert back.config == {"engineName": "sifbox"} and back.path == "/x.json"


def test_state_file_written_by_apptainer_parses() -> None:
    text = json.dumps({"pid": 7, "ppid": 6, "name": "n", "user": "u", "image": "/i.sif",
                       "config": base64.b64encode(b'{"a":1}').decode(), "userns": False,
                       "cgroup": False, "ip": "", "logErrPath": "e", "logOutPath": "o",
                       "checkpoint": ""})  # fmt: skip
    state = ins.parse_state(text)
    assert (state.pid, state.starttime, state.config) == (7, 0, {"a": 1})


@pytest.mark.parametrize("text", ["[]", "{}", '{"pid": "x", "name": "n"}', "not json"])
def test_bad_state_files_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        ins.parse_state(text)


def test_parse_stat_handles_spaces_and_parens_in_comm() -> None:
    # fields 5.. numbered from 100: field 22 (starttime) holds 117
    line = "4242 (my (odd) prog) S 17 " + " ".join(str(n) for n in range(100, 150))
    assert ins.parse_stat(line) == (17, 117)


def test_match_is_a_shell_glob() -> None:
    names = ["web", "web2", "db", "test1"]
    assert ins.match(names, "*") == ["db", "test1", "web", "web2"]
    assert ins.match(names, "web*") == ["web", "web2"]
    assert ins.match(names, "web") == ["web"]
    assert ins.match(names, "?b") == ["db"]
    assert ins.match(names, "nope") == []


def test_table_is_tabwriter_shaped() -> None:
    out = ins.render_table([_state(), _state(name="longer-name", pid=7, image="/i.sif")])
    assert out == (
        "INSTANCE NAME    PID     IP    IMAGE\n"
        "web              1234          /img/app.sif\n"
        "longer-name      7             /i.sif\n"
    )


def test_empty_table_is_the_header() -> None:
    assert ins.render_table([]) == "INSTANCE NAME    PID    IP    IMAGE\n"


def test_logs_table() -> None:
    out = ins.render_logs([_state()])
    assert out.splitlines() == [
        "INSTANCE NAME    PID     LOGS",
        "web              1234    /h/.sifbox/instances/logs/n/alice/web.err",
        "                         /h/.sifbox/instances/logs/n/alice/web.out",
    ]


def test_json_shape_is_apptainers() -> None:
    out = ins.render_json([_state(image="/a&b<c>.sif")])
    assert out.startswith('{\n\t"instances": [\n\t\t{\n\t\t\t"instance": "web",\n')
    assert "\\u0026" in out and "\\u003c" in out
    doc = json.loads(out)
    assert doc == {"instances": [{"instance": "web", "pid": 1234, "img": "/a&b<c>.sif", "ip": "",
                                  "logErrPath": "/h/.sifbox/instances/logs/n/alice/web.err",
                                  "logOutPath": "/h/.sifbox/instances/logs/n/alice/web.out"}]}  # fmt: skip
    assert ins.render_json([]) == '{\n\t"instances": []\n}\n'


@pytest.mark.parametrize("text,sig", [("TERM", signal.SIGTERM), ("sigint", signal.SIGINT),
                                      ("SIGUSR1", signal.SIGUSR1), ("9", signal.SIGKILL)])  # fmt: skip
def test_parse_signal(text: str, sig: int) -> None:
    assert ins.parse_signal(text) == sig


@pytest.mark.parametrize("text", ["NOPE", "0", "999", "SIG_DFL", ""])
def test_parse_signal_rejects_unknown(text: str) -> None:
    with pytest.raises(UsageError, match="unknown signal"):
        ins.parse_signal(text)


def _write(paths: ins.Paths, name: str, **kw: object) -> None:
    state = _state(name=name, **kw)
    state.path = paths.state_file(name)
    os.makedirs(os.path.dirname(state.path))
    ins.write_state(state)


def test_list_keeps_running_instances_and_removes_stale_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    paths = ins.Paths(str(tmp_path), "node", "me", os.getuid())
    me = ins.proc_stat(os.getpid())
    assert me is not None
    _write(paths, "alive", pid=os.getpid(), starttime=me[1])
    _write(paths, "reused", pid=os.getpid(), starttime=me[1] + 1)  # same pid, another process
    _write(paths, "gone", pid=2**22 + 1, starttime=5)
    os.makedirs(paths.state_dir("garbage"))
    with open(paths.state_file("garbage"), "w") as f:
        f.write("{not json")
    found = ins.list_states(paths)
    assert [s.name for s in found] == ["alive"]
    assert sorted(os.listdir(paths.app_dir)) == ["alive"]
    assert ins.list_states(paths, "al*")[0].pid == os.getpid()
    assert ins.list_states(paths, "x*") == []


def test_list_of_another_owner_never_counts_our_processes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    paths = ins.Paths(str(tmp_path), "node", "other", os.getuid() + 1)
    me = ins.proc_stat(os.getpid())
    assert me is not None
    _write(paths, "forged", pid=os.getpid(), starttime=me[1])
    assert ins.list_states(paths, clean=False) == []
    assert os.path.exists(paths.state_file("forged"))


def test_list_without_state_directory_is_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ins.list_states(ins.Paths(str(tmp_path), "n", "u")) == []
