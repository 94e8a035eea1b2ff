"""config.json `hooks`: parsed strictly (hostile configs refused), saved and read back in order."""

from __future__ import annotations

import pytest

from sifbox.runtime import ocihooks, ocispec


def _fail(what: str) -> Exception:
    return ocispec.ConfigError(what)


def test_parse_keeps_the_spec_order_and_ignores_unknown_kinds() -> None:
    doc = {"poststop": [{"path": "/bin/c"}], "prestart": [{"path": "/bin/a", "args": ["a", "1"], "env": ["X=1"],
                                                         "timeout": 5}, {"path": "/bin/b"}], "future": [{}]}  # fmt: skip
    hooks = ocihooks.parse(doc, _fail)
    assert [(k, h.path) for k, h in hooks] == [("prestart", "/bin/a"), ("prestart", "/bin/b"), ("poststop", "/bin/c")]
    assert hooks[0][1] == ocihooks.Hook("/bin/a", ("a", "1"), ("X=1",), 5)
    assert hooks[1][1].args == ("/bin/b",)  # args default to the path
    assert ocihooks.from_json(ocihooks.to_json(hooks)) == hooks
    assert ocihooks.parse(None, _fail) == ()


@pytest.mark.parametrize("doc", [
    [], {"prestart": {}}, {"prestart": [{"path": "rel"}]}, {"prestart": [{"path": "/a\0b"}]},
    {"prestart": [{}]}, {"prestart": [{"path": "/a", "args": "a"}]}, {"prestart": [{"path": "/a", "args": ["a\0"]}]},
    {"prestart": [{"path": "/a", "env": ["NOEQ"]}]}, {"prestart": [{"path": "/a", "timeout": 0}]},
    {"prestart": [{"path": "/a", "timeout": True}]}, {"prestart": [{"path": "/a", "timeout": "1"}]},
])  # fmt: skip
def test_parse_refuses_hostile_hooks(doc: object) -> None:
    with pytest.raises(ocispec.ConfigError):
        ocihooks.parse(doc, _fail)


def test_bundle_carries_its_hooks() -> None:
    doc = {"root": {"path": "rootfs"}, "process": {"args": ["true"]}, "linux": {"namespaces": [{"type": "mount"}]},
           "hooks": {"createRuntime": [{"path": "/bin/true"}]}}  # fmt: skip
    assert [k for k, _ in ocispec.parse(doc, "/b").hooks] == ["createRuntime"]
