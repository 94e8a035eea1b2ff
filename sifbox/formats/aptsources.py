"""APT source lists, one-line (`deb URI suite ...`) and deb822 (`.sources`)
formats: find the Debian mirror a machine uses (pure)."""

from __future__ import annotations


def _is_security(uri: str) -> bool:
    return "security" in uri


def mirrors(path: str, text: str) -> list[str]:
    """The `deb` URIs of one file, in order."""
    out: list[str] = []
    if path.endswith(".sources"):
        for para in text.split("\n\n"):
            fields: dict[str, str] = {}
            key = None
            for line in para.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[:1].isspace() and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            out += fields.get("uris", "").split()
        return out
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        rest = words[1:]
        if rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if rest:
            out.append(rest[0])
    return out


def first_mirror(files: list[tuple[str, str]]) -> str | None:
    """The first non-security `deb` URI of (path, text) files."""
    for path, text in files:
        for uri in mirrors(path, text):
            if not _is_security(uri):
                return uri
    return None
