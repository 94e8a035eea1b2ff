"""`sifbox build`: definition file (or image) -> SIF, sandbox or SquashFS.

For each stage, in Apptainer's order: bootstrap agent, %setup (on the host,
$SIFBOX_ROOTFS), %files (and `%files from STAGE`), %post (inside the root,
$SIFBOX_ENVIRONMENT), SCIF apps (%appfiles, %appinstall), then the
metadata (/.singularity.d: environment, runscript, startscript, test,
help, labels, the definition); for the final stage %test (unless
--notest), then the output. Each stage is built in a scratch directory under
--tmpdir / SIFBOX_TMPDIR; the output is renamed into place only when
complete. Unprivileged users build in a fakeroot user namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile

from sifbox.build.assemble import BuildError
from sifbox.formats import appenv
from sifbox.formats import singularityd as sd
from sifbox.util.errors import SifboxError, UsageError

SECTION_NAMES = ("setup", "files", "post", "environment", "runscript", "startscript", "test", "labels",
                 "help", "apps", "none", "all")  # fmt: skip
SCRIPT_PATH = "/.sifbox-build-script"
LABELS_FILE = "/.build.labels"


@dataclasses.dataclass
class BuildRequest:
    output: str
    source: str  # definition file, image (conversion) or URI
    fmt: str = "sif"  # sif | sandbox | squashfs
    force: bool = False
    update: bool = False
    notest: bool = False
    sections: frozenset[str] = frozenset({"all"})
    fix_perms: bool = False
    build_args: dict[str, str] = dataclasses.field(default_factory=dict)
    binds: tuple[str, ...] = ()
    writable_tmpfs: bool = False
    epoch: int | None = None  # reproducible builds
    mksquashfs_args: str | None = None
    tmpdir: str | None = None
    quiet: bool = False
    config_path: str | None = None
    warn_unused_args: bool = False
    disable_cache: bool = False  # registry images: no cache read or written
    arch: str | None = None  # another architecture's image (registry and OCI sources only)
    key: object | None = None  # --encrypt: sifbox.security.cryptkey.Key
    shown_as: str | None = None  # the name step lines give the output (an OCI-SIF's layer: the OCI-SIF)


class Steps:
    """`==> step` lines on stderr (`INFO:    step` in Apptainer's message format; silenced by -q)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            from sifbox.util.messages import step_text

            sys.stderr.write(step_text(message))
            sys.stderr.flush()


def output_format(path: str, sandbox: bool) -> str:
    if sandbox:
        return "sandbox"
    if path.endswith((".sqsh", ".sqfs", ".squashfs")):
        return "squashfs"
    return "sif"


def _is_image(path: str) -> bool:
    from sifbox.formats import squashfs
    from sifbox.formats.sif import constants as c

    if os.path.isdir(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return False
    return head[32:42] == c.MAGIC or bool(squashfs.probe(head))


def load_definition(req: BuildRequest):  # type: ignore[no-untyped-def]
    """The Definition to build: the file, or one made up for an image or URI."""
    from sifbox.formats.deffile import parse_deffile

    src = req.source
    if "://" in src or src.split(":", 1)[0] in (
        "docker-archive",
        "oci-archive",
        "oci",
        "docker-daemon",
    ):
        return parse_deffile(sd.uri_deffile(src), src), True
    if _is_image(src):
        return parse_deffile(f"Bootstrap: localimage\nFrom: {src}\n", src), True
    try:
        with open(src, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"can't build from `{src}`: no such file or directory") from None
    except OSError as err:
        raise SifboxError(f"can't build from `{src}`: {err.strerror}") from None
    return parse_deffile(text, src, req.build_args), False


def check_output(req: BuildRequest) -> None:
    out = req.output
    if req.update:
        if req.fmt != "sandbox":
            raise UsageError(
                "can't use --update: only with --sandbox (a SIF image cannot be updated)"
            )
        if not os.path.isdir(out):
            raise UsageError(f"can't update `{out}`: no such sandbox directory")
        return
    if os.path.lexists(out) and not req.force:
        raise UsageError(f"can't build `{out}`: it already exists",
                         hint="use --force to overwrite it" + (", or --update to build into it" if
                                                                req.fmt == "sandbox" else ""))  # fmt: skip
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UsageError(f"can't build `{out}`: the directory `{parent}` does not exist")


def check_fingerprints(source: str, header: str) -> None:
    """`Fingerprints: FPR[, FPR...]` of a localimage stage: the SIF `source` must carry a valid
    signature of each key, checked against the caller's keyrings (before any fakeroot)."""
    from sifbox.formats.sif.image import SifError
    from sifbox.image.sif_file import open_sif
    from sifbox.security import keys
    from sifbox.security.verify import signed_by_all
    from sifbox.util import log

    wanted = [f.replace(" ", "").upper() for f in header.split(",") if f.strip()]
    log.log.info("Checking bootstrap image verifies with fingerprint(s): [%s]", " ".join(wanted))
    if not os.path.isfile(source):
        raise BuildError(f"can't bootstrap from `{source}`: `Fingerprints:` needs a SIF image")
    try:
        with open_sif(source, verb="bootstrap from") as img:
            missing = signed_by_all(img, keys.verification_keyring(), wanted)
    except SifError as err:
        raise BuildError(f"can't bootstrap from `{source}`: `Fingerprints:` needs a SIF image: {err}") from None
    if missing:
        raise BuildError(f"can't bootstrap from `{source}`: it is not signed by {', '.join(missing)}",
                         hint="`sifbox verify` shows who signed it; `sifbox key import` adds a signer's "
                              "public key")  # fmt: skip


def build(req: BuildRequest) -> None:
    """Build as described by `req`, as root or in a fakeroot user namespace."""
    from sifbox.build.fakeroot import run_as_root

    definition, converted = load_definition(req)
    if definition.unused_args and not converted:
        from sifbox.util import log

        names = " ".join(definition.unused_args)
        if not req.warn_unused_args:  # as Apptainer: fatal unless --warn-unused-build-args
            raise BuildError(f"can't build `{req.output}`: unused build args: {names}",
                             hint="use --warn-unused-build-args to show a warning instead")  # fmt: skip
        log.log.warning("Unused build args: %s", names)
    check_output(req)
    for stage in definition.stages:
        if stage.bootstrap == "localimage" and stage.get("fingerprints"):
            check_fingerprints(stage.get("from") or "", stage.get("fingerprints") or "")
    tmp_base = req.tmpdir or _scratch_base()
    if not os.path.isdir(tmp_base):
        raise UsageError(
            f"can't build in `{tmp_base}`: no such directory", hint="check --tmpdir / SIFBOX_TMPDIR"
        )
    if os.getuid() != 0:
        from sifbox.config import sysconf

        if not sysconf.load(req.config_path).get_bool("allow user ns"):
            raise UsageError(
                f"can't build `{req.output}`: `allow user ns = no` in the site's sifbox.conf",
                hint="unprivileged builds run as root of a user namespace; ask the site's admins, or build as root",
            )
    steps = Steps(req.quiet)
    run_as_root(lambda: _build_as_root(req, definition, converted, tmp_base, steps))
    steps(f"built {req.shown_as or req.output}")


def _scratch_base() -> str:
    from sifbox.build.assemble import scratch_dir

    return scratch_dir()


def _build_as_root(
    req: BuildRequest, definition, converted: bool, tmp_base: str, steps: Steps
) -> None:  # type: ignore[no-untyped-def]
    work = tempfile.mkdtemp(prefix="sifbox-build.", dir=tmp_base)
    # Every tool run by the build keeps its scratch files here too.
    os.environ["TMPDIR"] = work
    try:
        roots: dict[str, str] = {}
        final = None
        for n, stage in enumerate(definition.stages):
            last = n == len(definition.stages) - 1
            if last and req.update:
                root = req.output
            else:
                root = os.path.join(work, f"stage{n}")
                os.mkdir(root, 0o755)
            label = (
                f" (stage {stage.name})"
                if stage.name
                else (f" (stage {n + 1})" if len(definition.stages) > 1 else "")
            )
            _build_stage(req, definition, stage, root, roots, work, steps, label, last, converted)
            if stage.name:
                roots[stage.name] = root
            final = root
        assert final is not None
        if (
            not req.notest
            and _wants(req, "test")
            and not converted
            and definition.final.test is not None
        ):
            _run_test(req, final, steps)
        if req.fix_perms:
            fix_perms(final)
        _write_output(req, definition, final, work, steps, converted)
    finally:
        os.environ.pop("TMPDIR", None)
        shutil.rmtree(work, ignore_errors=True)
        if os.path.lexists(work):
            _force_remove(work)


def _wants(req: BuildRequest, section: str) -> bool:
    if "none" in req.sections:
        return False
    return "all" in req.sections or section in req.sections


def _build_stage(req, definition, stage, root, roots, work, steps, label, last, converted) -> None:  # type: ignore[no-untyped-def]
    from sifbox.build.agents import BootstrapContext, bootstrap

    ctx = BootstrapContext(definition.filename, work, steps, quiet=req.quiet, disable_cache=req.disable_cache,
                           arch=req.arch)  # fmt: skip
    if not (last and req.update):
        steps(
            f"bootstrapping {stage.bootstrap}{' from ' + stage.get('from') if stage.get('from') else ''}{label}"
        )
        bootstrap(stage, root, ctx)
    _base_metadata(root)
    if converted:
        if stage.bootstrap != "localimage":  # from a URI: the metadata a pull writes
            _stage_metadata(req, definition, stage, root)
        return
    if stage.setup is not None and _wants(req, "setup"):
        steps(f"running %setup{label}")
        _run_host_script(stage.setup, root, work, "%setup", _shell(req))
    if stage.files and _wants(req, "files"):
        for files in stage.files:
            src_root = None
            if files.stage is not None:
                src_root = roots[files.stage]
                steps(f"copying files from stage {files.stage}{label}")
            else:
                steps(f"copying files{label}")
            for src, dst in files.pairs:
                copy_into(src, dst, root, src_root, definition.filename)
    for app in stage.apps.values():
        _write_tree(root, sd.skeleton(app.name))
        if app.files and _wants(req, "files"):
            steps(f"copying files of app {app.name}{label}")
            for src, dst in app.files:
                copy_into(src, dst if dst.startswith("/") else f"/scif/apps/{app.name}/{dst}", root, None,
                          definition.filename)  # fmt: skip
    if stage.post is not None and _wants(req, "post"):
        steps(f"running %post{label}")
        _run_container_script(req, stage.post, root, "%post", _shell(req))
    for app in stage.apps.values():
        if app.install is not None and _wants(req, "post"):
            steps(f"running %appinstall {app.name}{label}")
            _run_container_script(req, app.install, root, f"%appinstall {app.name}", _shell(req),
                                  cwd=f"/scif/apps/{app.name}", app=app.name)  # fmt: skip
    steps(f"writing the image metadata{label}")
    _stage_metadata(req, definition, stage, root)


def _shell(req: BuildRequest) -> tuple[str, ...]:
    """Scripts stop at the first failing command and, unless -q, show each command."""
    return ("/bin/sh", "-e") if req.quiet else ("/bin/sh", "-e", "-x")


def _mkdirs(root: str, path: str) -> str:
    from sifbox.util.paths import chase

    return chase(root, path, create="dir")


def _write_file(root: str, path: str, data: bytes, mode: int) -> None:
    """Write `path` of the image; links in the image never lead the write outside it."""
    parent = _mkdirs(root, os.path.dirname(path))
    target = os.path.join(parent, os.path.basename(path))
    if not os.path.islink(target) and os.path.isdir(target):
        raise BuildError(f"can't write `{path}` in the image: it is a directory there")
    # A link at `target` is replaced by the rename, never followed.
    tmp = target + ".sifbox-new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(fd, mode)
    os.rename(tmp, target)


def _host_path(root: str, path: str) -> str | None:
    """The host path of an existing `path` of the image (links resolved inside it)."""
    from sifbox.util.paths import chase

    try:
        return chase(root, path)
    except OSError:
        return None


def _read_in_root(root: str, path: str, limit: int = 1 << 20) -> bytes | None:
    """The start of a regular file of the image, or None."""
    import stat

    host = _host_path(root, path)
    if host is None:
        return None
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit)


def _write_tree(root: str, entries: list[sd.Entry]) -> None:
    """Write generated entries into the root; links in the image never lead outside it."""
    from sifbox.util.errors import describe_os_error

    for e in entries:
        try:
            if e.kind is sd.Kind.DIR:
                existed = _host_path(root, e.path) is not None
                host = _mkdirs(root, e.path)
                if not existed:
                    os.chmod(host, e.mode)
            elif e.kind is sd.Kind.SYMLINK:
                link = os.path.join(_mkdirs(root, os.path.dirname(e.path)), os.path.basename(e.path))
                if not os.path.lexists(link):
                    os.symlink(e.target, link)
            elif not (e.keep_existing and _host_path(root, e.path) is not None):
                _write_file(root, e.path, e.data, e.mode)
        except OSError as err:
            raise BuildError(f"can't write `{e.path}` in the image: {describe_os_error(err)}") from None


def _base_metadata(root: str) -> None:
    """The /.singularity.d skeleton and mount points; what an earlier image holds is kept."""
    _write_tree(root, sd.base_tree())


#: Largest metadata file of a base image that a build reads (and appends to).
_MAX_METADATA = 16 << 20


def _stage_metadata(req: BuildRequest, definition, stage, root: str) -> None:  # type: ignore[no-untyped-def]
    from sifbox import __version__
    from sifbox.build.assemble import machine_arch
    from sifbox.util import log

    files = {}
    for path in sd.EXISTING:
        data = _read_in_root(root, path, _MAX_METADATA + 1)
        if data is not None:
            if len(data) > _MAX_METADATA:
                raise BuildError(f"can't update `{path}` of the image: larger than {_MAX_METADATA >> 20} MiB")
            files[path] = data
    try:
        history = len(os.listdir(_host_path(root, sd.HISTORY) or ""))
    except OSError:
        history = 0
    existing = sd.Existing(files, _labels_from_post(root), history)
    epoch = req.epoch if req.epoch is not None else _now()
    meta = sd.ImageMeta.from_stage(stage, definition.text, req.sections)
    if req.update and not req.force:  # as Apptainer: the header labels only when this build bootstrapped
        meta = dataclasses.replace(meta, header={})
    entries, warnings = sd.finish(meta, existing, sd.BuildInfo(req.arch or machine_arch(), epoch, __version__), force=req.force)
    for warning in warnings:
        log.log.warning("%s", warning)
    _write_tree(root, entries)


def _labels_from_post(root: str) -> str:
    """What %post appended to $SIFBOX_LABELS (`NAME VALUE` lines); the file is removed."""
    data = _read_in_root(root, LABELS_FILE, _MAX_METADATA)
    with contextlib.suppress(OSError):
        os.unlink(root + LABELS_FILE)  # the name itself (a link is not followed)
    return "" if data is None else data.decode("utf-8", "surrogateescape")


def _now() -> int:
    import time

    return int(time.time())


def _script_env(root_in_container: bool, root: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        if root_in_container:
            env[f"{prefix}_ENVIRONMENT"] = sd.ENVIRONMENT_SCRIPT
            env[f"{prefix}_LABELS"] = LABELS_FILE
            env[f"{prefix}_ROOTFS"] = "/"
        else:
            env[f"{prefix}_ROOTFS"] = root
    return env


def _run_host_script(script, root: str, work: str, what: str, default: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(work, "setup-script")
    with open(path, "w") as f:
        f.write(script.text)
    env = dict(os.environ)
    env.update(_script_env(False, root))
    argv = script.argv(default) + [path]
    try:
        status = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, check=False).returncode
    except OSError as err:
        raise BuildError(f"can't run {what}: can't run `{argv[0]}`: {err.strerror}") from None
    if status != 0:
        raise BuildError(f"can't build: {what} failed with exit status {status}", exit_status=255)


def _run_container_script(req: BuildRequest, script, root: str, what: str, default: tuple[str, ...],  # type: ignore[no-untyped-def]
                          cwd: str = "/", app: str | None = None) -> None:  # fmt: skip
    from sifbox.build.container import run_in_root
    from sifbox.runtime.env import DEFAULT_PATH
    from sifbox.util.paths import chase

    argv = script.argv(default)
    for program in sorted({p for p in ("/bin/sh", argv[0]) if p.startswith("/")}):
        try:
            chase(root, program)
        except OSError:
            raise BuildError(
                f"can't run {what}: the image has no `{program}`",
                hint="bootstrap from an image that has a shell, or fill a scratch image with %setup and %files",
            ) from None
    host_path = root + SCRIPT_PATH
    _write_file(root, SCRIPT_PATH, script.text.encode("utf-8", "surrogateescape"), 0o700)
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": "/root",
        "USER": "root",
        "LANG": "C",
        "TERM": os.environ.get("TERM", "dumb"),
    }
    env.update(_script_env(True, root))
    if app:
        env.update(appenv.app_environment(app))
    # As Apptainer runs %post through `exec`: the base image's environment (an OCI image's ENV
    # in 10-docker2singularity.sh) is in effect.
    shell_cmd = f'for f in /.singularity.d/env/*.sh; do [ -r "$f" ] && . "$f"; done; cd {cwd} && exec "$@"'
    try:
        status = run_in_root(root, ["/bin/sh", "-c", shell_cmd, "sh", *argv, SCRIPT_PATH], env,
                             binds=req.binds, what=what, config_path=req.config_path)  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            os.unlink(host_path)
    if status != 0:
        raise BuildError(f"can't build: {what} failed with exit status {status}",
                         hint="the output of the script above shows where it failed")  # fmt: skip


def _run_test(req: BuildRequest, root: str, steps: Steps) -> None:
    from sifbox.build.container import run_in_root
    from sifbox.runtime import env as envmod

    steps("running %test")
    env = {"PATH": envmod.DEFAULT_PATH, "HOME": "/root", "LANG": "C", "TERM": os.environ.get("TERM", "dumb"),
           envmod.OVERRIDES_VAR: ""}  # fmt: skip
    for prefix in ("SIFBOX", "APPTAINER", "SINGULARITY"):
        env[f"{prefix}_CONTAINER"] = root
        env[f"{prefix}_NAME"] = os.path.basename(req.output)
    status = run_in_root(root, ["/bin/sh", "-c", envmod.PRELUDE, "sifbox", "test"], env, binds=req.binds,
                         writable=False, writable_tmpfs=True, what="%test", config_path=req.config_path)  # fmt: skip
    if status != 0:
        raise BuildError(f"can't build: %test failed with exit status {status}",
                         hint="--notest skips the test section")  # fmt: skip


def copy_into(src: str, dst: str, root: str, src_root: str | None, filename: str) -> None:
    """%files: copy `src` (host path, glob allowed; or a path in `src_root`, the root of an
    earlier stage) to `dst` in the image; missing parents are created. From the host, links
    are followed (`cp -fLr`); from a stage, links are kept as links, the one `src` names
    too, and directories are copied whole with the links in them (as the guide has it)."""
    import glob

    from sifbox.util.paths import chase

    if src_root is not None:
        matches = stage_matches(src_root, src)
    else:
        matches = (
            sorted(glob.glob(src))
            if any(ch in src for ch in "*?[")
            else ([src] if os.path.lexists(src) else [])
        )
    if not matches:
        where = f" in stage `{src_root}`" if src_root else ""
        raise BuildError(f"can't copy `{src}`{where} into the image: no such file or directory",
                         hint=f"%files paths in `{filename}` are relative to the current directory")  # fmt: skip
    dst_in = dst if dst.startswith("/") else "/" + dst
    if dst_in.endswith("/") or len(matches) > 1:
        target = chase(root, dst_in, create="dir")
    else:
        parent = chase(root, os.path.dirname(dst_in) or "/", create="dir")
        name = os.path.basename(dst_in)
        target = os.path.join(parent, name) if name else parent
        if os.path.islink(target):
            target = chase(root, dst_in)
    if src_root is None:  # host files: links followed, as `cp -fLr`
        argv = ["cp", "-fLr", "--preserve=mode,timestamps", "--", *matches, target]
    else:  # from a stage: links copied as links (their targets mean paths of the image, not the host)
        argv = ["cp", "-fRP", "--preserve=mode,ownership,timestamps,links", "--", *matches, target]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"can't copy `{src}` to `{dst}` in the image: "
                         f"{proc.stderr.decode('utf-8', 'replace').strip().splitlines()[-1:]}")  # fmt: skip


