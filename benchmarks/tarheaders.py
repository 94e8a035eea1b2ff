"""Pass 1's tar header reading: headers per second of `sifbox.oci.tarhead.FastTarInfo` next to
tarfile's own `TarInfo`, read the way `layers.open_tar` + `iter_members` read a layer stream.

    /opt/sifbox/venv/bin/python benchmarks/tarheaders.py [--entries 50000] [--rounds 5] [--layout DIR]

The layer is made in memory: ENTRIES entries as a container build writes them (PAX format,
each behind a PAX extended header with a fractional mtime, atime and ctime; files of mixed
sizes, directories, symbolic and hard links, a few xattrs). Each round reads it once with each
class, in alternating order; the table gives the medians and their ratio. Both reads are checked
to give the same entries. `--layout DIR` (an OCI image layout, e.g. the image benchmarks/build.py
--keep leaves in WORKDIR/image) adds pass 1 of that image as a pull runs it (`convert.merge_plan`:
every layer decompressed, its headers read, the merged file set planned), with each reader: wall
time, and the CPU time of this process (the decompressor may be a child). Asserts nothing on time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sifbox.oci import convert, layers, layout, tarhead


def make_layer(entries: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(entries):
            t = tarfile.TarInfo(f"usr/lib/python3/dist-packages/pkg{i // 100}/module_{i}.py")
            kind = i % 10
            t.type = {0: tarfile.DIRTYPE, 1: tarfile.SYMTYPE, 2: tarfile.LNKTYPE}.get(kind, tarfile.REGTYPE)
            t.linkname = "usr/lib/python3/dist-packages/pkg0/module_3.py" if kind in (1, 2) else ""
            t.size = (i * 37) % 3000 if t.type == tarfile.REGTYPE else 0
            t.mode, t.mtime = 0o644, 1700000000.123456
            t.pax_headers = {"mtime": "1700000000.123456", "atime": "1700000000.5", "ctime": "1700000000.5"}
            if i % 50 == 0:
                t.pax_headers["SCHILY.xattr.security.capability"] = "x"
            tf.addfile(t, io.BytesIO(b"x" * t.size))
    return buf.getvalue()


def read(data: bytes, cls: type[tarfile.TarInfo]) -> tuple[float, list[tuple[object, ...]]]:
    start = time.perf_counter()
    stream = layers._EndsOnce(io.BufferedReader(io.BytesIO(data), 1 << 20), "bench")  # type: ignore[arg-type]
    tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=cls)  # type: ignore[call-overload]  # noqa: SIM115
    out = []
    while (m := tf.next()) is not None:
        tf.members = []
        out.append((m.name, m.type, m.size, m.mode, m.mtime, m.linkname, m.offset_data, m.pax_headers))
    return time.perf_counter() - start, out


def pass1(image: str) -> tuple[float, float, int]:
    img = layout.open_image(layout.parse_source(f"oci:{image}"))
    wall, cpu = time.perf_counter(), time.process_time()
    merger = convert.merge_plan(img, source="oci:bench", epoch=0, warn=lambda m: None, step=lambda *a: None)
    plan = merger.plan()
    return time.perf_counter() - wall, time.process_time() - cpu, plan.file_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layout", help="an OCI image layout whose pass 1 is timed too")
    args = ap.parse_args()
    data = make_layer(args.entries)
    times: dict[str, list[float]] = {"tarfile": [], "tarhead": []}
    classes = {"tarfile": tarfile.TarInfo, "tarhead": tarhead.FastTarInfo}
    for r in range(args.rounds):
        order = ["tarfile", "tarhead"] if r % 2 == 0 else ["tarhead", "tarfile"]
        results = {}
        for name in order:
            t, results[name] = read(data, classes[name])
            times[name].append(t)
        assert results["tarfile"] == results["tarhead"], "the two readers differ"
    headers = 2 * args.entries  # a PAX extended header and a ustar block per entry
    print(f"{args.entries} entries ({headers} header blocks, {len(data) >> 20} MiB), {args.rounds} rounds, medians")
    print(f"{'reader':<10} {'seconds':>8} {'headers/s':>11} {'vs tarfile':>10}")
    base = statistics.median(times["tarfile"])
    for name in ("tarfile", "tarhead"):
        med = statistics.median(times[name])
        print(f"{name:<10} {med:8.3f} {headers / med:11.0f} {base / med:9.2f}x")
    if args.layout:
        walls: dict[str, list[float]] = {"tarfile": [], "tarhead": []}
        cpus: dict[str, list[float]] = {"tarfile": [], "tarhead": []}
        files = set()
        for r in range(args.rounds):
            for name in ["tarfile", "tarhead"] if r % 2 == 0 else ["tarhead", "tarfile"]:
                layers.FastTarInfo = classes[name]  # type: ignore[misc]  # what open_tar opens with
                wall, cpu, count = pass1(args.layout)
                walls[name].append(wall)
                cpus[name].append(cpu)
                files.add(count)
        layers.FastTarInfo = tarhead.FastTarInfo  # type: ignore[misc]
        assert len(files) == 1, "the two readers planned different images"
        print(f"\npass 1 of {args.layout} ({files.pop()} files), {args.rounds} rounds, medians")
        print(f"{'reader':<10} {'wall s':>8} {'CPU s':>8} {'CPU vs tarfile':>15}")
        base = statistics.median(cpus["tarfile"])
        for name in ("tarfile", "tarhead"):
            cpu = statistics.median(cpus[name])
            print(f"{name:<10} {statistics.median(walls[name]):8.2f} {cpu:8.2f} {base / cpu:14.2f}x")


if __name__ == "__main__":
    main()
