"""The admission store daemon (`sifbox store serve`).

One small server, the only writer of the store directory, listening on a
Unix socket. Callers are identified by `SO_PEERCRED`; an image comes in as an
open file descriptor (`SCM_RIGHTS`), so the daemon reads exactly what the
caller could read, and copies it into a temporary file of the caller's
directory before checking anything: what is checked is what gets stored.

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
images`), size quota (`store max size`), SIF validity, signature
(`store require signature`), SBOM appended if missing (`store sbom`),
vulnerability scan (`store vulnerability db`, `store severity threshold`),
external scanner (`store scanner command`). Every decision is a line of the
append-only JSON-lines audit log (`store audit log`).

Started as root, the daemon creates its directories, binds the socket
(mode 0666, so every user can connect), then drops to `store user`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import stat
import struct
import threading
import time

from sifbox.util.errors import SifboxError, describe_os_error

#: Longest request accepted, in bytes.
MAX_REQUEST = 64 * 1024
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}")
CHUNK = 1 << 20
#: Seconds a client has to send its request once connected.
REQUEST_TIMEOUT = 30


class Refused(Exception):
    """An admission step refused the image (the message says why)."""


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


# -- server ---------------------------------------------------------------------------------------


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
        self.vuln_db = cfg.get_str("store vulnerability db")
        self.threshold = cfg.get_str("store severity threshold")
        self.scanner = cfg.get_str("store scanner command")
        self.audit = cfg.get_str("store audit log")
        #: trusted signers' keys: `global-pgp-public` beside sifbox.conf (as the ECL's)
        self.confdir = os.path.dirname(os.path.abspath(cfg.path)) if getattr(cfg, "path", None) else "/etc/sifbox"


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


class Store:
    def __init__(self, settings: Settings, log=None) -> None:  # type: ignore[no-untyped-def]
        self.s = settings
        self.log = log or (lambda message: None)
        self.locks: dict[int, threading.Lock] = {}
        self.locks_guard = threading.Lock()
        self.audit_lock = threading.Lock()
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

    # -- audit --
    def audit(self, record: dict) -> None:  # type: ignore[type-arg]
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        self.log(f"sifbox store: {record.get('op')} {record.get('user')}/{record.get('name')}: "
                 f"{record.get('verdict')}" + (f": {record['reason']}" if record.get("reason") else ""))
        with self.audit_lock:
            fd = os.open(self.s.audit, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- requests --
    def handle(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            conn.settimeout(REQUEST_TIMEOUT)  # a client that connects and says nothing
            msg, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 1)
            conn.settimeout(None)
            try:
                req = json.loads(msg.decode("utf-8"))
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError):
                for fd in fds:
                    os.close(fd)
                return _reply(conn, {"ok": False, "error": "malformed request"})
            try:
                reply = self.dispatch(conn, uid, req, fds[0] if fds else None, pid)
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            _reply(conn, reply)
        except OSError:
            pass  # the client went away
        except Exception as err:  # a fault of the daemon: the client hears of it, the daemon lives on
            self.log(f"sifbox store: internal error: {err!r}")
            _reply(conn, {"ok": False, "error": f"internal error of the image store: {err}"})
        finally:
            conn.close()

    def dispatch(self, conn: socket.socket, uid: int, req: dict, fd: int | None, pid: int = 0) -> dict:  # type: ignore[type-arg]
        import pwd

        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            return {"ok": False, "error": f"uid {uid} has no user name"}
        op = req.get("op")
        caller = user
        other = req.get("user")
        if other is not None and other != user:
            # Root looks after every user's images (ls, info, rm), never admits for them.
            if uid != 0 or op not in ("ls", "info", "rm"):
                return {"ok": False, "error": "only root may act on another user's images"}
            try:
                uid = pwd.getpwnam(str(other)).pw_uid
            except (KeyError, ValueError):  # ValueError: a NUL in the name
                return {"ok": False, "error": f"no user `{other}`"}
            user = str(other)

        name = req.get("name")
        if op in ("cp", "rm", "info") and not (isinstance(name, str) and NAME_RE.fullmatch(name)):
            return {"ok": False, "error": f"`{name}` is not a valid image name",
                    "hint": "names use letters, digits and . _ + -, at most 100 characters"}  # fmt: skip
        if op == "ls":
            return {"ok": True, "images": [self.describe(user, n) for n in self.images(user)]}
        if op == "info":
            if name not in self.images(user):
                return {"ok": False, "error": f"no image `{name}` in your store"}
            return {"ok": True, "image": self.describe(user, name, full=True)}
        if op == "rm":
            with self.lock_for(uid):
                if name not in self.images(user):
                    return {"ok": False, "error": f"no image `{name}` in your store"}
                os.unlink(os.path.join(self.user_dir(user), name + ".sif"))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.meta_path(user, name))
            self.audit({"op": "rm", "uid": uid, "user": user, "name": name, "pid": pid,
                        "by": caller, "verdict": "removed"})  # fmt: skip
            return {"ok": True}
        if op == "cp":
            if fd is None:
                return {"ok": False, "error": "no image descriptor received"}
            with self.lock_for(uid):
                return self.admit(conn, uid, user, name, fd, str(req.get("source", "")), pid)
        return {"ok": False, "error": f"unknown request `{op}`"}

    def describe(self, user: str, name: str, full: bool = False) -> dict:  # type: ignore[type-arg]
        path = os.path.join(self.user_dir(user), name + ".sif")
        st = os.stat(path)
        out = {"name": name, "path": path, "size": st.st_size,
               "admitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))}  # fmt: skip
        try:
            with open(self.meta_path(user, name), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        out["digest"] = meta.get("digest", "")
        if full:
            out.update({k: v for k, v in meta.items() if k not in out})
        return out

    # -- admission --
    def admit(self, conn: socket.socket, uid: int, user: str, name: str, src: int, source: str,
              pid: int = 0) -> dict:  # type: ignore[type-arg]  # fmt: skip
        checks: list[dict] = []  # type: ignore[type-arg]
        record = {"op": "cp", "uid": uid, "user": user, "pid": pid, "name": name, "source": source}
        udir = self.user_dir(user)
        tmp = None
        digest = ""
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                raise Refused("not a regular file")
            record["size"] = st.st_size
            existing = self.images(user)
            if self.s.max_images and name not in existing and len(existing) >= self.s.max_images:
                checks.append({"step": "quota", "result": "fail"})
                raise Refused(f"quota exceeded: {len(existing)} images stored, at most "
                              f"{self.s.max_images} per user (`sifbox store rm NAME` frees one)")  # fmt: skip
            if self.s.max_size and st.st_size > self.s.max_size:
                checks.append({"step": "quota", "result": "fail"})
                raise Refused(f"image of {st.st_size} bytes is larger than the store's limit "
                              f"of {self.s.max_size // (1 << 20)} MiB")  # fmt: skip
            if self.s.max_total:
                used = sum(self._size_of(user, n) for n in existing if n != name)
                if used + st.st_size > self.s.max_total:
                    checks.append({"step": "quota", "result": "fail"})
                    raise Refused(f"quota exceeded: {used >> 20} MiB stored, this image needs "
                                  f"{-(-st.st_size >> 20)} MiB more, at most "
                                  f"{self.s.max_total >> 20} MiB per user")  # fmt: skip
            checks.append({"step": "quota", "result": "pass"})
            self._ensure_user_dir(udir, uid)
            tmp, digest = self._copy_in(src, udir, name, conn)
            record["digest"] = digest
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
                    "source": source, "checks": checks, "findings": findings}  # fmt: skip
            self._write_meta(user, name, meta)
            os.rename(tmp, final)
            tmp = None
            _fsync_dir(udir)
        except Refused as why:
            tmp = _discard(tmp)
            self.audit({**record, "digest": digest, "checks": checks, "verdict": "refused", "reason": str(why)})
            return {"ok": False, "error": str(why), "checks": checks}
        except Exception as err:
            tmp = _discard(tmp)
            reason = f"store error: {describe_os_error(err) if isinstance(err, OSError) else err}"
            self.audit({**record, "digest": digest, "checks": checks, "verdict": "error", "reason": reason})
            return {"ok": False, "error": reason, "checks": checks}
        finally:
            _discard(tmp)
        self.audit({**record, "digest": digest, "checks": checks, "verdict": "admitted"})
        return {"ok": True, "path": final, "digest": digest, "checks": checks}

    def _size_of(self, user: str, name: str) -> int:
        try:
            return os.stat(os.path.join(self.user_dir(user), name + ".sif")).st_size
        except OSError:
            return 0

    def _ensure_user_dir(self, udir: str, uid: int) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(udir, 0o700)
            grant_read(udir, uid, directory=True)

    def _copy_in(self, src: int, udir: str, name: str, conn: socket.socket) -> tuple[str, str]:
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=udir)
        h = hashlib.sha256()
        try:
            pos = 0
            while True:
                chunk = os.pread(src, CHUNK, pos)
                if not chunk:
                    break
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                pos += len(chunk)
                if self.s.max_size and pos > self.s.max_size:
                    raise Refused("the image grew past the store's size limit while being copied")
                if pos % (64 * CHUNK) == 0:
                    self._alive(conn)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp, "sha256:" + h.hexdigest()

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
        from sifbox.image.source import open_image
        from sifbox.security import sbom

        src = open_image(tmp, verb="admit")
        try:
            comps = sbom.components_of_image(src)
            stored = sbom.stored_sbom(tmp, src.fd)
        except SifboxError as err:
            checks.append({"step": "sbom", "result": "fail"})
            raise Refused(f"can't read the image's packages: {err}") from None
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
        with self.audit_lock:
            cached = self._db_cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        db = scan.load_db(self.s.vuln_db)
        with self.audit_lock:
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
        conn.sendall((json.dumps(obj) + "\n").encode())


# -- start-up -------------------------------------------------------------------------------------


def serve(cfg, *, log=print) -> int:  # type: ignore[no-untyped-def]
    """Run the daemon until SIGTERM or SIGINT."""
    import pwd
    import signal

    s = Settings(cfg)
    try:
        account = pwd.getpwnam(s.user)
    except KeyError:
        raise SifboxError(f"can't start the image store: no user `{s.user}`",
                          hint="create it (scripts/install.sh does: useradd --system sifbox-store) "
                               "or set `store user` in sifbox.conf") from None  # fmt: skip
    is_root = os.geteuid() == 0
    if not is_root and os.geteuid() != account.pw_uid:
        raise SifboxError(f"can't start the image store: run it as root or as `{s.user}`")
    sock_dir = os.path.dirname(s.socket)
    for d, mode, own in ((s.root, 0o711, True), (sock_dir, 0o755, False),
                         (os.path.dirname(s.audit), 0o750, True)):  # fmt: skip
        _make_dir(d, mode, account if is_root else None, own)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(s.socket)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(s.socket)
    except OSError as err:
        raise SifboxError(f"can't start the image store: can't listen on `{s.socket}`: "
                          f"{describe_os_error(err)}") from None  # fmt: skip
    os.chmod(s.socket, 0o666)
    if is_root:
        os.chown(s.socket, account.pw_uid, account.pw_gid)
        if os.path.exists(s.audit):
            os.chown(s.audit, account.pw_uid, account.pw_gid)
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    os.environ["HOME"] = account.pw_dir
    os.umask(0o077)
    server.listen(64)
    store = Store(s, log)
    store.clean_stale()
    stopping = threading.Event()

    def stop(_sig, _frame):  # type: ignore[no-untyped-def]
        stopping.set()
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"sifbox store: serving {s.root} on {s.socket} as {s.user}")
    while not stopping.is_set():
        try:
            conn, _ = server.accept()
        except OSError as err:
            if stopping.is_set() or err.errno == errno.EBADF:
                break
            if err.errno == errno.EINTR:
                continue
            raise
        threading.Thread(target=store.handle, args=(conn,), daemon=True).start()
    with contextlib.suppress(OSError):
        os.unlink(s.socket)
    log("sifbox store: stopped")
    return 0


def _make_dir(path: str, mode: int, account, must_own: bool) -> None:  # type: ignore[no-untyped-def]
    """Create `path` for the store user; a directory that already existed is left as it is,
    but one the daemon writes (`must_own`) has to belong to the store user already."""
    existed = os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise SifboxError(f"can't start the image store: can't create `{path}`: "
                          f"{describe_os_error(err)}") from None  # fmt: skip
    if account is None:
        return
    if not existed:
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, mode)
    elif must_own and os.stat(path).st_uid != account.pw_uid:
        raise SifboxError(f"can't start the image store: `{path}` is not owned by `{account.pw_name}`",
                          hint=f"chown {account.pw_name}: {path}")  # fmt: skip
