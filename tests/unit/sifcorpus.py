"""Paths of the SIF conformance corpus vendored under tests/data, and the SIF fuzz target."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
CORPUS = DATA / "sif-corpus"
IMAGES = CORPUS / "images"
GOLDEN = CORPUS / "golden"
INPUTS = CORPUS / "inputs"
KEYS = CORPUS / "keys"

FUZZ_TARGET = REPO / "fuzz" / "fuzz_sif.py"


def load_fuzz_target() -> ModuleType:
    """fuzz/fuzz_sif.py as a module (it is a script, not part of the package)."""
    if "fuzz_sif" in sys.modules:
        return sys.modules["fuzz_sif"]
    if str(FUZZ_TARGET.parent) not in sys.path:
        sys.path.append(str(FUZZ_TARGET.parent))  # the target imports its shared `fuzzlib`
    spec = importlib.util.spec_from_file_location("fuzz_sif", FUZZ_TARGET)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["fuzz_sif"] = module
    return module
