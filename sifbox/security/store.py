"""The admission store daemon (`sifbox store serve`): requests and admission.

One small server, the only writer of the store directory, listening on a Unix socket
(`sifbox.security.store_server`; its privileged start-up is `store_setup`, its wire
protocol `store_protocol`). Callers are identified by `SO_PEERCRED`; an image comes in as
an open file descriptor (`SCM_RIGHTS`), so the daemon reads exactly what the caller could
read. The descriptor is checked first (`store_intake`: a regular file, its size, its SIF
header), then copied, bounded, into a temporary file of the caller's directory, and the
copy is checked: what is checked is what gets stored.

Layout (`store path`, default /var/lib/sifbox/store)::

    ROOT/                 store user, 0711: users cannot list who has images
    ROOT/USER/            store user, 0700 + POSIX ACL `user:USER:r-x`
    ROOT/USER/NAME.sif    store user, 0600 + POSIX ACL `user:USER:r--`
    ROOT/.meta/USER/NAME.json   admission record (digests, checks), store user only

A user reads their own images (to run them, e.g. with `limit container store
= yes`) and nobody else's; only the daemon writes. ACLs, rather than a group
per user, because a primary group is often shared (`users`) and a group per
user would need the store user in every group. The ACLs are written as the
`system.posix_acl_access` attribute directly (no `acl` package needed); the
file system must support POSIX ACLs (ext4, xfs, btrfs, tmpfs do).

Admission pipeline, each step set in sifbox.conf: count quota (`store max
images`), size quota (`store max size`, `store max total size`, and free space), SIF
validity, signature (`store require signature`), SBOM appended if missing (`store sbom`;
the package databases are read within `store sbom max size` and `store sbom max files`),
vulnerability scan (`store vulnerability db`, `store severity threshold`),
external scanner (`store scanner command`). Every decision, refusals included, is a line
of the append-only JSON-lines audit log (`store audit log`, see `store_audit`).

A user's requests that change the store (cp, rm) run one at a time; reads (ls, info) run
beside them and see either the old or the new state, never a half-written image.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import struct
import threading
import time

from sifbox.security.store_intake import Refused
from sifbox.security.store_protocol import (
    MAX_REQUEST,
    NAME_RE,
    ProtocolError,
    Request,
    encode_reply,
    parse_request,
    shown,
    valid_user_name,
)
from sifbox.util.errors import SifboxError, describe_os_error

__all__ = ["MAX_REQUEST", "NAME_RE", "Peer", "Refused", "Settings", "Store", "acl_bytes"]

CHUNK = 1 << 20


# -- POSIX ACLs -----------------------------------------------------------------------------------

_ACL_XATTR = "system.posix_acl_access"
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


def acl_bytes(owner_perm: int, user_id: int, user_perm: int) -> bytes:
    """A `system.posix_acl_access` value: owner `owner_perm`, one named user, nothing else."""
    entries = [(_USER_OBJ, owner_perm, _UNDEFINED), (_USER, user_perm, user_id),
               (_GROUP_OBJ, 0, _UNDEFINED), (_MASK, user_perm, _UNDEFINED), (_OTHER, 0, _UNDEFINED)]  # fmt: skip
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def grant_read(path_or_fd: str | int, uid: int, directory: bool) -> None:
    """Let `uid` read (and, for a directory, enter) what the store user owns."""
    if uid == os.geteuid():
        return  # the store user's own images (or root running the store as root)
    os.setxattr(path_or_fd, _ACL_XATTR, acl_bytes(7 if directory else 6, uid, 5 if directory else 4))


# -- settings and callers -------------------------------------------------------------------------


class Settings:
    """What the daemon needs from sifbox.conf."""

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        from sifbox.security import policy

        self.root = policy.store_root(cfg)
        self.socket = cfg.get_str("store socket")
        self.user = cfg.get_str("store user")
        self.max_images = cfg.get_int("store max images")
        self.max_size = cfg.get_int("store max size") * 1024 * 1024
        self.max_total = cfg.get_int("store max total size") * 1024 * 1024
        self.require_signature = cfg.get_bool("store require signature")
        self.signers = {f.replace(" ", "").upper() for f in cfg.get_list("store signers")}
        self.sbom = cfg.get_bool("store sbom")
        self.sbom_max_bytes = cfg.get_int("store sbom max size") * 1024 * 1024
        self.sbom_max_files = cfg.get_int("store sbom max files")
        self.vuln_db = cfg.get_str("store vulnerability db")
        self.threshold = cfg.get_str("store severity threshold")
        self.scanner = cfg.get_str("store scanner command")
        self.audit = cfg.get_str("store audit log")
        # 0 would mean "no limit" elsewhere; here it would mean no store at all.
        self.max_clients = max(1, cfg.get_int("store max clients"))
        self.max_clients_per_user = max(1, cfg.get_int("store max clients per user"))
        self.client_timeout = max(1, cfg.get_int("store client timeout"))
        #: trusted signers' keys: `global-pgp-public` beside sifbox.conf (as the ECL's)
        self.confdir = os.path.dirname(os.path.abspath(cfg.path)) if getattr(cfg, "path", None) else "/etc/sifbox"


class Peer:
    """Who is on the other end of a connection, as the kernel says (`SO_PEERCRED`)."""

    __slots__ = ("name", "pid", "uid")

    def __init__(self, pid: int, uid: int, name: str | None) -> None:
        self.pid, self.uid, self.name = pid, uid, name

    @classmethod
    def of(cls, conn: socket.socket) -> Peer:
        import pwd

        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
        return cls(pid, uid, name)


def _signers(path: str, confdir: str) -> list[str]:
    """Fingerprints of the keys (of the site's global keyring) whose signatures
    of `path` verify; empty when none does."""
    from sifbox.image.sif_file import open_sif
    from sifbox.security import ecl
    from sifbox.security import verify as v

    keyring = ecl.global_keyring(confdir)
    with open_sif(path, verb="verify") as img:
        try:
            results = v.verify_image(img, v.KeyMaterial(keyring), callback=lambda r: True)
        except Exception as err:  # noqa: BLE001 - no signature, a damaged image: not admitted
            raise SifboxError(str(err)) from None
    return [r.fingerprint for r in results if r.error is None and r.fingerprint]


class _Answer(Exception):
    """A reply decided early (a refusal): `reply` goes to the client, `record` to the log."""

    def __init__(self, reply: dict, record: dict) -> None:  # type: ignore[type-arg]
        super().__init__(reply.get("error"))
        self.reply, self.record = reply, record


# -- the store ------------------------------------------------------------------------------------


class Store:
    def __init__(self, settings: Settings, audit, log=None) -> None:  # type: ignore[no-untyped-def]
        self.s = settings
        self.audit_log = audit
        self.log = log or (lambda message: None)
        self.locks: dict[int, threading.Lock] = {}
        self.locks_guard = threading.Lock()
        self.cache_lock = threading.Lock()
        self._db_cache = None

    # -- paths --
    def user_dir(self, user: str) -> str:
        return os.path.join(self.s.root, user)

    def meta_path(self, user: str, name: str) -> str:
        return os.path.join(self.s.root, ".meta", user, name + ".json")

    def lock_for(self, uid: int) -> threading.Lock:
        with self.locks_guard:
            return self.locks.setdefault(uid, threading.Lock())

    def images(self, user: str) -> list[str]:
        try:
            names = os.listdir(self.user_dir(user))
        except FileNotFoundError:
            return []
        return sorted(n[:-4] for n in names if n.endswith(".sif") and not n.startswith("."))

    def clean_stale(self) -> None:
        """Remove temporary files a killed daemon left behind (nothing half-written stays)."""
        for top, _dirs, files in os.walk(self.s.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(top, name))

    def audit(self, record: dict) -> None:  # type: ignore[type-arg]
        self.audit_log.write(record)

    # -- connections --
    def handle(self, conn: socket.socket, peer: Peer) -> None:
        """Serve one connection: one request, one reply, one audit line."""
        fds: list[int] = []
        base = {"by": peer.name, "by_uid": peer.uid, "pid": peer.pid}
        try:
            conn.settimeout(self.s.client_timeout)
            try:
                msg, fds, flags, _addr = socket.recv_fds(conn, MAX_REQUEST + 1, 1)
            except TimeoutError:
                msg, flags = b"", -1
            except OSError:
                msg, flags = b"", 0
            if not msg:
                why = (f"no request within {self.s.client_timeout} s" if flags == -1
                       else "the client sent no request")  # fmt: skip
                self.audit({"op": "connect", **base, "verdict": "refused", "reason": why})
                return
            conn.settimeout(None)  # the admission takes its time; `_alive` peeks without waiting
            try:
                reply, record = self.respond(conn, peer, msg, fds, flags)
            except _Answer as answer:
                reply, record = answer.reply, answer.record
            if record is not None:
                self.audit({**base, **record})
            conn.settimeout(self.s.client_timeout)  # a client that does not read its reply
            _reply(conn, reply)
        except Exception as err:  # a fault of the daemon: the client hears of it, the daemon lives on
            self.log(f"sifbox store: internal error: {err!r}")
            with contextlib.suppress(Exception):
                self.audit({"op": "?", **base, "verdict": "error", "reason": f"internal error: {err}"})
            _reply(conn, {"ok": False, "error": f"internal error of the image store: {err}"})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()

    def respond(self, conn: socket.socket, peer: Peer, msg: bytes, fds: list[int],
                flags: int) -> tuple[dict, dict | None]:  # type: ignore[type-arg]  # fmt: skip
        """(reply, audit record) of one request; the record is None when it is written
        already (a change of the store is logged before the next change of that user's)."""
        import pwd

        try:
            req = parse_request(msg)
        except ProtocolError as err:
            return _refusal(err.reason, err.hint), {"op": err.op, "name": err.name,
                                                    "verdict": "refused", "reason": err.reason}  # fmt: skip
        record: dict = {"op": req.op, "user": peer.name, "uid": peer.uid, "name": req.name}  # type: ignore[type-arg]

        def refuse(reason: str, hint: str | None = None) -> _Answer:
            return _Answer(_refusal(reason, hint), {**record, "verdict": "refused", "reason": reason})

        if peer.name is None:
            raise refuse(f"uid {peer.uid} has no user name")
        if flags & socket.MSG_CTRUNC or len(fds) > 1:
            raise refuse("more than one descriptor sent (a request carries one image at most)")
        user, uid = peer.name, peer.uid
        if req.user is not None and req.user != peer.name:
            record["user"], record["uid"] = shown(req.user, 64), None
            # Root looks after every user's images (ls, info, rm), never admits for them.
            if peer.uid != 0 or req.op not in ("ls", "info", "rm"):
                raise refuse("only root may act on another user's images")
            try:
                uid = pwd.getpwnam(req.user).pw_uid
            except (KeyError, ValueError):  # ValueError: a NUL in the name
                raise refuse(f"no user `{shown(req.user, 64)}`") from None
            user = req.user
            record["user"], record["uid"] = user, uid
        if not valid_user_name(user):
            raise refuse(f"the user name `{shown(user, 64)}` can't name a directory of the store")
        if req.op == "ls":
            images = [d for d in (self.describe(user, n) for n in self.images(user)) if d]
            return {"ok": True, "images": images}, {**record, "verdict": "listed"}
        assert req.name is not None
        whose = "your store" if user == peer.name else f"the store of `{user}`"
        if req.op == "info":
            found = self.describe(user, req.name, full=True) if req.name in self.images(user) else None
            if found is None:
                raise refuse(f"no image `{req.name}` in {whose}")
            return {"ok": True, "image": found}, {**record, "verdict": "shown"}
        base = {"by": peer.name, "by_uid": peer.uid, "pid": peer.pid}
        if req.op == "rm":
            with self.lock_for(uid):
                try:
                    os.unlink(os.path.join(self.user_dir(user), req.name + ".sif"))
                except FileNotFoundError:
                    raise refuse(f"no image `{req.name}` in {whose}") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.meta_path(user, req.name))
                self.audit({**base, **record, "verdict": "removed"})
            return {"ok": True}, None
        if not fds:
            raise refuse("no image descriptor received")
        with self.lock_for(uid):
            reply, done = self.admit(conn, uid, user, req, fds[0], record)
            self.audit({**base, **done})
        return reply, None

    def describe(self, user: str, name: str, full: bool = False) -> dict | None:  # type: ignore[type-arg]
        """What `ls` and `info` show of an image; None when it is gone (removed meanwhile)."""
        path = os.path.join(self.user_dir(user), name + ".sif")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        out = {"name": name, "path": path, "size": st.st_size,
               "admitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))}  # fmt: skip
        try:
            with open(self.meta_path(user, name), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        if "source" in meta:  # written before the field said whose word it is
            meta.setdefault("client_source", meta.pop("source"))
        out["digest"] = meta.get("digest", "")
        if full:
            out.update({k: v for k, v in meta.items() if k not in out})
        return out

    # -- admission --
    def admit(self, conn: socket.socket, uid: int, user: str, req: Request, src: int,
              record: dict) -> tuple[dict, dict]:  # type: ignore[type-arg]  # fmt: skip
        from sifbox.security import store_intake as intake

        name = req.name
        assert name is not None
        checks: list[dict] = []  # type: ignore[type-arg]
        record = {**record, "client_source": req.client_source}
        udir = self.user_dir(user)
        tmp = None
        digest = ""
        try:
            st = intake.check_descriptor(src)
            size = st.st_size
            record["size"] = size
            self._check_quota(user, name, size, checks)
            try:
                intake.check_sif(src, size)
            except Refused:
                checks.append({"step": "sif", "result": "fail"})
                raise
            self._ensure_user_dir(udir, uid)
            dfd = os.open(udir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                try:
                    intake.check_space(dfd, size)
                except Refused:
                    checks.append({"step": "space", "result": "fail"})
                    raise
                tmp, fd = _temp_file(dfd, udir, name)
                try:
                    digest = intake.copy_in(src, fd, size, lambda: self._alive(conn))
                finally:
                    os.close(fd)
            finally:
                os.close(dfd)
            self._check_sif(tmp, checks)
            self._alive(conn)
            self._check_signature(tmp, checks)
            sbom_purls = self._sbom(tmp, name, checks)
            self._alive(conn)
            findings = self._scan(sbom_purls, checks)
            self._alive(conn)
            self._external(tmp, checks)
            self._alive(conn)
            final = os.path.join(udir, name + ".sif")
            os.chmod(tmp, 0o600)
            grant_read(tmp, uid, directory=False)
            meta = {"digest": digest, "stored_digest": _sha256_file(tmp), "uid": uid,
                    "client_source": req.client_source, "checks": checks, "findings": findings}  # fmt: skip
            self._write_meta(user, name, meta)
            os.rename(tmp, final)
            tmp = None
            _fsync_dir(udir)
        except Refused as why:
            return ({"ok": False, "error": str(why), "checks": checks},
                    {**record, "digest": digest, "checks": checks, "verdict": "refused", "reason": str(why)})  # fmt: skip
        except Exception as err:
            reason = f"store error: {describe_os_error(err) if isinstance(err, OSError) else err}"
            return ({"ok": False, "error": reason, "checks": checks},
                    {**record, "digest": digest, "checks": checks, "verdict": "error", "reason": reason})  # fmt: skip
        finally:
            _discard(tmp)
        return ({"ok": True, "path": final, "digest": digest, "checks": checks},
                {**record, "digest": digest, "checks": checks, "verdict": "admitted"})  # fmt: skip

    def _check_quota(self, user: str, name: str, size: int, checks: list) -> None:  # type: ignore[type-arg]
        existing = self.images(user)
        if self.s.max_images and name not in existing and len(existing) >= self.s.max_images:
            checks.append({"step": "quota", "result": "fail"})
            raise Refused(f"quota exceeded: {len(existing)} images stored, at most "
                          f"{self.s.max_images} per user (`sifbox store rm NAME` frees one)")  # fmt: skip
        if self.s.max_size and size > self.s.max_size:
            checks.append({"step": "quota", "result": "fail"})
            raise Refused(f"image of {size} bytes is larger than the store's limit "
                          f"of {self.s.max_size // (1 << 20)} MiB (`store max size`)")  # fmt: skip
        if self.s.max_total:
            used = sum(self._size_of(user, n) for n in existing if n != name)
            if used + size > self.s.max_total:
                checks.append({"step": "quota", "result": "fail"})
                raise Refused(f"quota exceeded: {used >> 20} MiB stored, this image needs "
                              f"{-(-size >> 20)} MiB more, at most "
                              f"{self.s.max_total >> 20} MiB per user")  # fmt: skip
        checks.append({"step": "quota", "result": "pass"})

    def _size_of(self, user: str, name: str) -> int:
        try:
            return os.stat(os.path.join(self.user_dir(user), name + ".sif")).st_size
        except OSError:
            return 0

    def _ensure_user_dir(self, udir: str, uid: int) -> None:
        try:
            os.mkdir(udir, 0o700)
        except FileExistsError:
            return
        fd = os.open(udir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            grant_read(fd, uid, directory=True)
        finally:
            os.close(fd)

    def _alive(self, conn: socket.socket) -> None:
        """Refuse when the client went away (a killed `store cp` stores nothing)."""
        try:
            data = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data == b"":
            raise Refused("the client disconnected before admission finished")

    def _check_sif(self, tmp: str, checks: list) -> None:  # type: ignore[type-arg]
        from sifbox.image.source import ImageKind, open_image

        try:
            src = open_image(tmp, verb="admit")
        except SifboxError as err:
            checks.append({"step": "sif", "result": "fail"})
            raise Refused(str(err).split(": ", 1)[-1]) from None
        kind = src.kind
        src.close()
        if kind is not ImageKind.SIF:
            checks.append({"step": "sif", "result": "fail"})
            raise Refused("not a SIF image (the store admits SIF images only)")
        checks.append({"step": "sif", "result": "pass"})

    def _check_signature(self, tmp: str, checks: list) -> None:  # type: ignore[type-arg]
        if not self.s.require_signature:
            checks.append({"step": "signature", "result": "skipped"})
            return
        try:
            signers = _signers(tmp, self.s.confdir)
        except ImportError:
            checks.append({"step": "signature", "result": "fail"})
            raise Refused("a signature is required but signature checking is not available") from None
        except SifboxError as err:
            checks.append({"step": "signature", "result": "fail"})
            raise Refused(f"signature check failed: {err}") from None
        if not signers:
            checks.append({"step": "signature", "result": "fail"})
            raise Refused("the image has no valid signature, and the store requires one")
        if self.s.signers and not {f.replace(" ", "").upper() for f in signers} & self.s.signers:
            checks.append({"step": "signature", "result": "fail", "signers": list(signers)})
            raise Refused("the image is not signed by a key of `store signers`")
        checks.append({"step": "signature", "result": "pass", "signers": list(signers)})

    def _sbom(self, tmp: str, name: str, checks: list) -> list[str]:  # type: ignore[type-arg]
        """Purls of the image's packages (always read by the store itself: an SBOM
        brought by the image is kept, but not trusted for the scan)."""
        from sifbox.image.files import BudgetExceeded, ReadBudget
        from sifbox.image.source import open_image
        from sifbox.security import sbom

        budget = ReadBudget(max_bytes=self.s.sbom_max_bytes, max_files=self.s.sbom_max_files)
        src = open_image(tmp, verb="admit")
        try:
            comps = sbom.components_of_image(src, budget)
            stored = sbom.stored_sbom_format(src.fd)
        except BudgetExceeded as err:
            checks.append({"step": "sbom", "result": "fail"})
            raise Refused(f"can't read the image's packages: {err.reason}") from None
        except SifboxError as err:
            checks.append({"step": "sbom", "result": "fail"})
            why = str(err).split(": ", 1)[-1] if str(err).startswith("can't ") else str(err)
            raise Refused(f"can't read the image's packages: {why}") from None
        finally:
            src.close()
        if stored is not None:
            checks.append({"step": "sbom", "result": "present", "packages": len(comps)})
        elif self.s.sbom:
            _append_sbom(tmp, sbom.cyclonedx_json(comps, name + ".sif").encode())
            checks.append({"step": "sbom", "result": "appended", "packages": len(comps)})
        else:
            checks.append({"step": "sbom", "result": "skipped", "packages": len(comps)})
        return [c.purl for c in comps]

    def _scan(self, purls: list[str], checks: list) -> list:  # type: ignore[type-arg]
        from sifbox.security import scan

        if not self.s.vuln_db:
            checks.append({"step": "scan", "result": "skipped"})
            return []
        try:
            db = self._database()
        except SifboxError as err:
            checks.append({"step": "scan", "result": "fail"})
            raise Refused(f"vulnerability scan failed: {err}") from None
        packages = [p for p in (scan.package_from_purl(u) for u in purls) if p]
        findings, _ = scan.match(db, packages)
        over = scan.crosses(findings, self.s.threshold)
        found = [{"id": f.id, "package": f.package, "version": f.version, "severity": f.severity}
                 for f in findings]  # fmt: skip
        if over:
            checks.append({"step": "scan", "result": "fail", "findings": found})
            worst = ", ".join(f"{f.id} ({f.package} {f.version}, {f.severity})" for f in over[:5])
            more = f" and {len(over) - 5} more" if len(over) > 5 else ""
            raise Refused(f"{len(over)} known vulnerabilit{'y' if len(over) == 1 else 'ies'} at or "
                          f"above `{self.s.threshold}`: {worst}{more}")  # fmt: skip
        checks.append({"step": "scan", "result": "pass", "findings": len(found)})
        return found

    def _database(self):  # type: ignore[no-untyped-def]
        """The OSV database, read again only when its directories changed."""
        from sifbox.security import scan

        assert self.s.vuln_db is not None
        stamp = _tree_stamp(self.s.vuln_db)
        with self.cache_lock:
            cached = self._db_cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        db = scan.load_db(self.s.vuln_db)
        with self.cache_lock:
            self._db_cache = (stamp, db)
        return db

    def _external(self, tmp: str, checks: list) -> None:  # type: ignore[type-arg]
        import shlex
        import subprocess

        if not self.s.scanner:
            checks.append({"step": "external", "result": "skipped"})
            return
        argv = [*shlex.split(self.s.scanner), tmp]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=3600, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as err:
            checks.append({"step": "external", "result": "fail"})
            raise Refused(f"external scanner `{shlex.join(argv[:-1])}` failed: {err}") from None
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            checks.append({"step": "external", "result": "fail", "status": proc.returncode})
            raise Refused(f"external scanner refused the image (status {proc.returncode})"
                          + (f": {' / '.join(tail)}" if tail else ""))  # fmt: skip
        checks.append({"step": "external", "result": "pass"})

    def _write_meta(self, user: str, name: str, meta: dict) -> None:  # type: ignore[type-arg]
        d = os.path.dirname(self.meta_path(user, name))
        os.makedirs(d, mode=0o700, exist_ok=True)
        tmp = os.path.join(d, f".{name}.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.meta_path(user, name))


def _refusal(reason: str, hint: str | None = None) -> dict:  # type: ignore[type-arg]
    reply = {"ok": False, "error": reason}
    if hint:
        reply["hint"] = hint
    return reply


def _temp_file(dfd: int, udir: str, name: str) -> tuple[str, int]:
    """A new temporary file `.NAME.RANDOM.tmp` in the directory open as `dfd`: (path, fd)."""
    for _ in range(100):
        base = f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(base, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)  # fmt: skip
        except FileExistsError:
            continue
        return os.path.join(udir, base), fd
    raise OSError(errno.EEXIST, "no free temporary file name")


def _tree_stamp(top: str) -> tuple[int, int, int]:
    """(entries, newest modification, total size) of the tree under `top`: changes
    whenever a database file is added, removed or rewritten."""
    count = newest = total = 0
    todo = [top]
    while todo:
        d = todo.pop()
        try:
            with os.scandir(d) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    count += 1
                    newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
                    total += st.st_size
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
        except OSError:
            continue
    return count, newest, total


def _discard(tmp: str | None) -> None:
    """Remove a candidate's temporary file (None: nothing to remove)."""
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _append_sbom(path: str, data: bytes) -> None:
    from sifbox.formats.sif import constants as c
    from sifbox.formats.sif import edit, layout
    from sifbox.formats.sif.image import SifImage

    with open(path, "r+b", buffering=0) as fp:
        img = SifImage.load(fp)
        prim = img.primary_partition()
        edit.add_object(img, edit.ObjectInput(
            data_type=c.DataType.SBOM, data=data, group_id=0,
            link=edit.link_object(prim.id) if prim is not None else 0,
            extra=layout.sbom_extra(c.SbomFormat.CYCLONEDX_JSON), name=b"sbom.cdx.json",
        ), sync=True)  # fmt: skip


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reply(conn: socket.socket, obj: dict) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(OSError):
        conn.sendall(encode_reply(obj))
