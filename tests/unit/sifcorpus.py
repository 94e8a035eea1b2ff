"""Paths of the shared SIF conformance corpus."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CORPUS = SHARED / "sif-corpus"
IMAGES = CORPUS / "images"
GOLDEN = CORPUS / "golden"
INPUTS = CORPUS / "inputs"
