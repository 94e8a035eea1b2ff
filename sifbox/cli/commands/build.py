"""`sifbox build IMAGE SPEC`: build an image from a definition file, or
convert between image kinds (SIF, sandbox directory, bare SquashFS).

    sifbox build app.sif app.def                 SIF from a definition file
    sifbox build --sandbox app/ app.def          sandbox directory
    sifbox build app.sqfs app.def                bare SquashFS (.sqsh/.sqfs/.squashfs)
    sifbox build app.sif app/                    SIF from a sandbox (or SquashFS)
    sifbox build --sandbox app/ app.sif          sandbox from a SIF
    sifbox build --oci app.oci.sif docker://REF  OCI-SIF from an OCI image (as `pull --oci`)
    sifbox build --oci app.oci.sif app.def       OCI-SIF from a definition file

Unprivileged users build as root of a user namespace (fakeroot), with their
/etc/subuid and /etc/subgid ranges when configured. With SOURCE_DATE_EPOCH
(or --reproducible) two builds of the same definition give the same bytes.
Options also read SIFBOX_<OPTION> (then APPTAINER_, SINGULARITY_).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from sifbox.util.errors import NotAvailableError, UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "image",
        metavar="IMAGE",
        help="the image to build (SIF, SquashFS or, with --sandbox, a directory)",
    )
    p.add_argument("spec", metavar="SPEC", help="definition file, image to convert, or URI")
    p.add_argument("-s", "--sandbox", action="store_true", help="build a sandbox directory")
    p.add_argument("-F", "--force", action="store_true", help="overwrite an existing image")
    p.add_argument(
        "-u", "--update", action="store_true", help="run the definition over an existing sandbox"
    )
    p.add_argument("-T", "--notest", action="store_true", help="skip the %%test section")
    p.add_argument(
        "--section",
        action="append",
        default=[],
        metavar="LIST",
        help="run only these sections: setup, files, post, environment, runscript, startscript, "
        "test, labels, help, none (comma-separated)",
    )
    p.add_argument(
        "--ignore-fakeroot-command",
        action="store_true",
        help="do not use the fakeroot command (sifbox never does: its fakeroot is a user namespace)",
    )
    p.add_argument(
        "--fix-perms",
        action="store_true",
        help="give the owner read/write permission on every file (sandboxes stay removable)",
    )
    p.add_argument(
        "-f",
        "--fakeroot",
        action="store_true",
        help="build as root of a user namespace (unprivileged builds always do; root builds as root)",
    )
    p.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="K=V",
        help="value of a {{ K }} build argument (repeatable)",
    )
    p.add_argument(
        "--build-arg-file",
        action="append",
        default=[],
        metavar="FILE",
        help="file of K=V build arguments",
    )
    p.add_argument(
        "--warn-unused-build-args",
        action="store_true",
        help="only warn about build arguments the definition does not use (default: an error)",
    )
    p.add_argument(
        "-B",
        "--bind",
        action="append",
        default=[],
        metavar="SPEC",
        help="bind mount src[:dest[:ro|rw]] for %%post and %%test",
    )
    p.add_argument(
        "--writable-tmpfs",
        action="store_true",
        help="(accepted: %%test always runs on a tmpfs overlay of the built root)",
    )
    p.add_argument(
        "--reproducible",
        action="store_true",
        help="byte-identical output: every time is SOURCE_DATE_EPOCH (0 when unset)",
    )
    p.add_argument("--mksquashfs-args", metavar="ARGS", help="extra mksquashfs options")
    p.add_argument(
        "--tmpdir",
        dest="build_tmpdir",
        metavar="DIR",
        help="directory for the build's scratch files (default: SIFBOX_TMPDIR, TMPDIR, /tmp)",
    )
    p.add_argument("--oci", action="store_true",
                   help="build an OCI-SIF image (SingularityCE's layout) from an OCI source (docker://, oci:, "
                   "oci-archive:, docker-archive:) or a definition file")  # fmt: skip
    p.add_argument("--disable-cache", action="store_true", help="do not use the image cache")
    p.add_argument("--no-https", "--nohttps", dest="no_https", action="store_true",
                   help="use http instead of https for `Bootstrap: docker` registries; also SIFBOX_NOHTTPS=1")
    p.add_argument("--arch", metavar="ARCH", help="architecture of an image from a registry or OCI source (e.g. arm64)")
    p.add_argument("-e", "--encrypt", action="store_true",
                   help="encrypt the root file system (gocryptfs, as Apptainer); the key from --passphrase, "
                   "--pem-path or SIFBOX_ENCRYPTION_PASSPHRASE / SIFBOX_ENCRYPTION_PEM_PATH")
    p.add_argument("--passphrase", action="store_true", help="ask for the passphrase to encrypt with (implies -e)")
    p.add_argument("--pem-path", metavar="PATH", help="encrypt with this RSA public key, PEM (implies -e)")
    p.add_argument("--nv", action="store_true", help=argparse.SUPPRESS)


def _flag(*names: str) -> str | None:
    from sifbox.cli.commands.action import flag_env

    return flag_env(*names)


def _warn(message: str) -> None:
    from sifbox.util.log import log

    log.warning("%s", message)


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def request(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sifbox.build.pipeline import SECTION_NAMES, BuildRequest, output_format
    from sifbox.formats.deffile import DeffileError, parse_build_arg_file, parse_build_args

    key = _key(args)
    if args.nv:
        raise NotAvailableError(
            "can't use --nv with build: not available in this version of sifbox"
        )
    arch = None
    if args.arch:
        from sifbox.build.assemble import machine_arch
        from sifbox.formats.sif.constants import ARCH_CODES

        if args.arch not in ARCH_CODES:
            raise UsageError(f"can't build for `{args.arch}`: unknown architecture",
                             hint="one of " + ", ".join(ARCH_CODES))  # fmt: skip
        if args.arch != machine_arch():
            if "://" not in args.spec and args.spec.split(":", 1)[0] not in ("oci", "oci-archive", "docker-archive"):
                raise NotAvailableError(f"can't build `{args.spec}` for `{args.arch}`: only an image from a "
                                        f"registry or an OCI source can be for another architecture than this "
                                        f"machine's (`{machine_arch()}`)",
                                        hint=f"build on a `{args.arch}` machine")  # fmt: skip
            arch = args.arch
    build_args: dict[str, str] = {}
    for path in args.build_arg_file:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read((1 << 20) + 1)
        except OSError as err:
            raise UsageError(f"can't read build-arg file `{path}`: {err.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"can't read build-arg file `{path}`: not UTF-8 text") from None
        if len(text) > 1 << 20:
            raise UsageError(f"can't read build-arg file `{path}`: over 1 MiB, not a list of arguments")
        build_args.update(parse_build_arg_file(text, path, warn=_warn))
    try:
        build_args.update(parse_build_args(args.build_arg))
    except DeffileError as err:
        raise UsageError(err.message) from None
    sections: set[str] = set()
    for item in args.section or ["all"]:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in SECTION_NAMES:
                raise UsageError(f"can't use --section `{name}`: unknown section",
                                 hint="one of " + ", ".join(SECTION_NAMES))  # fmt: skip
            sections.add(name)
    sandbox = args.sandbox or _truthy(_flag("SANDBOX"))
    epoch = None
    sde = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if sde:
        try:
            epoch = int(sde)
        except ValueError:
            raise UsageError(f"can't use SOURCE_DATE_EPOCH `{sde}`: not a Unix time") from None
        if epoch < 0:
            raise UsageError(f"can't use SOURCE_DATE_EPOCH `{sde}`: not a Unix time")
    elif args.reproducible or _truthy(_flag("REPRODUCIBLE")):
        epoch = 0
    level = int(os.environ.get("SIFBOX_MESSAGELEVEL", "20") or 20)
    if key is not None and output_format(args.image, sandbox) != "sif":
        key.wipe()
        raise UsageError(f"can't build `{args.image}` encrypted: only SIF images are encrypted",
                         hint="leave out --sandbox, or build a .sif")  # fmt: skip
    return BuildRequest(
        output=args.image.rstrip("/") or args.image,
        source=args.spec,
        fmt=output_format(args.image, sandbox),
        force=args.force or _truthy(_flag("FORCE")),
        update=args.update or _truthy(_flag("UPDATE")),
        notest=args.notest or _truthy(_flag("NOTEST")),
        sections=frozenset(sections),
        fix_perms=args.fix_perms or _truthy(_flag("FIX_PERMS")),
        build_args=build_args,
        binds=tuple(args.bind),
        writable_tmpfs=args.writable_tmpfs,
        epoch=epoch,
        mksquashfs_args=args.mksquashfs_args or _flag("MKSQUASHFS_ARGS"),
        tmpdir=args.build_tmpdir or None,
        quiet=level > 20,
        config_path=getattr(args, "config", None),
        disable_cache=args.disable_cache or _truthy(_flag("DISABLE_CACHE")),
        warn_unused_args=args.warn_unused_build_args,
        arch=arch,
        key=key,
    )


def _overwrite_agreed(out: str) -> bool:
    """Apptainer's question before a build replaces an existing image; yes only for `y`."""
    sys.stdout.write(f"Build target '{os.path.basename(out.rstrip('/')) or out}' already exists and will be "
                     "deleted during the build process. Do you want to continue? [y/N] ")  # fmt: skip
    sys.stdout.flush()
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    if not answer.endswith("\n"):
        sys.stdout.write("\n")
    return answer.strip() in ("y", "Y")


