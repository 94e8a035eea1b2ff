"""HKP, the OpenPGP keyserver protocol (draft-shaw-openpgp-hkp): URIs, the machine-readable
index a search returns, and how Apptainer's `key search` shows it (pure, no I/O).

* `normalize_uri`: `hkp://HOST` is `http://HOST:11371`, `hkps://HOST` is `https://HOST`;
  `http(s)://` stay as they are; anything else is refused (Apptainer's NormalizeKeyserverURI).
* `parse_index`: the `info:`, `pub:` and `uid:` records of `op=index&options=mr` (§5.2);
  lines that are none of these are skipped, as a client must; fields are bounded.
* `format_index`: Apptainer's table (`KEY ID  BITS  NAME/EMAIL`, or with `--long-list`
  `FINGERPRINT  ALGORITHM  BITS  CREATION DATE  EXPIRATION DATE  STATUS  NAME/EMAIL`),
  aligned as Go's tabwriter aligns it.
* `key_selector`: a fingerprint or key ID given on the command line, checked.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

HKP_PORT = 11371
#: Keys one index shows at most (Apptainer asks for a page of 256).
MAX_KEYS = 256
#: User IDs shown for one key at most, and characters of one field.
MAX_UIDS = 64
MAX_FIELD = 1024


class HkpError(ValueError):
    """A keyserver URI, key selector or answer that can't be used; the message says why."""


@dataclass(frozen=True)
class KeyserverURI:
    scheme: str  # http or https
    host: str  # host[:port] as a netloc
    path: str  # "" or a path prefix without its trailing slash

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"


