"""What an ELF executable loads before it runs: its interpreter and the
shared libraries it names (DT_NEEDED), with its own search path
(DT_RUNPATH, else DT_RPATH). Pure: the file is read through a callable
`read(offset, size) -> bytes`, so that the caller chooses how (and the
tests need no files).

Also the dynamic string table (`dynamic_strings`): the names of the symbols the file
imports, which tell what a tool was built with (squashfuse_ll's multithreaded server).
Only what those need; no relocation, no symbol tables. Malformed
input gives an empty answer, never an exception other than OSError from
`read`.
"""

from __future__ import annotations

import _struct as struct  # the C module: `struct` is a file looked for on sys.path at every launch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Reader = Callable[[int, int], bytes]

MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_DYNAMIC = 2
PT_INTERP = 3
DT_NULL = 0
DT_NEEDED = 1
DT_STRTAB = 5
DT_STRSZ = 10
DT_RPATH = 15
DT_RUNPATH = 29
#: Bounds that keep a hostile file from making us read much.
MAX_PHNUM = 256
MAX_DYNAMIC = 64 << 10
MAX_STRING = 4096
MAX_STRTAB = 1 << 20
#: EI_CLASS (1: ELFCLASS32, 2: ELFCLASS64) -> size of the file header (Elf32_Ehdr, Elf64_Ehdr).
EHDR_SIZE = {1: 52, 2: 64}
#: Offsets past this are no file offsets (off_t is signed 64-bit): read as nothing.
MAX_OFFSET = 2**63 - 1

#: e_machine -> the Debian multiarch directory name of its libraries.
MULTIARCH = {
    3: "i386-linux-gnu",
    62: "x86_64-linux-gnu",
    183: "aarch64-linux-gnu",
    40: "arm-linux-gnueabihf",
    21: "powerpc64le-linux-gnu",
    22: "s390x-linux-gnu",
    243: "riscv64-linux-gnu",
}


class Dependencies:
    """The loading needs of one executable."""

    __slots__ = ("interpreter", "machine", "needed", "search")

    def __init__(self, interpreter: str | None, needed: list[str], search: list[str], machine: int) -> None:
        self.interpreter = interpreter
        self.needed = needed
        self.search = search
        self.machine = machine


def dependencies(read: Reader) -> Dependencies | None:
    """The interpreter, needed libraries and run path of an ELF file, or None if it isn't one."""
    found = _program(read)
    if found is None:
        return None
    machine, loads, interpreter, entries = found
    needed: list[str] = []
    search: list[str] = []
    if entries is not None:
        needed, search = _dynamic(read, entries, loads)
    return Dependencies(interpreter or None, needed, search, machine)


def dynamic_strings(read: Reader) -> list[str] | None:
    """The strings of an ELF file's dynamic string table (imported symbol names, needed
    libraries, version names), or None if it isn't an ELF file or has no such table
    (a static executable)."""
    found = _program(read)
    if found is None:
        return None
    _, loads, _, entries = found
    if entries is None:
        return None
    tags = {tag: value for tag, value in entries if tag in (DT_STRTAB, DT_STRSZ)}
    if DT_STRTAB not in tags or DT_STRSZ not in tags:
        return None
    base = _file_offset(tags[DT_STRTAB], loads)
    if base is None:
        return None
    data = _read(read, base, min(tags[DT_STRSZ], MAX_STRTAB))
    return [s.decode("utf-8", "replace") for s in data.split(b"\0") if s]


def _program(read: Reader) -> tuple[int, list[tuple[int, int, int]], str | None, list[tuple[int, int]] | None] | None:
    """(machine, loads, interpreter, dynamic entries) of an ELF file."""
    ident = read(0, EHDR_SIZE[2])
    if len(ident) < 6 or ident[:4] != MAGIC or ident[4] not in EHDR_SIZE or ident[5] not in (1, 2):
        return None
    wide = ident[4] == 2
    if len(ident) < EHDR_SIZE[ident[4]]:  # a truncated header: e_phnum lies at its end
        return None
    end = "<" if ident[5] == 1 else ">"
    (machine,) = struct.unpack_from(end + "H", ident, 18)
    if wide:
        phoff, phentsize, phnum = (struct.unpack_from(end + "Q", ident, 32)[0],
                                   *struct.unpack_from(end + "HH", ident, 54))  # fmt: skip
        ph_format, dyn_format = end + "IIQQQQQQ", end + "qQ"
    else:
        phoff, phentsize, phnum = (struct.unpack_from(end + "I", ident, 28)[0],
                                   *struct.unpack_from(end + "HH", ident, 42))  # fmt: skip
        ph_format, dyn_format = end + "IIIIIIII", end + "iI"
    if phnum > MAX_PHNUM or phentsize < struct.calcsize(ph_format):
        return None
    table = _read(read, phoff, phentsize * phnum)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interpreter = None
    dynamic = None
    for i in range(len(table) // phentsize):
        fields = struct.unpack_from(ph_format, table, i * phentsize)
        if wide:
            p_type, _, p_offset, p_vaddr, _, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _, p_filesz = fields[:5]
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_INTERP:
            interpreter = _string(_read(read, p_offset, min(p_filesz, MAX_STRING)), 0)
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, min(p_filesz, MAX_DYNAMIC))
    entries = None if dynamic is None else _entries(_read(read, *dynamic), dyn_format)
    return machine, loads, interpreter, entries


def _entries(data: bytes, dyn_format: str) -> list[tuple[int, int]]:
    size = struct.calcsize(dyn_format)
    entries = []
    for i in range(len(data) // size):
        tag, value = struct.unpack_from(dyn_format, data, i * size)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    return entries


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]]) -> int | None:
    return next((off + vaddr - start for start, off, filesz in loads if start <= vaddr < start + filesz), None)


def _dynamic(read: Reader, entries: list[tuple[int, int]],
             loads: list[tuple[int, int, int]]) -> tuple[list[str], list[str]]:  # fmt: skip
    strtab = next((value for tag, value in entries if tag == DT_STRTAB), None)
    entries = [(tag, value) for tag, value in entries if tag in (DT_NEEDED, DT_RPATH, DT_RUNPATH)]
    if strtab is None:
        return [], []
    base = _file_offset(strtab, loads)
    if base is None:
        return [], []
    needed: list[str] = []
    runpath: list[str] = []
    rpath: list[str] = []
    for tag, value in entries:
        text = _string(_read(read, base + value, MAX_STRING), 0)
        if not text:
            continue
        if tag == DT_NEEDED:
            needed.append(text)
        else:
            (runpath if tag == DT_RUNPATH else rpath).extend(p for p in text.split(":") if p)
    return needed, runpath or rpath


def _read(read: Reader, offset: int, size: int) -> bytes:
    """`read`, for an offset and size taken from the file: nothing where they lie outside
    what a file can hold."""
    if not 0 <= offset <= MAX_OFFSET - size or size <= 0:
        return b""
    return read(offset, size)


def _string(data: bytes, start: int) -> str:
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else len(data)].decode("utf-8", "replace")


def library_dirs(deps: Dependencies) -> list[str]:
    """Where the dynamic loader looks for `deps.needed`, in its order, without ld.so.cache:
    the run path, then the multiarch and the plain system directories."""
    dirs = [d for d in deps.search if not d.startswith("$")]
    triplet = MULTIARCH.get(deps.machine)
    if triplet:
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    dirs += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    return list(dict.fromkeys(dirs))
