"""The only code of sifbox that calls unshare, mount, pivot_root, capset.

A closed set of operations over ctypes (`syscalls`), and `setup`, which
turns a pure mount plan into a container root in the calling process.
"""
