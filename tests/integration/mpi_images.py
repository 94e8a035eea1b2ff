"""MPI test programs and images, built once per session as root.

* ``mpich``  likewise with the host's MPICH (ch4/UCX), for `srun --mpi=pmi2` (when installed);
* ``hybrid`` a SIF whose image holds the host's own OpenMPI (and PMIx) files: the Debian
  packages' files plus the shared libraries they need, as `dpkg -L` and `ldd` list them, over
  a busybox root, with the MPI programs in /opt/mpitest. Same version as the host's, so the
  hybrid model (host srun/PMIx, image MPI) and `mpirun` inside one container both work.
* ``bare``   a SIF with glibc and the programs but no MPI, for the bind model (the host's MPI
  bound in at run time);
* ``bind_ready`` the same with `/.singularity.d/env/92-host-mpi.sh`, the image-side recipe of
  the bind model: it puts an MPI bound at /host/lib on LD_LIBRARY_PATH.

The programs, compiled with the host's mpicc: ``hello`` (prints `hello from rank R of N`) and
``ring`` (passes a token around all ranks, then a 1 MiB message between neighbours, which
uses the shared-memory transport between ranks on one node; rank 0 prints `ring done ...`).

Both images are cached under /var/tmp, keyed by the OpenMPI/PMIx package versions and the
program sources, so a re-run only rebuilds when the host's MPI changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import images

PACKAGES = ("openmpi-bin", "libopenmpi3", "libpmix2", "openmpi-common")
MPICH_PACKAGES = ("mpich", "libmpich12", "libucx0")
CACHE = Path("/var/tmp")
SKIP_DIRS = ("/usr/share/doc", "/usr/share/man", "/usr/share/lintian", "/usr/lib/x86_64-linux-gnu/openmpi/include")

HELLO = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, len;
    char name[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(name, &len);
    printf("hello from rank %d of %d on %s\n", rank, size, name);
    MPI_Finalize();
    return 0;
}
"""

RING = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define BIG (1 << 20)
int main(int argc, char **argv) {
    int rank, size, token;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    if (rank == 0) {
        token = 1;
        MPI_Send(&token, 1, MPI_INT, next, 0, MPI_COMM_WORLD);
        MPI_Recv(&token, 1, MPI_INT, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
        MPI_Recv(&token, 1, MPI_INT, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        token += 1;
        MPI_Send(&token, 1, MPI_INT, next, 0, MPI_COMM_WORLD);
    }
    /* a large message to each neighbour: single-copy/shared-memory path */
    char *out = malloc(BIG), *in = malloc(BIG);
    memset(out, rank + 1, BIG);
    MPI_Sendrecv(out, BIG, MPI_CHAR, next, 1, in, BIG, MPI_CHAR, prev, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    int ok = (in[0] == prev + 1 && in[BIG - 1] == prev + 1), all;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    printf("rank %d of %d in the ring\n", rank, size);
    fflush(stdout);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0)
        printf("ring done: token %d after %d ranks, big messages %s\n", token, size, all ? "ok" : "CORRUPT");
    MPI_Finalize();
    return all ? 0 : 3;
}
"""


#: The image side of the bind model: use the host's MPI when it is bound at /host/lib.
BIND_READY_ENV = """#!/bin/sh
if [ -d /host/lib/openmpi/lib ]; then
    export LD_LIBRARY_PATH="/host/lib/openmpi/lib:/host/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export OMPI_MCA_mca_base_component_path=/host/lib/openmpi/lib/openmpi3
    export PMIX_MCA_mca_base_component_path=/host/lib/pmix2/lib/pmix
fi
"""


@dataclass(frozen=True)
class MpiImages:
    hybrid: Path  # SIF with the host's OpenMPI
    bare: Path  # SIF with glibc and the programs, no MPI
    bind_ready: Path  # like `bare`, with an env script that finds an MPI bound at /host/lib
    programs: Path  # host directory with hello and ring (the same binaries)
    mpich: Path | None = None  # SIF with the host's MPICH (None: MPICH is not installed)


def _versions() -> str:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *PACKAGES, *MPICH_PACKAGES],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if "openmpi-bin=" not in proc.stdout:
        pytest.skip("OpenMPI is not installed (Debian packages openmpi-bin, libopenmpi-dev)")
    return proc.stdout


def _copy(path: str, root: Path) -> None:
    """Copy the host's `path` (file or symlink, and a symlink's target) into `root`."""
    dest = root / path.lstrip("/")
    if dest.exists() or dest.is_symlink():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(path):
        target = os.readlink(path)
        dest.symlink_to(target)
        _copy(os.path.normpath(os.path.join(os.path.dirname(path), target)), root)
    elif os.path.isfile(path):
        shutil.copy2(path, dest)


def _elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _libs_of(paths: list[str]) -> set[str]:
    """The shared libraries `ldd` lists for `paths` (resolved on the host)."""
    out: set[str] = set()
    for path in paths:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                out.add(parts[2])
            elif parts and parts[0].startswith("/"):
                out.add(parts[0])
    return out


def _glibc_root(dest: Path, programs: list[str]) -> None:
    images.make_busybox_rootfs(dest)
    for lib in _libs_of(programs) | {"/lib64/ld-linux-x86-64.so.2"}:
        _copy(lib, dest)
    # /lib64, /lib are symlinks on a merged-/usr host: keep the layout.
    for name in ("lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}") and not (dest / name).exists():
            (dest / name).symlink_to(os.readlink(f"/{name}"))


def _ldconfig(root: Path) -> None:
    (root / "etc/ld.so.conf.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/multiarch.conf").write_text("/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True)


def _compile(mpicc: str, out: Path) -> list[str]:
    out.mkdir(parents=True)
    for name, src in (("hello", HELLO), ("ring", RING)):
        (out / f"{name}.c").write_text(src)
        subprocess.run([mpicc, "-O1", "-o", str(out / name), str(out / f"{name}.c")], check=True, capture_output=True)
    out.chmod(0o755)
    return [str(out / "hello"), str(out / "ring")]


def _mpi_image(sifbox_cli: str, base: Path, name: str, packages: tuple[str, ...], programs: list[str]) -> Path:
    """A SIF with the host's files of `packages`, everything they load, and `programs`."""
    root = base / f"{name}-root"
    _glibc_root(root, programs)
    files = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True, check=True).stdout.split("\n")
    elves = []
    for path in files:
        if not path.startswith("/") or path.startswith(SKIP_DIRS) or os.path.isdir(path) and not os.path.islink(path):
            continue
        _copy(path, root)
        if os.path.isfile(path) and _elf(path):
            elves.append(path)
    for lib in _libs_of(elves):
        _copy(lib, root)
    for etc in ("/etc/openmpi",):
        if os.path.isdir(etc) and "openmpi-common" in packages:
            shutil.copytree(etc, root / etc.lstrip("/"), symlinks=True, dirs_exist_ok=True)
    for cmd in ("mpirun", "mpiexec", "orterun", "orted"):
        if os.path.exists(f"/usr/bin/{cmd}") and "openmpi-bin" in packages:
            _copy(f"/usr/bin/{cmd}", root)
    _ldconfig(root)
    (root / "opt/mpitest").mkdir(parents=True)
    for p in programs:
        shutil.copy2(p, root / "opt/mpitest")
    sif = images.make_sif(sifbox_cli, images.mksquashfs(root, base / f"{name}.sqfs"), base / f"{name}.sif")
    (base / f"{name}.sqfs").unlink()
    shutil.rmtree(root)
    return sif


