"""`--nv`, `--rocm`, `--nvccli`, `--device`/`--cdi-dirs` with a fake driver, as root and as the test user.

No GPU here: the test builds stub driver libraries (`libcuda.so.1`, `libnvidia-ml.so.1`, ROCm's
`libhsa-runtime64.so.1`) with gcc, fake `nvidia-smi`/`rocm-smi` programs, and registers the
libraries in its own linker cache (`ldconfig -C CACHE -f CONF`), which sifbox reads through
the `ldconfig path` directive of a test sifbox.conf (a wrapper running `ldconfig -C CACHE`).
Device nodes are made with mknod in a directory named by SIFBOX_GPU_DEVICE_ROOT, and show in
a container with a minimal /dev (`--contain`). The code path is the one a real driver takes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import mpi_images as hpc
from tests.integration.images import LAUNCH_TIMEOUT, env_for

pytestmark = pytest.mark.integration

hpc_image = hpc.hpc_image

STUB = "int {sym}(void) {{ return 0; }}\n"


@dataclass(frozen=True)
class FakeDriver:
    root: Path
    conf: Path  # sifbox.conf with `ldconfig path` = the wrapper
    bin: Path  # fake nvidia-smi, rocm-smi (put on PATH)
    dev: Path  # fake device nodes
    empty_conf: Path  # sifbox.conf whose linker cache has no driver


def _lib(dest: Path, soname: str, sym: str) -> None:
    src = dest / f"{sym}.c"
    src.write_text(STUB.format(sym=sym))
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(dest / soname), str(src)],
                   check=True, capture_output=True)  # fmt: skip
    src.unlink()


def _cache(root: Path, name: str, libdir: Path) -> Path:
    """A linker cache of `libdir` (plus the system's) and an ldconfig wrapper that reads it."""
    ldconf = root / f"{name}.conf"
    ldconf.write_text(f"{libdir}\n")
    cache = root / f"{name}.cache"
    subprocess.run(["ldconfig", "-C", str(cache), "-f", str(ldconf)], check=True, capture_output=True)
    wrapper = root / f"ldconfig-{name}"
    wrapper.write_text(f'#!/bin/sh\nexec /sbin/ldconfig -C {cache} "$@"\n')
    wrapper.chmod(0o755)
    conf = root / f"sifbox-{name}.conf"
    conf.write_text(f"ldconfig path = {wrapper}\n")
    return conf


@pytest.fixture(scope="module")
def fake_driver() -> FakeDriver:
    if os.geteuid() != 0:
        pytest.skip("device nodes for the fake driver need root (mknod)")
    for tool in ("gcc", "ldconfig"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/sbin:/usr/sbin") is None:
            pytest.skip(f"{tool} is not installed")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="sifbox-gpu-", dir="/tmp"))
    lib, empty, bin_, dev = root / "lib", root / "empty", root / "bin", root / "dev"
    for d in (lib, empty, bin_, dev, dev / "dri"):
        d.mkdir()
    _lib(lib, "libcuda.so.1", "cuInit")
    _lib(lib, "libnvidia-ml.so.1", "nvmlInit")
    _lib(lib, "libhsa-runtime64.so.1", "hsa_init")
    (bin_ / "nvidia-smi").write_text('#!/bin/sh\necho "NVIDIA-SMI 999.99 fake driver, GPUs: $(ls /dev | grep -c "^nvidia[0-9]")"\n')
    (bin_ / "rocm-smi").write_text('#!/bin/sh\necho "ROCm SMI fake"\n')
    for name, minor in (("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255)):
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(195, minor))
    os.mknod(dev / "kfd", 0o666 | 0o020000, os.makedev(234, 0))
    os.mknod(dev / "dri" / "renderD128", 0o666 | 0o020000, os.makedev(226, 128))
    conf = _cache(root, "driver", lib)
    empty_conf = _cache(root, "nodriver", empty)
    # The lists name only the fake driver's files, so that the host's own GL libraries
    # (in the system part of the cache) stay out of the assertions.
    (root / "nvliblist.conf").write_text("# test list\nnvidia-smi\nlibcuda.so\nlibnvidia-ml.so\n")
    (root / "rocmliblist.conf").write_text("rocm-smi\nlibhsa-runtime64.so\n")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    for p in (bin_ / "nvidia-smi", bin_ / "rocm-smi"):
        p.chmod(0o755)
    yield FakeDriver(root, conf, bin_, dev, empty_conf)
    shutil.rmtree(root, ignore_errors=True)


def _env(who, drv: FakeDriver, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = env_for(who, SIFBOX_GPU_DEVICE_ROOT=str(drv.dev), **extra)
    env["PATH"] = f"{drv.bin}:{env['PATH']}"
    return env


def _run(run_as, who, cli, conf, args, script, env):  # type: ignore[no-untyped-def]
    return run_as(who, [cli, "--config", str(conf), "exec", *args, "sh", "-c", script],
                  env=env, timeout=LAUNCH_TIMEOUT)  # fmt: skip


def test_nv_binds_libraries_binaries_and_devices(run_as, as_who, sifbox_cli, fake_driver: FakeDriver,
                                                 hpc_image: Path) -> None:  # fmt: skip
    script = ("ls /.singularity.d/libs; echo LD=$LD_LIBRARY_PATH; nvidia-smi; "
              "ls /dev | grep nvidia; cat /.singularity.d/libs/libcuda.so.1 | head -c 4 | od -c | head -1")  # fmt: skip
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.conf, ["--nv", "--contain", str(hpc_image)],
                script, _env(as_who, fake_driver))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "libcuda.so.1" in out and "libnvidia-ml.so.1" in out
    assert "LD=/.singularity.d/libs" in out
    assert "NVIDIA-SMI 999.99 fake driver, GPUs: 2" in out
    assert [ln for ln in out if ln.startswith("nvidia")] == ["nvidia0", "nvidia1", "nvidiactl"]
    assert "E   L   F" in proc.stdout  # the real stub library, readable inside
    assert "WARNING" not in proc.stderr


def test_nv_visible_devices(run_as, as_who, sifbox_cli, fake_driver: FakeDriver, hpc_image: Path) -> None:
    script = 'ls /dev | grep nvidia | tr "\\n" " "; echo; echo "cuda=$CUDA_VISIBLE_DEVICES"'
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.conf, ["--nv", "--contain", str(hpc_image)],
                script, _env(as_who, fake_driver, NVIDIA_VISIBLE_DEVICES="1", CUDA_VISIBLE_DEVICES="0"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["nvidia1 nvidiactl ", "cuda=0"]
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.conf, ["--nv", "--contain", str(hpc_image)],
                script, _env(as_who, fake_driver, NVIDIA_VISIBLE_DEVICES="none"))  # fmt: skip
    assert proc.stdout.splitlines()[0] == "nvidiactl "


def test_nv_with_host_dev(run_as, as_who, sifbox_cli, fake_driver: FakeDriver, hpc_image: Path) -> None:
    """Without --contain the container has the host's /dev: libraries and binaries as before."""
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.conf, ["--nv", str(hpc_image)],
                "ls /.singularity.d/libs; nvidia-smi", _env(as_who, fake_driver))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "libcuda.so.1" in proc.stdout and "NVIDIA-SMI 999.99" in proc.stdout
    if not as_who.is_root:  # a contained root container has its own minimal /dev: the nodes are bound
        assert "bound only with a minimal /dev" in proc.stderr  # the fake device root can't join the host's /dev


