"""Parsing of --overlay arguments (pure)."""

from __future__ import annotations

import pytest

from sifbox.image.overlay import parse
from sifbox.util.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/x/ov", ("/x/ov", False)),
        ("/x/ov:ro", ("/x/ov", True)),
        ("/x/ov:rw", ("/x/ov", False)),
        ("/x/a:b", ("/x/a:b", False)),
        ("rel.img:ro", ("rel.img", True)),
    ],
)
def test_parse(text: str, expected: tuple[str, bool]) -> None:
    assert parse(text) == expected


def test_parse_needs_a_path() -> None:
    with pytest.raises(UsageError):
        parse(":ro")
