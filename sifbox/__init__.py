"""sifbox: an HPC container platform for SIF images."""

__version__ = "0.1.0"
