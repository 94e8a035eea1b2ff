"""sifbox.util.cjson: the same text as json.dumps, the same values as json.loads, for any JSON
value; hostile documents (NaN, trailing data, deep nesting, bad UTF-8) refused with ValueError.
state.json, which runc's `state` readers read, is written with it."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sifbox.util import cjson

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_values)
def test_same_as_json(value: object) -> None:
    text = cjson.dumps(value)
    assert text == json.dumps(value)
    assert cjson.loads(text) == json.loads(text)
    assert cjson.loads(json.dumps(value, indent=2)) == json.loads(text)


@pytest.mark.parametrize("text", ["", " ", "NaN", "[Infinity]", "-Infinity", "[1,]", "{} {}", "{'a': 1}",
                                  "[" * 100_000, '"\x01"', b"\xff\xfe", "01"])  # fmt: skip
def test_hostile_documents_are_refused(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        cjson.loads(text)


def test_values_json_refuses_are_refused() -> None:
    with pytest.raises(ValueError):
        cjson.dumps(float("nan"))
    with pytest.raises(TypeError):
        cjson.dumps({"a": object()})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        cjson.dumps(loop)


def test_state_file_is_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sifbox.runtime import ocistate

    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    os.close(ocistate.make_dir(str(root), "c1"))
    doc = {"id": "c1", "pid": 1, "annotations": {"k\u00e9\n\"": "v\x00"}, "bundle": "/b"}
    ocistate.write(str(root), "c1", doc)
    written = json.loads((root / "c1" / ocistate.STATE_FILE).read_text())
    assert written == {"version": ocistate.VERSION, **doc}
    assert ocistate.load(str(root), "c1") == written
