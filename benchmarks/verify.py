#!/usr/bin/env python3
"""Sign and verify a 2 GB SIF image, next to `openssl dgst -sha256` of the same file.

`openssl dgst -sha256` is the floor: signing and verifying hash every signed
byte once with SHA-256. Each operation runs with a cold page cache (as root:
`echo 3 > /proc/sys/vm/drop_caches` first) and warm (after a read of the
file), best of `--runs`. Prints a table with throughput and the ratio to
openssl (1.0 = as fast as openssl).

    /usr/bin/python3 benchmarks/verify.py [--size-mib 2048] [--runs 3] [--sifbox PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def drop_caches() -> bool:
    if os.geteuid() != 0:
        return False
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    return True


def warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    ap.add_argument("--dir", default=None, help="directory for the image (default: a new one in /var/tmp)")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sifbox-bench-verify-", dir=args.dir or "/var/tmp")
    env = dict(os.environ, HOME=work)
    try:
        part = os.path.join(work, "part.bin")
        img = os.path.join(work, "image.sif")
        key = os.path.join(work, "key.pem")
        print(f"making a {args.size_mib} MiB image in {work} ...", file=sys.stderr)
        with open(part, "wb") as f:
            chunk = os.urandom(64 << 20)
            for i in range(0, args.size_mib, 64):
                n = min(64, args.size_mib - i) << 20
                f.write(chunk[:n])
        sb = args.sifbox
        subprocess.run([sb, "sif", "new", img], check=True, env=env)
        subprocess.run([sb, "sif", "add", "--datatype", "4", "--partfs", "1", "--parttype", "2", "--partarch", "2",
                        "--groupid", "1", img, part], check=True, env=env)  # fmt: skip
        os.unlink(part)
        subprocess.run([sb, "key", "newpair", "--pem", "ed25519", "-o", key], check=True, env=env,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        size = os.path.getsize(img)
        signed = os.path.join(work, "signed.sif")
        ops = {
            "openssl dgst -sha256": lambda: ["openssl", "dgst", "-sha256", img],
            "sifbox sign (DSSE)": None,
            "sifbox verify (DSSE)": lambda: [sb, "verify", "--key", key + ".pub", signed],
        }
        # Sign once to have a signed image; the timed sign runs on fresh copies.
        shutil.copyfile(img, signed)
        subprocess.run([sb, "sign", "--key", key, signed], check=True, env=env, capture_output=True)
        can_drop = os.geteuid() == 0
        results: dict[str, dict[str, float]] = {}
        for name, make in ops.items():
            results[name] = {}
            for mode in ("cold", "warm"):
                if mode == "cold" and not can_drop:
                    continue
                best = float("inf")
                for _ in range(args.runs):
                    if make is None:  # sign: start from an unsigned copy each time
                        target = os.path.join(work, "to-sign.sif")
                        shutil.copyfile(img, target)
                        argv = [sb, "sign", "--key", key, target]
                        path = target
                    else:
                        argv = make()
                        path = argv[-1]
                    if mode == "cold":
                        drop_caches()
                    else:
                        warm(path)
                    best = min(best, timed(argv, env))
                results[name][mode] = best
        gib = size / (1 << 30)
        print(f"\nimage: {size / (1 << 20):.0f} MiB, best of {args.runs}"
              + ("" if can_drop else " (cold cache skipped: not root)"))  # fmt: skip
        print(f"{'operation':<24} {'cache':<5} {'seconds':>8} {'GiB/s':>7} {'vs openssl':>10}")
        print("-" * 58)
        for mode in ("cold", "warm"):
            floor = results["openssl dgst -sha256"].get(mode)
            for name, r in results.items():
                if mode not in r:
                    continue
                t = r[mode]
                ratio = floor / t if floor else float("nan")
                print(f"{name:<24} {mode:<5} {t:>8.2f} {gib / t:>7.2f} {ratio:>9.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
