"""Execution control list: which SIF images may run, by location and signer.

`ecl.toml` uses Apptainer's format::

    activated = true
    legacyinsecure = false
    [[execgroup]]
      tagname = "site"
      mode = "whitelist"          # whitelist | whitestrict | blacklist
      dirpath = "/opt/images"     # "" = any directory
      keyfp = ["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]

The image's group is the execgroup whose dirpath is the directory of the
image file actually opened (resolved), else the execgroup with an empty
dirpath. Signatures are verified with the global keyring
beside ecl.toml
(/etc/sifbox/global-pgp-public); whitelist needs one listed signer,
whitestrict all of them, blacklist none. Without a privileged runtime
this is site policy, not a barrier: a user can mount an image with
squashfuse directly.
"""

from __future__ import annotations

import os

from sifbox.util.errors import ExitStatus, SifboxError

DEFAULT_PATH = "/etc/sifbox/ecl.toml"
MODES = ("whitelist", "whitestrict", "blacklist")


class EclError(SifboxError):
    reference = "ecl-error"
    exit_status = ExitStatus.USAGE


class ExecGroup:
    __slots__ = ("dirpath", "keyfp", "line", "mode", "tagname")

    def __init__(self, tagname: str, mode: str, dirpath: str, keyfp: list[str], line: int | None):
        self.tagname = tagname
        self.mode = mode
        self.dirpath = dirpath
        self.keyfp = keyfp
        self.line = line


class EclConfig:
    __slots__ = ("activated", "groups", "legacy", "path")

    def __init__(self, path: str, activated: bool, legacy: bool, groups: list[ExecGroup]):
        self.path = path
        self.activated = activated
        self.legacy = legacy
        self.groups = groups


class Decision:
    """Whether an image may run, and why (`explain()` for people)."""

    __slots__ = ("allowed", "config", "group", "reason", "signers", "unvalidated")

    def __init__(self, allowed: bool, reason: str, group: ExecGroup | None = None,
                 signers: set[str] | None = None, unvalidated: set[str] | None = None,
                 config: EclConfig | None = None):  # fmt: skip
        self.allowed = allowed
        self.reason = reason
        self.group = group
        self.signers = signers or set()
        self.unvalidated = unvalidated or set()
        self.config = config

    def explain(self) -> str:
        lines = []
        if self.config is not None:
            lines.append(f"ECL: {self.config.path} (activated = {str(self.config.activated).lower()}, "
                         f"legacyinsecure = {str(self.config.legacy).lower()})")  # fmt: skip
        if self.group is not None:
            where = f"dirpath `{self.group.dirpath}`" if self.group.dirpath else "any directory"
            lines.append(f"execgroup: `{self.group.tagname}` ({self.group.mode}, {where})")
            for fp in self.group.keyfp:
                state = "signed, verified" if fp in self.signers else "not signed"
                if fp in self.unvalidated:
                    state = "signature does not verify"
                lines.append(f"  key {fp}: {state}")
        lines.append(f"decision: {'allowed' if self.allowed else 'refused'}: {self.reason}")
        return "\n".join(lines) + "\n"


def _line_of(text: str, needle: str, nth: int) -> int | None:
    count = -1
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(needle):
            count += 1
            if count == nth:
                return i
    return None


