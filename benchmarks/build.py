"""OCI image -> SIF: `sifbox pull` (layers streamed into tar2sqfs) next to the unpack-then-squash
pipeline the incumbents use (`skopeo copy` + `umoci unpack` + `mksquashfs` + SIF wrap).

    /usr/bin/python3 benchmarks/build.py [--workdir /var/tmp/sifbox-bench-build] [--size-mb 1024]
                                         [--layers 5] [--runs 1] [--keep] [--sifbox PATH]
                                         [--baseline PATH]

Run as root. Generates (once; reused from WORKDIR with --keep) a multi-layer OCI image of about
SIZE-MB uncompressed: a layer of big files (random, and repetitive text), layers of this machine's
/usr (regular files of mixed sizes, symlinks, hard links), and a last layer with whiteouts and an
opaque directory; each layer tar is added with `umoci raw add-layer` (gzip). It is pushed to a registry (Debian's docker-registry, started on 127.0.0.1 by this script
and stopped at the end; `--source layout` reads the local layout instead). Then:

    sifbox      sifbox pull OUT.sif docker://127.0.0.1:PORT/bench:TAG   (zstd level 3, all CPUs;
                the blobs land in an empty cache under the scratch directory)
    incumbent   skopeo copy docker://127.0.0.1:PORT/bench:TAG oci:COPY:TAG   (the blob cache copy)
                umoci unpack --image COPY:TAG BUNDLE            (the root file system on disk)
                mksquashfs BUNDLE/rootfs OUT.sqfs -comp zstd -Xcompression-level 3
                sifbox sif new + sif add                        (the SIF around it)

Wall time is measured per step; peak scratch disk is the largest disk use of the run's scratch
directory at the end of any step (everything a step leaves is still there then), minus the output
SIF; CPU is the user + system time of every process of the pipeline (what counts on a machine
that other work keeps busy); each column is the median of interleaved rounds (`--runs`). For sifbox that is its cache (the compressed blobs and the converted SIF it keeps for the
next pull); a third row pulls with --disable-cache, whose only scratch is the blobs, and a fourth
with --oci (an OCI-SIF: the same stream into one SquashFS layer, wrapped as SingularityCE's layout;
blobs cached, the OCI-SIF not). `--baseline PATH` adds `pull` and `pull --oci` of another sifbox (an
older build) to every round, for an A/B measured under the same load. Prints a table with the
ratios; never asserts. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchlib import Failed, Unavailable

TAG = "bench"
PARTARCH = {"x86_64": "2", "aarch64": "4", "i686": "1", "ppc64le": "6", "s390x": "11", "riscv64": "12"}
SOURCES = ("/usr/share", "/usr/bin", "/usr/include", "/usr/lib/python3", "/usr/lib/x86_64-linux-gnu",
           "/usr/lib")  # fmt: skip


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


#: CPU seconds (user + system) of every command `run` ran, summed: a pipeline's CPU cost
CPU = [0.0]


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(argv: list[str], **kw: object) -> float:
    t0, c0 = time.monotonic(), _children_cpu()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    dt = time.monotonic() - t0
    CPU[0] += _children_cpu() - c0
    if proc.returncode != 0:
        raise Failed(f"{' '.join(argv[:3])}...: status {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return dt


def du(path: Path, skip: str = "\0") -> int:
    """Bytes allocated under `path` (hard links counted once), but for names containing `skip`."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            if skip in name:
                continue
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total


# -- the test image ---------------------------------------------------------------------------
def _pick_files(budget: int) -> list[Path]:
    """Regular files, symlinks and directories from /usr, up to `budget` bytes of file data."""
    picked: list[Path] = []
    used = 0
    seen: set[str] = set()
    for src in SOURCES:
        if not os.path.isdir(src):
            continue
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            if dirpath in seen:
                continue
            seen.add(dirpath)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if not os.access(p, os.R_OK):
                    continue
                picked.append(p)
                used += st.st_size if p.is_file() and not p.is_symlink() else 0
                if used >= budget:
                    return picked
    return picked