def normalize_uri(uri: str) -> KeyserverURI:
    text = uri.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as err:
        raise HkpError(f"invalid keyserver URI `{uri}`: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "hkp", "hkps"):
        raise HkpError(f"unsupported keyserver protocol scheme `{parts.scheme}` in `{uri}`"
                       if parts.scheme else f"invalid keyserver URI `{uri}`: no scheme (hkp://, hkps://, https://)")  # fmt: skip
    host = parts.hostname
    if not host or any(c in host for c in " \t\r\n/\\@"):
        raise HkpError(f"invalid keyserver URI `{uri}`: no host name")
    if parts.username is not None or parts.query or parts.fragment:
        raise HkpError(f"invalid keyserver URI `{uri}`: give a server, without credentials, query or fragment")
    netloc = f"[{host}]" if ":" in host else host
    if port is None and scheme == "hkp":
        port = HKP_PORT
    if port is not None:
        netloc += f":{port}"
    return KeyserverURI("http" if scheme in ("http", "hkp") else "https", netloc, parts.path.rstrip("/"))


def same_keyserver(a: str, b: str) -> bool:
    """Whether two URIs name the same keyserver (hkp://h is http://h:11371)."""
    try:
        ua, ub = normalize_uri(a), normalize_uri(b)
    except HkpError:
        return False
    return (ua.scheme, ua.host.lower()) == (ub.scheme, ub.host.lower())


HEX = frozenset("0123456789ABCDEF")


def key_selector(text: str, lengths: tuple[int, ...] = (8, 16, 40)) -> str:
    """A fingerprint or key ID (`0x` prefix and spaces allowed) in upper case, or HkpError."""
    sel = text.replace(" ", "").upper()
    sel = sel.removeprefix("0X")
    if not sel or not set(sel) <= HEX or len(sel) not in lengths:
        want = ", ".join(str(n) for n in lengths[:-1]) + f" or {lengths[-1]}" if len(lengths) > 1 else str(lengths[0])
        raise HkpError(f"`{text}` is not a key fingerprint or key ID ({want} hexadecimal digits)")
    return sel


def search_term(text: str) -> str:
    """What `key search` sends: 8 or more upper-case hex digits are a key ID or fingerprint
    (sent with `0x`, as Apptainer sends it); anything else is a name or email as it is."""
    if len(text) >= 8 and set(text) <= HEX:
        return "0x" + text
    return text


@dataclass
class IndexKey:
    keyid: str
    algo: str
    bits: str
    created: str
    expires: str
    flags: str
    uids: list[str] = field(default_factory=list)


@dataclass
class Index:
    keys: list[IndexKey]
    #: the count the `info:` record announced (None: no such record)
    declared: int | None = None
    #: keys past MAX_KEYS, not kept
    dropped: int = 0


def _clean(text: str) -> str:
    """A field as shown on a terminal: %XX decoded (uids), no control characters, bounded."""
    text = text[:MAX_FIELD]
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def parse_index(text: str) -> Index:
    """The keys of a machine-readable index. Unknown records are skipped; a `uid` before any
    `pub` is ignored; a malformed `info` count is an HkpError (as Apptainer's)."""
    index = Index([])
    for raw in text.split("\n"):
        line = raw.strip()
        fields = line.split(":")
        fields += [""] * (7 - len(fields))
        tag = fields[0]
        if tag == "info":
            count = fields[2].strip()
            if not (count.isascii() and count.isdigit() and len(count) <= 9):
                raise HkpError(f"bad `info` record in the key index: `{_clean(line)[:80]}`")
            index.declared = int(count)
        elif tag == "pub":
            if len(index.keys) >= MAX_KEYS:
                index.dropped += 1
                continue
            f = [_clean(x) for x in fields[1:7]]
            index.keys.append(IndexKey(f[0], f[1], f[2], f[3], f[4], f[5]))
        elif tag == "uid" and index.keys and not index.dropped:
            uids = index.keys[-1].uids
            if len(uids) < MAX_UIDS:
                uids.append(_clean(urllib.parse.unquote_plus(fields[1][: MAX_FIELD * 3], errors="replace")))
    return index


ALGORITHMS = {1: "RSA", 2: "RSA", 3: "RSA", 16: "Elgamal", 17: "DSA", 18: "Elliptic Curve", 19: "ECDSA",
              20: "Reserved", 21: "Diffie-Hellman"}  # fmt: skip


def algorithm_name(code: str) -> str:
    """Apptainer's names for the public-key algorithms (others, EdDSA among them: `unknown`)."""
    if not (code.isascii() and code.isdigit() and len(code) <= 9):
        raise HkpError(f"bad algorithm `{code[:40]}` in the key index")
    return ALGORITHMS.get(int(code), "unknown")


def _status(flags: str) -> str:
    if "r" in flags:
        return "[revoked]"
    if "d" in flags:
        return "[disabled]"
    if "e" in flags:
        return "[expired]"
    return "[enabled]"


def _date(value: str, when: Callable[[int], str]) -> str:
    if value == "" or value == "none":
        return value
    return when(int(value)) if value.isascii() and value.isdigit() and len(value) <= 12 else when(0)


def format_index(index: Index, long: bool, when: Callable[[int], str]) -> str:
    """Apptainer's `key search` table for `index` (`when`: epoch seconds as a local date)."""
    rows: list[list[str]] = []  # cells; the last one is not aligned (Go tabwriter's trailing cell)
    blank = ["", "", "", "", "", ""] if long else ["", ""]
    rows.append(["FINGERPRINT", "ALGORITHM", "BITS", "CREATION DATE", "EXPIRATION DATE", "STATUS", "NAME/EMAIL"]
                if long else ["KEY ID", "BITS", "NAME/EMAIL"])  # fmt: skip
    for i, k in enumerate(index.keys):
        if i:
            rows.append([""])
        if long:
            head = [k.keyid, algorithm_name(k.algo), k.bits, _date(k.created, when), _date(k.expires, when),
                    _status(k.flags)]  # fmt: skip
        else:
            head = [k.keyid[-8:], k.bits]
        for j, uid in enumerate(k.uids or [""]):
            rows.append([*(head if j == 0 else blank), uid])
    return tabwrite(rows)


def tabwrite(rows: list[list[str]], padding: int = 2) -> str:
    """Go's text/tabwriter (minwidth 0, padding 2, spaces): cell j of a row is padded to the
    widest cell j of the run of consecutive rows that have a cell j before their last."""
    widths = [[0] * (len(r) - 1) for r in rows]
    col = 0
    while True:
        i, found = 0, False
        while i < len(rows):
            if len(rows[i]) - 1 <= col:
                i += 1
                continue
            found = True
            j = i
            while j < len(rows) and len(rows[j]) - 1 > col:
                j += 1
            width = max(len(rows[k][col]) for k in range(i, j)) + padding
            for k in range(i, j):
                widths[k][col] = width
            i = j
        if not found:
            break
        col += 1
    out = []
    for r, w in zip(rows, widths, strict=True):
        out.append("".join(cell.ljust(w[c]) for c, cell in enumerate(r[:-1])) + r[-1])
    return "\n".join(out) + "\n"
