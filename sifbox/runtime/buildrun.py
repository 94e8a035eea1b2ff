"""A build's scripts (%post, %test) run in the root being built, through the one launch
orchestrator (sifbox.runtime.launcher): this module only describes that container."""

from __future__ import annotations

from sifbox.runtime import images
from sifbox.runtime.launcher import Prepared, launch_prepared, verbose_log
from sifbox.util.errors import UsageError


def run_build_container(root: str, argv: list[str], env: dict[str, str], *, binds: tuple[str, ...] = (),
                        writable: bool = True, writable_tmpfs: bool = False, config_path: str | None = None) -> int:  # fmt: skip
    """Run a build script (%post, %test) in the image root being built: called as
    root (real root, or root of the build's fakeroot user namespace); the root
    directory gets /proc, /sys, a minimal /dev, private /tmp, /etc/resolv.conf
    and /etc/hosts, and the script Docker's default capabilities (all of them
    in a fakeroot build, whose namespace owns nothing of the host)."""
    from sifbox.config import sysconf
    from sifbox.image.source import open_image
    from sifbox.runtime import caps
    from sifbox.runtime.options import LaunchOptions
    from sifbox.runtime.plan import default_mounts, site_from_config
    from sifbox.runtime.sandbox.ops import Namespaces, RootImage
    from sifbox.runtime.spec import ContainerSpec, Host, parse_bind
    from sifbox.util.paths import in_user_namespace

    real_root = not in_user_namespace()
    bind_list = []
    for text in binds:
        bind_list += parse_bind(text)
    if any(b.image_src is not None or b.part_id is not None for b in bind_list):
        raise UsageError("can't bind an image (image-src=, id=) into a build's container",
                         hint="bind the image's files as a directory")
    spec = ContainerSpec(
        image=root, action="exec", command=list(argv), binds=tuple(bind_list), no_home=True, contain=True,
        writable=writable, writable_tmpfs=writable_tmpfs and not writable, pwd="/",
        no_mount=frozenset({"home", "cwd"}), identity_files=False, pid=real_root, ipc=real_root,
    )  # fmt: skip
    host = Host(0, 0, "root", "/root", "/", True)
    cfg = sysconf.load(config_path)
    site = site_from_config(cfg)
    source = open_image(root, verb="build")
    image = RootImage("dir", source.fd, 0, 0, source.path)
    p = Prepared(action="exec", spec=spec, host=host, inner=host, cfg=cfg, site=site, log=verbose_log(),
                 caps=caps.BUILD if real_root else caps.ALL, contained=real_root, userns=False, source=source,
                 opened=images.Opened(source, image, [], []), image=image, layers=[], data=[], identity=False,
                 mounts=default_mounts(spec, host, site=site, contained=real_root), fixed=(list(argv), dict(env)),
                 keep_fds=frozenset(), ns=Namespaces(False, 0, 0, pid=real_root, ipc=real_root),
                 options=LaunchOptions())  # fmt: skip
    return launch_prepared(p)
