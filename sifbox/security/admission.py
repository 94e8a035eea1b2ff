"""One admission path for every image a container sees.

The main image, each `--overlay` (and SIFBOX_OVERLAY), a SIF's overlay
partition, each image bound with `image-src=`/`id=` and the images of an
instance a command joins are all judged here,
the same way: the site's limits of sifbox.conf (`limit container paths|owners|
groups`, `allow container sif|squashfs|extfs|dir|encrypted`, `limit container
store`) and the execution control list (ecl.toml beside sifbox.conf). Each is
judged on its open descriptor (its resolved path, owner, group and bytes),
and the runtime mounts that same descriptor: nothing is looked up again by
path between the decision and the mount.

    gate = Gate.from_config(cfg, conf_path, user=..., verb="run")
    gate.admit(fd, kind="sif", image="app.sif", role="image")
    gate.admit(overlay_fd, kind="dir", image="ov/", role="overlay")

With no limit set and no ecl.toml, a Gate costs one stat and decides nothing.
"""

from __future__ import annotations

import os

from sifbox.util.errors import ExitStatus, SifboxError

#: The object of the message for each role: "can't VERB <object>: <reason>".
OBJECTS = {"image": "`{path}`", "overlay": "with overlay `{path}`", "partition": "`{path}`: its overlay partition",
           "instance": "the instance's image `{path}`", "bind": "with the bound image `{path}`"}  # fmt: skip


class AdmissionError(SifboxError):
    """The site's policy or its ECL refuses an image."""

    reference = "policy-refused"
    exit_status = ExitStatus.CANNOT_LAUNCH


class Gate:
    """The site's rules for the images of one launch."""

    __slots__ = ("conf_path", "ecl", "limits", "verb")

    def __init__(self, limits, ecl, conf_path: str | None, verb: str) -> None:  # type: ignore[no-untyped-def]
        self.limits, self.ecl, self.conf_path, self.verb = limits, ecl, conf_path, verb

    @classmethod
    def from_config(cls, cfg, conf_path: str | None, *, user: str, verb: str) -> Gate:  # type: ignore[no-untyped-def]
        limits = None
        if limits_configured(cfg):
            from sifbox.security import policy

            limits = policy.limits_from_config(cfg, user)
        ecl_cfg = None
        ecl_path = _ecl_path(conf_path)
        if os.path.exists(ecl_path):
            from sifbox.security import ecl

            loaded = ecl.load(ecl_path)
            if loaded is not None and loaded.activated:
                ecl_cfg = loaded
        return cls(limits, ecl_cfg, conf_path, verb)

    @property
    def active(self) -> bool:
        return self.limits is not None or self.ecl is not None

    def admit(self, fd: int, *, kind: str, image: str, role: str = "image") -> None:
        """Raise AdmissionError unless the image open at `fd` may be used.

        `kind` is its `allow container` kind: sif, squashfs, extfs, dir or encrypted."""
        if self.limits is not None:
            from sifbox.security import policy
            from sifbox.util import filestat

            st = filestat.fstat(fd)
            reason = policy.decide(policy.opened_path(fd), st.st_uid, st.st_gid, kind, self.limits)
            if reason is not None:
                raise AdmissionError(f"can't {self.verb} {_object(role, image)}: {reason}",
                                     hint="`sifbox config check` shows the limits of the site's sifbox.conf")  # fmt: skip
        if self.ecl is not None:
            from sifbox.security import ecl

            d = ecl.check_image(image, fd, config=self.ecl)
            if not d.allowed:
                raise AdmissionError(f"can't {self.verb} {_object(role, image)}: the execution control list "
                                     f"refuses it: {d.reason}",
                                     hint=f"`sifbox ecl check {image}` explains the decision")  # fmt: skip


    def allows_encrypted(self) -> bool:
        """`allow container encrypted` (decided before any key is asked for or used)."""
        return self.limits is None or "encrypted" in self.limits.kinds

    def refuse_encrypted(self, image: str) -> None:
        raise AdmissionError(f"can't {self.verb} `{image}`: encrypted images are not allowed by the site's "
                             "sifbox.conf (`allow container encrypted = no`)",
                             hint="`sifbox config check` shows the limits of the site's sifbox.conf")  # fmt: skip

    def admit_partition(self, fd: int, *, image: str) -> None:
        """The EXT3 overlay partition of SIF image `fd`, already admitted as an
        image: `allow container extfs`, and no ECL (it vouches for signed
        objects, and an overlay partition is the writable, unsigned part of a SIF)."""
        if self.limits is not None:
            self.admit(fd, kind="extfs", image=image, role="partition")
        if self.ecl is not None:
            raise AdmissionError(f"can't {self.verb} {_object('partition', image)}: the execution control list "
                                 "admits only signed content, and an overlay partition is not",
                                 hint=f"`sifbox sif list {image}` shows the partition; run a copy without it")  # fmt: skip


def _object(role: str, path: str) -> str:
    return OBJECTS.get(role, "`{path}`").format(path=path)


def limits_configured(cfg) -> bool:  # type: ignore[no-untyped-def]
    """True when sifbox.conf sets any image limit (no system call, no import)."""
    return bool(
        cfg.get_list("limit container paths") or cfg.get_list("limit container owners")
        or cfg.get_list("limit container groups") or cfg.get_bool("limit container store")
        or not all(cfg.get_bool(f"allow container {k}") for k in ("sif", "encrypted", "squashfs", "extfs", "dir"))
    )  # fmt: skip


def _ecl_path(conf_path: str | None) -> str:
    """ecl.toml lives beside the sifbox.conf in use."""
    from sifbox.config.sysconf import DEFAULT_PATH, ENV_VAR

    conf = conf_path or os.environ.get(ENV_VAR) or DEFAULT_PATH
    return os.path.join(os.path.dirname(os.path.abspath(conf)), "ecl.toml")