def test_nv_from_environment_variable(run_as, as_who, sifbox_cli, fake_driver: FakeDriver,
                                      hpc_image: Path) -> None:  # fmt: skip
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.conf, ["--contain", str(hpc_image)],
                "ls /.singularity.d/libs", _env(as_who, fake_driver, APPTAINER_NV="1"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "libnvidia-ml.so.1" in proc.stdout.split()


def test_nv_without_driver_warns_and_starts(run_as, as_who, sifbox_cli, fake_driver: FakeDriver,
                                            hpc_image: Path) -> None:  # fmt: skip
    env = env_for(as_who, SIFBOX_GPU_DEVICE_ROOT=str(fake_driver.root / "empty"))
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.empty_conf, ["--nv", str(hpc_image)],
                "echo started; ls /.singularity.d/libs | grep -c cuda", env)  # fmt: skip
    assert proc.stdout.splitlines() == ["started", "0"]
    assert "WARNING  Could not find any nv files on this host!" in proc.stderr or \
        "Could not find any nv files on this host!" in proc.stderr  # fmt: skip


def test_rocm(run_as, as_who, sifbox_cli, fake_driver: FakeDriver, hpc_image: Path) -> None:
    proc = _run(run_as, as_who, sifbox_cli, fake_driver.conf, ["--rocm", "--contain", str(hpc_image)],
                "ls /.singularity.d/libs; rocm-smi; ls /dev/kfd /dev/dri", _env(as_who, fake_driver))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert "libhsa-runtime64.so.1" in out and "ROCm" in out and "/dev/kfd" in out and "renderD128" in out