def _layer_tar(files: list[Path], out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in files:
            try:
                tf.add(str(p), arcname=str(p).lstrip("/"), recursive=False)
            except OSError:
                continue


def make_image(workdir: Path, size_mb: int, layers: int) -> Path:
    lay = workdir / "image"
    done = workdir / ".image-complete"
    if done.exists():
        return lay
    shutil.rmtree(lay, ignore_errors=True)
    log(f"generating a {size_mb} MB image in {layers} layers at {lay} (once)")
    run(["umoci", "init", "--layout", str(lay)])
    run(["umoci", "new", "--image", f"{lay}:{TAG}"])
    big = min(size_mb // 8, 128)  # MB of big files: half random (incompressible), half text
    files = _pick_files((size_mb - big) << 20)
    per = max(1, len(files) // max(1, layers - 2))
    tar = workdir / "big.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("opt/big/random.bin", os.urandom(big << 19)),
                           ("opt/big/log.txt", b"".join(b"%08d INFO request served in %d ms from node%02d\n"
                                                        % (i, i % 997, i % 64) for i in range((big << 19) // 50)))):  # fmt: skip
            t = tarfile.TarInfo(name)
            t.size, t.mode, t.mtime = len(data), 0o644, 1_700_000_000
            import io

            tf.addfile(t, io.BytesIO(data))
    run(["umoci", "raw", "add-layer", "--image", f"{lay}:{TAG}", str(tar)])
    log(f"layer 1: big files, {tar.stat().st_size >> 20} MB")
    tar.unlink()
    for i in range(layers - 2):
        chunk = files[i * per : (i + 1) * per] if i < layers - 3 else files[i * per :]
        tar = workdir / f"layer{i}.tar"
        _layer_tar(chunk, tar)
        log(f"layer {i + 2}: {len(chunk)} entries, {tar.stat().st_size >> 20} MB")
        run(["umoci", "raw", "add-layer", "--image", f"{lay}:{TAG}", str(tar)])
        tar.unlink()
    # last layer: whiteouts of a few directories, an opaque directory, changed files
    victims = sorted({str(p.parent).lstrip("/") for p in files[: len(files) // 3]})[:20]
    tar = workdir / "last.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in victims[:10]:
            parent, _, base = d.rpartition("/")
            tf.addfile(tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}"))
        for d in victims[10:11]:
            tf.addfile(tarfile.TarInfo(f"{d}/.wh..wh..opq"))
        t = tarfile.TarInfo("etc/changed")
        t.size = 6
        import io

        tf.addfile(t, io.BytesIO(b"layer\n"))
    run(["umoci", "raw", "add-layer", "--image", f"{lay}:{TAG}", str(tar)])
    tar.unlink()
    run(["umoci", "config", "--image", f"{lay}:{TAG}", "--config.cmd", "/bin/sh"])
    run(["umoci", "gc", "--layout", str(lay)])
    done.touch()
    return lay


# -- the two pipelines ------------------------------------------------------------------------
def bench_sifbox(sifbox: str, src: str, scratch: Path, *flags: str) -> dict[str, float]:
    out = scratch / "out.sif"
    env = dict(os.environ, SIFBOX_TMPDIR=str(scratch), SIFBOX_CACHEDIR=str(scratch / "cache"))
    uri = f"docker://{src}" if not src.startswith("/") else f"oci:{src}:{TAG}"
    # The peak is sampled while the pull runs (its blobs may be gone at the end); the output
    # (out.sif and its temporary file .out.sif.*) is not scratch.
    import threading

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], du(scratch, skip="out.sif"))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        t = run([sifbox, "-q", "pull", *flags, "--force", str(out), uri], env=env)
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], du(scratch, skip="out.sif"))
    return {"total": t, "peak": peak[0], "out": out.stat().st_size}


def bench_sifbox_nocache(sifbox: str, src: str, scratch: Path) -> dict[str, float]:
    return bench_sifbox(sifbox, src, scratch, "--disable-cache")


def bench_sifbox_oci(sifbox: str, src: str, scratch: Path) -> dict[str, float]:
    return bench_sifbox(sifbox, src, scratch, "--oci")


def bench_incumbent(sifbox: str, src: str, scratch: Path) -> dict[str, float]:
    steps: dict[str, float] = {}
    peak = 0
    copy, bundle, sqfs, sif = scratch / "copy", scratch / "bundle", scratch / "out.sqfs", scratch / "out.sif"
    uri = ["--src-tls-verify=false", f"docker://{src}"] if not src.startswith("/") else [f"oci:{src}:{TAG}"]
    steps["skopeo copy"] = run(["skopeo", "copy", "--quiet", *uri, f"oci:{copy}:{TAG}"])
    peak = max(peak, du(scratch))
    steps["umoci unpack"] = run(["umoci", "unpack", "--image", f"{copy}:{TAG}", str(bundle)])
    peak = max(peak, du(scratch))
    steps["mksquashfs"] = run(["mksquashfs", str(bundle / "rootfs"), str(sqfs), "-noappend", "-quiet",
                               "-no-progress", "-comp", "zstd", "-Xcompression-level", "3",
                               "-processors", str(os.cpu_count() or 1)])  # fmt: skip
    peak = max(peak, du(scratch))
    arch = PARTARCH.get(os.uname().machine, "2")
    t = run([sifbox, "sif", "new", str(sif)])
    t += run([sifbox, "sif", "add", str(sif), str(sqfs), "--datatype", "4", "--partfs", "1",
              "--parttype", "2", "--partarch", arch])  # fmt: skip
    steps["sif wrap"] = t
    peak = max(peak, du(scratch))
    steps["total"] = sum(steps.values())
    steps["out"] = sif.stat().st_size
    steps["peak"] = peak - steps["out"]
    return steps


class Registry:
    """Debian's docker-registry on a free port of 127.0.0.1, storage under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        import socket
        import urllib.request

        shutil.rmtree(workdir, ignore_errors=True)
        (workdir / "storage").mkdir(parents=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        self.workdir = workdir
        config = workdir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                          f"    rootdirectory: {workdir / 'storage'}\nhttp:\n  addr: {self.host}\n")  # fmt: skip
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Failed("docker-registry did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/var/tmp/sifbox-bench-build")
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the generated image for the next run")
    ap.add_argument("--sifbox", default=shutil.which("sifbox") or "/usr/local/bin/sifbox")
    ap.add_argument("--source", choices=("registry", "layout"), default="registry")
    ap.add_argument("--baseline", help="another sifbox whose pull and pull --oci run in every round too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run me as root", file=sys.stderr)
        return 2
    for tool in ("umoci", "skopeo", "mksquashfs", "tar2sqfs") + (("docker-registry",) if args.source == "registry" else ()):
        if shutil.which(tool) is None:
            print(f"`{tool}` is not installed", file=sys.stderr)
            return 2
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    registry = None
    try:
        lay = make_image(workdir, args.size_mb, args.layers)
        compressed = du(lay / "blobs")
        src = str(lay)
        if args.source == "registry":
            registry = Registry(workdir / "registry")
            src = f"{registry.host}/bench:{TAG}"
            log(f"pushing the image to the registry at {registry.host}")
            run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{lay}:{TAG}", f"docker://{src}"])
        results: dict[str, list[dict[str, float]]] = {"sifbox": [], "nocache": [], "oci": [], "incumbent": []}
        pipelines = [("incumbent", bench_incumbent, args.sifbox), ("sifbox", bench_sifbox, args.sifbox),
                     ("nocache", bench_sifbox_nocache, args.sifbox), ("oci", bench_sifbox_oci, args.sifbox)]  # fmt: skip
        if args.baseline:
            results.update({"base": [], "base-oci": []})
            pipelines += [("base", bench_sifbox, args.baseline), ("base-oci", bench_sifbox_oci, args.baseline)]
        load0 = f"{os.getloadavg()[0]:.1f}"
        for r in range(args.runs):
            for name, fn, exe in pipelines:
                scratch = workdir / f"scratch-{name}"
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir()
                subprocess.run(["sync"], check=False)
                log(f"run {r + 1}/{args.runs}: {name}")
                CPU[0] = 0.0
                try:
                    results[name].append(fn(exe, src, scratch))
                    results[name][-1]["cpu"] = CPU[0]
                except (Failed, Unavailable) as err:
                    print(f"{name}: failed ({err})", file=sys.stderr)
                    return 1
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
        import statistics

        # medians of the interleaved rounds, each column on its own
        best = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in results.items()}
        s, inc, nc, oc = best["sifbox"], best["incumbent"], best["nocache"], best["oci"]
        mb = 1 << 20
        print(f"\nOCI image -> SIF from the {args.source}, {args.size_mb} MB uncompressed, {args.layers} layers, "
              f"{compressed / mb:.0f} MB compressed (gzip); {os.cpu_count()} CPUs; median of {args.runs} "
              f"interleaved rounds; load average {load0} before, {os.getloadavg()[0]:.1f} after\n")  # fmt: skip
        print(f"{'pipeline':<42} {'wall s':>8} {'CPU s':>8} {'peak scratch MB':>16} {'SIF MB':>8}")
        print("-" * 87)
        for step in ("skopeo copy", "umoci unpack", "mksquashfs", "sif wrap"):
            print(f"  incumbent: {step:<29} {inc[step]:>8.1f}")
        rows = (("incumbent (skopeo+umoci+mksquashfs+sif)", inc), ("sifbox pull (streamed into tar2sqfs)", s),
                ("sifbox pull --disable-cache", nc), ("sifbox pull --oci (OCI-SIF)", oc))  # fmt: skip
        for label, row in rows:
            print(f"{label:<42} {row['total']:>8.1f} {row['cpu']:>8.1f} {row['peak'] / mb:>16.0f} {row['out'] / mb:>8.0f}")
        print("-" * 87)
        for label, row in rows[1:]:
            short = label.split(" (")[0].removeprefix("sifbox ")
            print(f"{'ratio incumbent / ' + short:<42} {inc['total'] / row['total']:>7.2f}x "
                  f"{inc['cpu'] / row['cpu']:>7.2f}x {inc['peak'] / max(1, row['peak']):>15.2f}x")  # fmt: skip
        if args.baseline:
            for label, mine, theirs in (("pull", s, best["base"]), ("pull --oci", oc, best["base-oci"])):
                print(f"{'baseline ' + label:<42} {theirs['total']:>8.1f} {theirs['cpu']:>8.1f}")
                print(f"{'ratio baseline / ' + label:<42} {theirs['total'] / mine['total']:>7.2f}x "
                      f"{theirs['cpu'] / mine['cpu']:>7.2f}x   (incumbent / baseline: "
                      f"{inc['total'] / theirs['total']:.2f}x wall)")  # fmt: skip
        print(f"{'sifbox peak scratch / compressed image':<42} {'':>17} {s['peak'] / compressed:>15.2f}x")
        print(f"{'  with --disable-cache':<42} {'':>17} {nc['peak'] / compressed:>15.2f}x")
        print(f"{'  with --oci':<42} {'':>17} {oc['peak'] / compressed:>15.2f}x")
    finally:
        if registry is not None:
            registry.stop()
        if not args.keep:
            shutil.rmtree(workdir / "image", ignore_errors=True)
            (workdir / ".image-complete").unlink(missing_ok=True)
            with_rest = list(workdir.iterdir()) if workdir.exists() else []
            if not with_rest:
                workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
