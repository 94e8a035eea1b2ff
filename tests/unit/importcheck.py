"""For the tests of what a launch path imports: which of some modules a fresh interpreter
(`-I -S`, as the installed launcher starts) has loaded after importing others and running code."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(imported: Sequence[str], body: str, watched: Sequence[str]) -> list[str]:
    """The names of `watched` in sys.modules once `imported` are imported and `body` ran."""
    script = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}]
for name in {tuple(imported)!r}:
    __import__(name)
{body}
print(" ".join(m for m in {tuple(watched)!r} if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return (proc.stdout.splitlines() or [""])[-1].split()
