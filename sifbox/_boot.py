"""sifbox's modules from one file: the installed launcher's import path.

Every import of a module from site-packages costs a handful of file-system
calls (stat the source, open and read the cached bytecode), some 100 µs
each; a `sifbox exec` imports about 40 modules. On a parallel file system,
with hundreds of ranks starting at once, those metadata calls are the
known "import storm". The installer therefore compiles the whole package
into one file, the *bundle*, and the launcher serves imports from it: one
open per launch and one read per module.

The bundle is

    4 bytes   length H of the header, little-endian
    H bytes   marshal of (FORMAT, MAGIC, stamp, index, D)
    D bytes   the modules' code objects, each marshalled, back to back

where MAGIC is the bytecode magic of the Python that wrote it, `stamp` is
(st_mtime_ns, st_size) of the package's `__init__.py` when it was written,
and `index` maps a module name to (is_package, source path, offset, length).
A bundle that doesn't match the running Python, the installed package
(reinstalled or upgraded since) or its own length is ignored, and imports take the usual
path. Modules keep their real `__file__` and packages their real
`__path__`, so data files and modules the bundle lacks are found as usual.

Standard library only, and only modules that are loaded before any import
(`marshal`, `_frozen_importlib`): this module runs before the finder exists.
(Nor `from __future__ import annotations`: that statement imports the `__future__`
module from sys.path; the modules of the bundle keep the flag without the import.)

    python -I -m sifbox._boot build PACKAGE_DIR BUNDLE     write a bundle
"""

import marshal
import os
import sys
from _frozen_importlib import ModuleSpec  # type: ignore[import-not-found]
from _frozen_importlib_external import MAGIC_NUMBER  # type: ignore[import-not-found]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, ModuleType

FORMAT = "sifbox-bundle-1"
#: The first read of a bundle: the length and the header (the index), in one call.
HEAD_READ = 64 << 10


def _stamp(package_dir: str) -> tuple[int, int]:
    st = os.stat(os.path.join(package_dir, "__init__.py"))
    return st.st_mtime_ns, st.st_size


class BundleFinder:
    """A meta path finder and loader for the modules of one bundle.

    It keeps the bundle open (close-on-exec) and reads each module's code
    when it is imported: a launch reads the few hundred KiB it uses, not
    the whole package.
    """

    def __init__(self, index: dict[str, tuple[bool, str, int, int]], fd: int, base: int) -> None:
        self.index = index
        self.fd = fd
        self.base = base

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        entry = self.index.get(name)
        if entry is None:
            return None
        is_package, origin = entry[0], entry[1]
        spec = ModuleSpec(name, self, origin=origin, is_package=is_package)
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: "ModuleType") -> None:
        _, origin, offset, length = self.index[module.__name__]
        data = os.pread(self.fd, length, self.base + offset)
        if len(data) != length:
            raise ImportError(f"{module.__name__}: the module bundle is truncated", path=origin)
        exec(marshal.loads(data), module.__dict__)  # noqa: S102 - the installed package's own code

    def get_source(self, name: str) -> str | None:
        """For tracebacks and `inspect`: the source file the code was compiled from."""
        try:
            with open(self.index[name][1], encoding="utf-8") as f:
                return f.read()
        except (KeyError, OSError):
            return None


def load(bundle: str, package_dir: str) -> BundleFinder | None:
    """The finder for `bundle` if it is in step with `package_dir` and this Python, else None."""
    try:
        fd = os.open(bundle, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.pread(fd, HEAD_READ, 0)
        size = int.from_bytes(head[:4], "little")
        if size + 4 > len(head):
            head = os.pread(fd, size + 4, 0)
        fmt, magic, stamp, index, length = marshal.loads(head[4 : 4 + size])
        if (fmt == FORMAT and magic == MAGIC_NUMBER and tuple(stamp) == _stamp(package_dir)
                and os.fstat(fd).st_size == 4 + size + length):  # fmt: skip
            return BundleFinder(index, fd, 4 + size)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    os.close(fd)
    return None


def install(bundle: str, package_dir: str) -> bool:
    """Serve imports from `bundle` when it is usable; return whether it is."""
    finder = load(bundle, package_dir)
    if finder is None:
        return False
    sys.meta_path.insert(0, finder)
    return True


def _compile(source: bytes, path: str) -> "CodeType":
    """The module's code. `from __future__ import annotations` is both a compiler flag and,
    when the module runs, an import of the `__future__` module, which the bundle doesn't
    hold (a search of sys.path on every launch): the flag is kept, the import statement goes."""
    import __future__

    import ast

    tree = ast.parse(source, path)
    flags = 0
    for i, node in enumerate(tree.body[:2]):
        if (isinstance(node, ast.ImportFrom) and node.module == "__future__"
                and [(a.name, a.asname) for a in node.names] == [("annotations", None)]):  # fmt: skip
            flags = __future__.annotations.compiler_flag
            del tree.body[i]
            break
    code: CodeType = compile(tree, path, "exec", flags=flags, dont_inherit=True)
    return code


def build(package_dir: str, bundle: str) -> int:
    """Compile every module under `package_dir` into `bundle` (atomically); return their number."""
    package_dir = os.path.abspath(package_dir)
    top = os.path.basename(package_dir)
    index: dict[str, tuple[bool, str, int, int]] = {}
    chunks: list[bytes] = []
    offset = 0
    for here, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and os.path.exists(os.path.join(here, d, "__init__.py")))
        rel = os.path.relpath(here, package_dir)
        prefix = top if rel == "." else top + "." + rel.replace(os.sep, ".")
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = os.path.join(here, file)
            is_package = file == "__init__.py"
            name = prefix if is_package else f"{prefix}.{file[:-3]}"
            with open(path, "rb") as f:
                code = _compile(f.read(), path)
            data = marshal.dumps(code)
            index[name] = (is_package, path, offset, len(data))
            chunks.append(data)
            offset += len(data)
    header = marshal.dumps((FORMAT, MAGIC_NUMBER, _stamp(package_dir), index, offset))
    from sifbox.util.atomic import write_file  # at install time only: not on the launch path

    write_file(bundle, b"".join([len(header).to_bytes(4, "little"), header, *chunks]), mode=0o644)
    return len(index)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "build":
        sys.stderr.write("usage: python -I -m sifbox._boot build PACKAGE_DIR BUNDLE\n")
        sys.exit(2)
    count = build(sys.argv[2], sys.argv[3])
    sys.stdout.write(f"{sys.argv[3]}: {count} modules\n")
