"""seccomp profiles (the OCI `linux.seccomp` object, which is also Docker's JSON profile format)
compiled to a BPF program with libseccomp (Debian's `python3-seccomp` binding).

The program is plain bytes: the sandbox loads it (`syscalls.set_seccomp_filter`) in the
payload's process just before execve, after no_new_privs, as runc does. Syscalls a profile
names that this kernel or libseccomp does not know are skipped (as runc skips them); a
profile entry with `includes`/`excludes` (Docker's) applies when its capabilities and
architectures match.
"""

from __future__ import annotations

import os
from typing import Any

from sifbox.util.errors import SifboxError

DEBIAN_DIST = "/usr/lib/python3/dist-packages"
_ARCHES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "ppc64le": "SCMP_ARCH_PPC64LE",
           "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}  # fmt: skip
_OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ")  # fmt: skip
ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS",
           "SCMP_ACT_TRAP", "SCMP_ACT_LOG", "SCMP_ACT_TRACE")  # fmt: skip


class SeccompError(SifboxError):
    reference = "seccomp"


def binding() -> Any:
    """The libseccomp Python binding: importable, or Debian's python3-seccomp for this Python."""
    try:
        import seccomp

        return seccomp
    except ImportError:
        pass
    import importlib.machinery
    import importlib.util

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(DEBIAN_DIST, "seccomp" + suffix)
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("seccomp", path)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
    raise SeccompError("can't apply a seccomp profile: the libseccomp Python binding is not installed",
                       hint="install the Debian package `python3-seccomp`")  # fmt: skip


def available() -> bool:
    try:
        binding()
    except SeccompError:
        return False
    return True


def _action(sc: Any, name: Any, errno_ret: Any, where: str) -> Any:
    if name not in ACTIONS:
        raise SeccompError(f"can't use the seccomp profile: {where}: unknown action `{name}`",
                           hint="one of " + ", ".join(ACTIONS))  # fmt: skip
    if name == "SCMP_ACT_ERRNO":
        return sc.ERRNO(int(errno_ret) if isinstance(errno_ret, int) else 1)  # EPERM, as runc
    if name == "SCMP_ACT_TRACE":
        return sc.TRACE(int(errno_ret) if isinstance(errno_ret, int) else 1)
    return {"SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_KILL": sc.KILL, "SCMP_ACT_KILL_THREAD": sc.KILL,
            "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS, "SCMP_ACT_TRAP": sc.TRAP, "SCMP_ACT_LOG": sc.LOG}[name]  # fmt: skip


def _applies(entry: dict[str, Any], caps: set[str], arch: str) -> bool:
    """Docker's conditions: `includes` must all hold, no `excludes` may."""
    inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    return not (exc.get("arches") and arch in exc["arches"])


def compile_profile(doc: Any, *, caps: frozenset[str] = frozenset(), what: str = "the seccomp profile") -> bytes:
    """The BPF program of profile `doc` for this machine's architecture; `caps`: the names of
    the capabilities the process keeps (for Docker's includes/excludes)."""
    import tempfile

    if not isinstance(doc, dict):
        raise SeccompError(f"can't use {what}: not a JSON object")
    sc = binding()
    machine = os.uname().machine
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    try:
        filt = sc.SyscallFilter(_action(sc, doc.get("defaultAction"), doc.get("defaultErrnoRet"), "defaultAction"))
    except (ValueError, RuntimeError) as err:
        raise SeccompError(f"can't use {what}: {err}") from None
    native = _ARCHES.get(machine)
    for name in doc.get("architectures") or []:
        if name != native and hasattr(sc.Arch, name.removeprefix("SCMP_ARCH_")):
            try:
                filt.add_arch(getattr(sc.Arch, name.removeprefix("SCMP_ARCH_")))
            except (ValueError, RuntimeError):
                pass  # this libseccomp can't filter that architecture
    for i, entry in enumerate(doc.get("syscalls") or []):
        if not isinstance(entry, dict):
            raise SeccompError(f"can't use {what}: syscalls[{i}] is not an object")
        if not _applies(entry, set(caps), arch):
            continue
        action = _action(sc, entry.get("action"), entry.get("errnoRet"), f"syscalls[{i}]")
        args = []
        for a in entry.get("args") or []:
            op = a.get("op")
            if op not in _OPS:
                raise SeccompError(f"can't use {what}: syscalls[{i}]: unknown operator `{op}`")
            kind = getattr(sc, op.removeprefix("SCMP_CMP_"))
            args.append(sc.Arg(int(a.get("index", 0)), kind, int(a.get("value", 0)), int(a.get("valueTwo", 0))))
        names = list(entry.get("names") or []) + ([entry["name"]] if entry.get("name") else [])
        for name in names:
            try:
                filt.add_rule(action, name, *args)
            except (ValueError, RuntimeError, OSError):
                continue  # a syscall this kernel or libseccomp does not know, or the default action
    with tempfile.TemporaryFile() as f:
        filt.export_bpf(f)
        f.seek(0)
        return f.read()


def load_file(path: str, *, caps: frozenset[str] = frozenset()) -> bytes:
    """The BPF program of the JSON profile at `path` (`--security seccomp:PATH`)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.loads(f.read(4 << 20))
    except OSError as err:
        raise SeccompError(f"can't read the seccomp profile `{path}`: {err.strerror}") from None
    except ValueError as err:
        raise SeccompError(f"can't read the seccomp profile `{path}`: not JSON: {err}") from None
    return compile_profile(doc, caps=caps, what=f"the seccomp profile `{path}`")