def parse(text: str, path: str = DEFAULT_PATH) -> EclConfig:
    """Parse and check ecl.toml; errors name the file and line."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = str(err)
        line = getattr(err, "lineno", None)
        if line is None and "(at line " in msg:
            import re

            m = re.search(r"\(at line (\d+)", msg)
            line = int(m.group(1)) if m else None
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        where = f"{path}:{line}" if line else path
        raise EclError(f"can't read ECL configuration `{where}`: {msg}") from None
    except RecursionError:
        raise EclError(f"can't read ECL configuration `{path}`: nested too deeply") from None

    def bad(reason: str, line: int | None) -> EclError:
        where = f"{path}:{line}" if line else path
        return EclError(f"can't read ECL configuration `{where}`: {reason}")

    known = {"activated", "legacyinsecure", "execgroup"}
    for key in doc:
        if key not in known:
            raise bad(f"unknown setting `{key}`", _line_of(text, key, 0))
    activated = doc.get("activated", False)
    legacy = doc.get("legacyinsecure", False)
    for name, value in (("activated", activated), ("legacyinsecure", legacy)):
        if not isinstance(value, bool):
            raise bad(f"`{name}` must be true or false", _line_of(text, name, 0))
    raw_groups = doc.get("execgroup", [])
    if not isinstance(raw_groups, list):
        raise bad("`execgroup` must be a list of tables ([[execgroup]])", _line_of(text, "execgroup", 0))
    groups: list[ExecGroup] = []
    seen: set[str] = set()
    # The line of each [[execgroup]] header, found once (not once per group: that is quadratic).
    headers = [n for n, ln in enumerate(text.splitlines(), 1)
               if ln.strip().startswith("[[execgroup]]")]  # fmt: skip
    for i, g in enumerate(raw_groups):
        line = headers[i] if i < len(headers) else None
        if not isinstance(g, dict):
            raise bad("`execgroup` must be a list of tables ([[execgroup]])", line)
        for key in g:
            if key not in ("tagname", "mode", "dirpath", "keyfp"):
                raise bad(f"unknown execgroup setting `{key}`", line)
        tag, mode, dirpath, keyfp = g.get("tagname", ""), g.get("mode", ""), g.get("dirpath", ""), g.get("keyfp", [])
        if not isinstance(tag, str) or not isinstance(dirpath, str):
            raise bad("execgroup `tagname` and `dirpath` must be strings", line)
        if mode not in MODES:
            raise bad(f"execgroup `{tag}`: mode must be one of whitelist, whitestrict, blacklist (not `{mode}`)", line)
        if dirpath in seen:
            raise bad(f"a specific dirpath can only appear in one execgroup: `{dirpath}`", line)
        seen.add(dirpath)
        if dirpath and (not os.path.isabs(dirpath) or os.path.normpath(dirpath) != dirpath):
            raise bad(f"execgroup `{tag}`: dirpath `{dirpath}` must be an absolute, clean path", line)
        if dirpath and os.path.exists(dirpath) and os.path.realpath(dirpath) != dirpath:
            raise bad(f"execgroup `{tag}`: dirpath `{dirpath}` must have its symlinks resolved "
                      f"(`{os.path.realpath(dirpath)}`)", line)  # fmt: skip
        if not isinstance(keyfp, list):
            raise bad(f"execgroup `{tag}`: keyfp must be a list of fingerprints", line)
        fps = []
        for fp in keyfp:
            ok = isinstance(fp, str) and len(fp) == 40
            try:
                bytes.fromhex(fp if ok else "x")
            except ValueError:
                ok = False
            if not ok:
                raise bad(f"execgroup `{tag}`: expecting a 40 chars hex fingerprint string, got `{fp}`", line)
            fps.append(fp.upper())
        groups.append(ExecGroup(tag, mode, dirpath, fps, line))
    return EclConfig(path, activated, legacy, groups)


def load(path: str = DEFAULT_PATH) -> EclConfig | None:
    """The configuration at `path`, or None when there is no such file."""
    from sifbox.util import trusted

    try:
        with open(path, "rb") as f:
            reason = trusted.untrusted_reason(f.fileno())
            if reason is not None:
                raise EclError(f"can't read ECL configuration `{path}`: {reason}", hint=trusted.HINT)
            data = f.read(4 << 20)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise EclError(f"can't read ECL configuration `{path}`: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EclError(f"can't read ECL configuration `{path}`: not UTF-8 text") from None
    return parse(text, path)


def _opened_path(path: str, fd: int | None) -> str:
    if fd is not None:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return os.path.realpath(path)


def check_image(path: str, fd: int | None = None, *, config: EclConfig | str | None = None,
                keyring: bytes | None = None) -> Decision:  # fmt: skip
    """Decide whether the image at `path` (open as `fd`, if given) may run.

    `config` is a parsed configuration or the path of ecl.toml (default
    /etc/sifbox/ecl.toml); `keyring` the binary OpenPGP keyring of trusted
    keys (default: the global keyring)."""
    cfg = load(config or DEFAULT_PATH) if not isinstance(config, EclConfig) else config
    if cfg is None:
        return Decision(True, "no ECL configuration")
    if not cfg.activated:
        return Decision(True, "the ECL is not activated", config=cfg)
    real = _opened_path(path, fd)
    directory = os.path.dirname(real)
    group = next((g for g in cfg.groups if g.dirpath == directory), None)
    if group is None:
        group = next((g for g in cfg.groups if g.dirpath == ""), None)
    if group is None:
        return Decision(False, f"{real} not part of any execgroup", config=cfg)
    from sifbox.formats.sif import constants as c

    own = fd is None
    if fd is None:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            return Decision(False, f"can't open the image: {err.strerror}", group, config=cfg)
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Decision(False, "the ECL admits only signed SIF images, not a directory", group, config=cfg)
        head = os.pread(fd, 42, 0)
        if head[32:42] != c.MAGIC:
            return Decision(False, "the ECL admits only signed SIF images, not other image files",
                            group, config=cfg)  # fmt: skip
        return _decide(cfg, group, fd, keyring)
    finally:
        if own:
            os.close(fd)


def _decide(cfg: EclConfig, group: ExecGroup, fd: int, keyring: bytes | None) -> Decision:
    from sifbox.formats.sif.image import SifError, SifImage
    from sifbox.security import verify as v
    from sifbox.security.integrity import IntegrityError, SignatureNotValid
    from sifbox.util.preadfile import reader

    if keyring is None:
        keyring = global_keyring(os.path.dirname(cfg.path))
    with reader(fd) as fp:  # no copy of fd, nor its shared offset
        try:
            img = SifImage.load(fp)
        except SifError as err:
            return Decision(False, f"not a valid SIF image: {err}", group, config=cfg)
        objects: list[int] = []
        if cfg.legacy:
            part = img.primary_partition()
            if part is None:
                return Decision(False, "get primary system partition: no primary partition", group, config=cfg)
            objects = [part.id]
        unvalidated: set[str] = set()

        def note(r: v.Result) -> bool:
            if isinstance(r.error, SignatureNotValid):
                unvalidated.add(r.signature.signature()[1].hex().upper())
                return True
            return False

        try:
            v.verify_image(img, v.KeyMaterial(keyring), objects=objects, legacy=cfg.legacy, callback=note)
            every, anyone = v.signed_by(img, objects=objects, legacy=cfg.legacy)
        except IntegrityError as err:
            return Decision(False, f"unable to verify image: {err}", group, unvalidated=unvalidated, config=cfg)
    good = every - unvalidated
    if group.mode == "whitelist":
        if any(fp in good for fp in group.keyfp):
            return Decision(True, "signed by an authorized entity", group, good, unvalidated, cfg)
        return Decision(False, "image not signed by required entities", group, good, unvalidated, cfg)
    if group.mode == "whitestrict":
        if all(fp in good for fp in group.keyfp):
            return Decision(True, "signed by all authorized entities", group, good, unvalidated, cfg)
        return Decision(False, "image not signed by required entities", group, good, unvalidated, cfg)
    if any(fp in anyone for fp in group.keyfp):
        return Decision(False, "image signed by a forbidden entity", group, good, unvalidated, cfg)
    return Decision(True, "not signed by a forbidden entity", group, good, unvalidated, cfg)


def global_keyring(confdir: str) -> bytes:
    """The site's trusted keys: `global-pgp-public` beside ecl.toml."""
    from sifbox.util import trusted

    path = os.path.join(confdir, "global-pgp-public")
    try:
        with open(path, "rb") as f:
            reason = trusted.untrusted_reason(f.fileno())
            if reason is not None:
                raise EclError(f"can't read the global keyring `{path}`: {reason}", hint=trusted.HINT)
            return f.read()
    except OSError:
        return b""


def config_path(sifbox_conf: str | None) -> str:
    """ecl.toml lives beside the sifbox.conf in use."""
    from sifbox.config.sysconf import DEFAULT_PATH as CONF
    from sifbox.config.sysconf import ENV_VAR

    conf = sifbox_conf or os.environ.get(ENV_VAR) or CONF
    return os.path.join(os.path.dirname(os.path.abspath(conf)), "ecl.toml")


def enforce(path: str, fd: int | None, verb: str, sifbox_conf: str | None = None) -> None:
    """Raise a one-line error when the ECL refuses the image (runtime hook)."""
    cfg_path = config_path(sifbox_conf)
    cfg = load(cfg_path)
    if cfg is None or not cfg.activated:
        return
    d = check_image(path, fd, config=cfg)
    if not d.allowed:
        raise SifboxError(
            f"can't {verb} `{path}`: the execution control list refuses it: {d.reason}",
            hint=f"`sifbox ecl check {path}` explains the decision",
            exit_status=ExitStatus.CANNOT_LAUNCH,
        )
