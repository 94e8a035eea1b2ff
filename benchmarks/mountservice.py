"""The mount service for the benchmarks' "mount service" rows: `sifbox mounts serve` on a
socket of its own, serving a store laid out as the admission store lays it out (STORE/USER/
NAME.sif and STORE/.meta/USER/NAME.json with the admitted digest), for root and one user.

The store's SIF files are hard links of the benchmark's image (no copy: the same data, and
the same file server when the store is on one), owned by root, 0644. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from benchlib import Unavailable


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class MountService:
    """`sifbox mounts serve` for `sif`, admitted as NAME.sif of root and of `user` in `store`;
    its socket and configuration in `base`. `conf` is the client's sifbox.conf; `images[who]`
    the path a launch of `who` names."""

    def __init__(self, base: Path, store: Path, sifbox: str, sif: Path, user: str, *, name: str = "img",
                 digest: str | None = None, seen_as: Path | None = None, idle: int = 600) -> None:  # fmt: skip
        """`seen_as`: the store's path as the service and the launches reach it (a file
        server's mount of `store`); `idle`: `mount service idle timeout`."""
        self.base, self.store = base, store
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        digest = digest or sha256_of(sif)
        self.images: dict[str, Path] = {}
        for who in ("root", user):
            udir, meta = store / who, store / ".meta" / who
            for d in (store, udir, store / ".meta", meta):
                d.mkdir(exist_ok=True)
                os.chmod(d, 0o755)
            dest = udir / f"{name}.sif"
            if dest.exists() and not os.path.samefile(dest, sif):
                dest.unlink()
            if not dest.exists():
                try:
                    os.link(sif, dest)
                except OSError as err:
                    raise Unavailable(f"can't link the image into the store: {err.strerror}") from None
            (meta / f"{name}.json").write_text(json.dumps({"digest": digest, "stored_digest": digest}))
            self.images[who] = (seen_as or store) / who / f"{name}.sif"
        sock = base / "run" / "mount.sock"
        self.conf = base / "sifbox.conf"
        self.conf.write_text(f"store path = {seen_as or store}\nmount service = yes\nmount service socket = {sock}\n"
                             f"mount service idle timeout = {idle}\n")  # fmt: skip
        self.run = sock.parent
        os.chmod(self.conf, 0o644)
        self.log = base / "service.log"
        self.log.write_text("")
        self.serve = [sifbox, "-c", str(self.conf), "mounts", "serve"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the service; return once it serves."""
        before = self.log.read_text().count("serving")
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(self.serve, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while self.log.read_text().count("serving") <= before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text().strip().splitlines()
                raise Unavailable(f"the mount service did not start: {tail[-1] if tail else 'no output'}")
            time.sleep(0.02)

    def argv(self, sifbox: str, who: str, *opts: str) -> list[str]:
        """`sifbox -c CONF exec OPTS STORE/who/NAME.sif` (the command follows)."""
        return [sifbox, "-c", str(self.conf), "exec", *opts, str(self.images[who])]

    def restart(self) -> None:
        """Stop it (it detaches its mounts) and start it again: a node without the image mounted."""
        self.stop()
        self.start()

    def mount_count(self) -> int:
        """How many times it has mounted an image so far (its log says each)."""
        return self.log.read_text().count("sifbox mount service: mounted ")

    def mounts(self) -> int:
        """How many mounts of the service there are now (in this mount namespace, the host's)."""
        under = str(self.run) + "/"
        with open("/proc/self/mountinfo") as f:
            return sum(1 for line in f if line.split()[4].startswith(under))

    def wait_unmounted(self, timeout: float = 30.0) -> bool:
        """Wait until its idle images are unmounted (idle timeout); False if they stay."""
        deadline = time.monotonic() + timeout
        while self.mounts():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
