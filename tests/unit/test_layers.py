"""Imports flow one way: DESIGN.md's layers, checked on every import of the package
(lazy imports inside functions included), and no import cycle between packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sifbox"

#: Lower layers first. A module may import its own package and packages of lower layers;
#: packages on the same layer don't import each other.
LAYERS = (
    ("util",),
    ("formats", "runtime.sandbox"),
    ("config",),
    ("image", "hpc"),
    ("oci",),
    ("security",),
    ("runtime",),
    ("build",),
    ("cli",),
)
LEVEL = {pkg: n for n, group in enumerate(LAYERS) for pkg in group}
#: The top package and its entry points belong to no layer: `sifbox` (its __version__)
#: may be imported from anywhere, `__main__` and `_boot` import what they start.
FREE = {"sifbox", "sifbox.__main__", "sifbox._boot"}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if module in FREE or len(parts) < 2:
        return None
    if parts[1] == "runtime" and len(parts) > 2 and parts[2] == "sandbox":
        return "runtime.sandbox"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("sifbox"):
            found.append((node.lineno, node.module))
            # `from sifbox.runtime import sandbox` names a package too
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if package_of(sub) != package_of(node.module) and (PACKAGE.parent / sub.replace(".", "/")).exists():
                    found.append((node.lineno, sub))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sifbox")]
    return found


def all_edges() -> list[tuple[str, int, str, str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = module_name(path)
        src_pkg = package_of(src)
        for line, target in imports_of(path):
            dst_pkg = package_of(target)
            if src_pkg and dst_pkg and src_pkg != dst_pkg:
                edges.append((f"{path.relative_to(PACKAGE.parent)}", line, target, src_pkg, dst_pkg))
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert packages <= set(LEVEL), f"give these packages a layer: {sorted(packages - set(LEVEL))}"


def test_imports_only_flow_downwards() -> None:
    upward = [f"{where}:{line}: {src} imports {target} ({dst})"
              for where, line, target, src, dst in all_edges() if LEVEL[dst] >= LEVEL[src]]  # fmt: skip
    assert not upward, "imports against the layer order of DESIGN.md:\n" + "\n".join(upward)


def test_sandbox_imports_nothing_above_util() -> None:
    bad = [f"{where}:{line}: {target}" for where, line, target, src, dst in all_edges()
           if src == "runtime.sandbox" and dst != "util"]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for _, _, _, src, dst in all_edges():
        graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [pkg for pkg in graph if reaches(pkg, pkg, {pkg})]
    assert not cycles, f"packages on an import cycle: {sorted(cycles)}"


@pytest.mark.parametrize("layer", [p for group in LAYERS for p in group])
def test_layer_table_names_real_packages(layer: str) -> None:
    assert (PACKAGE / layer.replace(".", "/")).is_dir()


def test_sandbox_is_handed_data_not_callbacks() -> None:
    """No function of the sandbox takes a callable: the launcher hands it data (its `ops`
    records, descriptors, paths) and decides itself what to do with what it returns."""
    found = []
    for path in sorted((PACKAGE / "runtime" / "sandbox").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            for a in args:
                text = ast.unparse(a.annotation) if a.annotation is not None else ""
                if "Callable" in text or a.arg in ("log", "callback", "payload", "hold", "prepare", "start"):
                    found.append(f"{path.name}:{node.lineno} {node.name}({a.arg}: {text})")
    assert not found, "\n".join(found)
