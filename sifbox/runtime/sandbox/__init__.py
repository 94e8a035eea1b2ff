"""The only code of sifbox that calls unshare, mount, pivot_root, setns, capset.

The bottom layer: it imports nothing of sifbox but `sifbox.util`, and is
handed data (`ops`), never callbacks. A closed set of operations over ctypes
(`syscalls`); `namespaces` creates the container's namespaces, `rootfs`
builds its root and moves into it, `process` locks the payload down and
execs it through the sealed trampoline, `join` enters a running container.
"""
