"""The exec trampoline: a 300-byte static program that execs the payload.

Why: the process that execs the payload is sifbox's Python, whose
/proc/self/exe is the host's interpreter. An image whose /bin/sh is a script
starting `#!/proc/self/exe` makes the kernel run that host binary inside the
container; a root payload could then reopen it for writing and replace the
host's interpreter once sifbox exits (runc's CVE-2019-5736). So the payload is
never exec'd by a process whose executable is a host file: Python execs this
trampoline from a sealed memfd (`process.Trampoline`), and the trampoline
execs the payload. A `#!/proc/self/exe` script then finds the memfd, which no
one can write (F_SEAL_WRITE, F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_SEAL).

What it does, given argv = [NAME, PATH, ARGV0, ARGS...]:

    if argv[0][:8] != "sifbox-e":           # run again by `#!/proc/self/exe`
        write(2, REFUSAL); exit(126)
    fcntl(ERRFD, F_SETFD, FD_CLOEXEC)       # ERRFD closes when PATH runs
    execve(PATH, [ARGV0, ARGS...], envp)
    write(ERRFD, &errno, 4)                 # only if execve failed
    exit(127)

ERRFD, the write end of a pipe whose reader is the supervisor, is written
into the code: the supervisor reads nothing if the payload started and the
errno if it did not. The code is machine code for x86-64 and AArch64
(encodings checked against GNU as in tests/unit/test_trampoline.py).
"""

from __future__ import annotations

import _struct as struct  # the C module: `struct` is a file looked for on sys.path at every launch

_BASE = 0x400000
_EHSIZE = 64
_PHSIZE = 56
_PHNUM = 2
#: e_machine
_MACHINES = {"x86_64": 62, "aarch64": 183}
#: The first 8 bytes of the trampoline's own argv[0] ("sifbox-exec"). A script
#: starting `#!/proc/self/exe` makes the kernel run the trampoline again, with
#: the interpreter's path as argv[0]: it then exits 126 instead of looping.
MAGIC = b"sifbox-e"
REFUSAL = b"sifbox: error: can't run the container's program: its interpreter is /proc/self/exe\n"


def _x86_64(errfd: int) -> bytes:
    fd = struct.pack("<I", errfd)
    body = b"".join((
        b"\xbf" + fd,                 # mov edi, ERRFD
        b"\xbe\x02\x00\x00\x00",      # mov esi, F_SETFD
        b"\xba\x01\x00\x00\x00",      # mov edx, FD_CLOEXEC
        b"\xb8\x48\x00\x00\x00",      # mov eax, SYS_fcntl
        b"\x0f\x05",                  # syscall
        b"\x48\x8b\x7c\x24\x10",      # mov rdi, [rsp+16]          argv[1]: PATH
        b"\x48\x8d\x74\x24\x18",      # lea rsi, [rsp+24]          &argv[2]
        b"\x48\x8b\x0c\x24",          # mov rcx, [rsp]             argc
        b"\x48\x8d\x54\xcc\x10",      # lea rdx, [rsp+rcx*8+16]    envp
        b"\xb8\x3b\x00\x00\x00",      # mov eax, SYS_execve
        b"\x0f\x05",                  # syscall
        b"\xf7\xd8",                  # neg eax                    errno
        b"\x89\x04\x24",              # mov [rsp], eax
        b"\xbf" + fd,                 # mov edi, ERRFD
        b"\x48\x89\xe6",              # mov rsi, rsp
        b"\xba\x04\x00\x00\x00",      # mov edx, 4
        b"\xb8\x01\x00\x00\x00",      # mov eax, SYS_write
        b"\x0f\x05",                  # syscall
        b"\xbf\x7f\x00\x00\x00",      # mov edi, 127
        b"\xb8\xe7\x00\x00\x00",      # mov eax, SYS_exit_group
        b"\x0f\x05",                  # syscall
    ))  # fmt: skip
    refuse = b"".join((
        b"\xbf\x02\x00\x00\x00",      # mov edi, 2
        b"\x48\x8d\x35\x18\x00\x00\x00",  # lea rsi, [rip+24]       REFUSAL
        b"\xba" + struct.pack("<I", len(REFUSAL)),  # mov edx, len
        b"\xb8\x01\x00\x00\x00",      # mov eax, SYS_write
        b"\x0f\x05",                  # syscall
        b"\xbf\x7e\x00\x00\x00",      # mov edi, 126
        b"\xb8\xe7\x00\x00\x00",      # mov eax, SYS_exit_group
        b"\x0f\x05",                  # syscall
        REFUSAL,
    ))  # fmt: skip
    guard = b"".join((
        b"\x48\x8b\x44\x24\x08",      # mov rax, [rsp+8]           argv[0]
        b"\x48\x8b\x00",              # mov rax, [rax]             its first 8 bytes
        b"\x48\xb9" + MAGIC,          # mov rcx, MAGIC
        b"\x48\x39\xc8",              # cmp rax, rcx
        b"\x75" + bytes([len(body)]),  # jne refuse
    ))  # fmt: skip
    return guard + body + refuse