def build(sifbox_cli: str, base: Path) -> MpiImages:
    progs = base / "programs"
    programs = _compile("mpicc.openmpi" if shutil.which("mpicc.openmpi") else "mpicc", progs)
    # The hybrid image: the host's OpenMPI packages and everything they load.
    hybrid = _mpi_image(sifbox_cli, base, "hybrid", PACKAGES, programs)
    mpich = None
    if shutil.which("mpicc.mpich"):
        mpich = _mpi_image(sifbox_cli, base, "mpich", MPICH_PACKAGES, _compile("mpicc.mpich", base / "mpich-programs"))

    # The bind-model image: glibc and the programs, no MPI.
    bare_root = base / "bare-root"
    _glibc_root(bare_root, [])
    _ldconfig(bare_root)
    (bare_root / "opt/mpitest").mkdir(parents=True)
    for p in programs:
        shutil.copy2(p, bare_root / "opt/mpitest")
    bare = images.make_sif(sifbox_cli, images.mksquashfs(bare_root, base / "bare.sqfs"), base / "bare.sif")
    (bare_root / ".singularity.d/env/92-host-mpi.sh").write_text(BIND_READY_ENV)
    ready = images.make_sif(sifbox_cli, images.mksquashfs(bare_root, base / "ready.sqfs"), base / "bind-ready.sif")
    shutil.rmtree(bare_root)
    for p in (base / "bare.sqfs", base / "ready.sqfs"):
        p.unlink()
    return MpiImages(hybrid, bare, ready, progs, mpich)


@pytest.fixture(scope="session")
def mpi_images(sifbox_cli: str) -> MpiImages:
    if os.geteuid() != 0:
        pytest.skip("building the MPI test images needs root")
    for tool in ("mpicc", "mksquashfs", "ldd", "ldconfig"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin") is None:
            pytest.skip(f"{tool} is not installed (Debian packages libopenmpi-dev, squashfs-tools)")
    key = hashlib.sha256((_versions() + HELLO + RING + Path(__file__).read_text()).encode()).hexdigest()[:16]
    base = CACHE / f"sifbox-mpi-images-{key}"
    if not (base / "bind-ready.sif").exists():
        tmp = CACHE / f".sifbox-mpi-images-{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o755)
        try:
            build(sifbox_cli, tmp)
            tmp.rename(base)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for p in (base, base / "programs"):
        p.chmod(0o755)
    mpich = base / "mpich.sif"
    return MpiImages(base / "hybrid.sif", base / "bare.sif", base / "bind-ready.sif", base / "programs",
                     mpich if mpich.exists() else None)


@pytest.fixture(scope="session")
def hpc_image(sifbox_cli: str) -> Iterator[Path]:
    """The busybox test image (as `images.action_images` makes it) as a SIF in a directory of its
    own, whose name other test sessions' leak guards on this shared machine do not match."""
    if os.geteuid() != 0:
        pytest.skip("building the test image needs root")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sifbox-hpc-", dir="/tmp"))
    base.chmod(0o755)
    root = images.make_busybox_rootfs(base / "root")
    sif = images.make_sif(sifbox_cli, images.mksquashfs(root, base / "busybox.sqfs"), base / "busybox.sif")
    yield sif
    shutil.rmtree(base, ignore_errors=True)