def _key(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The key of `build --encrypt` (--passphrase and --pem-path imply it), or None."""
    if not (args.encrypt or args.passphrase or args.pem_path):
        return None
    from sifbox.security import cryptkey

    what = f"`{args.image}`"
    key = cryptkey.from_options(ask=args.passphrase, pem_path=args.pem_path, env=os.environ, verb="build",
                                what=what)  # one prompt, as Apptainer's build
    cryptkey.forget_environment(os.environ)
    if key is None:
        raise UsageError(f"can't build {what} encrypted: no key was given",
                         hint="--passphrase (asked), --pem-path PUBLIC.pem, or SIFBOX_ENCRYPTION_PASSPHRASE / "
                         "SIFBOX_ENCRYPTION_PEM_PATH")  # fmt: skip
    if key.pem_path:  # read now: a wrong path fails before the build, not after it
        try:
            with open(key.pem_path, "rb"):
                pass
        except OSError as err:
            raise UsageError(f"can't build {what} encrypted: can't read `{key.pem_path}`: {err.strerror}") from None
    return key


def main(args: argparse.Namespace) -> int:
    from sifbox.build.pipeline import build

    if args.oci:
        return _oci_sif(args)
    req = request(args)
    if not (req.force or req.update) and os.path.lexists(req.output) and _overwrite_agreed(req.output):
        req = dataclasses.replace(req, force=True)
    if args.no_https:
        # read where registries are reached (sifbox.oci.registry.fetch_image), in the build's
        # process and its fakeroot child alike, as the variable itself would be
        os.environ["SIFBOX_NOHTTPS"] = "1"
    build(req)
    return 0


def _oci_sif_from_definition(args: argparse.Namespace) -> int:
    """`build --oci OUT app.def`: the definition built as any image, kept as an OCI-SIF."""
    from sifbox.build.ocisif import build_oci_sif

    if args.encrypt or args.passphrase or args.pem_path:
        raise UsageError(f"can't build `{args.image}` encrypted with --oci: OCI-SIF images are not encrypted")
    req = request(args)
    if not req.force and os.path.lexists(req.output):
        if not _overwrite_agreed(req.output):
            return 0
        req = dataclasses.replace(req, force=True)
    if args.no_https:
        os.environ["SIFBOX_NOHTTPS"] = "1"
    build_oci_sif(req)
    return 0


def _oci_sif(args: argparse.Namespace) -> int:
    """`build --oci OUT SOURCE`: an OCI-SIF of an OCI image, as `pull --oci OUT SOURCE` makes it."""
    from sifbox.cli.commands import pull

    if args.sandbox:
        raise UsageError("can't use --oci with --sandbox: an OCI-SIF is a file")
    if args.spec.partition(":")[0] not in (*pull.LOCAL, "docker"):
        if "://" in args.spec or not os.path.isfile(args.spec):
            raise NotAvailableError(f"can't build `{args.image}` with --oci from `{args.spec}`: sifbox builds OCI-SIF "
                                    "images from OCI sources (docker://, oci:, oci-archive:, docker-archive:) and "
                                    "definition files",
                                    hint=f"build a SIF (`sifbox build {args.image.removesuffix('.oci.sif')}.sif "
                                    f"{args.spec}`)")  # fmt: skip
        return _oci_sif_from_definition(args)
    pulled = argparse.Namespace(uri=args.spec, out=args.image, dir=None, force=args.force, oci=True, platform=None,
                                arch=args.arch, disable_cache=args.disable_cache, no_https=args.no_https,
                                config=getattr(args, "config", None))  # fmt: skip
    return pull.main(pulled)