def test_nvccli_without_the_tool(run_as, as_who, sifbox_cli, fake_driver: FakeDriver, hpc_image: Path) -> None:
    env = env_for(as_who, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    proc = run_as(as_who, [sifbox_cli, "exec", "--nvccli", str(hpc_image), "true"], env=env,
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    if shutil.which("nvidia-container-cli"):
        pytest.skip("nvidia-container-cli is installed here")
    assert proc.returncode == 125
    assert proc.stderr.startswith("sifbox: error: can't use --nvccli: nvidia-container-cli is not installed\n")
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr


# --- CDI -----------------------------------------------------------------------------------------

CDI_YAML = """cdiVersion: "0.6.0"
kind: example.com/gpu
containerEdits:
  env:
    - EXAMPLE_SPEC=yes
devices:
  - name: card0
    containerEdits:
      deviceNodes:
        - path: /dev/example-card0
          hostPath: {dev}/nvidia0
      env:
        - EXAMPLE_DEVICE=card0
      mounts:
        - hostPath: {lib}
          containerPath: /opt/example-driver
          options: [ro, nosuid, bind]
      hooks:
        - hookName: createContainer
          path: /usr/bin/true
          args: [true, update-ldcache]
  - name: card1
    containerEdits:
      deviceNodes:
        - path: /dev/example-card1
          hostPath: {dev}/nvidia1
"""


@pytest.fixture
def cdi_dir(fake_driver: FakeDriver) -> Path:
    d = fake_driver.root / "cdi"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    (d / "example.yaml").write_text(CDI_YAML.format(dev=fake_driver.dev, lib=fake_driver.root / "lib"))
    (d / "other.json").write_text(json.dumps({
        "cdiVersion": "0.5.0", "kind": "vendor.org/fpga",
        "devices": [{"name": "f0", "containerEdits": {"env": ["FPGA=f0"]}}],
    }))  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    return d


def test_cdi_device(run_as, as_who, sifbox_cli, cdi_dir: Path, hpc_image: Path) -> None:
    script = ("ls /dev | grep example; echo spec=$EXAMPLE_SPEC dev=$EXAMPLE_DEVICE fpga=$FPGA; "
              "ls /opt/example-driver; touch /opt/example-driver/x 2>/dev/null || echo read-only")  # fmt: skip
    proc = run_as(as_who, [sifbox_cli, "exec", "--contain", "--cdi-dirs", str(cdi_dir),
                           "--device", "example.com/gpu=card0", "--device", "vendor.org/fpga=f0",
                           str(hpc_image), "sh", "-c", script],
                  env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "example-card0"
    assert out[1] == "spec=yes dev=card0 fpga=f0"
    assert "libcuda.so.1" in out and out[-1] == "read-only"
    assert "CDI hook `/usr/bin/true` (createContainer) is not run" in proc.stderr


def test_cdi_unknown_device(run_as, as_who, sifbox_cli, cdi_dir: Path, hpc_image: Path) -> None:
    proc = run_as(as_who, [sifbox_cli, "exec", "--cdi-dirs", str(cdi_dir), "--device", "example.com/gpu=card9",
                           str(hpc_image), "true"], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 255
    assert proc.stderr.startswith(f"sifbox: error: can't use device `example.com/gpu=card9`: no CDI spec in {cdi_dir}")
    assert "example.com/gpu=card0" in proc.stderr  # the hint lists what exists
    proc = run_as(as_who, [sifbox_cli, "exec", "--device", "not-a-device", str(hpc_image), "true"],
                  env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 125
    assert "not a CDI device name" in proc.stderr


def test_cdi_device_node_needs_own_dev(run_as, as_who, sifbox_cli, cdi_dir: Path, hpc_image: Path) -> None:
    proc = run_as(as_who, [sifbox_cli, "exec", "--cdi-dirs", str(cdi_dir), "--device", "example.com/gpu=card1",
                           str(hpc_image), "true"], env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    if as_who.is_root:  # a contained root container has its own /dev, where the node is bound
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 255
    assert "the container shares the host's /dev" in proc.stderr and "hint: use --contain" in proc.stderr


def test_nvccli_runs_the_tool(run_as, as_who, sifbox_cli, fake_driver: FakeDriver, hpc_image: Path) -> None:
    """With nvidia-container-cli (here a stand-in that records its call), sifbox runs its
    `configure` on the finished container root before entering it."""
    log = fake_driver.root / f"nvccli-{as_who.name}.log"
    log.touch()
    log.chmod(0o666)
    tool = fake_driver.root / "nvidia-container-cli"
    tool.write_text('#!/bin/sh\nfor root; do :; done\ntest -d "$root/.singularity.d" && echo "root ok" >> '
                    f'{log}\necho "$*" >> {log}\n')  # fmt: skip
    tool.chmod(0o755)
    conf = fake_driver.root / "nvccli.conf"
    conf.write_text(f"nvidia-container-cli path = {tool}\nldconfig path = /sbin/ldconfig\n")
    conf.chmod(0o644)
    proc = run_as(as_who, [sifbox_cli, "--config", str(conf), "exec", "--nvccli", str(hpc_image), "echo", "inside"],
                  env=env_for(as_who, NVIDIA_VISIBLE_DEVICES="0,1", NVIDIA_DRIVER_CAPABILITIES="utility"),
                  timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "inside\n"
    lines = log.read_text().splitlines()
    assert lines[0] == "root ok"
    user = "--user " if not as_who.is_root else ""
    assert lines[1].startswith(f"{user}configure --no-cgroups --ldconfig=@/sbin/ldconfig --pid=")
    assert lines[1].endswith(" --device=0,1 --utility " + lines[1].split()[-1])
    # A failing tool stops the launch with its message.
    tool.write_text('#!/bin/sh\necho "nvidia-container-cli: initialization error: driver error" >&2\nexit 1\n')
    proc = run_as(as_who, [sifbox_cli, "--config", str(conf), "exec", "--nvccli", str(hpc_image), "true"],
                  env=env_for(as_who), timeout=LAUNCH_TIMEOUT)  # fmt: skip
    assert proc.returncode == 126
    assert proc.stderr.startswith("sifbox: error: can't set up NVIDIA GPUs: nvidia-container-cli failed with exit "
                                  "status 1: nvidia-container-cli: initialization error: driver error\n")  # fmt: skip
