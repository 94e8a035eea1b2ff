"""Images named by a URI, as Apptainer's actions take them: `sifbox run docker://alpine`.

The image is pulled into the cache as `sifbox pull` does (blobs by digest, the converted SIF
by manifest digest; a second run uses the cached SIF; an `oras://` SIF by its manifest digest), nothing is written in the current
directory, and the container runs from the cached SIF. With the cache disabled
(--disable-cache, SIFBOX_DISABLE_CACHE, or a cache directory that is not writable), the SIF is
converted into a new directory under SIFBOX_TMPDIR (else TMPDIR, /tmp), which is removed as
soon as the image is open: nothing is left, even if the container is killed.

The pull runs in a forked child: the launcher stays single-threaded (the downloads use
threads, and unshare(CLONE_NEWUSER) refuses a process that has more than one) and does not
import the registry client and the converter.
"""

from __future__ import annotations

import os

from sifbox.util.errors import NotAvailableError, SifboxError, UsageError

#: Transports sifbox runs, by the scheme of `SCHEME://REST`.
RUNNABLE = ("docker", "oras")
#: Apptainer's other transports: refused with a clear line.
OTHERS = (
    "library",
    "shub",
    "http",
    "https",
    "docker-daemon",
    "oci-archive",
    "docker-archive",
    "oci",
)


def is_uri(image: str) -> bool:
    """`SCHEME://...` (not `instance://`, joined elsewhere): what Apptainer's actions pull."""
    scheme, sep, _ = image.partition("://")
    return bool(sep) and scheme != "instance" and scheme.replace("-", "").isalnum()


def fetch(uri: str, *, verb: str, disable_cache: bool, no_https: bool, writable: bool,
          config: str | None) -> tuple[str, str | None]:  # fmt: skip
    """The SIF to run for `uri`: (path, None) in the cache, or (path, directory) of a
    temporary conversion that the caller removes once the image is open."""
    scheme = uri.partition("://")[0]
    if scheme not in RUNNABLE:
        if scheme in OTHERS:
            raise NotAvailableError(f"can't {verb} `{uri}`: {scheme}:// images are not available in this version "
                                    "of sifbox", hint="docker:// and oras:// images run directly; others: pull or build a SIF "
                                    "first")  # fmt: skip
        raise UsageError(f"can't {verb} `{uri}`: unsupported URI",
                         hint="an image file or directory, instance://NAME, docker://REF or oras://REF")  # fmt: skip
    if writable:
        raise UsageError(
            f"can't {verb} `{uri}` with --writable: the image is a converted copy",
            hint="--writable-tmpfs, or --overlay DIR, keeps changes; or pull it and build a sandbox",
        )
    from sifbox.oci import cache

    cache_dir = cache.cache_in_use(disable_cache)
    tmpdir = _tmpdir()
    return _in_child(lambda: _fetch(uri, verb, cache_dir, no_https, config, tmpdir))


def _tmpdir() -> str | None:
    for var in ("SIFBOX_TMPDIR", "APPTAINER_TMPDIR", "SINGULARITY_TMPDIR", "TMPDIR"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def _fetch(uri: str, verb: str, cache_dir, no_https: bool, config: str | None, tmpdir: str | None):  # type: ignore[no-untyped-def]
    from sifbox.config import sysconf
    from sifbox.oci import sifcache

    procs = sysconf.load(config).get_int("mksquashfs procs") or None
    return sifcache.sif_for_uri(
        uri, cache_dir=cache_dir, no_https=no_https, procs=procs, tmpdir=tmpdir, verb=verb
    )


def _in_child(work) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    """Run `work()` (-> (path, directory)) in a forked child; its result, or its error raised here."""
    import json
    import sys

    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            try:
                path, directory = work()
                reply = {"path": path, "dir": directory}
            except SifboxError as err:
                reply = {"error": err.message, "hint": err.hint, "status": int(err.exit_status)}
            except KeyboardInterrupt:
                reply, status = {"error": "interrupted", "status": 130}, 130
            except OSError as err:
                from sifbox.util.errors import os_fault

                fault = os_fault(err, "fetch the image")
                reply = {
                    "error": fault.message,
                    "hint": fault.hint,
                    "status": int(fault.exit_status),
                }
            except Exception as err:  # noqa: BLE001 - the child must report, whatever happens
                reply = {"error": f"can't fetch the image: internal error: {type(err).__name__}: {err}",
                         "hint": "run again with --debug, and report it", "status": 255}  # fmt: skip
            os.write(write_end, json.dumps(reply).encode())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    chunks = []
    interrupted = False
    try:
        while True:
            try:
                chunk = os.read(read_end, 1 << 16)
            except KeyboardInterrupt:
                interrupted = True  # the child got Ctrl-C too: let it clean up and report
                continue
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
            except KeyboardInterrupt:
                interrupted = True
    try:
        reply = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        reply = {}
    if interrupted or reply.get("status") == 130:
        if reply.get("dir"):
            import shutil

            shutil.rmtree(str(reply["dir"]), ignore_errors=True)
        raise KeyboardInterrupt
    if "path" in reply:
        return str(reply["path"]), reply.get("dir")
    raise SifboxError(str(reply.get("error") or "can't fetch the image: the pull ended without a result"),
                      hint=reply.get("hint"), exit_status=int(reply.get("status") or 255))  # fmt: skip