def stage_matches(src_root: str, pattern: str) -> list[str]:
    """Host paths of what `pattern` (a path, `*?[` globs allowed in any component) names in
    the stage root `src_root`: every component but the last is resolved inside the root
    (an absolute link means the stage's path, never the host's), the last is not followed,
    so that a link is copied as a link."""
    import fnmatch
    import posixpath

    from sifbox.util.paths import chase

    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        try:
            return [chase(src_root, pattern)]
        except OSError:
            return []
    paths = ["/"]  # image paths matched so far
    for part in parts:
        found = []
        for here in paths:
            if not any(ch in part for ch in "*?["):
                found.append(posixpath.join(here, part))
                continue
            try:
                names = sorted(os.listdir(chase(src_root, here)))
            except OSError:
                continue
            found += [posixpath.join(here, n) for n in names
                      if fnmatch.fnmatchcase(n, part) and (part.startswith(".") or not n.startswith("."))]  # fmt: skip
        paths = found
    out = []
    for path in paths:
        try:
            parent = chase(src_root, posixpath.dirname(path))
        except OSError:
            continue
        host = os.path.join(parent, posixpath.basename(path))
        if os.path.lexists(host) and host not in out:
            out.append(host)
    return out


def fix_perms(root: str) -> None:
    """--fix-perms: give the owner read/write (and search on directories)
    of everything, so that the sandbox can later be removed or copied."""
    import stat

    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            want = (
                st.st_mode
                | stat.S_IRUSR
                | stat.S_IWUSR
                | (stat.S_IXUSR if stat.S_ISDIR(st.st_mode) else 0)
            )
            if want != st.st_mode:
                os.chmod(p, stat.S_IMODE(want))


