"""JSON through the C scanner and encoder of CPython's `_json`, without the `json` package.

`json` imports `re` (and, through it, `enum`): some 5 ms of CPU for each `sifbox oci`
command containerd or Slurm runs, which read config.json and write state.json. These two
functions give what `json.loads` and `json.dumps` (default separators, `ensure_ascii`) give
for the documents sifbox reads and writes: the same text out, the same values in, NaN and
Infinity refused (strict JSON), a too deep document a ValueError.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Strict:
    """What the C scanner asks of its decoder: no hooks, plain numbers, no NaN/Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")


_scan = _json.make_scanner(_Strict())  # type: ignore[arg-type]
_BLANKS = " \t\n\r"


def loads(text: str | bytes) -> Any:
    """The value of the JSON document `text`; ValueError if it is not one (or is too deep)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    text = text.strip(_BLANKS)
    try:
        value, end = _scan(text, 0)
    except StopIteration as err:
        raise ValueError(f"not JSON at character {err.value}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return value


def _refuse(o: object) -> object:
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """`json.dumps(value)`: the document on one line, ASCII, NaN and Infinity refused."""
    encode = _json.make_encoder(
        {}, _refuse, _json.encode_basestring_ascii, None, ": ", ", ", False, False, False
    )
    return "".join(encode(value, 0))
