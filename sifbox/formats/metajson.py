"""labels.json and the other JSON of `/.singularity.d`, as Apptainer's Go code writes and
reads it (pure; light to import: `inspect` needs it on every call)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

__all__ = ["go_json", "labels_json", "parse_label_lines", "parse_labels", "valid_text"]


def go_json(obj: object) -> str:
    """JSON as Go's json.MarshalIndent(v, "", "\\t") writes it: map keys sorted, `<>&`
    and U+2028/U+2029 escaped, invalid text as U+FFFD."""
    text = json.dumps(_clean(obj), indent="\t", ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(ch, esc)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each surrogate (a byte that was not UTF-8, or a lone `\\ud800` escape,
    which is valid JSON but not Unicode) as U+FFFD, as Go's JSON decoder and encoder make
    them: text that can be written out as UTF-8."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _clean(obj: object) -> object:
    if isinstance(obj, str):
        return valid_text(obj)
    if isinstance(obj, dict):
        return {_clean(k): _clean(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def labels_json(labels: Mapping[str, str]) -> bytes:
    """labels.json: tab-indented, keys sorted (Go's encoding, as Apptainer writes it)."""
    return go_json(dict(labels)).encode("utf-8")


def parse_labels(data: bytes | None) -> tuple[dict[str, str], str | None]:
    """labels.json -> (labels, problem); values that are not strings are made strings."""
    if not data:
        return {}, None
    try:
        obj = json.loads(data.decode("utf-8", "replace"))
    except ValueError as err:
        return {}, f"not JSON ({err})"
    except RecursionError:
        return {}, "not JSON (nested too deeply)"
    if obj is None:  # Apptainer writes `null` for an OCI image without labels
        return {}, None
    if not isinstance(obj, dict):
        return {}, "not a JSON object"
    return {valid_text(str(k)): valid_text(v) if isinstance(v, str) else json.dumps(v)
            for k, v in obj.items()}, None  # fmt: skip


def parse_label_lines(text: str) -> dict[str, str]:
    """`NAME VALUE` lines (%labels, and what %post appends to $SINGULARITY_LABELS)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        out[key.strip()] = value.strip()
    return out
