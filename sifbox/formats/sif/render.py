"""Text renderings of SIF images, identical to the reference `siftool`.

`header_text`, `list_text` and `info_text` produce the output of
`siftool header`, `list` and `info` byte for byte (spec section 6).
"""

from __future__ import annotations

from sifbox.formats.sif import constants as c
from sifbox.formats.sif.image import SifImage
from sifbox.formats.sif.layout import Descriptor, wrap_int64

RULE = "-" * 78


def readable_size(size: int) -> str:
    """Go siftool's human size: "27 KiB", "2 B"."""
    if -1024 < size < 1024:
        return f"{size} B"
    units = "KMGTPE"
    div, exp = 1024, 0
    n = _go_div(size, 1024)
    while n <= -1024 or n >= 1024:
        div *= 1024
        exp += 1
        n = _go_div(n, 1024)
    return f"{_round_half_away(size / div)} {units[exp]}iB"


def _go_div(a: int, b: int) -> int:
    """Integer division truncating toward zero, as Go's `/` on ints."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _round_half_away(x: float) -> int:
    import math

    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def format_time(t: int) -> str:
    """A Unix time as Go prints `time.Time.UTC()`: `2020-06-30 00:01:56 +0000 UTC`."""
    days, secs = divmod(t, 86400)
    year, month, day = _civil_from_days(days)
    hh, rem = divmod(secs, 3600)
    mm, ss = divmod(rem, 60)
    ytext = f"{year:04d}" if year >= 0 else f"-{-year:04d}"
    return f"{ytext}-{month:02d}-{day:02d} {hh:02d}:{mm:02d}:{ss:02d} +0000 UTC"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Proleptic Gregorian date of day `z` after 1970-01-01, for any integer."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _table(rows: list[tuple[str, str]], padding: int, indent: str = "") -> str:
    """Two columns aligned as Go's tabwriter does (label cell = label + ':')."""
    width = max((len(k) + 1 for k, _ in rows), default=0) + padding
    return "".join(f"{indent}{(k + ':').ljust(width)}{v}\n" for k, v in rows)


def header_text(img: SifImage) -> str:
    h = img.header
    rows: list[tuple[str, str]] = []
    script = h.launch_script_text
    if script:
        rows.append(("Launch Script", script.removesuffix("\n")))
    rows.append(("Version", h.version_text))
    if h.arch_name != "unknown":
        rows.append(("Primary Architecture", h.arch_name))
    if h.image_id != bytes(16):
        rows.append(("ID", str(h.uuid)))
    if h.created_at != c.ZERO_TIME:
        rows.append(("Created At", format_time(h.created_at)))
    if h.modified_at != c.ZERO_TIME:
        rows.append(("Modified At", format_time(h.modified_at)))
    rows += [
        ("Descriptors Free", str(h.descriptors_free)),
        ("Descriptors Total", str(h.descriptors_total)),
        ("Descriptors Offset", str(h.descriptors_offset)),
        ("Descriptors Size", readable_size(h.descriptors_size)),
        ("Data Offset", str(h.data_offset)),
        ("Data Size", readable_size(h.data_size)),
    ]
    return _table(rows, padding=1)


def _link_text(d: Descriptor, group_width: int | None) -> str:
    target, is_group = d.linked_id
    if target == 0:
        return "NONE"
    if is_group:
        return f"{target:<{group_width}d} (G)" if group_width else f"{target} (G)"
    return str(target)


def type_summary(d: Descriptor) -> str:
    """The TYPE column of `list`: display name plus type-specific details."""
    name = d.type_name
    dt = d.data_type
    if dt == c.DataType.PARTITION:
        fs, part, arch = d.partition()
        return (
            f"{name} ({c.display(c.FS_TYPE_NAMES, fs)}/{c.display(c.PART_TYPE_NAMES, part)}"
            f"/{c.ARCH_NAMES.get(arch, 'unknown')})"
        )
    if dt == c.DataType.SIGNATURE:
        return f"{name} ({c.display(c.HASH_TYPE_NAMES, d.signature()[0])})"
    if dt == c.DataType.CRYPTO_MESSAGE:
        fmt, msg = d.crypto_message()
        return (
            f"{name} ({c.display(c.FORMAT_TYPE_NAMES, fmt)}"
            f"/{c.display(c.MESSAGE_TYPE_NAMES, msg)})"
        )
    if dt == c.DataType.SBOM:
        return f"{name} ({c.display(c.SBOM_FORMAT_NAMES, d.sbom_format(), 'unknown')})"
    return name


def list_text(img: SifImage) -> str:
    out = [
        RULE,
        f"{'ID':<4} {'|GROUP':<8} {'|LINK':<8} {'|SIF POSITION (start-end)':<26} |TYPE",
        RULE,
    ]
    for d in img.objects():
        group = str(d.group_id) if d.group_id else "NONE"
        link = _link_text(d, group_width=3)
        pos = f"|{d.offset}-{wrap_int64(d.offset + d.size)} "
        out.append(f"{d.id:<4d} |{group:<7} |{link:<7} {pos:<26} |{type_summary(d)}")
    return "\n".join(out) + "\n"


def info_text(d: Descriptor) -> str:
    rows = [
        ("Data Type", d.type_name),
        ("ID", str(d.id)),
        ("Group ID", str(d.group_id) if d.group_id else "NONE"),
        ("Linked ID", _link_text(d, group_width=None)),
        ("Offset", str(d.offset)),
        ("Size", str(d.size)),
    ]
    if d.created_at != c.ZERO_TIME:
        rows.append(("Created At", format_time(d.created_at)))
    if d.modified_at != c.ZERO_TIME:
        rows.append(("Modified At", format_time(d.modified_at)))
    if d.name:
        rows.append(("Name", d.name))
    dt = d.data_type
    if dt == c.DataType.PARTITION:
        fs, part, arch = d.partition()
        rows += [
            ("Filesystem Type", c.display(c.FS_TYPE_NAMES, fs)),
            ("Partition Type", c.display(c.PART_TYPE_NAMES, part)),
            ("Architecture", c.ARCH_NAMES.get(arch, "unknown")),
        ]
    elif dt == c.DataType.SIGNATURE:
        hash_type, fp = d.signature()
        rows.append(("Hash Type", c.display(c.HASH_TYPE_NAMES, hash_type)))
        if fp != bytes(20):
            rows.append(("Entity", fp.hex().upper()))
    elif dt == c.DataType.CRYPTO_MESSAGE:
        fmt, msg = d.crypto_message()
        rows += [
            ("Format Type", c.display(c.FORMAT_TYPE_NAMES, fmt)),
            ("Message Type", c.display(c.MESSAGE_TYPE_NAMES, msg)),
        ]
    elif dt == c.DataType.SBOM:
        rows.append(("Format", c.display(c.SBOM_FORMAT_NAMES, d.sbom_format(), "unknown")))
    elif dt in (c.DataType.OCI_BLOB, c.DataType.OCI_ROOT_INDEX):
        rows.append(("Digest", d.oci_digest()))
    return _table(rows, padding=2, indent="  ")