def _movz(reg: int, value: int) -> int:
    return 0xD2800000 | (value << 5) | reg


def _aarch64(errfd: int) -> bytes:
    svc = 0xD4000001
    magic = struct.unpack("<4H", MAGIC)
    guard = (
        0xF94007E9,  # ldr x9, [sp, #8]           argv[0]
        0xF9400129,  # ldr x9, [x9]               its first 8 bytes
        0xD2800000 | (magic[0] << 5) | 10,  # movz x10, MAGIC[0:16]
        0xF2A00000 | (magic[1] << 5) | 10,  # movk x10, MAGIC[16:32], lsl #16
        0xF2C00000 | (magic[2] << 5) | 10,  # movk x10, MAGIC[32:48], lsl #32
        0xF2E00000 | (magic[3] << 5) | 10,  # movk x10, MAGIC[48:64], lsl #48
        0xEB0A013F,  # cmp x9, x10
    )
    words = (
        _movz(0, errfd),  # mov x0, ERRFD
        _movz(1, 2),  # mov x1, F_SETFD
        _movz(2, 1),  # mov x2, FD_CLOEXEC
        _movz(8, 25),  # mov x8, SYS_fcntl
        svc,
        0xF9400BE0,  # ldr x0, [sp, #16]          argv[1]: PATH
        0x910063E1,  # add x1, sp, #24            &argv[2]
        0xF94003E3,  # ldr x3, [sp]               argc
        0x8B236FE2,  # add x2, sp, x3, lsl #3
        0x91004042,  # add x2, x2, #16            envp
        _movz(8, 221),  # mov x8, SYS_execve
        svc,
        0x4B0003E0,  # neg w0, w0                 errno
        0xB90003E0,  # str w0, [sp]
        _movz(0, errfd),  # mov x0, ERRFD
        0x910003E1,  # mov x1, sp
        _movz(2, 4),  # mov x2, 4
        _movz(8, 64),  # mov x8, SYS_write
        svc,
        _movz(0, 127),  # mov x0, 127
        _movz(8, 94),  # mov x8, SYS_exit_group
        svc,
    )
    branch = 0x54000001 | ((len(words) + 1) << 5)  # b.ne refuse
    refuse = (
        _movz(0, 2),  # mov x0, 2
        0x100000E1,  # adr x1, REFUSAL (7 words on)
        _movz(2, len(REFUSAL)),  # mov x2, len
        _movz(8, 64),  # mov x8, SYS_write
        svc,
        _movz(0, 126),  # mov x0, 126
        _movz(8, 94),  # mov x8, SYS_exit_group
        svc,
    )
    all_words = (*guard, branch, *words, *refuse)
    return struct.pack(f"<{len(all_words)}I", *all_words) + REFUSAL


_CODE = {"x86_64": _x86_64, "aarch64": _aarch64}


def supported(machine: str) -> bool:
    return machine in _CODE


def program(machine: str, errfd: int) -> bytes:
    """The trampoline for `machine` (`os.uname().machine`) as an ELF executable."""
    if not 0 <= errfd < 0x10000:
        raise ValueError(f"descriptor {errfd} out of range")
    code = _CODE[machine](errfd)
    size = _EHSIZE + _PHSIZE * _PHNUM + len(code)
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, _MACHINES[machine], 1, _BASE + size - len(code), _EHSIZE, 0, 0,
        _EHSIZE, _PHSIZE, _PHNUM, 64, 0, 0,
    )  # fmt: skip
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)  # PT_LOAD, R+X
    stack = struct.pack("<IIQQQQQQ", 0x6474E551, 6, 0, 0, 0, 0, 0, 16)  # PT_GNU_STACK, RW
    return header + load + stack + code