def _force_remove(path: str) -> None:
    """Remove a tree whose directories may lack write permission."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _write_output(
    req: BuildRequest, definition, root: str, work: str, steps: Steps, converted: bool
) -> None:  # type: ignore[no-untyped-def]
    from sifbox.build import assemble
    from sifbox.config import sysconf

    if req.fmt == "sandbox":
        if req.update:
            return
        from sifbox.build.ociagents import drop_device_standins

        dropped = drop_device_standins(work, root)
        if dropped:
            from sifbox.util.log import log

            log.warning("skipping %d device nodes the user namespace could not create (%s%s): a "
                        "sandbox is used with the host's /dev", len(dropped), ", ".join(dropped[:4]),
                        ", ..." if len(dropped) > 4 else "")  # fmt: skip
        steps(f"creating sandbox {req.output}")
        place_tree(root, req.output, req.force)
        return
    cfg = sysconf.load(req.config_path)
    squash = assemble.squash_options(cfg, epoch=req.epoch, extra_args=req.mksquashfs_args)
    from sifbox.build.ociagents import device_pseudo_file

    devices = device_pseudo_file(work, root)  # device nodes a user namespace could not create
    if devices:
        extra = (*squash.extra_args, "-pf", devices[0], "-ef", devices[1])
        squash = dataclasses.replace(squash, extra_args=extra)
    if not req.quiet and sys.stderr.isatty():
        squash = dataclasses.replace(squash, progress=True)
    if req.fmt == "squashfs":
        steps(f"creating SquashFS image {req.shown_as or req.output}")
        assemble.write_squashfs(root, req.output, squash)
        return
    steps(f"creating SIF image {req.output}")
    deffile_text = definition.text
    if converted:
        raw = _read_in_root(root, "/.singularity.d/Singularity")
        deffile_text = raw.decode("utf-8", "surrogateescape") if raw else ""
    sqfs = os.path.join(work, "root.sqfs")
    fstype = message = None
    if req.key is not None:
        from sifbox.build import encrypt
        from sifbox.formats.sif.constants import FsType

        steps("encrypting the root file system with gocryptfs")
        message = encrypt.gocryptfs_squashfs(root, sqfs, squash, req.key, work)  # type: ignore[arg-type]
        fstype = FsType.GOCRYPTFS_SQUASHFS
    else:
        assemble.make_squashfs(root, sqfs, squash)
    meta = _inspect_metadata(root, deffile_text)
    assemble.write_sif(sqfs, req.output, deffile_text, inspect_metadata=meta, epoch=req.epoch, fstype=fstype,
                       key_message=message, arch=req.arch)  # fmt: skip


def _inspect_metadata(root: str, deffile_text: str) -> bytes:
    """The SIF's `inspect-metadata.json`: what `inspect --all` shows of the finished root."""
    from sifbox.formats import inspectmeta
    from sifbox.image.files import read_glob_dir

    files, dirs = read_glob_dir(root, inspectmeta.PATTERNS, [inspectmeta.APP_PATTERN])
    meta = inspectmeta.collect(files, inspectmeta.apps_of(dirs), deffile_text)
    return inspectmeta.render_json(meta, indent=False).encode()


def place_tree(root: str, dest: str, force: bool) -> None:
    """Move the finished tree to `dest` (rename when on the same file system,
    else copy beside it first), replacing `dest` with --force."""
    parent = os.path.dirname(os.path.abspath(dest))
    staged = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.", dir=parent)
    try:
        try:
            os.rmdir(staged)
            os.rename(root, staged)
        except OSError:
            os.makedirs(staged, exist_ok=True)
            proc = subprocess.run(["cp", "-a", "--", os.path.join(root, "."), staged],
                                  capture_output=True, check=False)  # fmt: skip
            if proc.returncode != 0:
                raise BuildError(f"can't create the sandbox `{dest}`: "
                                 f"{proc.stderr.decode('utf-8', 'replace').strip()}") from None  # fmt: skip
        os.chmod(staged, 0o755)
        old = None
        if os.path.lexists(dest):
            if not force:
                raise BuildError(f"can't create the sandbox `{dest}`: it already exists")
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old.", dir=parent)
            os.rmdir(old)
            os.rename(dest, old)
        os.rename(staged, dest)
        if old:
            _force_remove(old)
    except BaseException:
        if os.path.lexists(staged):
            _force_remove(staged)
        raise
