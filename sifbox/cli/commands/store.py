"""`sifbox store`: the site's admission store of images.

    sifbox store cp IMAGE [NAME]     admit IMAGE (scanned first) as NAME (default: its file name)
    sifbox store ls [--json]         your admitted images
    sifbox store info NAME [--json]  digests, checks and findings of one image
    sifbox store rm NAME             remove one of your images
                                     (root: --user USER for another user's images)
    sifbox store dir                 your directory of the store (SIFBOX_ALLOWED_DIR)
    sifbox store serve               run the store daemon (root or the store user; see
                                     sifbox/data/sifbox-store.service)

The image is opened here, as you, and its descriptor is passed to the daemon
over its Unix socket (`store socket` in sifbox.conf): the store reads only
what you can read. A refused image is not stored, and the reason is shown.
The path of the image is sent along for the record only (`client_source`):
the daemon cannot check it. When the daemon is busy (too many connections),
the request is sent again for up to 30 seconds.

Exit status: 0 done; 255 refused by the store, or the store is unreachable;
125 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from sifbox.util.errors import SifboxError, UsageError, describe_os_error

#: Longest reply read from the daemon.
MAX_REPLY = 16 << 20
#: Seconds a request waits for a busy daemon (one that turns connections away).
BUSY_PATIENCE = 30.0


class StoreError(SifboxError):
    reference = "store-error"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="store_command", metavar="COMMAND")
    c = sub.add_parser("cp", help="admit an image into your store directory (scanned first)")
    c.add_argument("image", metavar="IMAGE", help="SIF image to admit")
    c.add_argument("name", metavar="NAME", nargs="?", help="name in the store (default: file name)")
    c = sub.add_parser("ls", help="list your admitted images")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument("--user", metavar="USER", help="root: another user's images")
    c = sub.add_parser("info", help="show the admission record of an image")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument("--user", metavar="USER", help="root: another user's image")
    c = sub.add_parser("rm", help="remove one of your images")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--user", metavar="USER", help="root: another user's image")
    sub.add_parser("dir", help="print your directory of the store (SIFBOX_ALLOWED_DIR)")
    sub.add_parser("serve", help="run the store daemon (as root or the store user)")


def main(args: argparse.Namespace) -> int:
    from sifbox.config import sysconf

    cmd = args.store_command
    if cmd is None:
        raise UsageError("can't run `sifbox store`: a command is needed (cp, ls, info, rm, dir, serve)")
    cfg = sysconf.load(getattr(args, "config", None))
    if cmd == "serve":
        from sifbox.security import store_server

        return store_server.serve(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    if cmd == "dir":
        import pwd

        from sifbox.security import policy

        print(policy.user_dir(cfg, pwd.getpwuid(os.getuid()).pw_name))
        return 0
    sock = cfg.get_str("store socket")
    assert sock is not None
    if cmd == "cp":
        return _cp(sock, args)
    if cmd == "ls":
        reply = request(sock, _for(args, {"op": "ls"}), verb="list the store")
        images = reply.get("images", [])
        if args.json:
            print(json.dumps(images, indent=2))
        elif images:
            rows = [("NAME", "SIZE", "ADMITTED", "DIGEST")]
            rows += [(i["name"], _size(i["size"]), i["admitted"], i.get("digest", "")[:19]) for i in images]
            w = [max(len(r[k]) for r in rows) for k in range(3)]
            for r in rows:
                print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
        return 0
    if cmd == "info":
        reply = request(sock, _for(args, {"op": "info", "name": args.name}), verb=f"show `{args.name}`")
        info = reply["image"]
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key in ("name", "path", "size", "admitted", "digest", "stored_digest", "client_source"):
                if key in info:
                    print(f"{key + ':':<15}{info[key]}")
            for check in info.get("checks", []):
                extra = {k: v for k, v in check.items() if k not in ("step", "result")}
                print(f"{'check:':<15}{check['step']}: {check['result']}"
                      + (f" {json.dumps(extra)}" if extra else ""))  # fmt: skip
            for f in info.get("findings", []):
                print(f"{'finding:':<15}{f['id']} {f['package']} {f['version']} ({f['severity']})")
        return 0
    if cmd == "rm":
        request(sock, _for(args, {"op": "rm", "name": args.name}),
                verb=f"remove `{args.name}` from the store")  # fmt: skip
        return 0
    raise UsageError(f"can't run `sifbox store {cmd}`: unknown command")


def _cp(sock: str, args: argparse.Namespace) -> int:
    path = args.image
    name = args.name or _default_name(path)
    verb = f"admit `{path}` to the store"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        raise StoreError(f"can't {verb}: {describe_os_error(err)}") from None
    try:
        reply = request(sock, {"op": "cp", "name": name, "source": os.path.abspath(path)}, fd=fd, verb=verb)
    finally:
        os.close(fd)
    for check in reply.get("checks", []):
        print(f"  {check['step']}: {check['result']}", file=sys.stderr)
    print(f"{name}: admitted as {reply['path']} ({reply['digest']})")
    return 0


def _for(args: argparse.Namespace, req: dict) -> dict:  # type: ignore[type-arg]
    if getattr(args, "user", None):
        req["user"] = args.user
    return req


def _default_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    return base.removesuffix(".sif")


def request(sock_path: str, req: dict, *, verb: str, fd: int | None = None,
            patience: float = BUSY_PATIENCE) -> dict:  # type: ignore[type-arg]  # fmt: skip
    """Send one request (and a descriptor) to the daemon; its reply, or StoreError. While
    the daemon is busy (too many connections), try again for up to `patience` seconds."""
    import time

    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        reply = _exchange(sock_path, req, verb=verb, fd=fd)
        if not (reply.get("busy") and time.monotonic() + pause < deadline):
            break
        time.sleep(pause)
        pause = min(2.0, pause * 2)
    if not reply.get("ok"):
        for check in reply.get("checks", []):
            print(f"  {check['step']}: {check['result']}", file=sys.stderr)
        raise StoreError(f"can't {verb}: {reply.get('error', 'refused')}", hint=reply.get("hint"))
    return reply


def _exchange(sock_path: str, req: dict, *, verb: str, fd: int | None) -> dict:  # type: ignore[type-arg]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise StoreError(
                f"can't {verb}: the image store is not running (no daemon at `{sock_path}`: "
                f"{describe_os_error(err)})",
                hint="start it: `systemctl start sifbox-store`, or as root `sifbox store serve &`",
            ) from None
        except OSError as err:
            raise StoreError(f"can't {verb}: can't reach the image store at `{sock_path}`: "
                             f"{describe_os_error(err)}") from None  # fmt: skip
        data = json.dumps(req).encode()
        try:
            if fd is None:
                s.sendall(data)
            else:
                socket.send_fds(s, [data], [fd])
            chunks = []
            total = 0
            while chunk := s.recv(65536):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_REPLY:
                    break
        except OSError as err:
            raise StoreError(f"can't {verb}: lost the image store: {describe_os_error(err)}") from None
    finally:
        s.close()
    try:
        reply = json.loads(b"".join(chunks))
        if not isinstance(reply, dict):
            raise ValueError("not an object")
    except ValueError:
        raise StoreError(f"can't {verb}: the image store gave no answer",
                         hint="its log (journalctl -u sifbox-store) may say why") from None  # fmt: skip
    return reply


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)
